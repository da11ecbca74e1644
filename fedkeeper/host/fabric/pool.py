"""The worker pool: warm reuse, cold starts, capacity, FIFO queueing, timeout and memory kills.

Capacity follows OpenWhisk's invoker: every worker reserves its action's ``limits.memory`` from
``user_memory_mb``, and at most ``max_workers`` processes live at once. An activation takes a
free slot of a warm worker of the same action version (``limits.concurrency`` slots each);
otherwise a new worker if capacity allows, after evicting idle workers of other actions if
needed; otherwise it waits in a FIFO queue. Waiting activations are served in arrival order;
one that needs new capacity holds back later ones that need new capacity too, so big actions
are not starved by small ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fedkeeper.host.fabric.containment import Containment
from fedkeeper.host.fabric.limits import ActionLimits, FabricLimits
from fedkeeper.host.fabric.logs import DEVELOPER_WARNING, LOG_FAILURE, LogLine
from fedkeeper.host.fabric.records import Status
from fedkeeper.host.fabric.worker import Worker, WorkerKey, WorkerStartError, WorkerState

log = logging.getLogger("fedkeeper.host.fabric.pool")

# OpenWhisk's messages (org.apache.openwhisk.http.Messages).
ABNORMAL_INIT = "The action did not initialize and exited unexpectedly."
ABNORMAL_RUN = "The action did not produce a valid response and exited unexpectedly."
MEMORY_EXHAUSTED = "The action exhausted its memory and was aborted."
PROVISION_ERROR = "Failed to provision resources to run the action."
_CRASH_AFTER_S = 0.02  # an injected crash kills the worker this long after /run was sent
_LOG_WAIT_S = 2.0


def timed_out_message(timeout_ms: int, init: bool) -> str:
    return f"The action exceeded its time limits of {timeout_ms} milliseconds" + (
        " during initialization." if init else "."
    )


def truncated_message(length: int, limit: int) -> str:
    return f"The action produced a response that exceeded the allowed length: {length} > {limit} bytes."


def invalid_run_message(body: bytes) -> str:
    text = body[:1000].decode("utf-8", "replace").strip()
    return "The action did not produce a valid JSON response" + (f": {text}" if text else ".")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RunRequest:
    """Everything the pool needs to run one activation."""

    key: WorkerKey
    limits: ActionLimits
    init_value: dict[str, Any]
    params: dict[str, Any]
    context: dict[str, Any]
    arrived_ms: int
    crash: bool = False


@dataclass
class RunOutcome:
    status: Status
    result: dict[str, Any]
    start_ms: int
    end_ms: int
    wait_ms: int
    init_ms: int | None = None
    timeout: bool = False
    logs: list[str] = field(default_factory=list)

    @classmethod
    def unrun(cls, status: Status, error: str, arrived_ms: int) -> RunOutcome:
        """An activation that ends as it starts, with ``error``: its action never ran."""
        now = now_ms()
        return cls(status, {"error": error}, now, now, now - arrived_ms)


@dataclass
class _Waiter:
    key: WorkerKey
    limits: ActionLimits
    future: asyncio.Future[tuple[Worker, bool]]


class WorkerPool:
    """All workers of one fabric."""

    def __init__(self, limits: FabricLimits, worker_env: dict[str, str] | None = None) -> None:
        self.limits = limits
        self.worker_env = dict(worker_env if worker_env is not None else _default_env())
        self.workers: list[Worker] = []
        self._queue: deque[_Waiter] = deque()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.cold_starts = 0
        self.containment = Containment()  # nothing until start() probes the machine

    # ------------------------------------------------------------------ life cycle
    async def start(self, contain: bool = True) -> None:
        if contain:
            self.containment = await asyncio.to_thread(Containment.probe)
            for note in self.containment.notes:
                log.warning("tenant isolation: %s", note)
            log.info("tenant isolation: %s", self.containment.describe())
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        self._spawn(self._watch_memory())
        self._spawn(self._reap_idle())

    async def close(self) -> None:
        """Kill every worker and wait until they are gone."""
        for waiter in self._queue:
            if not waiter.future.done():
                waiter.future.cancel()
        self._queue.clear()
        for worker in list(self.workers):
            worker.kill("fabric stopping")
        await asyncio.gather(*(w.reap() for w in list(self.workers)), return_exceptions=True)
        self.workers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        await asyncio.to_thread(self.containment.close)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ capacity
    @property
    def reserved_mb(self) -> int:
        return sum(w.memory_mb for w in self.workers)

    def _fits(self, memory_mb: int) -> bool:
        return len(self.workers) < self.limits.max_workers and self.reserved_mb + memory_mb <= (
            self.limits.user_memory_mb
        )

    def _make_room(self, memory_mb: int) -> bool:
        """Evict idle workers (least recently used first) until ``memory_mb`` fits."""
        if self._fits(memory_mb):
            return True
        idle = sorted(
            (w for w in self.workers if w.state is WorkerState.READY and w.in_flight == 0),
            key=lambda w: w.last_used,
        )
        # Evict only if that is enough: stopping warm workers for nothing would only cost cold starts.
        busy_count = len(self.workers) - len(idle)
        busy_mb = self.reserved_mb - sum(w.memory_mb for w in idle)
        if busy_count >= self.limits.max_workers or busy_mb + memory_mb > self.limits.user_memory_mb:
            return False
        for worker in idle:
            self._remove(worker, "evicted")
            if self._fits(memory_mb):
                return True
        return False

    def _dispatch(self) -> None:
        """Serve waiting activations in arrival order (see the module docstring).

        Linear in queue length plus workers: it runs after every activation.
        """
        if not self._queue:
            return
        free: dict[WorkerKey, deque[Worker]] = {}
        for worker in self.workers:
            if worker.has_slot():
                free.setdefault(worker.key, deque()).append(worker)
        blocked = False
        waiting: deque[_Waiter] = deque()
        while self._queue:
            waiter = self._queue.popleft()
            if waiter.future.done():
                continue
            slots = free.get(waiter.key)
            while slots and not slots[0].has_slot():  # filled up, or evicted below
                slots.popleft()
            if slots:
                slots[0].in_flight += 1
                waiter.future.set_result((slots[0], False))
                continue
            if not blocked and self._make_room(waiter.limits.memory):
                worker = Worker(waiter.key, waiter.limits)
                self.workers.append(worker)
                waiter.future.set_result((worker, True))
                if worker.has_slot():  # limits.concurrency > 1: later waiters may join it
                    free.setdefault(worker.key, deque()).append(worker)
                continue
            blocked = True
            waiting.append(waiter)
            if not any(free.values()):  # nothing left to hand out: keep the rest in order
                waiting.extend(self._queue)
                self._queue.clear()
        self._queue = waiting

    async def _acquire(self, key: WorkerKey, limits: ActionLimits) -> tuple[Worker, bool]:
        future: asyncio.Future[tuple[Worker, bool]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(key, limits, future)
        self._queue.append(waiter)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                worker, _ = future.result()
                self._release(worker)
            elif waiter in self._queue:
                self._queue.remove(waiter)
            raise

    def _release(self, worker: Worker) -> None:
        worker.in_flight -= 1
        worker.last_used = time.monotonic()
        if not worker.alive or (worker.retired and worker.in_flight == 0):
            self._remove(worker, worker.death or "retired")
        self._dispatch()

    def _remove(self, worker: Worker, reason: str) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        worker.kill(reason)
        self._spawn(worker.reap())

    def retire(self, namespace: str, name: str) -> None:
        """An action changed or went away: its workers serve nobody new and stop when idle."""
        for worker in list(self.workers):
            if worker.key.namespace == namespace and worker.key.name == name:
                worker.retired = True
                if worker.in_flight == 0:
                    self._remove(worker, "retired")
        self._dispatch()

    # ------------------------------------------------------------------ background duties
    async def _watch_memory(self) -> None:
        while True:
            await asyncio.sleep(self.limits.memory_poll_s)
            for worker in list(self.workers):
                if worker.alive and worker.over_memory():
                    log.info("%r is over its %d MB memory limit: killed", worker, worker.memory_mb)
                    worker.kill("memory")
                    if worker.in_flight == 0:
                        self._remove(worker, "memory")
                        self._dispatch()

    async def _reap_idle(self) -> None:
        period = min(max(self.limits.idle_timeout_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            horizon = time.monotonic() - self.limits.idle_timeout_s
            stale = [w for w in self.workers if w.in_flight == 0 and w.last_used < horizon]
            for worker in stale:
                self._remove(worker, "idle")
            dead = [
                w for w in self.workers if w.in_flight == 0 and w.state is WorkerState.READY and not w.alive
            ]
            for worker in dead:  # exited on its own while idle
                self._remove(worker, "exited")
            if stale or dead:
                self._dispatch()

    # ------------------------------------------------------------------ one activation
    async def run(self, request: RunRequest) -> RunOutcome:
        """Run one activation to its outcome; never raises for the action's own failures."""
        if request.limits.memory > self.limits.user_memory_mb:
            now = now_ms()
            return RunOutcome(
                Status.INTERNAL_ERROR, {"error": PROVISION_ERROR}, now, now, now - request.arrived_ms
            )
        while True:
            worker, cold = await self._acquire(request.key, request.limits)
            try:
                if not cold and not worker.ready.is_set():
                    await worker.ready.wait()  # a slot in a worker that is still starting
                if not cold and worker.state is not WorkerState.READY:
                    continue  # it failed to start: ask again (in finally, the slot is released)
                return await self._run_on(worker, cold, request)
            finally:
                self._release(worker)

    async def _run_on(self, worker: Worker, cold: bool, request: RunRequest) -> RunOutcome:
        init_ms: int | None = None
        if cold:
            self.cold_starts += 1
            try:
                await worker.spawn(self.worker_env, self.limits.worker_start_timeout_s, self.containment)
            except WorkerStartError as exc:
                log.warning("%r: %s", worker, exc)
                return RunOutcome.unrun(Status.INTERNAL_ERROR, PROVISION_ERROR, request.arrived_ms)
            start = now_ms()
            wait_ms = start - request.arrived_ms
            reply = await self._post(worker, "/init", {"value": request.init_value}, request, start, wait_ms)
            if isinstance(reply, RunOutcome):
                return reply
            status, body = reply
            init_ms = now_ms() - start
            if status != 200:
                worker.kill("init failure")
                return await self._failed(worker, start, wait_ms, init_ms, _init_error(body))
            worker.state = WorkerState.READY
            worker.ready.set()
        else:
            start = now_ms()
            wait_ms = start - request.arrived_ms
        run_start = now_ms()
        payload = {
            "value": request.params,
            **request.context,
            "deadline": str(run_start + request.limits.timeout),
        }
        crasher = asyncio.create_task(self._crash_later(worker)) if request.crash else None
        try:
            reply = await self._post(worker, "/run", payload, request, start, wait_ms, init_ms)
        finally:
            if crasher is not None:
                crasher.cancel()
        if isinstance(reply, RunOutcome):
            return reply
        if request.crash or not worker.alive:
            # The reply raced the kill; the activation still crashed mid-run.
            return await self._crashed(worker, "crash", ABNORMAL_RUN, start, wait_ms, init_ms)
        status, body = reply
        end = now_ms()
        outcome_status, result = interpret_run(status, body, self.limits.max_result_bytes)
        assert worker.logs is not None
        logs, complete = await worker.logs.next_activation(_LOG_WAIT_S)
        if not complete:
            logs.append(LogLine(time.time(), "stderr", LOG_FAILURE).format())
        return RunOutcome(outcome_status, result, start, end, wait_ms, init_ms, False, logs)

    async def _post(
        self,
        worker: Worker,
        path: str,
        payload: dict[str, Any],
        request: RunRequest,
        start: int,
        wait_ms: int,
        init_ms: int | None = None,
    ) -> tuple[int, bytes] | RunOutcome:
        """The runtime's reply to ``/init`` or ``/run``, or the outcome of a worker that timed out
        (killed here) or died."""
        assert self._session is not None
        init = path == "/init"
        try:
            return await worker.post(self._session, path, payload, request.limits.timeout / 1000)
        except TimeoutError:
            worker.kill("timeout")
            message = timed_out_message(request.limits.timeout, init)
            return await self._failed(worker, start, wait_ms, init_ms, message, timeout=True)
        except aiohttp.ClientError:
            if init:
                return await self._crashed(worker, "init crash", ABNORMAL_INIT, start, wait_ms, init_ms)
            return await self._crashed(worker, "crashed", ABNORMAL_RUN, start, wait_ms, init_ms)

    async def _crashed(
        self, worker: Worker, reason: str, message: str, start: int, wait_ms: int, init_ms: int | None
    ) -> RunOutcome:
        """A worker that died mid-request: ``message``, unless it ran out of memory."""
        if worker.death == "memory" or (worker.cell is not None and worker.cell.oom_killed()):
            message = MEMORY_EXHAUSTED
            worker.death = "memory"
        worker.kill(worker.death or reason)
        return await self._failed(worker, start, wait_ms, init_ms, message)

    async def _crash_later(self, worker: Worker) -> None:
        await asyncio.sleep(_CRASH_AFTER_S)
        worker.kill("crash")

    async def _failed(
        self,
        worker: Worker,
        start: int,
        wait_ms: int,
        init_ms: int | None,
        message: str,
        *,
        timeout: bool = False,
    ) -> RunOutcome:
        """A developer error from a worker that is gone; its partial logs are kept."""
        end = now_ms()
        logs: list[str] = []
        if worker.logs is not None:
            logs = await worker.logs.drain()
        logs.append(LogLine(time.time(), "stderr", DEVELOPER_WARNING).format())
        return RunOutcome(
            Status.DEVELOPER_ERROR, {"error": message}, start, end, wait_ms, init_ms, timeout, logs
        )


