"""A remote host's client runtime: one request frame on stdin, one reply frame on stdout.

``python -m fedkeeper.function.tasks.stdio`` is the one fixed command the invoker (and ``fedkeeper
hosts``) runs over SSH; its requests (:mod:`fedkeeper.function.tasks.frames`) are

* ``{"op": "run", "function": NAME, "params": {...}, "activation": ID}`` -> the function's JSON
  result (a catalog function, through the same :func:`~fedkeeper.function.tasks.entry.run` as
  every platform's entry point: ``fl_client`` gets a ClientJob and answers a ClientReply);
* ``{"op": "inventory"}`` -> the interpreter, machine and installed requirement versions, which
  ``fedkeeper hosts deploy`` records as the host's dependency state.

Anything the function prints goes to stderr, so stdout carries the reply frame alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata
from typing import Any

from fedkeeper.function.tasks import frames

# Past the largest job any platform takes (the catalog's limit for hosts is checked by the invoker).
MAX_REQUEST_BYTES = 256 * 1024 * 1024
# The distributions a client needs to train (the zip's requirements.txt names these and the invoker's).
REQUIRED = ("numpy", "pymongo", "requests", "tensorflow-cpu", "scikit-learn")


def inventory() -> dict[str, Any]:
    packages: dict[str, str | None] = {}
    for name in REQUIRED:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "prefix": sys.prefix,
        "packages": packages,
    }


def serve(request: dict[str, Any]) -> dict[str, Any]:
    from fedkeeper.function.catalog import FUNCTIONS
    from fedkeeper.function.tasks.entry import run

    op = request.get("op")
    if op == "inventory":
        return inventory()
    if op == "run":
        function = request.get("function")
        params = request.get("params")
        if function not in {f.name for f in FUNCTIONS} or not isinstance(params, dict):
            return {"error": f"BadRequest: no function {function!r} or params not an object"}
        activation = request.get("activation")
        return run(str(function), params, invocation_id=str(activation) if activation else None)
    return {"error": f"BadRequest: unknown op {op!r}"}


def main() -> int:
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # a library's print() must not corrupt the reply frame
    try:
        request = frames.read(sys.stdin.buffer, MAX_REQUEST_BYTES)
    except frames.FrameError as exc:
        reply: dict[str, Any] = {"error": f"BadRequest: {exc}"}
    else:
        reply = serve(request)
    with contextlib.closing(os.fdopen(reply_fd, "wb")) as out:
        out.write(frames.encode(reply))
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
