"""AWS Lambda for tests: ``moto_server`` for the control plane, ``awslambdaric`` for execution.

moto stores functions but cannot run them without Docker, so :class:`LambdaEmulator` sits in
front of it as the one ``endpoint_url`` boto3 talks to:

* every request except Invoke is proxied to moto unchanged (create, update, delete, list, IAM);
  on the way it keeps the code zips of CreateFunction / UpdateFunctionCode by their SHA-256, as
  moto cannot hand them back;
* ``POST /2015-03-31/functions/{name}/invocations`` reads the function's configuration from moto
  (handler, environment, timeout, code hash), and runs the event in ``python -m awslambdaric
  <Handler>`` processes (cwd = the unpacked zip) that poll this emulator's Runtime API
  (``/2018-06-01/runtime/invocation/next``, ``.../{id}/response``, ``.../{id}/error``,
  ``/runtime/init/error``), one port per process, so a timed-out invocation kills exactly the
  process that ran it. It answers like the Invoke API: 200 with the payload, ``X-Amz-Function-
  Error: Unhandled`` on a failure, ``x-amzn-RequestId``; 202 for ``Event`` invocations.

Processes stay warm per function (up to ``max_workers`` at once, as Lambda scales out) until the
function's code or configuration changes, and all of them stop in :meth:`LambdaEmulator.stop`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from .procs import PYTHON, LoopThread, kill_group, sandbox_env, serve, spawn, wait_for_line

MB = 1024 * 1024
MAX_PAYLOAD = 6 * MB
MAX_EVENT_PAYLOAD = 1 * MB
_TAIL_BYTES = 4096
_RUNNING_ON = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
_REGION = re.compile(r"Credential=[^/]+/\d+/([a-z0-9-]+)/")
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class MotoServer:
    """``moto_server -H 127.0.0.1 -p 0`` in its own process group."""

    def __init__(self) -> None:
        self.url = ""
        self.output: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._loop: LoopThread | None = None
        self._pump: asyncio.Task[None] | None = None

    def start(self) -> MotoServer:
        self._loop = LoopThread("moto")
        self._loop.run(self._start())
        return self

    async def _start(self) -> None:
        moto = str(Path(PYTHON).with_name("moto_server"))
        self._process = await spawn(
            [moto, "-H", "127.0.0.1", "-p", "0"], Path.cwd(), sandbox_env(Path.cwd(), {})
        )
        match = await wait_for_line(self._process, _RUNNING_ON, 30.0, self.output)
        self.url = f"http://127.0.0.1:{match.group(1)}"
        from .procs import pump

        self._pump = asyncio.get_running_loop().create_task(pump(self._process, self.output))

    def stop(self) -> None:
        if self._loop is None:
            return

        async def stop() -> None:
            if self._process is not None:
                await kill_group(self._process)
            if self._pump is not None:
                self._pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._pump

        self._loop.run(stop())
        self._loop.close()
        self._loop = None


@dataclass
class Invocation:
    request_id: str
    payload: bytes
    arn: str
    timeout_s: float
    done: asyncio.Future[tuple[bool, bytes]]
    logs: list[str] = field(default_factory=list)
    started: float = 0.0

    def finish(self, ok: bool, body: bytes) -> None:
        if not self.done.done():
            self.done.set_result((ok, body))

    def fail(self, message: str, error_type: str) -> None:
        self.finish(False, json.dumps({"errorMessage": message, "errorType": error_type}).encode())


@dataclass
class Worker:
    """One awslambdaric process and the Runtime API endpoint only it polls."""

    pool: FunctionPool
    runner: web.AppRunner | None = None
    port: int = 0
    process: asyncio.subprocess.Process | None = None
    current: Invocation | None = None
    init_error: bytes | None = None
    timer: asyncio.TimerHandle | None = None
    output: list[str] = field(default_factory=list)

    async def start(self) -> None:
        app = web.Application(client_max_size=2 * MAX_PAYLOAD)
        base = "/2018-06-01/runtime"
        app.router.add_get(base + "/invocation/next", self._next)
        app.router.add_post(base + "/invocation/{id}/response", self._response)
        app.router.add_post(base + "/invocation/{id}/error", self._error)
        app.router.add_post(base + "/init/error", self._init_error)
        self.runner, url = await serve(app)
        self.port = int(url.rsplit(":", 1)[1])
        pool = self.pool
        env = sandbox_env(
            pool.root,
            {
                **pool.environment,
                "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{self.port}",
                "AWS_LAMBDA_FUNCTION_NAME": pool.name,
                "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(pool.config.get("MemorySize", 128)),
                "AWS_REGION": pool.region,
                "AWS_DEFAULT_REGION": pool.region,
                "LAMBDA_TASK_ROOT": str(pool.root),
                "_HANDLER": pool.handler,
            },
        )
        self.process = await spawn([PYTHON, "-m", "awslambdaric", pool.handler], pool.root, env)
        pool.emulator.processes.add(self.process)
        pool.emulator.background(self._watch())

    async def _watch(self) -> None:
        """Route the process's output to the running invocation; report its death."""
        assert self.process is not None and self.process.stdout is not None
        while raw := await self.process.stdout.readline():
            line = raw.decode(errors="replace").rstrip()
            self.output.append(line)
            if self.current is not None:
                self.current.logs.append(line)
        code = await self.process.wait()
        self.pool.worker_exited(self, code)

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.process is not None:
            await kill_group(self.process, grace_s)
        runner, self.runner = self.runner, None  # stop() may run twice at once (exit watcher, pool)
        if runner is not None:
            await runner.cleanup()

    # -------------------------------------------------------------- Runtime API
    async def _next(self, request: web.Request) -> web.StreamResponse:
        invocation = await self.pool.queue.get()
        self.current = invocation
        invocation.started = time.time()
        deadline_ms = int((invocation.started + invocation.timeout_s) * 1000)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(invocation.timeout_s, self._timed_out, invocation)
        return web.Response(
            body=invocation.payload,
            content_type="application/json",
            headers={
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": invocation.arn,
                "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
            },
        )

    def _take(self, request: web.Request) -> Invocation | None:
        invocation = self.current
        if invocation is None or invocation.request_id != request.match_info["id"]:
            return None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.current = None
        return invocation

    async def _response(self, request: web.Request) -> web.Response:
        body = await request.read()
        invocation = self._take(request)
        if invocation is None:
            return web.json_response({"errorMessage": "unknown request id"}, status=400)
        if len(body) > MAX_PAYLOAD:
            invocation.fail(
                f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload size "
                f"({MAX_PAYLOAD} bytes).",
                "Function.ResponseSizeTooLarge",
            )
        else:
            invocation.finish(True, body)
        self.pool.after_invocation(self)
        return web.json_response({"status": "OK"}, status=202)

    async def _error(self, request: web.Request) -> web.Response:
        body = await request.read()
        invocation = self._take(request)
        if invocation is None:
            return web.json_response({"errorMessage": "unknown request id"}, status=400)
        invocation.finish(False, body)
        self.pool.after_invocation(self)
        return web.json_response({"status": "OK"}, status=202)

    async def _init_error(self, request: web.Request) -> web.Response:
        self.init_error = await request.read()
        return web.json_response({"status": "OK"}, status=202)

    def _timed_out(self, invocation: Invocation) -> None:
        if self.current is not invocation:
            return
        self.current = None
        invocation.fail(
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {invocation.request_id} "
            f"Task timed out after {invocation.timeout_s:.2f} seconds",
            "Sandbox.Timedout",
        )
        # Lambda freezes and discards the environment of a timed-out invocation.
        self.pool.emulator.background(self.stop(grace_s=0))


