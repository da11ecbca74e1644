"""A test-only Google Cloud Functions v2 control plane whose functions really run.

It answers the REST paths that ``google-cloud-functions``' ``FunctionServiceClient`` calls
(``transport="rest"``), so the provider is tested through the real client library:

* ``functions:generateUploadUrl`` hands out an upload URL on this server that takes the PUT of
  the source zip (``Content-Type: application/zip``, as a signed GCS URL demands);
* create / get / patch / delete / list functions, answering with long-running operations that
  finish in the background (the client polls ``operations/{id}``);
* a "build" unpacks the zip and starts ``functions-framework --target <entryPoint> --source
  main.py`` in it, with the function's environment variables and ``PYTHONPATH`` = that folder,
  so the bundled ``fedkeeper`` copy is what runs;
* each function's URL is a front end on this server (as Cloud Run is in front of a real
  function): it checks the caller's ID token when auth is on, sets ``Function-Execution-Id``,
  enforces ``timeoutSeconds`` (504), and scales out to ``maxInstanceCount`` instances of
  ``maxInstanceRequestConcurrency`` requests each (capped by ``max_instances_cap``);
* ``POST /token`` is an OAuth token endpoint for service-account JWT grants (point a test key's
  ``token_uri`` at it): it checks the grant's signature with the keys given to :meth:`trust`.

Everything it starts stops in :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import re
import secrets
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt

from .procs import PYTHON, LoopThread, kill_group, pump, sandbox_env, serve, spawn, wait_for_line

MB = 1024 * 1024
_ID = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
_MEMORY = re.compile(r"^(\d+)(Mi|M|Gi|G)$")
_FUNCTION_TYPE = "type.googleapis.com/google.cloud.functions.v2.Function"
_METADATA_TYPE = "type.googleapis.com/google.cloud.functions.v2.OperationMetadata"
_EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS"}


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Instance:
    process: asyncio.subprocess.Process
    port: int
    output: list[str]
    busy: int = 0


@dataclass
class Deployed:
    """One function: its resource, its unpacked source and its running instances."""

    resource: dict[str, Any]
    root: Path | None = None
    instances: list[Instance] = field(default_factory=list)
    starting: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    requests: int = 0

    @property
    def service(self) -> dict[str, Any]:
        service: dict[str, Any] = self.resource.setdefault("serviceConfig", {})
        return service


class GcfFake:
    """Start with :meth:`start`; ``url`` is the ``api_endpoint``; :meth:`stop` ends it all."""

    def __init__(self, *, require_auth: bool = False, max_instances_cap: int = 2) -> None:
        self.require_auth = require_auth
        self.max_instances_cap = max_instances_cap
        self.hold_operations = False  # tests of operation timeouts keep operations pending
        self.unavailable = False  # an outage: every request (API and functions) is answered 503
        self.url = ""
        self.functions: dict[str, Deployed] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.uploads: dict[str, bytes] = {}
        self.seen_auth: list[str] = []  # Authorization headers the front end accepted
        self.execution_ids: list[str] = []  # Function-Execution-Id of every request, in order
        self._trusted: dict[str, str] = {}  # client_email -> public key PEM
        self._access_tokens: set[str] = set()
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = self._signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._signer = crypt.RSASigner.from_string(pem.decode(), key_id="fake-gcf")
        self._public_pem = (
            self._signing_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self._tmp = Path(tempfile.mkdtemp(prefix="gcf-fake-"))
        self._loop: LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._processes: set[asyncio.subprocess.Process] = set()  # every instance ever started

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> GcfFake:
        self._loop = LoopThread("gcf-fake")
        self._runner, self.url = self._loop.run(self._start())
        return self

    async def _start(self) -> tuple[web.AppRunner, str]:
        # No keep-alive to instances: a connection to a crashed worker must not be reused.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        app = web.Application(client_max_size=64 * MB, middlewares=[self._outage])
        base = "/v2/projects/{project}/locations/{location}"
        app.router.add_post(base + "/functions:generateUploadUrl", self._generate_upload_url)
        app.router.add_post(base + "/functions", self._create)
        app.router.add_get(base + "/functions", self._list)
        app.router.add_get(base + "/functions/{fid}", self._get)
        app.router.add_patch(base + "/functions/{fid}", self._patch)
        app.router.add_delete(base + "/functions/{fid}", self._delete)
        app.router.add_get(base + "/operations/{op}", self._get_operation)
        app.router.add_put("/upload/{token}", self._upload)
        app.router.add_post("/token", self._token)
        app.router.add_route("*", "/fn/{project}/{location}/{fid}", self._front)
        app.router.add_route("*", "/fn/{project}/{location}/{fid}/{tail:.*}", self._front)
        return await serve(app)

    @web.middleware
    async def _outage(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.unavailable:
            return web.Response(status=503, text="Service Unavailable")
        response: web.StreamResponse = await handler(request)
        return response

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.run(self._stop(), timeout=120)
        self._loop.close()
        self._loop = None
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(self._stop_instances(d) for d in self.functions.values()), return_exceptions=True
        )
        # Instances caught mid-start or mid-retirement by the cancellations above.
        await asyncio.gather(*(kill_group(p, grace_s=0) for p in self._processes), return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> GcfFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test controls
    def trust(self, key_info: dict[str, Any]) -> None:
        """Accept JWT grants and self-signed JWTs signed by this service-account key."""
        private = serialization.load_pem_private_key(key_info["private_key"].encode(), password=None)
        self._trusted[key_info["client_email"]] = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def kill_instances(self, function_id: str) -> int:
        """SIGKILL every instance of a function (a crash; the next request starts a new one)."""
        assert self._loop is not None

        async def kill() -> int:
            killed = 0
            for deployed in self.functions.values():
                if deployed.resource["name"].endswith(f"/functions/{function_id}"):
                    for instance in list(deployed.instances):
                        await kill_group(instance.process, grace_s=0)
                        killed += 1
            return killed

        return self._loop.run(kill())

    def instance_count(self, function_id: str) -> int:
        return sum(
            len(d.instances)
            for d in self.functions.values()
            if d.resource["name"].endswith(f"/{function_id}")
        )

    def output(self, function_id: str) -> list[str]:
        """What the function's instances printed (for debugging failed tests)."""
        lines: list[str] = []
        for deployed in self.functions.values():
            if deployed.resource["name"].endswith(f"/{function_id}"):
                for instance in deployed.instances:
                    lines.extend(instance.output)
        return lines

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _error(code: int, message: str) -> web.Response:
        body = {"error": {"code": code, "message": message, "status": _STATUS.get(code, "UNKNOWN")}}
        return web.json_response(body, status=code)

    def _check_auth(self, request: web.Request) -> None:
        if not self.require_auth:
            return
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if token in self._access_tokens:
            return
        try:  # a self-signed JWT (google-auth's default for service accounts with the GAPIC clients)
            claims = jwt.decode(token, verify=False)
            jwt.decode(token, certs=self._trusted[claims["iss"]])
            return
        except (ValueError, KeyError):
            pass
        raise ApiError(401, "Request had invalid authentication credentials.")

    def _function_name(self, request: web.Request, fid: str | None = None) -> str:
        info = request.match_info
        return f"projects/{info['project']}/locations/{info['location']}/functions/{fid or info['fid']}"

    def _operation(self, request: web.Request, target: str, verb: str) -> dict[str, Any]:
        info = request.match_info
        name = (
            f"projects/{info['project']}/locations/{info['location']}/operations/operation-{uuid.uuid4().hex}"
        )
        operation = {
            "name": name,
            "metadata": {"@type": _METADATA_TYPE, "target": target, "verb": verb, "createTime": _now()},
            "done": False,
        }
        self.operations[name] = operation
        return operation

    def _finish(self, operation: dict[str, Any], response: dict[str, Any] | None, error: str | None) -> None:
        if self.hold_operations:
            return
        if error is not None:
            operation["error"] = {"code": 3, "message": error}
        else:
            operation["response"] = response
        operation["metadata"]["endTime"] = _now()
        operation["done"] = True

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ control plane
    async def _generate_upload_url(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except ApiError as exc:
            return self._error(exc.code, exc.message)
        token = secrets.token_hex(16)
        # The "signature" in the query stands in for GCS's; the provider must keep it to itself.
        return web.json_response(
            {
                "uploadUrl": f"{self.url}/upload/{token}?X-Goog-Signature={secrets.token_hex(32)}",
                "storageSource": {"bucket": "gcf-v2-uploads-fake", "object": f"{token}.zip"},
            }
        )

    async def _upload(self, request: web.Request) -> web.Response:
        if request.content_type != "application/zip":
            return web.Response(
                status=403, text="SignatureDoesNotMatch: content type is part of the signature"
            )
        token = request.match_info["token"]
        self.uploads[token] = await request.read()
        return web.Response(status=200)

    def _validate(self, resource: dict[str, Any]) -> None:
        build = resource.get("buildConfig") or {}
        service = resource.get("serviceConfig") or {}
        if not str(build.get("runtime", "")).startswith("python"):
            raise ApiError(400, f"runtime {build.get('runtime')!r} is not supported here (python only)")
        if not build.get("entryPoint"):
            raise ApiError(400, "buildConfig.entryPoint is required")
        source_object = ((build.get("source") or {}).get("storageSource") or {}).get("object", "")
        if source_object.removesuffix(".zip") not in self.uploads:
            raise ApiError(400, f"buildConfig.source.storageSource.object {source_object!r} was not uploaded")
        memory = str(service.get("availableMemory", "256M"))
        if not _MEMORY.match(memory):
            raise ApiError(400, f"serviceConfig.availableMemory {memory!r} is not a memory size")
        if not 1 <= int(service.get("timeoutSeconds", 60)) <= 3600:
            raise ApiError(
                400, f"serviceConfig.timeoutSeconds {service.get('timeoutSeconds')} is out of range"
            )

    async def _create(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
            fid = request.query.get("functionId", "")
            if not _ID.match(fid):
                raise ApiError(400, f"function id {fid!r} is invalid")
            name = self._function_name(request, fid)
            if name in self.functions:
                raise ApiError(
                    409, f"Function {fid} in region {request.match_info['location']} already exists"
                )
            resource = await request.json()
            self._validate(resource)
        except ApiError as exc:
            return self._error(exc.code, exc.message)
        resource.update(
            name=name, state="DEPLOYING", environment="GEN_2", createTime=_now(), updateTime=_now()
        )
        deployed = Deployed(resource)
        self.functions[name] = deployed
        operation = self._operation(request, name, "create")
        self._background(self._build(request.match_info, deployed, operation))
        return web.json_response(operation)

    async def _patch(self, request: web.Request) -> web.Response:
        name = self._function_name(request)
        try:
            self._check_auth(request)
            deployed = self.functions.get(name)
            if deployed is None:
                raise ApiError(404, f"Resource '{name}' was not found")
            update = await request.json()
            mask = [p for p in request.query.get("updateMask", "").split(",") if p]
            merged = dict(deployed.resource)
            for key in mask or ["buildConfig", "serviceConfig", "labels", "description"]:
                top = key.split(".")[0]
                if top in update:
                    merged[top] = update[top]
            merged["serviceConfig"] = {**merged.get("serviceConfig", {}), "uri": deployed.service.get("uri")}
            self._validate(merged)
        except ApiError as exc:
            return self._error(exc.code, exc.message)
        merged.update(state="DEPLOYING", updateTime=_now())
        deployed.resource = merged
        operation = self._operation(request, name, "update")
        self._background(self._build(request.match_info, deployed, operation))
        return web.json_response(operation)

    async def _build(self, info: Any, deployed: Deployed, operation: dict[str, Any]) -> None:
        """Unpack the uploaded zip, start one instance (Cloud Run's health check), go ACTIVE."""
        resource = deployed.resource
        build = resource["buildConfig"]
        token = build["source"]["storageSource"]["object"].removesuffix(".zip")
        root = self._tmp / f"{resource['name'].rsplit('/', 1)[1]}-{uuid.uuid4().hex[:8]}"
        error: str | None = None
        try:
            with zipfile.ZipFile(io.BytesIO(self.uploads[token])) as archive:
                archive.extractall(root)
            if not (root / "main.py").is_file():
                raise RuntimeError("Build failed: the source has no main.py")
            instance = await self._start_instance(root, resource)
        except (RuntimeError, zipfile.BadZipFile, TimeoutError) as exc:
            error = f"Could not create or update Cloud Run service: {exc}"
        if error is not None:
            resource["state"] = "FAILED"
            resource["stateMessages"] = [{"severity": "ERROR", "type": "Build", "message": error[:2000]}]
            self._finish(operation, None, error[:2000])
            return
        old_root, old = deployed.root, deployed.instances
        deployed.root, deployed.instances = root, [instance]
        self._background(self._watch(deployed, instance))
        # The old revision drains after traffic moved, as on Cloud Run.
        self._background(self._retire(old, old_root))
        uri = f"{self.url}/fn/{info['project']}/{info['location']}/{resource['name'].rsplit('/', 1)[1]}"
        resource["serviceConfig"]["uri"] = uri
        resource["url"] = uri
        resource.update(state="ACTIVE", updateTime=_now())
        resource.pop("stateMessages", None)
        async with deployed.changed:
            deployed.changed.notify_all()
        self._finish(operation, {"@type": _FUNCTION_TYPE, **resource}, None)

    async def _start_instance(self, root: Path, resource: dict[str, Any]) -> Instance:
        service = resource.get("serviceConfig", {})
        env = sandbox_env(
            root,
            {
                **service.get("environmentVariables", {}),
                "GUNICORN_LOG_LEVEL": "info",  # for the "Listening at" line that names the port
                "THREADS": str(service.get("maxInstanceRequestConcurrency", 1)),
                "K_SERVICE": resource["name"].rsplit("/", 1)[1],
                "FUNCTION_TARGET": resource["buildConfig"]["entryPoint"],
                "LOG_EXECUTION_ID": "true",
            },
        )
        args = [
            PYTHON, "-m", "functions_framework", "--target", resource["buildConfig"]["entryPoint"],
            "--source", "main.py", "--host", "127.0.0.1", "--port", "0",
        ]  # fmt: skip
        process = await spawn(args, root, env)
        self._processes.add(process)
        output: list[str] = []
        try:
            match = await wait_for_line(process, _LISTENING, 60.0, output)
        except (RuntimeError, TimeoutError) as exc:
            await kill_group(process, grace_s=0)
            # Like GCF's build errors: the last line of the log says what went wrong.
            last = next((line for line in reversed(output) if line.strip()), "no output")
            detail = (
                f"exit {process.returncode}: {last}" if isinstance(exc, RuntimeError) else "not ready in 60 s"
            )
            raise RuntimeError(f"container failed to start: {detail}") from None
        instance = Instance(process, int(match.group(1)), output)
        self._background(pump(process, output))
        return instance

    async def _retire(self, instances: list[Instance], root: Path | None) -> None:
        await asyncio.gather(*(kill_group(i.process, grace_s=0) for i in instances))
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    async def _watch(self, deployed: Deployed, instance: Instance) -> None:
        await instance.process.wait()
        if instance in deployed.instances:
            deployed.instances.remove(instance)
        async with deployed.changed:
            deployed.changed.notify_all()

    async def _get(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except ApiError as exc:
            return self._error(exc.code, exc.message)
        deployed = self.functions.get(self._function_name(request))
        if deployed is None:
            return self._error(404, f"Resource '{self._function_name(request)}' was not found")
        return web.json_response(deployed.resource)

    async def _list(self, request: web.Request) -> web.Response:
        try:
            self._check_auth(request)
        except ApiError as exc:
            return self._error(exc.code, exc.message)
        prefix = self._function_name(request, "x")[:-1]
        found = [d.resource for name, d in self.functions.items() if name.startswith(prefix)]
        return web.json_response({"functions": found})

    async def _delete(self, request: web.Request) -> web.Response:
        name = self._function_name(request)
        try:
            self._check_auth(request)
        except ApiError as exc:
            return self._error(exc.code, exc.message)
        deployed = self.functions.pop(name, None)
        if deployed is None:
            return self._error(404, f"Resource '{name}' was not found")
        operation = self._operation(request, name, "delete")

        async def delete() -> None:
            await self._stop_instances(deployed)
            self._finish(operation, {"@type": _EMPTY_TYPE}, None)

        self._background(delete())
        return web.json_response(operation)

    async def _stop_instances(self, deployed: Deployed) -> None:
        instances, deployed.instances = deployed.instances, []
        await asyncio.gather(*(kill_group(i.process, grace_s=0) for i in instances))
        if deployed.root is not None:
            shutil.rmtree(deployed.root, ignore_errors=True)

    async def _get_operation(self, request: web.Request) -> web.Response:
        info = request.match_info
        name = f"projects/{info['project']}/locations/{info['location']}/operations/{info['op']}"
        operation = self.operations.get(name)
        if operation is None:
            return self._error(404, f"Operation '{name}' was not found")
        return web.json_response(operation)

    # ------------------------------------------------------------------ OAuth token endpoint
    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assertion = str(form.get("assertion", ""))
        try:
            unverified = jwt.decode(assertion, verify=False)
            # google-auth addresses ID-token grants to Google's endpoint whatever the key's token_uri.
            audiences = [f"{self.url}/token", "https://oauth2.googleapis.com/token"]
            claims = jwt.decode(assertion, certs=self._trusted[unverified["iss"]], audience=audiences)
        except (ValueError, KeyError):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, status=400
            )
        now = int(time.time())
        if "target_audience" in claims:
            payload = {
                "iss": "https://accounts.google.com",
                "aud": claims["target_audience"],
                "email": claims["iss"],
                "sub": claims["iss"],
                "iat": now,
                "exp": now + 3600,
            }
            return web.json_response({"id_token": jwt.encode(self._signer, payload).decode()})
        token = f"ya29.fake-{secrets.token_urlsafe(24)}"
        self._access_tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    # ------------------------------------------------------------------ the functions' front end
    def _check_id_token(self, request: web.Request, uri: str) -> str | None:
        """``None`` when the caller may invoke ``uri``; otherwise why not."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "no ID token"
        try:
            jwt.decode(header.removeprefix("Bearer "), certs=self._public_pem, audience=uri)
        except ValueError as exc:
            return f"bad ID token: {exc}"
        self.seen_auth.append(header)
        return None

    async def _acquire(self, deployed: Deployed) -> Instance:
        """An instance with a free request slot, starting one (up to the cap) when all are busy."""
        service = deployed.service
        per_instance = int(service.get("maxInstanceRequestConcurrency", 1))
        cap = min(int(service.get("maxInstanceCount", 100)), self.max_instances_cap)
        async with deployed.changed:
            while True:
                for instance in deployed.instances:
                    if instance.busy < per_instance and instance.process.returncode is None:
                        instance.busy += 1
                        return instance
                if deployed.root is not None and len(deployed.instances) + deployed.starting < cap:
                    break
                await deployed.changed.wait()
            deployed.starting += 1
        try:
            instance = await self._start_instance(deployed.root, deployed.resource)
        finally:
            deployed.starting -= 1
            async with deployed.changed:
                deployed.changed.notify_all()
        instance.busy = 1
        deployed.instances.append(instance)
        self._background(self._watch(deployed, instance))
        return instance

    async def _release(self, deployed: Deployed, instance: Instance) -> None:
        instance.busy -= 1
        async with deployed.changed:
            deployed.changed.notify_all()

    async def _front(self, request: web.Request) -> web.Response:
        deployed = self.functions.get(self._function_name(request))
        if deployed is None or deployed.resource.get("state") != "ACTIVE":
            return web.Response(status=404, text="Error: Page not found")
        uri = deployed.service["uri"]
        if self.require_auth:
            problem = self._check_id_token(request, uri)
            if problem is not None:
                status = 401 if problem == "no ID token" else 403
                return web.Response(status=status, text=f"Error: Forbidden ({problem.split(':')[0]})")
        execution_id = secrets.token_urlsafe(9)
        self.execution_ids.append(execution_id)
        body = await request.read()
        headers = {
            "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
            "Function-Execution-Id": execution_id,
        }
        deployed.requests += 1
        timeout = aiohttp.ClientTimeout(total=float(deployed.service.get("timeoutSeconds", 60)))
        tail = request.match_info.get("tail", "")
        answer = {"Function-Execution-Id": execution_id}
        assert self._session is not None
        for _ in range(2):  # a second try only when the request never reached an instance
            try:
                instance = await self._acquire(deployed)
            except RuntimeError:
                return web.Response(
                    status=503, text="Service Unavailable: the instance failed to start", headers=answer
                )
            try:
                async with self._session.request(
                    request.method,
                    f"http://127.0.0.1:{instance.port}/{tail}",
                    data=body,
                    headers=headers,
                    timeout=timeout,
                ) as upstream:
                    payload = await upstream.read()
                    answer["Content-Type"] = upstream.headers.get("Content-Type", "text/plain")
                    return web.Response(status=upstream.status, body=payload, headers=answer)
            except TimeoutError:
                return web.Response(status=504, text="upstream request timeout", headers=answer)
            except aiohttp.ClientConnectorError:
                # The instance is gone (its server exited): retire it, route to another.
                await kill_group(instance.process, grace_s=0)
            except aiohttp.ClientError:
                # The instance crashed mid-request: GCF answers 500 and the instance is gone (a
                # half-dead gunicorn must not take the next request).
                await kill_group(instance.process, grace_s=0)
                return web.Response(status=500, text="Error: could not handle the request", headers=answer)
            finally:
                await self._release(deployed, instance)
        return web.Response(status=503, text="upstream connect error", headers=answer)
