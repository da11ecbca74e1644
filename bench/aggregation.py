"""Aggregation at memory speed: FedAvg over N stored updates vs a raw read and a numpy mean.

N updates of a ResNet-18-shaped model (``--params``, default 11.7M float32 = 47 MB) are written
through fedkeeper's store (``Updates.put``: ``.npz`` encoding, checksum, GridFS) into MongoDB,
then each side runs in its own child process, so none warms another's caches:

- ``fedkeeper``: streaming FedAvg as ``fl_server_aggregator`` runs it (``tasks.aggregator.
  fit_results`` over ``Updates.stream``: GridFS read, ``.npz`` decode, checksum, validation, fold);
- ``fk read``: the same stream without the strategy (read, decode, checksum only);
- ``raw``: pymongo finds the same update documents and reads each GridFS file (no decode;
  models under 15 MB are stored inline in the document);
- ``numpy``: the example-weighted mean of the same arrays already in memory (float64 accumulator).

Throughput is update bytes (N x model) per second of each side's timed loop. Peak RSS of a side
is its child's ``ru_maxrss`` minus its RSS just before the timed work (imports and connection
done, nothing of the model loaded yet), relative to the model's float32 size.

    python bench/aggregation.py                       # 100 updates of 11.7M parameters
    python bench/aggregation.py --quick               # 10 updates of ~0.3M: a smoke run
    python bench/aggregation.py --mongo-url mongodb://localhost:27017   # a real mongod
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pymongo

SESSION = "bench-aggregation"
ROUND = 0
SIDES = ("fedkeeper", "fk read", "raw", "numpy")


def resnet18_shapes(width: int = 64, classes: int = 1000) -> list[tuple[int, ...]]:
    """ResNet-18's parameter tensors in Keras' layout (HWIO kernels, BN gamma/beta/mean/var)."""
    shapes: list[tuple[int, ...]] = []

    def conv_bn(k: int, cin: int, cout: int) -> None:
        shapes.append((k, k, cin, cout))
        shapes.extend([(cout,)] * 4)

    conv_bn(7, 3, width)
    cin = width
    for stage in range(4):
        cout = width * 2**stage
        for block in range(2):
            conv_bn(3, cin, cout)
            conv_bn(3, cout, cout)
            if block == 0 and cin != cout:
                conv_bn(1, cin, cout)  # the projection shortcut
            cin = cout
    shapes += [(cin, classes), (classes,)]
    return shapes


def shapes_for(params: float) -> list[tuple[int, ...]]:
    """ResNet-18's layout, its width scaled so that the total is close to ``params``."""
    full = sum(math.prod(s) for s in resnet18_shapes())
    width = max(1, round(64 * math.sqrt(params / full)))
    return resnet18_shapes(width, classes=max(10, round(1000 * width / 64)))


def update(shapes: list[tuple[int, ...]], client: int) -> list[np.ndarray]:
    rng = np.random.default_rng(client)
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]


def examples(client: int) -> int:
    return 10 + client % 7


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


# ---------------------------------------------------------------- the sides (child processes)
def run_fedkeeper(url: str, database: str, clients: list[int], fold: bool) -> Callable[[], int]:
    from fedkeeper.function.store.db import Store
    from fedkeeper.function.strategies import FitConfig, FitRes, RoundContext
    from fedkeeper.function.strategies.fedavg import FedAvg
    from fedkeeper.function.tasks.aggregator import fit_results

    store = Store(url, database).for_session(SESSION)
    store.store.ping()

    def work() -> int:
        current = store.weights.get(ROUND)
        results = fit_results(store, ROUND, clients, {}, FitConfig(0.01, 1, 32))
        if not fold:
            return sum(1 for item in results if isinstance(item, FitRes))
        outcome = FedAvg().aggregate_fit(RoundContext(ROUND, current), results, [])
        return len(outcome.accepted)

    return work


def run_raw(url: str, database: str, clients: list[int]) -> Callable[[], int]:
    import gridfs

    db = pymongo.MongoClient(url)[database]
    db.command("ping")
    fs = gridfs.GridFS(db, collection="blobs")

    def work() -> int:
        read = 0
        query = {"session": SESSION, "round": ROUND, "client": {"$in": clients}}
        for doc in db.updates.find(query, {"blob": 1, "num_examples": 1}, batch_size=1):
            blob = doc["blob"]  # small models are stored inline, past 15 MB in GridFS
            read += len(blob["inline"] if "inline" in blob else fs.get(blob["gridfs"]).read())
        return read

    return work


def run_numpy(shapes: list[tuple[int, ...]], clients: list[int], distinct: int) -> Callable[[], int]:
    """The weighted mean of updates held in memory; ``distinct`` of them, cycled (each is past any
    CPU cache, so cycling does not flatter numpy, and memory stays bounded)."""
    held = [update(shapes, client) for client in clients[:distinct]]

    def work() -> int:
        sums = [np.zeros(shape, dtype=np.float64) for shape in shapes]
        total = 0.0
        for i, client in enumerate(clients):
            weight = float(examples(client))
            for acc, layer in zip(sums, held[i % len(held)], strict=True):
                acc += weight * layer.astype(np.float64)
            total += weight
        mean = [(acc / total).astype(np.float32) for acc in sums]
        return len(mean)

    return work


