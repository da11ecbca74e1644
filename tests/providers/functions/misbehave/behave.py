"""Misbehaviour on request, for provider tests: sleep, crash, oversize or non-JSON replies."""

from __future__ import annotations

import os
import time
from typing import Any


def act(params: dict[str, Any]) -> dict[str, Any]:
    if "sleep" in params:
        time.sleep(float(params["sleep"]))
    if "crash" in params:
        os._exit(int(params["crash"]))  # no reply at all, as a segfault or an OOM kill would do
    if "fail" in params:
        return {"error": str(params["fail"])}
    if "reply_bytes" in params:
        return {"blob": "x" * int(params["reply_bytes"])}
    if "env" in params:
        return {"value": os.environ.get(str(params["env"]))}
    return {"ok": True, "pid": os.getpid()}
