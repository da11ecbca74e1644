"""Time to a target accuracy: sync FedAvg, semi-async FedAvg and async FedBuff, with and without stragglers.

Each run is a fresh local fabric (``FabricProcess``) and in-memory MongoDB-compatible server; the
functions are deployed and a session trained as for ``main.py -d`` / ``-s``. With stragglers, the
fabric's fault plan makes 30% of ``fl_client`` activations wait 5..15 s more (``straggler``). The
figure is the time from the session's start to the first aggregation (round, or model version)
whose accuracy reaches the target; the ratios are sync / semi_async and sync / FedBuff.
Semi-async rounds close at ``--deadline`` on a quorum of ``--quorum`` and fold late updates into the
next round (polynomial staleness, a 0.5).

So that the figure is about training, not the clients' TensorFlow cold starts (12-21 s here, the
same for every mode), each run first trains a one-round sync session of the same configuration on
the same fabric (not timed; its activations count in the fault plan like any); the measured session
then finds every function warm. ``--cold-start`` skips that and times the cold starts too. The
default target (0.96 on digits) takes sync FedAvg about 13 rounds, so a round more or less moves the
figure little. ``--repeat N`` runs every cell N times (the cells interleaved, so load that comes and
goes hits every mode alike), prints each run, then each cell's median (a run that misses the target
counts as slower than any that reaches it); the ratios are of the medians.

    python bench/async_vs_sync.py --repeat 3            # digits, mlp 32, 4 clients, target 0.96
    python bench/async_vs_sync.py --target 0.93 --no-plain   # stragglers only, a quicker run
    python bench/async_vs_sync.py --modes semi_async --no-plain --target 0.5 --max-rounds 3   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
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
    args: argparse.Namespace, mode: str, fabric_url: str, mongo_url: str, logs: Path, warm_up: bool = False
) -> dict[str, Any]:
    """The bench's configuration of ``mode``; ``warm_up``: the untimed one-round sync session."""
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
    if warm_up:
        server.update(mode="sync", max_rounds=1)
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
        if not args.verbose:  # the keepers' lines go to a file with the logs (the run's temp dir)
            stack.enter_context(contextlib.redirect_stdout((work / "keeper.txt").open("w")))
        parsed = parse_config(config(args, mode, fabric.url, mongo.url, work / "logs"), "<bench config>")
        run = stack.enter_context(opened(parsed))
        run.deploy(say=lambda _: None)
        store = Store(mongo.url, DATABASE)
        store.ensure_indexes()
        if not args.cold_start:  # the same deployed functions, so the measured session finds them warm
            warm = parse_config(
                config(args, mode, fabric.url, mongo.url, work / "logs", warm_up=True), "<warm-up>"
            )
            stack.enter_context(opened(warm)).keeper(store).start()
        session = store.for_session(run.keeper(store).start())
        start = session.record.get()["start_time"]
        rounds = [r for r in session.rounds.all() if r.get("metrics")]
    reached = [r for r in rounds if r["metrics"]["accuracy"] >= args.target]
    seconds = (reached[0]["aggregated_at"] - start).total_seconds() if reached else None
    return seconds, len(rounds), float(rounds[-1]["metrics"]["accuracy"])


def median_s(runs: list[tuple[float | None, int, float]]) -> float | None:
    """The median time to the target, a run that missed it counting as slower than any other."""
    value = statistics.median([math.inf if r[0] is None else r[0] for r in runs])
    return None if math.isinf(value) else float(value)


def machine() -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, fedkeeper at {commit or '?'}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


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
    parser.add_argument("--target", type=float, default=0.96)
    parser.add_argument("--max-rounds", type=int, default=40, help="sync rounds (async: as many updates)")
    parser.add_argument("--max-time-s", type=float, default=600)
    parser.add_argument("--no-plain", action="store_true", help="skip the runs without stragglers")
    parser.add_argument("--deadline", type=float, default=8.0, help="semi_async: round_deadline_s")
    parser.add_argument("--quorum", type=float, default=0.5, help="semi_async: min_fit_fraction")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="the modes to run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; medians and their ratios")
    parser.add_argument(
        "--cold-start", action="store_true", help="no warm-up session: the timed session pays the cold starts"
    )
    parser.add_argument("--verbose", action="store_true", help="show the keepers' lines")
    args = parser.parse_args()

    began = time.monotonic()
    print(machine())
    print(
        f"workload: {args.dataset}, mlp hidden {args.hidden}, {args.clients} clients, target accuracy {args.target}, "
        f"max {args.max_rounds} rounds (async: {args.max_rounds * args.clients // args.buffer} versions); "
        f"sync FedAvg all clients per round; semi-async FedAvg deadline {args.deadline:g} s, quorum "
        f"{args.quorum:g}; async FedBuff {args.clients} in flight, buffer {args.buffer}; polynomial staleness a 0.5; "
        f"{'cold start timed' if args.cold_start else 'functions warmed by an untimed 1-round sync session'}; "
        f"{args.repeat} run(s) per cell",
        flush=True,
    )
    cells = [(s, m) for s in ((True,) if args.no_plain else (True, False)) for m in MODES if m in args.modes]
    results: dict[tuple[bool, str], list[tuple[float | None, int, float]]] = {cell: [] for cell in cells}
    for repeat in range(args.repeat):
        for stragglers, mode in cells:
            started = time.monotonic()
            with TemporaryDirectory() as work:
                results[(stragglers, mode)].append(train(args, mode, stragglers, Path(work)))
            seconds, count, final = results[(stragglers, mode)][-1]
            label = "30% stragglers +5..15 s" if stragglers else "no stragglers"
            reached = f"{seconds:.1f} s" if seconds is not None else "not reached"
            print(
                f"run {repeat + 1}/{args.repeat} {datetime.now(UTC):%H:%M:%S} {label:<24} {mode:<10} target "
                f"{reached:>12}, {count} aggregations, final accuracy {final:.4f} "
                f"({time.monotonic() - started:.0f} s with deploy{'' if args.cold_start else ' and warm-up'})",
                flush=True,
            )
    print()
    for stragglers, mode in cells:
        runs = results[(stragglers, mode)]
        label = "30% stragglers +5..15 s" if stragglers else "no stragglers"
        median = median_s(runs)
        each = ", ".join("-" if r[0] is None else f"{r[0]:.1f}" for r in runs)
        print(
            f"median {label:<24} {mode:<10} "
            f"{'not reached' if median is None else f'{median:.1f} s':>12} (runs: {each} s; "
            f"aggregations {statistics.median(r[1] for r in runs):g})"
        )
    print()
    for stragglers in (True, False):
        label = "with stragglers" if stragglers else "without stragglers"
        medians = {m: median_s(runs) for (s, m), runs in results.items() if s == stragglers}
        sync = medians.get("sync")
        for mode in MODES[1:]:
            other = medians.get(mode)
            if sync and other:
                print(f"sync / {NAMES[mode]} median time to target, {label}: {sync / other:.2f}x")
    print(f"\n{machine()}; {time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
