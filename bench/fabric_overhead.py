"""Overhead of the local fabric: a no-op python action, blocking invokes, cold and warm.

Prints invocations/s and p50/p99 latency at 1, 10 and 100 concurrent activations, and the same
load against a peer measured in the same run: a bare aiohttp echo endpoint in its own process
(the HTTP request floor on this machine). The ratio fabric/peer is what the fabric adds.

Warm: one action, its workers kept warm. Cold: every invocation hits a fresh action version
(a PUT before each round), so each one starts and initializes a new worker process.

    python bench/fabric_overhead.py                      # a few minutes on 2 cores
    python bench/fabric_overhead.py --warm 100 --cold 10 --levels 1,10   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.fabric.process import FabricProcess

NOOP = "def main(params):\n    return {}\n"


@dataclass
class Result:
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(session: aiohttp.ClientSession, url: str, latencies: list[float]) -> bool:
    started = time.perf_counter()
    async with session.post(url, json={}) as response:
        await response.read()
        ok = response.status == 200
    latencies.append((time.perf_counter() - started) * 1000)
    return ok


def basic(auth: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}


async def load(url: str, total: int, concurrency: int, headers: dict[str, str]) -> Result:
    """``total`` POSTs to ``url``, ``concurrency`` at a time."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:

        async def client() -> None:
            nonlocal errors
            while not queue.empty():
                queue.get_nowait()
                if not await _timed(session, url, latencies):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(total, elapsed, latencies, errors)


async def cold_load(base: str, total: int, concurrency: int, headers: dict[str, str]) -> Result:
    """Rounds of ``concurrency`` invocations, each of its own freshly updated action."""
    latencies: list[float] = []
    errors = 0
    elapsed = 0.0
    names = [f"bench-cold-{concurrency}-{i}" for i in range(concurrency)]
    rounds = max(1, total // concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session:
        for _ in range(rounds):
            for name in names:  # a new version: no warm worker can serve it
                body = {"exec": {"kind": "python:3", "code": NOOP}}
                async with session.put(f"{base}/actions/{name}?overwrite=true", json=body) as response:
                    assert response.status == 200, await response.text()
            started = time.perf_counter()
            oks = await asyncio.gather(
                *(_timed(session, f"{base}/actions/{name}?blocking=true", latencies) for name in names)
            )
            elapsed += time.perf_counter() - started
            errors += oks.count(False)
    return Result(rounds * concurrency, elapsed, latencies, errors)


# --------------------------------------------------------------------------- the peer
def serve_echo() -> None:
    """The peer: a bare aiohttp endpoint answering each POST with its JSON body."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"echo listening on http://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_peer() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-echo"], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return process, line.rsplit(" ", 1)[1]


# --------------------------------------------------------------------------- report
def row(mode: str, level: int, fabric: Result, peer: Result | None) -> str:
    text = (
        f"{mode:<5} {level:>5} {fabric.requests:>6} {fabric.rate:>9.1f} {fabric.pct(0.5):>8.1f} "
        f"{fabric.pct(0.99):>8.1f} {fabric.errors:>4}"
    )
    if peer is not None:
        text += (
            f" | {peer.rate:>9.1f} {peer.pct(0.5):>7.2f} {peer.pct(0.99):>7.2f}"
            f" | {fabric.pct(0.5) / peer.pct(0.5):>8.1f}x {peer.rate / fabric.rate:>8.1f}x"
        )
    return text


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    levels = [int(x) for x in args.levels.split(",")]
    auth = basic(GUEST_AUTH)
    limits = {"blocking_wait_s": 300, "concurrent_invocations": max(200, 2 * max(levels))}
    if args.max_workers:
        limits["max_workers"] = args.max_workers
    peer_process, peer_url = start_peer()
    rows: list[dict[str, object]] = []
    try:
        with FabricProcess(limits=limits) as fabric:
            base = f"{fabric.url}/api/v1/namespaces/_"
            async with aiohttp.ClientSession(headers=auth) as session:
                body = {"exec": {"kind": "python:3", "code": NOOP}}
                async with session.put(f"{base}/actions/bench-noop?overwrite=true", json=body) as response:
                    assert response.status == 200
            warm_url = f"{base}/actions/bench-noop?blocking=true"
            print(
                f"fabric overhead: no-op python action, blocking invokes; {os.cpu_count()} cores; "
                f"fabric limits {limits}\n"
                f"{'mode':<5} {'conc':>5} {'reqs':>6} {'inv/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'err':>4}"
                f" | {'peer/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'p50 x':>9} {'inv/s x':>9}"
            )
            for level in levels:
                await load(warm_url, level, level, auth)  # warm-up: workers for this level exist
                total = max(level, args.warm)
                fabric_result = await load(warm_url, total, level, auth)
                peer_result = await load(peer_url, total, level, {})
                print(row("warm", level, fabric_result, peer_result), flush=True)
                rows.append(_summary("warm", level, fabric_result, peer_result))
            for level in levels:
                total = max(level, args.cold if level == 1 else max(args.cold, level))
                cold = await cold_load(base, total, level, auth)
                print(row("cold", level, cold, None), flush=True)
                rows.append(_summary("cold", level, cold, None))
    finally:
        peer_process.terminate()
        peer_process.wait(10)
    return rows


def _summary(mode: str, level: int, fabric: Result, peer: Result | None) -> dict[str, object]:
    out: dict[str, object] = {
        "mode": mode,
        "concurrency": level,
        "requests": fabric.requests,
        "errors": fabric.errors,
        "inv_per_s": round(fabric.rate, 1),
        "p50_ms": round(fabric.pct(0.5), 2),
        "p99_ms": round(fabric.pct(0.99), 2),
        "mean_ms": round(statistics.fmean(fabric.latencies_ms), 2) if fabric.latencies_ms else None,
    }
    if peer is not None:
        out["peer_inv_per_s"] = round(peer.rate, 1)
        out["peer_p50_ms"] = round(peer.pct(0.5), 3)
        out["p50_ratio_fabric_over_peer"] = round(fabric.pct(0.5) / peer.pct(0.5), 2)
        out["throughput_ratio_peer_over_fabric"] = round(peer.rate / fabric.rate, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,10,100", help="concurrency levels (default 1,10,100)")
    parser.add_argument("--warm", type=int, default=300, help="warm invocations per level (default 300)")
    parser.add_argument("--cold", type=int, default=10, help="cold invocations per level, at least the level")
    parser.add_argument(
        "--max-workers", type=int, default=0, help="fabric worker cap (default: the fabric's)"
    )
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo()
        return
    started = time.monotonic()
    rows = asyncio.run(run(args))
    print(f"done in {time.monotonic() - started:.0f} s")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
