"""The action runtime proxy that runs inside each worker process (OpenWhisk's runtime protocol).

Run as a script, never imported by the fabric: ``python /abs/path/runtime.py --port 0``. It
imports nothing from ``fedkeeper`` and drops its own folder from ``sys.path``, so a zip action
imports the ``fedkeeper`` copy bundled in its archive, exactly as in a real OpenWhisk container.

- ``POST /init`` ``{"value": {"name", "main", "code", "binary", "env"}}``: unpacks a base64 zip
  (``__main__.py`` is the module) or plain code, imports it and finds ``main``; only once.
- ``POST /run`` ``{"value": {...}, "activation_id", "deadline", ...}``: exports every context
  field as ``__OW_<FIELD>``, calls ``main(value)`` and answers 200 with its dictionary. An
  exception is reported as ``{"error": "..."}`` (an application error, as OpenWhisk's python
  runtime does); a non-dictionary result is a 502 (an action developer error).
- after each run it prints ``XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX`` on stdout and stderr.

The action runs on the main thread (modules that install signal handlers keep working); the
HTTP server runs in a daemon thread. The first stdout line is ``runtime listening on PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import ctypes
import hmac
import importlib.util
import io
import json
import os
import queue
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from typing import Any

from aiohttp import web

SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"
_GiB = 1024**3
# The fabric's secret for this worker: any local process can reach 127.0.0.1, but only the fabric
# may /init (load code) and /run (hand over parameters). Unset when the runtime runs on its own.
TOKEN_ENV = "__FABRIC_RUNTIME_TOKEN"
TOKEN_HEADER = "X-Fabric-Token"


class ActionHost:
    """Holds the initialized action and runs activations on the job threads."""

    def __init__(self) -> None:
        self.main: Callable[[dict[str, Any]], Any] | None = None
        self.initialized = False
        self.jobs: queue.Queue[
            tuple[Callable[[], tuple[int, bytes]], asyncio.AbstractEventLoop, asyncio.Future]
        ] = queue.Queue()
        self._env_lock = threading.Lock()

    # ------------------------------------------------------------------ job threads
    def serve_jobs(self) -> None:
        """Run jobs forever on the calling thread."""
        while True:
            job, loop, future = self.jobs.get()
            try:
                outcome = job()
            except BaseException as exc:  # only SystemExit/KeyboardInterrupt get here: the action quit
                print(f"action exited: {exc!r}", file=sys.stderr, flush=True)
                os._exit(1)
            loop.call_soon_threadsafe(_resolve, future, outcome)

    async def submit(self, job: Callable[[], tuple[int, bytes]]) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self.jobs.put((job, loop, future))
        return await future

    # ------------------------------------------------------------------ protocol
    def init(self, value: dict[str, Any]) -> tuple[int, bytes]:
        if self.initialized:
            return _error(403, "Cannot initialize the action more than once.")
        env = value.get("env") or {}
        if isinstance(env, dict):
            os.environ.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in env.items()})
        code = value.get("code")
        if not isinstance(code, str) or not code:
            return _error(502, "Missing main/no code to execute.")
        folder = tempfile.mkdtemp(prefix="action-")
        entry = os.path.join(folder, "__main__.py")
        if value.get("binary"):
            try:
                archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(code)))
                archive.extractall(folder)
            except (binascii.Error, ValueError, zipfile.BadZipFile) as exc:
                return _error(502, f"Unable to unzip the action archive: {exc}")
            if not os.path.isfile(entry):
                return _error(502, "Zip file does not include __main__.py")
        else:
            with open(entry, "w", encoding="utf-8") as handle:
                handle.write(code)
        sys.path.insert(0, folder)
        os.chdir(folder)
        activate = os.path.join(folder, "virtualenv", "bin", "activate_this.py")
        if os.path.isfile(activate):  # OpenWhisk's python runtime honours a bundled virtualenv
            with open(activate, encoding="utf-8") as handle:
                exec(compile(handle.read(), activate, "exec"), {"__file__": activate})
        main_name = value.get("main") or "main"
        try:
            spec = importlib.util.spec_from_file_location("main__", entry)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules["main__"] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            traceback.print_exc()
            _end_of_activation()
            return _error(502, f"Initialization has failed due to: {type(exc).__name__}: {exc}")
        main = getattr(module, main_name, None)
        if not callable(main):
            return _error(502, f"Action entrypoint '{main_name}' is not a function.")
        self.main = main
        self.initialized = True
        return 200, b'{"ok":true}'

    def run(self, value: Any, context: dict[str, str]) -> tuple[int, bytes]:
        if self.main is None:
            return _error(403, "Cannot run the action: it has not been initialized.")
        with self._env_lock:
            os.environ.update(context)
        try:
            result = self.main(value if isinstance(value, dict) else {})
        except Exception as exc:
            traceback.print_exc()
            result = {"error": str(exc) or type(exc).__name__}
        try:
            if not isinstance(result, dict):
                return _error(502, "The action did not return a dictionary.")
            try:
                body = json.dumps(result, ensure_ascii=False).encode("utf-8")
            except (TypeError, ValueError) as exc:
                return _error(502, f"The action did not produce a valid JSON response: {exc}")
            return 200, body
        finally:
            _end_of_activation()


def _resolve(future: asyncio.Future, outcome: tuple[int, bytes]) -> None:
    if not future.done():
        future.set_result(outcome)


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"error": message}).encode("utf-8")


def _end_of_activation() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            stream.write(SENTINEL + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass


def _context_env(body: dict[str, Any]) -> dict[str, str]:
    """Every context field but ``value`` becomes ``__OW_<FIELD>`` (as in OpenWhisk's runtimes)."""
    env: dict[str, str] = {}
    for key, value in body.items():
        if key == "value" or value is None:
            continue
        env[f"__OW_{key.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def build_app(host: ActionHost, token: str | None = None) -> web.Application:
    @web.middleware
    async def only_the_fabric(request: web.Request, handler: Any) -> web.StreamResponse:
        presented = request.headers.get(TOKEN_HEADER, "")
        if token is not None and not hmac.compare_digest(presented.encode(), token.encode()):
            status, payload = _error(403, "Only the fabric may call this runtime.")
            return web.Response(status=status, body=payload, content_type="application/json")
        return await handler(request)

    async def init(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            value = body["value"]
            assert isinstance(value, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            status, payload = _error(400, "The init request must be {'value': {...}}.")
        else:
            status, payload = await host.submit(lambda: host.init(value))
        return web.Response(status=status, body=payload, content_type="application/json")

    async def run(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            status, payload = _error(400, "The run request must be a JSON object.")
        else:
            value = body.get("value", {})
            context = _context_env(body)
            status, payload = await host.submit(lambda: host.run(value, context))
        return web.Response(status=status, body=payload, content_type="application/json")

    app = web.Application(client_max_size=_GiB, middlewares=[only_the_fabric])
    app.router.add_post("/init", init)
    app.router.add_post("/run", run)
    return app


def _serve(app: web.Application, bind: str, port: int) -> None:
    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((bind, port))
        sock.listen(128)
        sock.setblocking(False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        print(f"runtime listening on {sock.getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except BaseException as exc:  # without its server the worker is useless: let the pool see it die
        print(f"runtime: cannot serve on {bind}:{port}: {exc!r}", file=sys.stderr, flush=True)
        os._exit(3)


def _die_with_parent(parent: int) -> None:
    """Never outlive the fabric: a kernel signal when possible, polling as a fallback."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(0.5)

    if parent > 1:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenWhisk-compatible python action runtime")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    # An editable install of fedkeeper would fill in modules a zip lacks; a real platform has only the zip.
    sys.meta_path[:] = [
        f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")
    ]
    _die_with_parent(args.parent_pid)

    token = os.environ.pop(TOKEN_ENV, None)  # before any action code runs
    host = ActionHost()
    threading.Thread(
        target=_serve, args=(build_app(host, token), args.host, args.port), name="http", daemon=True
    ).start()
    for index in range(max(0, args.concurrency - 1)):
        threading.Thread(target=host.serve_jobs, name=f"job-{index + 1}", daemon=True).start()
    host.serve_jobs()


if __name__ == "__main__":
    main()
