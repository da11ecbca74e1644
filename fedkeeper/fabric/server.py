"""Serve a fabric: bind, load stored actions, print the ready line, stop cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fedkeeper.childproc import bind, http_url, serving
from fedkeeper.fabric.auth import KeyRing
from fedkeeper.fabric.controller import Controller
from fedkeeper.fabric.faults import FaultPlan
from fedkeeper.fabric.limits import FabricLimits

READY_LINE = "fabric listening on {url}"
DEFAULT_STATE_ROOT = Path(".fedkeeper") / "fabric"
log = logging.getLogger("fedkeeper.fabric")


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
    controller = Controller(options.limits, state_dir, options.keys, options.faults)
    controller.api_host = url
    async with serving(controller.build_app(), sock, stop) as stopped:
        log.info("state in %s; limits %s", state_dir, options.limits)
        print(READY_LINE.format(url=url), flush=True)
        try:
            await stopped.wait()
        finally:
            log.info("stopping")
