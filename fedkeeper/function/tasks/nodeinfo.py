"""``nodeinfo``: a tiny function that reports where it runs (deploy.py's cluster check)."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

from fedkeeper.function.tasks.entry import activation_id

_STARTED = time.time()


def handle(params: dict[str, Any]) -> dict[str, Any]:
    """Describe the host; ``{"fail": "why"}`` makes it fail on purpose (provider contract tests)."""
    if params.get("fail"):
        return {"error": f"failed on request: {params['fail']}"}
    try:
        import psutil

        memory_mb = int(psutil.virtual_memory().total / 2**20)
    except ImportError:
        memory_mb = -1
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "memory_mb": memory_mb,
        "process_uptime_s": round(time.time() - _STARTED, 3),
        "activation_id": activation_id.get(),
        "echo": params.get("echo"),
    }
