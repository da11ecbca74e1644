"""``python -m fedkeeper.host.fabric --host 127.0.0.1 --port 3233 --state-dir DIR [--faults FILE]``.

Keys other than the guest key come from ``--auth-file`` (never the command line, which any local
user can read). The admin key for ``/admin/*`` is made at start and written to
``<state-dir>/admin.key`` (mode 0600). Every limit of :class:`FabricLimits` has a flag (``--max-workers 2``, ``--blocking-wait-s 5``).
Prints exactly one line on stdout, ``fabric listening on http://HOST:PORT``, once it serves.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from fedkeeper.host.childproc import run_service
from fedkeeper.host.fabric.auth import KeyRing, read_auth_file
from fedkeeper.host.fabric.faults import FaultPlan, FaultPlanError
from fedkeeper.host.fabric.limits import FabricLimits
from fedkeeper.host.fabric.server import FabricOptions, serve


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fedkeeper.host.fabric", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3233, help="port; 0 picks a free one (default 3233)")
    p.add_argument(
        "--state-dir", type=Path, default=None, help="where actions persist (.fedkeeper/fabric/PORT)"
    )
    p.add_argument("--faults", type=Path, default=None, help="fault plan JSON file (see docs/fabric.md)")
    p.add_argument(
        "--auth-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="more keys, one 'uuid:key[=namespace]' a line; the file must be private (chmod 600)",
    )
    p.add_argument("--no-guest", action="store_true", help="refuse the standalone OpenWhisk guest key")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    group = p.add_argument_group("limits (OpenWhisk defaults; see FabricLimits)")
    defaults = FabricLimits()
    for f in fields(FabricLimits):
        default = getattr(defaults, f.name)
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=None,
            metavar=type(default).__name__.upper(),
            help=f"default {default}",
        )
    return p


def options_from_args(args: argparse.Namespace) -> FabricOptions:
    """Validated options; ValueError or FaultPlanError name the bad flag or file."""
    changes = {
        f.name: getattr(args, f.name) for f in fields(FabricLimits) if getattr(args, f.name) is not None
    }
    limits = FabricLimits().replace(**changes)
    keys = KeyRing.build(read_auth_file(args.auth_file) if args.auth_file else [], guest=not args.no_guest)
    faults = FaultPlan.load(args.faults) if args.faults else None
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be within 0..65535 (got {args.port})")
    return FabricOptions(args.host, args.port, args.state_dir, limits, keys, faults)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except (ValueError, FaultPlanError) as exc:
        print(f"fabric: {exc}", file=sys.stderr)
        return 2
    return run_service("fabric", serve(options), options.host, options.port, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
