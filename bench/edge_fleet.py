#!/usr/bin/env python
"""The QEMU edge fleet, Zephyr and bare-metal guests side by side: boot, memory (PSS), rounds.

For each fleet size N and each firmware: boots N guests (wall time, and each guest's
launch-to-HELLO time), reads every guest's PSS, then runs two rounds of one train job per guest,
all at once -- the first reboots each guest with its data partition (cold), the second reuses it
(warm). Every guest trains the same work: ``--rows`` digits rows, ``--epochs`` epochs of a
64-``--hidden``-10 mlp with Adam, batch 32.

Peers, measured in the same run on the same machine: the other firmware (PSS ratio
zephyr/baremetal per size), and the same training job in host numpy (float32, the guest's exact
semantics, ``tests/edge/reference.py``), one job after another in this process. Ratios:
guest/numpy for one job's compute (the cost of emulating an SSE CPU), and the warm fleet round
against the N numpy jobs back to back.

    nice python bench/edge_fleet.py                       # 1, 64, 128, 256 guests of each firmware
    python bench/edge_fleet.py --sizes 1,8 --firmware zephyr     # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.edge.reference: the numpy peer

from fedkeeper.host.edge.firmware import Firmware, ensure_built, firmware
from fedkeeper.host.edge.fleet import Fleet, FleetConfig, Partition, TrainResult
from fedkeeper.host.edge.protocol import Optimizer, TrainParams
from tests.edge import reference


@dataclass
class Row:
    firmware: str
    memory_mb: int
    instances: int
    trained: int
    boot_wall_s: float
    boot_mean_s: float
    pss_idle_mb: float
    pss_trained_mb: float
    round_cold_s: float
    round_warm_s: float
    guest_job_ms: float
    numpy_job_ms: float
    numpy_round_s: float
    cpu_s: float
    stop_s: float


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def partitions(x: np.ndarray, y: np.ndarray, count: int, rows: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` partitions of ``rows`` rows each (wrapping around the data when it runs out)."""
    order = np.random.default_rng(0).permutation(len(y))
    return [
        (x[idx], y[idx])
        for idx in (np.take(order, range(i * rows, (i + 1) * rows), mode="wrap") for i in range(count))
    ]


async def measure(
    size: int,
    firmware: Firmware,
    memory_mb: int | None,
    parts: list[tuple[np.ndarray, np.ndarray]],
    weights: list[np.ndarray],
    params: TrainParams,
) -> Row:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        config = FleetConfig(
            kernel=ensure_built(firmware),
            run_dir=Path(tmp),
            firmware=firmware,
            memory_mb=memory_mb,
            boot_timeout_s=300,
            request_timeout_s=600,
        )
        fleet = Fleet(config, size)
        started = time.perf_counter()
        await fleet.start()
        boot_wall = time.perf_counter() - started
        usage = fleet.usage()
        boot_mean = statistics.mean(u.boot_s or 0.0 for u in usage)
        pss_idle = statistics.mean((u.pss_kb or 0) / 1024 for u in usage)
        images = [Partition.from_arrays(x, y, 10) for x, y in parts]
        rounds: list[float] = []
        guest_ms: list[float] = []
        trained = 0
        try:
            for _ in range(2):
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(fleet[i].train(images[i], weights, params, 900) for i in range(size)),
                    return_exceptions=True,
                )
                rounds.append(time.perf_counter() - started)
                done = [r for r in results if isinstance(r, TrainResult)]
                for failure in {str(r) for r in results if isinstance(r, BaseException)}:
                    print(f"    {firmware.name} x{size}: a job failed: {failure}", flush=True)
                guest_ms = [r.metrics.train_us / 1000 for r in done] or [0.0]
                trained = len(done)
            usage = fleet.usage()
        finally:
            started = time.perf_counter()
            await fleet.stop()
            stop_s = time.perf_counter() - started
        return Row(
            firmware=firmware.name,
            memory_mb=config.memory,
            instances=size,
            trained=trained,
            boot_wall_s=boot_wall,
            boot_mean_s=boot_mean,
            pss_idle_mb=pss_idle,
            pss_trained_mb=statistics.mean((u.pss_kb or 0) / 1024 for u in usage),
            round_cold_s=rounds[0],
            round_warm_s=rounds[1],
            guest_job_ms=statistics.mean(guest_ms),
            numpy_job_ms=0.0,
            numpy_round_s=0.0,
            cpu_s=statistics.mean(u.cpu_s or 0.0 for u in usage),
            stop_s=stop_s,
        )


