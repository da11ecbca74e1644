"""Serve a fabric: bind, load stored actions, print the ready line, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from fedkeeper.host.childproc import bind, http_url, serving
from fedkeeper.host.fabric.auth import ADMIN_KEY_FILE, KeyRing, new_key, write_private
from fedkeeper.host.fabric.controller import Controller
from fedkeeper.host.fabric.faults import FaultPlan
from fedkeeper.host.fabric.limits import FabricLimits

READY_LINE = "fabric listening on {url}"
DEFAULT_STATE_ROOT = Path(".fedkeeper") / "fabric"
log = logging.getLogger("fedkeeper.host.fabric")


@dataclass
class FabricOptions:
    """How to run one fabric (the command line's flags)."""

    host: str = "127.0.0.1"
    port: int = 3233
    state_dir: Path | None = None  # default: .fedkeeper/fabric/<port>
    limits: FabricLimits = field(default_factory=FabricLimits)
    keys: KeyRing = field(default_factory=KeyRing.build)
    faults: FaultPlan | None = None


async def serve(options: FabricOptions, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    sock = bind(options.host, options.port, backlog=1024)
    url = http_url(options.host, sock)
    state_dir = options.state_dir or DEFAULT_STATE_ROOT / str(sock.getsockname()[1])
    # Only the fabric's user may read its state: actions' code and bound parameters (credentials).
    os.umask(0o077)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    admin = options.keys.admin or new_key()
    write_private(state_dir / ADMIN_KEY_FILE, admin + "\n")
    keys = dataclasses.replace(options.keys, admin=admin)
    controller = Controller(options.limits, state_dir, keys, options.faults)
    controller.api_host = url
    async with serving(controller.build_app(), sock, stop) as stopped:
        log.info("state in %s; limits %s", state_dir, options.limits)
        print(READY_LINE.format(url=url), flush=True)
        try:
            await stopped.wait()
        finally:
            log.info("stopping")
