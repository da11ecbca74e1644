"""``python -m fedkeeper.host.edge --instances N --host 127.0.0.1 --port P --state-dir DIR``.

Boots N QEMU edge guests and serves the edge gateway. Prints exactly one line on stdout,
``edge gateway listening on http://HOST:PORT``, once every guest said hello; logs go to stderr.
SIGTERM or SIGINT powers every guest off and removes their pipes. Requests need the bearer token
of ``--token-file`` (default ``STATE_DIR/gateway.token``, created with a random token if missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.tasks.contract import EDGE_TOKEN_FILE
from fedkeeper.host.childproc import run_service
from fedkeeper.host.edge.firmware import DEFAULT_FIRMWARE, FIRMWARES, ensure_built
from fedkeeper.host.edge.fleet import RAM_FLOOR_MB, FleetConfig
from fedkeeper.host.edge.gateway import (
    DATASET_CACHE_BYTES,
    MAX_REQUEST_BYTES,
    MB,
    PARTITION_CACHE_BYTES,
    GatewayOptions,
    serve,
)
from fedkeeper.host.edge.token import load_or_create


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedkeeper.host.edge", description=__doc__.splitlines()[0])
    p.add_argument("--instances", type=int, default=4, help="edge guests to run (default 4)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    p.add_argument(
        "--state-dir", type=Path, default=Path(".fedkeeper/edge"), help="pipes, logs, gateway.json"
    )
    p.add_argument(
        "--firmware",
        default=DEFAULT_FIRMWARE,
        choices=sorted(FIRMWARES),
        help=f"what the guests run (default {DEFAULT_FIRMWARE})",
    )
    p.add_argument(
        "--kernel", type=Path, default=None, help="the firmware's image (default: build it in emulated_edge)"
    )
    p.add_argument("--qemu", default="qemu-system-i386", help="QEMU binary")
    p.add_argument("--memory-mb", type=int, default=None, help="guest RAM in MB (default: the firmware's)")
    p.add_argument("--cpu", default=None, help="QEMU CPU model (default: the firmware's board)")
    p.add_argument("--accel", default="tcg", help="QEMU accelerators, ':'-separated (default tcg)")
    p.add_argument("--boot-timeout-s", type=float, default=30.0, help="wait for a guest's HELLO (default 30)")
    p.add_argument("--job-timeout-s", type=float, default=120.0, help="default train job timeout (120)")
    p.add_argument("--health-interval-s", type=float, default=15.0, help="ping idle guests every (15)")
    p.add_argument(
        "--max-request-mb", type=float, default=MAX_REQUEST_BYTES / MB, help="largest job body (default 8)"
    )
    p.add_argument(
        "--token-file", type=Path, default=None, help="bearer token file (default STATE_DIR/gateway.token)"
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a data set jobs may name, with its .npz file or URL (repeatable)",
    )
    p.add_argument(
        "--dataset-cache-mb", type=float, default=DATASET_CACHE_BYTES / MB, help="loaded data sets (512)"
    )
    p.add_argument(
        "--partition-cache-mb", type=float, default=PARTITION_CACHE_BYTES / MB, help="partition images (256)"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def options_from_args(argv: list[str] | None = None) -> GatewayOptions:
    args = parser().parse_args(argv)
    if args.instances < 1:
        raise ValueError(f"--instances must be at least 1 (got {args.instances})")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be within 0..65535 (got {args.port})")
    if args.memory_mb is not None and args.memory_mb < RAM_FLOOR_MB:
        raise ValueError(f"--memory-mb must be at least {RAM_FLOOR_MB} (got {args.memory_mb})")
    firmware = FIRMWARES[args.firmware]
    if args.kernel is None:
        args.kernel = ensure_built(firmware)
    state_dir = args.state_dir.resolve()
    datasets = {}
    for item in args.dataset:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--dataset must be NAME=PATH (got {item!r})")
        datasets[name] = path
    for flag in ("dataset_cache_mb", "partition_cache_mb"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive (got {getattr(args, flag)})")
    token = load_or_create(args.token_file or state_dir / EDGE_TOKEN_FILE)
    fleet = FleetConfig(
        kernel=args.kernel.resolve(),
        run_dir=state_dir / "run",
        firmware=firmware,
        qemu=args.qemu,
        memory_mb=args.memory_mb,
        cpu=args.cpu,
        accel=args.accel,
        boot_timeout_s=args.boot_timeout_s,
        health_interval_s=args.health_interval_s,
    )
    return GatewayOptions(
        args.host,
        args.port,
        state_dir,
        args.instances,
        fleet,
        token,
        job_timeout_s=args.job_timeout_s,
        max_request_bytes=int(args.max_request_mb * MB),
        datasets=datasets,
        dataset_cache_bytes=int(args.dataset_cache_mb * MB),
        partition_cache_bytes=int(args.partition_cache_mb * MB),
    )


def main(argv: list[str] | None = None) -> int:
    try:
        options = options_from_args(argv)
    except (ValueError, FedkeeperError) as exc:
        print(f"edge gateway: {exc}", file=sys.stderr)
        return 2
    log_level = parser().parse_args(argv).log_level
    return run_service("edge gateway", serve(options), options.host, options.port, log_level)


if __name__ == "__main__":
    sys.exit(main())