def numpy_peer(
    parts: list[tuple[np.ndarray, np.ndarray]], weights: list[np.ndarray], params: TrainParams
) -> list[float]:
    """Milliseconds per job of the same training in host numpy, one job after another."""
    times = []
    for x, y in parts:
        started = time.perf_counter()
        reference.train(
            weights, x, y, epochs=params.epochs, batch_size=params.batch_size, lr=params.learning_rate,
            optimizer="adam", seed=params.seed,
        )  # fmt: skip
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--sizes", default="1,64,128,256", help="fleet sizes (default 1,64,128,256)")
    parser.add_argument(
        "--firmware", default="zephyr,baremetal", help="firmwares to compare (default zephyr,baremetal)"
    )
    parser.add_argument("--memory-mb", type=int, default=None, help="guest -m (default: each firmware's)")
    parser.add_argument("--rows", type=int, default=300, help="training rows per guest (default 300)")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per job (default 1)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width of the mlp (default 64)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    firmwares = [firmware(name) for name in args.firmware.split(",") if name]
    x, y = digits()
    weights = reference.glorot([64, args.hidden, 10], seed=0)
    params = TrainParams(args.epochs, 32, 0.01, Optimizer.ADAM, seed=1)
    print(
        f"edge fleet bench: {os.cpu_count()} cpus, TCG; job = {args.rows} rows x "
        f"{args.epochs} epoch(s), mlp 64-{args.hidden}-10, Adam, batch 32",
        flush=True,
    )
    rows: list[Row] = []
    for size in sizes:
        parts = partitions(x, y, size, args.rows)
        peer = numpy_peer(parts, weights, params)
        for fw in firmwares:
            row = asyncio.run(measure(size, fw, args.memory_mb, parts, weights, params))
            row.numpy_job_ms = statistics.mean(peer)
            row.numpy_round_s = sum(peer) / 1000
            rows.append(row)
            print(f"  {size} {fw.name} guests done", flush=True)

    header = (
        f"{'N':>4} {'firmware':>9} {'-m':>3} {'trained':>7} {'boot wall s':>11} {'boot/guest s':>12} "
        f"{'PSS idle MB':>11} {'PSS MB':>7} {'round cold s':>12} {'round warm s':>12} {'guest job ms':>12} "
        f"{'numpy job ms':>12} {'job ratio':>9} {'round ratio':>11} {'cpu/guest s':>11} {'stop s':>6}"
    )
    print(header)
    for r in rows:
        print(
            f"{r.instances:>4} {r.firmware:>9} {r.memory_mb:>3} {r.trained:>7} {r.boot_wall_s:>11.2f} "
            f"{r.boot_mean_s:>12.3f} {r.pss_idle_mb:>11.1f} {r.pss_trained_mb:>7.1f} {r.round_cold_s:>12.2f} "
            f"{r.round_warm_s:>12.2f} {r.guest_job_ms:>12.1f} {r.numpy_job_ms:>12.1f} "
            f"{r.guest_job_ms / r.numpy_job_ms:>9.2f} {r.round_warm_s / r.numpy_round_s:>11.2f} "
            f"{r.cpu_s:>11.2f} {r.stop_s:>6.2f}"
        )
    by_key = {(r.instances, r.firmware): r for r in rows}
    for size in sizes:
        zephyr, baremetal = by_key.get((size, "zephyr")), by_key.get((size, "baremetal"))
        if zephyr and baremetal:
            print(
                f"N={size}: PSS per guest zephyr/baremetal = {zephyr.pss_trained_mb / baremetal.pss_trained_mb:.2f} "
                f"(idle {zephyr.pss_idle_mb / baremetal.pss_idle_mb:.2f}); warm round "
                f"{zephyr.round_warm_s / baremetal.round_warm_s:.2f}; boot {zephyr.boot_wall_s / baremetal.boot_wall_s:.2f}"
            )
    print(
        "trained = jobs of the warm round that completed; job ratio = guest's in-VM training time / numpy's "
        "for the same job; round ratio = warm fleet round (all guests at once, incl. serial transfer) / the "
        "same jobs in numpy back to back."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