def child(args: argparse.Namespace) -> None:
    shapes = shapes_for(args.params)
    clients = list(range(args.updates))
    if args.side in ("fedkeeper", "fk read"):
        work = run_fedkeeper(args.url, args.database, clients, fold=args.side == "fedkeeper")
    elif args.side == "raw":
        work = run_raw(args.url, args.database, clients)
    else:
        work = run_numpy(shapes, clients, args.numpy_distinct)
    before = rss_bytes()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_before": before, "peak_rss": peak_rss_bytes()}))


# ---------------------------------------------------------------- the parent
@dataclass
class Run:
    seconds: float
    peak_delta: int
    peak_rss: int


def write_updates(url: str, database: str, shapes: list[tuple[int, ...]], n: int) -> float:
    from fedkeeper.function.store.db import Store

    db = Store(url, database)
    db.ensure_indexes()
    store = db.for_session(SESSION)
    store.weights.put(ROUND, update(shapes, -1 % 2**32))
    started = time.perf_counter()
    for client in range(n):
        store.updates.put(ROUND, client, update(shapes, client), examples(client), 0.0, 0.0)
    return time.perf_counter() - started


def measure(args: argparse.Namespace, side: str, url: str) -> Run:
    command = [
        sys.executable, __file__, "--child", side, "--url", url, "--database", args.database,
        "--params", str(args.params), "--updates", str(args.updates),
        "--numpy-distinct", str(args.numpy_distinct),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{side} side failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return Run(out["seconds"], out["peak_rss"] - out["rss_before"], out["peak_rss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--params", type=float, default=11.7e6, help="model size in parameters")
    parser.add_argument("--updates", type=int, default=100, help="client updates to aggregate")
    parser.add_argument("--quick", action="store_true", help="10 updates of ~0.3M parameters")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, alternating; medians")
    parser.add_argument("--mongo-url", help="a running MongoDB (default: an embedded server)")
    parser.add_argument("--database", default="fedkeeper_bench_aggregation")
    parser.add_argument(
        "--store-dir", help="keep the embedded server's data here; reuse it if it holds the updates"
    )
    parser.add_argument("--numpy-distinct", type=int, default=8, help="updates numpy holds in memory")
    parser.add_argument("--child", choices=SIDES, dest="side", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        child(args)
        return
    if args.quick:
        args.params, args.updates = 0.3e6, 10

    shapes = shapes_for(args.params)
    params = sum(math.prod(s) for s in shapes)
    model_mb = params * 4 / 1e6
    print(
        f"model: {params:,} float32 parameters in {len(shapes)} arrays ({model_mb:.1f} MB), "
        f"{args.updates} updates ({args.updates * model_mb:.0f} MB); {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="fk-bench-agg-") as work:
        if args.mongo_url:
            server: Any = nullcontext()
            url = args.mongo_url
        else:
            from fedkeeper.host.store.embedded import EmbeddedMongo

            # On disk: the in-memory engine's cache (256 MB) cannot hold the updates.
            data = Path(args.store_dir) if args.store_dir else Path(work) / "data"
            server = EmbeddedMongo(data, state_dir=Path(work) / "state").start()
            url = server.url
        print(f"store: {'MongoDB at --mongo-url' if args.mongo_url else 'embedded secantusd-py (on disk)'}")
        try:
            db = pymongo.MongoClient(url)[args.database]
            written = {"params": params, "updates": args.updates}
            if db.bench.find_one(written) is None:
                db.client.drop_database(args.database)
                wrote = write_updates(url, args.database, shapes, args.updates)
                db.bench.insert_one(written)
                print(f"wrote {args.updates} updates through Updates.put in {wrote:.1f} s", flush=True)
            else:
                print(f"updates already stored in {args.store_dir}", flush=True)
            runs: dict[str, list[Run]] = {side: [] for side in SIDES}
            for _ in range(args.repeat):
                for side in SIDES:
                    runs[side].append(measure(args, side, url))
            if args.mongo_url:
                db.client.drop_database(args.database)
        finally:
            if not args.mongo_url:
                server.stop()
    report(runs, args.updates * params * 4, params * 4)


def report(runs: dict[str, list[Run]], total_bytes: int, model_bytes: int) -> None:
    seconds = {side: statistics.median(r.seconds for r in rs) for side, rs in runs.items()}
    rate = {side: total_bytes / 1e6 / s for side, s in seconds.items()}
    print(f"\n{'side':<10} {'seconds':>9} {'MB/s':>9} {'peak RSS - before, MB':>22} {'x model':>8}")
    for side, rs in runs.items():
        delta = statistics.median(r.peak_delta for r in rs)
        print(
            f"{side:<10} {seconds[side]:>9.2f} {rate[side]:>9.1f} {delta / 1e6:>22.1f} "
            f"{delta / model_bytes:>8.2f}"
        )
    print(f"\nfedkeeper / raw read     {rate['fedkeeper'] / rate['raw']:.2f}x  (goal >= 0.7x)")
    print(f"fedkeeper / numpy mean   {rate['fedkeeper'] / rate['numpy']:.2f}x  (goal >= 0.5x)")
    print(f"fk read / raw read       {rate['fk read'] / rate['raw']:.2f}x")
    delta = statistics.median(r.peak_delta for r in runs["fedkeeper"])
    print(f"fedkeeper peak RSS       {delta / model_bytes:.2f}x the model  (goal <= 3x)")


if __name__ == "__main__":
    main()
