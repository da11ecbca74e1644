"""Time to a target accuracy: sync FedAvg, semi-async FedAvg and async FedBuff, with and without stragglers.

Each run is a fresh local fabric (``FabricProcess``) and in-memory MongoDB-compatible server; the
functions are deployed and a session trained as for ``main.py -d`` / ``-s``. With stragglers, the
fabric's fault plan makes 30% of ``fl_client`` activations wait 5..15 s more (``straggler``). The
figure is the time from the session's start to the first aggregation (round, or model version)
whose accuracy reaches the target; the ratios are sync / semi_async and sync / FedBuff in the same run.
Semi-async rounds close at ``--deadline`` on a quorum of ``--quorum`` and fold late updates into the
next round (polynomial staleness, a 0.5).

    python bench/async_vs_sync.py                       # digits, mlp 32, 4 clients, target 0.85
    python bench/async_vs_sync.py --target 0.7 --no-plain   # stragglers only, a quicker run
    python bench/async_vs_sync.py --modes semi_async --no-plain --target 0.5 --max-rounds 3   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATABASE = "bench_async"
MODES = ("sync", "semi_async", "async")
NAMES = {"sync": "sync FedAvg", "semi_async": "semi-async FedAvg", "async": "FedBuff"}
POLYNOMIAL = {"kind": "polynomial", "a": 0.5}
STRAGGLERS = {"seed": 3, "actions": {"fl_client": {"straggler": 0.3, "straggler_ms": [5000, 15000]}}}


def config(
    args: argparse.Namespace, mode: str, fabric_url: str, mongo_url: str, logs: Path
) -> dict[str, Any]:
    from fedkeeper.function.config import DATASET_FEATURES, GUEST_AUTH

    server: dict[str, Any] = {
        "cluster": "local",
        "mode": mode,
        "max_rounds": args.max_rounds,
        "max_time_s": args.max_time_s,
        "target_accuracy": args.target,
        "num_clients_per_round": args.clients,
        "round_deadline_s": 600,
        "activation_timeout_s": 180,
        "poll_interval_s": 0.2,
        "retry_backoff_s": 0.2,
        "seed": 7,
    }
    if mode == "async":
        server.update(
            max_in_flight=args.clients,
            buffer_size=args.buffer,
            staleness=POLYNOMIAL,
            max_rounds=args.max_rounds * args.clients // args.buffer,  # the same number of updates
        )
    if mode == "semi_async":
        server.update(round_deadline_s=args.deadline, min_fit_fraction=args.quorum, staleness=POLYNOMIAL)
    return {
        "logs_dir": str(logs),
        "providers": {"openwhisk": {"local": {"base_url": fabric_url, "auth": GUEST_AUTH}}},
        "scenarios": {
            "federated_learning": {
                "server_config": server,
                "clients_info": {"total_num_clients": args.clients, "ow_clients_count": args.clients},
                "data_sampling": {"method": "iid", "seed": 7},
                "mongo_config": {"url": mongo_url, "database": DATABASE},
                "training_test_data": {"dataset": args.dataset},
                "model_params": {
                    "model": "mlp",
                    "input_size": DATASET_FEATURES[args.dataset],
                    "hidden_size": args.hidden,
                    "learning_rate": 0.01,
                    "local_epochs": 1,
                    "batch_size": 32,
                },
                "functions": {
                    "fl_client": {"memory": 1280, "timeout": 120},
                    "fl_server_init": {"memory": 1280, "timeout": 120},
                    "fl_invoker_weights_update": {"memory": 256, "timeout": 150},
                    "fl_server_aggregator": {"memory": 1536, "timeout": 120},
                },
            }
        },
    }


def train(
    args: argparse.Namespace, mode: str, stragglers: bool, work: Path
) -> tuple[float | None, int, float]:
    """One session: seconds to the target (None: not reached), aggregations, final accuracy."""
    from fedkeeper.function.config import parse_config
    from fedkeeper.function.store.db import Store
    from fedkeeper.host.fabric.process import FabricProcess
    from fedkeeper.host.run import opened
    from fedkeeper.host.store.embedded import EmbeddedMongo

    with contextlib.ExitStack() as stack:
        mongo = EmbeddedMongo(":memory:").start()
        stack.callback(mongo.stop)
        limits = {"max_workers": args.clients + 2, "idle_timeout_s": 300, "blocking_wait_s": 60}
        fabric = FabricProcess(limits=limits, faults=STRAGGLERS if stragglers else None).start()
        stack.callback(fabric.cleanup)
        parsed = parse_config(config(args, mode, fabric.url, mongo.url, work / "logs"), "<bench config>")
        run = stack.enter_context(opened(parsed))
        run.deploy(say=lambda _: None)
        store = Store(mongo.url, DATABASE)
        store.ensure_indexes()
        session = store.for_session(run.keeper(store).start())
        start = session.record.get()["start_time"]
        rounds = [r for r in session.rounds.all() if r.get("metrics")]
    reached = [r for r in rounds if r["metrics"]["accuracy"] >= args.target]
    seconds = (reached[0]["aggregated_at"] - start).total_seconds() if reached else None
    return seconds, len(rounds), float(rounds[-1]["metrics"]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist5k"])
    parser.add_argument(
        "--clients", type=int, default=4, help="sync: all train each round; async: all in flight"
    )
    parser.add_argument("--buffer", type=int, default=2, help="async: updates per model version")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--max-rounds", type=int, default=12, help="sync rounds (async: as many updates)")
    parser.add_argument("--max-time-s", type=float, default=600)
    parser.add_argument("--no-plain", action="store_true", help="skip the runs without stragglers")
    parser.add_argument("--deadline", type=float, default=8.0, help="semi_async: round_deadline_s")
    parser.add_argument("--quorum", type=float, default=0.5, help="semi_async: min_fit_fraction")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the modes to run")
    args = parser.parse_args()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, fedkeeper at {commit or '?'}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"workload: {args.dataset}, mlp hidden {args.hidden}, {args.clients} clients, target accuracy {args.target}; "
        f"sync FedAvg all clients per round; semi-async FedAvg deadline {args.deadline:g} s, quorum "
        f"{args.quorum:g}; async FedBuff {args.clients} in flight, buffer {args.buffer}; polynomial staleness a 0.5"
    )
    results: dict[tuple[bool, str], tuple[float | None, int, float]] = {}
    for stragglers in (True,) if args.no_plain else (True, False):
        for mode in [m for m in MODES if m in args.modes]:
            started = time.monotonic()
            with TemporaryDirectory() as work:
                results[(stragglers, mode)] = train(args, mode, stragglers, Path(work))
            seconds, count, final = results[(stragglers, mode)]
            label = "30% stragglers +5..15 s" if stragglers else "no stragglers"
            reached = f"{seconds:.1f} s" if seconds is not None else "not reached"
            print(
                f"{label:<24} {mode:<10} target {reached:>12}, {count} aggregations, final accuracy {final:.4f} "
                f"({time.monotonic() - started:.0f} s with deploy)",
                flush=True,
            )
    print()
    for stragglers in (True, False):
        label = "with stragglers" if stragglers else "without stragglers"
        sync = results.get((stragglers, "sync"))
        for mode in MODES[1:]:
            other = results.get((stragglers, mode))
            if sync and other and sync[0] and other[0]:
                print(f"sync / {NAMES[mode]} time to target, {label}: {sync[0] / other[0]:.2f}x")


if __name__ == "__main__":
    main()