def interpret_run(status: int, body: bytes, max_result_bytes: int) -> tuple[Status, dict[str, Any]]:
    """OpenWhisk's reading of a runtime's /run reply (ActivationResponse.processRunResponseContent)."""
    if len(body) > max_result_bytes:
        return Status.DEVELOPER_ERROR, {"error": truncated_message(len(body), max_result_bytes)}
    try:
        result = json.loads(body)
    except ValueError:
        return Status.DEVELOPER_ERROR, {"error": invalid_run_message(body)}
    if not isinstance(result, dict):
        return Status.DEVELOPER_ERROR, {"error": invalid_run_message(body)}
    if status == 200:
        if "error" in result:
            return Status.APPLICATION_ERROR, {"error": result["error"]}
        return Status.SUCCESS, result
    return Status.DEVELOPER_ERROR, {"error": result.get("error", invalid_run_message(body))}


def _init_error(body: bytes) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
    except ValueError:
        pass
    text = body[:1000].decode("utf-8", "replace").strip()
    return "The action failed during initialization" + (f": {text}" if text else ".")


# What a worker inherits from the fabric's environment. An OpenWhisk container sees none of its
# host's variables; workers get only locale, paths and numeric-library knobs, so an action cannot
# come to depend on (or leak) the caller's credentials. Everything else reaches it as parameters.
_INHERITED = {
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LANGUAGE",
    "TZ",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
}
_INHERITED_PREFIXES = ("LC_", "TF_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "KERAS_", "XLA_")


def _default_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _INHERITED or k.startswith(_INHERITED_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
