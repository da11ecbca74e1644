#!/usr/bin/env python
"""How the keeper scales with clients per round: 10, 100 and 1,000 clients on the local fabric.

Each size is one session through ``fedkeeper.host.run`` (local fabric ``FabricProcess`` and
``EmbeddedMongo``, as ``round_vs_flower.py`` runs it) with tiny training (digits, mlp 64-16-10,
1 local epoch, every client selected every round) and two ``fl_client`` workers, so activations
queue and, past the fabric's 100 concurrent invocations, meet its 429s. The keeper runs in this
process; per round the script prints:

- round s: the keeper's round time (first dispatch .. aggregator's metrics);
- slowest s: the slowest client activation (its record's end - start); overhead = round - slowest;
- idle s: the part of the round in which no activation of the round ran (keeper dispatching,
  polling and closing while the fabric had nothing of this round to run);
- keeper CPU ms/activation: this process's CPU time (less the sampler thread's own) from this
  round's opening to the next one's (so pruning, logs and selection count), over the round's
  activations (clients + aggregator);
- Mongo ops: commands the keeper's MongoDB clients sent (a pymongo ``CommandListener``);
- polls: GET requests for activation records (the list API or one record), invokes: POSTs of
  ``fl_client`` (counted by a response hook on the keeper's HTTP session), 429s among them;
- failures: clients the round closed without; retries: the keeper's re-invocations;
- store MB: ``dbStats`` data size when the next round opens (after this round's pruning), or at the end.

    python bench/scale.py            # 10, 100 and 1,000 clients, 3 rounds each
    python bench/scale.py --quick    # 10 and 100 clients: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pymongo
import requests
from pymongo import monitoring
from round_vs_flower import DATABASE, Workload, activation_s, fabric_limits, fedkeeper_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.05
HIDDEN = 16
BATCH = 8


# --------------------------------------------------------------------------- measuring
class CommandLog(monitoring.CommandListener):
    """Wall time of every command sent by a MongoDB client created after registration."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.times.append(time.time())

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@dataclass(frozen=True)
class Request:
    at: float
    method: str
    path: str
    status: int


def count_requests(session: requests.Session, log: list[Request]) -> None:
    """Note each response's method, path and status (a response hook: measurement only)."""

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        path = (response.request.path_url or "").split("?")[0]
        log.append(Request(time.time(), response.request.method or "", path, response.status_code))

    session.hooks["response"].append(hook)


class Sampler:
    """Samples this process's CPU time, and the store's size whenever a new round opens."""

    def __init__(self, mongo_url: str) -> None:
        self.cpu: list[tuple[float, float]] = []  # (wall time, process CPU s less this sampler's own)
        self.sizes: dict[int, float] = {}  # rounds opened -> store data bytes at that moment
        # created before the CommandLog is registered, so its commands are not counted
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def data_bytes(self) -> float:
        return float(self.client[DATABASE].command("dbStats")["dataSize"])

    def _run(self) -> None:
        opened = 0
        tick = 0
        while not self._stop.wait(SAMPLE_S):
            # the sampler's own queries are measurement, not the keeper's work
            self.cpu.append((time.time(), time.process_time() - time.thread_time()))
            tick += 1
            if tick % 2:
                continue
            with contextlib.suppress(pymongo.errors.PyMongoError):
                now_open = self.client[DATABASE]["rounds"].count_documents({})
                if now_open > opened:
                    opened = now_open
                    self.sizes[opened] = self.data_bytes()

    def cpu_between(self, start: float, end: float) -> float:
        times = [t for t, _ in self.cpu]
        i, j = bisect_left(times, start), min(bisect_left(times, end), len(times) - 1)
        return self.cpu[j][1] - self.cpu[i][1] if i < len(times) else 0.0

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


# --------------------------------------------------------------------------- one size
@dataclass
class RoundRow:
    clients: int
    number: int
    round_s: float
    slowest_s: float
    idle_s: float
    cpu_ms_per_activation: float
    mongo_ops: int
    polls: int
    invokes: int
    throttled: int
    failures: int
    retries: int
    store_mb: float
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_s(self) -> float:
        return self.round_s - self.slowest_s


def idle(start: float, end: float, spans: list[tuple[float, float]]) -> float:
    """Time in [start, end] covered by none of ``spans``."""
    covered, cursor = 0.0, start
    for a, b in sorted(spans):
        a, b = max(a, cursor), min(b, end)
        if b > a:
            covered += b - a
            cursor = b
    return max(0.0, end - start - covered)


def scale_config(w: Workload, fabric_url: str, mongo_url: str, logs: Path) -> dict[str, Any]:
    """``round_vs_flower``'s session, with digits and a tiny mlp."""
    config = fedkeeper_config(w, fabric_url, mongo_url, logs)
    fl = config["scenarios"]["federated_learning"]
    fl["training_test_data"] = {"dataset": "digits"}
    fl["model_params"].update(input_size=64)
    return config