class FunctionPool:
    """The warm processes of one function version (its code hash and configuration)."""

    def __init__(self, emulator: LambdaEmulator, config: dict[str, Any], code: bytes, region: str) -> None:
        self.emulator = emulator
        self.config = config
        self.name: str = config["FunctionName"]
        self.arn: str = config["FunctionArn"]
        self.handler: str = config["Handler"]
        self.region = region
        self.environment: dict[str, str] = (config.get("Environment") or {}).get("Variables", {})
        self.timeout_s = float(config.get("Timeout", 3))
        self.root = emulator.tmp / f"{self.name}-{uuid.uuid4().hex[:8]}"
        with zipfile.ZipFile(io.BytesIO(code)) as archive:
            archive.extractall(self.root)
        self.queue: asyncio.Queue[Invocation] = asyncio.Queue()
        self.workers: list[Worker] = []
        self.starting = 0
        self.retired = False

    @property
    def version_key(self) -> str:
        keys = ("CodeSha256", "Handler", "Environment", "Timeout", "MemorySize", "Runtime")
        return json.dumps({k: self.config.get(k) for k in keys}, sort_keys=True)

    def idle_workers(self) -> int:
        return sum(1 for w in self.workers if w.current is None)

    async def submit(self, invocation: Invocation) -> None:
        await self.queue.put(invocation)
        waiting = self.queue.qsize()
        free = self.idle_workers() + self.starting
        if waiting > free and len(self.workers) + self.starting < self.emulator.max_workers:
            self.starting += 1
            worker = Worker(self)
            try:
                await worker.start()
            finally:
                self.starting -= 1
            self.workers.append(worker)

    def after_invocation(self, worker: Worker) -> None:
        if self.retired:
            self.emulator.background(worker.stop())

    def worker_exited(self, worker: Worker, code: int) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        self.emulator.background(worker.stop(grace_s=0))
        if worker.current is not None:
            invocation, worker.current = worker.current, None
            invocation.fail(
                f"RequestId: {invocation.request_id} Error: Runtime exited with error: exit status {code}",
                "Runtime.ExitError",
            )
        if worker.init_error is not None and not self.workers and not self.starting:
            # The environment cannot start: every waiting invocation gets the init error, as on Lambda.
            while not self.queue.empty():
                self.queue.get_nowait().finish(False, worker.init_error)
        elif not self.queue.empty() and not self.retired:
            self.emulator.background(self._replace())

    async def _replace(self) -> None:
        if len(self.workers) + self.starting < self.emulator.max_workers:
            self.starting += 1
            worker = Worker(self)
            try:
                await worker.start()
            finally:
                self.starting -= 1
            self.workers.append(worker)

    async def retire(self) -> None:
        self.retired = True
        await asyncio.gather(*(w.stop() for w in list(self.workers) if w.current is None))
        if not any(w.current for w in self.workers):
            shutil.rmtree(self.root, ignore_errors=True)

    async def stop(self) -> None:
        self.retired = True
        await asyncio.gather(*(w.stop(grace_s=0) for w in list(self.workers)), return_exceptions=True)
        self.workers.clear()
        shutil.rmtree(self.root, ignore_errors=True)


class LambdaEmulator:
    """The Lambda endpoint of the tests: moto behind, awslambdaric processes beside."""

    def __init__(self, moto_url: str, *, max_workers: int = 2) -> None:
        self.moto_url = moto_url.rstrip("/")
        self.max_workers = max_workers
        self.url = ""
        self.tmp = Path(tempfile.mkdtemp(prefix="lambda-emulator-"))
        self.zips: dict[str, bytes] = {}  # base64 SHA-256 (moto's CodeSha256) -> zip
        self.pools: dict[str, FunctionPool] = {}
        self.invocations = 0
        self.event_results: dict[str, tuple[bool, bytes]] = {}
        self._loop: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.processes: set[asyncio.subprocess.Process] = set()  # every runtime process ever started

    def start(self) -> LambdaEmulator:
        self._loop = LoopThread("lambda-emulator")
        self._runner, self.url = self._loop.run(self._start())
        return self

    async def _start(self) -> tuple[web.AppRunner, str]:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * MB)
        app.router.add_post("/2015-03-31/functions/{name}/invocations", self._invoke)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        return await serve(app)

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.run(self._stop(), timeout=120)
        self._loop.close()
        self._loop = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def _stop(self) -> None:
        # return_exceptions: one failing pool must not leave the others' processes running.
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(kill_group(p, grace_s=0) for p in self.processes), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def kill_workers(self, function_name: str) -> int:
        """SIGKILL the function's processes (a crash of its execution environments)."""
        assert self._loop is not None
        pool = self.pools.get(function_name)
        if pool is None:
            return 0
        processes = [w.process for w in pool.workers if w.process is not None]

        async def kill() -> None:
            await asyncio.gather(*(kill_group(p, grace_s=0) for p in processes))

        self._loop.run(kill())
        return len(processes)

    def worker_count(self, function_name: str) -> int:
        pool = self.pools.get(function_name)
        return len(pool.workers) if pool else 0

    # ------------------------------------------------------------------ control plane: moto
    def _keep_code(self, request: web.Request, body: bytes) -> None:
        path = request.path
        is_create = request.method == "POST" and path.rstrip("/") == "/2015-03-31/functions"
        is_update = (
            request.method == "PUT" and path.startswith("/2015-03-31/functions/") and path.endswith("/code")
        )
        if not (is_create or is_update):
            return
        try:
            document = json.loads(body)
        except ValueError:
            return
        encoded = (document.get("Code") or {}).get("ZipFile") if is_create else document.get("ZipFile")
        if encoded:
            code = base64.b64decode(encoded)
            self.zips[base64.b64encode(hashlib.sha256(code).digest()).decode()] = code

    async def _forward(self, request: web.Request, method: str, path_qs: str, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            method, self.moto_url + path_qs, data=body, headers=headers
        ) as upstream:
            payload = await upstream.read()
            answer = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=payload, headers=answer)

    async def _proxy(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._keep_code(request, body)
        return await self._forward(request, request.method, request.path_qs, body)

    # ------------------------------------------------------------------ Invoke
    async def _invoke(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        payload = await request.read()
        # The function's current configuration, from moto (404 answers pass through as they are).
        config_response = await self._forward(
            request, "GET", f"/2015-03-31/functions/{name}/configuration", b""
        )
        if config_response.status != 200:
            return config_response
        assert config_response.body is not None and isinstance(config_response.body, bytes)
        config = json.loads(config_response.body)
        request_id = str(uuid.uuid4())
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = MAX_EVENT_PAYLOAD if kind == "Event" else MAX_PAYLOAD
        if len(payload) > limit:
            return self._api_error(
                413,
                "RequestTooLargeException",
                f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
                request_id,
            )
        code = self.zips.get(config.get("CodeSha256", ""))
        if code is None:
            return self._api_error(
                500,
                "ServiceException",
                "the emulator never saw this function's code (created before it started?)",
                request_id,
            )
        match = _REGION.search(request.headers.get("Authorization", ""))
        pool = await self._pool(config, code, match.group(1) if match else "us-east-1")
        if kind == "DryRun":
            return web.Response(status=204, headers={"x-amzn-RequestId": request_id})
        loop = asyncio.get_running_loop()
        invocation = Invocation(
            request_id, payload or b"{}", config["FunctionArn"], pool.timeout_s, loop.create_future()
        )
        self.invocations += 1
        await pool.submit(invocation)
        if kind == "Event":
            self.background(self._keep_event_result(invocation))
            return web.Response(status=202, headers={"x-amzn-RequestId": request_id})
        ok, body = await invocation.done
        headers = {
            "x-amzn-RequestId": request_id,
            "X-Amz-Executed-Version": "$LATEST",
            "Content-Type": "application/json",
        }
        if not ok:
            headers["X-Amz-Function-Error"] = "Unhandled"
        if request.headers.get("X-Amz-Log-Type") == "Tail":
            headers["X-Amz-Log-Result"] = self._tail(invocation, ok)
        return web.Response(status=200, body=body, headers=headers)

    async def _keep_event_result(self, invocation: Invocation) -> None:
        self.event_results[invocation.request_id] = await invocation.done

    async def _pool(self, config: dict[str, Any], code: bytes, region: str) -> FunctionPool:
        fresh = FunctionPool(self, config, code, region)
        current = self.pools.get(fresh.name)
        if current is not None and current.version_key == fresh.version_key:
            shutil.rmtree(fresh.root, ignore_errors=True)
            return current
        if current is not None:
            self.background(current.retire())
        self.pools[fresh.name] = fresh
        return fresh

    @staticmethod
    def _tail(invocation: Invocation, ok: bool) -> str:
        duration_ms = (time.time() - invocation.started) * 1000 if invocation.started else 0.0
        lines = [
            f"START RequestId: {invocation.request_id} Version: $LATEST",
            *invocation.logs,
            f"END RequestId: {invocation.request_id}",
            f"REPORT RequestId: {invocation.request_id}\tDuration: {duration_ms:.2f} ms",
        ]
        data = ("\n".join(lines) + "\n").encode()[-_TAIL_BYTES:]
        return base64.b64encode(data).decode()

    @staticmethod
    def _api_error(status: int, error_type: str, message: str, request_id: str) -> web.Response:
        return web.json_response(
            {"Type": "User", "message": message},
            status=status,
            headers={"x-amzn-ErrorType": error_type, "x-amzn-RequestId": request_id},
        )


class LambdaBackend:
    """moto_server + :class:`LambdaEmulator` + the execution role, as one context manager.

    ``url`` is the ``endpoint_url`` for boto3 (and ``providers.aws.<cluster>.endpoint_url``).
    """

    ACCOUNT = "123456789012"  # moto's default account

    def __init__(
        self, region: str = "us-east-1", role_name: str = "fedkeeper-lambda", max_workers: int = 2
    ) -> None:
        self.region = region
        self.role_arn = f"arn:aws:iam::{self.ACCOUNT}:role/{role_name}"
        self._role_name = role_name
        self._max_workers = max_workers
        self.moto: MotoServer | None = None
        self.emulator: LambdaEmulator | None = None

    @property
    def url(self) -> str:
        assert self.emulator is not None, "start() first"
        return self.emulator.url

    def start(self) -> LambdaBackend:
        import boto3

        self.moto = MotoServer().start()
        try:
            self.emulator = LambdaEmulator(self.moto.url, max_workers=self._max_workers).start()
            iam = boto3.client(
                "iam",
                region_name=self.region,
                endpoint_url=self.emulator.url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            iam.create_role(
                RoleName=self._role_name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17"})
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        emulator, moto, self.emulator, self.moto = self.emulator, self.moto, None, None
        try:
            if emulator is not None:
                emulator.stop()
        finally:
            if moto is not None:
                moto.stop()

    def __enter__(self) -> LambdaBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