def run_size(clients: int, rounds: int, parallel: int, work: Path) -> list[RoundRow]:
    """One session of ``rounds`` rounds with ``clients`` clients, all selected every round."""
    from fedkeeper.function.config import parse_config
    from fedkeeper.function.store.db import Store
    from fedkeeper.host.fabric.process import FabricProcess
    from fedkeeper.host.ledger import Ledger
    from fedkeeper.host.run import opened
    from fedkeeper.host.store.embedded import EmbeddedMongo

    w = Workload(rounds=rounds, clients=clients, hidden=HIDDEN, epochs=1, batch=BATCH, parallel=parallel)
    requests_log: list[Request] = []
    commands = CommandLog()
    with contextlib.ExitStack() as stack:
        mongo = EmbeddedMongo(":memory:").start()
        stack.callback(mongo.stop)
        fabric = FabricProcess(limits=fabric_limits(w)).start()
        stack.callback(fabric.cleanup)
        sampler = stack.enter_context(Sampler(mongo.url))
        monitoring.register(commands)  # every MongoDB client created from here on is counted
        config = parse_config(scale_config(w, fabric.url, mongo.url, work / "logs"), "<scale config>")
        run = stack.enter_context(opened(config))
        run.deploy(say=lambda line: None)
        store = Store(mongo.url, DATABASE)
        store.ensure_indexes()
        keeper = run.keeper(store)
        for provider in keeper.providers.values():
            session_http = getattr(provider, "session", None)
            if isinstance(session_http, requests.Session):
                count_requests(session_http, requests_log)
        print(f"{clients} clients per round: running {rounds} rounds ...", flush=True)
        session = keeper.start()
        ended = time.time()
        final_bytes = sampler.data_bytes()
        docs = store.for_session(session).rounds.all()
        entries = list(Ledger(store.for_session(session)).entries())
    rows = []
    for doc in docs:
        number = int(doc["round"])
        start = doc["started_at"].replace(tzinfo=doc["started_at"].tzinfo or UTC).timestamp()
        metrics = doc["metrics"]
        round_s = float(metrics["duration_s"])
        following = [d for d in docs if int(d["round"]) == number + 1]
        until = (
            following[0]["started_at"].replace(tzinfo=following[0]["started_at"].tzinfo or UTC).timestamp()
            if following
            else ended
        )
        mine = [e for e in entries if e.round == number and e.start_ms and e.end_ms]
        fits = [e for e in mine if e.function == "fl_client"]
        spans = [(e.start_ms / 1000, e.end_ms / 1000) for e in mine]
        window = [r for r in requests_log if start <= r.at < until]
        invokes = [r for r in window if r.method == "POST" and r.path.endswith("/actions/fl_client")]
        stored = sampler.sizes.get(number + 2, final_bytes)  # when round number + 1 opened
        rows.append(
            RoundRow(
                clients=clients,
                number=number + 1,
                round_s=round_s,
                slowest_s=max((activation_s(e) for e in fits), default=0.0),
                idle_s=idle(start, start + round_s, spans),
                cpu_ms_per_activation=1000 * sampler.cpu_between(start, until) / max(len(mine), 1),
                mongo_ops=sum(start <= t < until for t in commands.times),
                polls=sum(r.method == "GET" and "/activations" in r.path for r in window),
                invokes=len(invokes),
                throttled=sum(r.status == 429 for r in invokes),
                failures=len(doc.get("failed", [])),
                retries=int(metrics.get("retries", 0)),
                store_mb=stored / 2**20,
                notes=[f"{sum(e.status != 'success' for e in fits)} client attempts not successful"],
            )
        )
    return rows


# --------------------------------------------------------------------------- the table
HEADER = (
    f"{'clients':>7} {'round':>5} {'round s':>8} {'slowest s':>9} {'overhead s':>10} {'idle s':>7} "
    f"{'CPU ms/act':>10} {'Mongo ops':>9} {'polls':>6} {'invokes':>7} {'429s':>5} {'failures':>8} "
    f"{'retries':>7} {'store MB':>8}"
)


def table(rows: list[RoundRow]) -> Iterator[str]:
    yield HEADER
    for r in rows:
        yield (
            f"{r.clients:>7} {r.number:>5} {r.round_s:>8.2f} {r.slowest_s:>9.3f} {r.overhead_s:>10.2f} "
            f"{r.idle_s:>7.2f} {r.cpu_ms_per_activation:>10.2f} {r.mongo_ops:>9} {r.polls:>6} {r.invokes:>7} "
            f"{r.throttled:>5} {r.failures:>8} {r.retries:>7} {r.store_mb:>8.2f}"
        )


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="10 and 100 clients only (a smoke run)")
    p.add_argument("--clients", type=int, nargs="+", help="clients per round to run (default 10 100 1000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    p.add_argument("--parallel", type=int, default=2, help="fl_client workers at once (default 2)")
    args = p.parse_args(argv)
    sizes = args.clients or ([10, 100] if args.quick else [10, 100, 1000])
    for name, value in (
        ("rounds", args.rounds),
        ("parallel", args.parallel),
        *(("clients", c) for c in sizes),
    ):
        if value < 1:
            p.error(f"--{name} must be at least 1 (got {value})")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load = os.getloadavg()[0]
    rows: list[RoundRow] = []
    with tempfile.TemporaryDirectory(prefix="scale-") as work:
        for clients in sizes:
            rows += run_size(clients, args.rounds, args.parallel, Path(work) / str(clients))
            print("\n".join(table([r for r in rows if r.clients == clients])), flush=True)
    print()
    print(
        f"fedkeeper scale — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}; "
        f"load average (1 min) at start {load:.1f}, at end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"workload: digits, mlp 64-{HIDDEN}-10, 1 local epoch, batch {BATCH}, every client every round, "
        f"{args.rounds} rounds; local fabric with {args.parallel} fl_client workers, 100 concurrent invocations"
    )
    print("\n".join(table(rows)))
    for r in rows:
        for note in r.notes:
            print(f"  {r.clients} clients, round {r.number}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
