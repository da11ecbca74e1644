"""Activations from request to record: in-flight limit, fault plan, the pool, the record store."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from fedkeeper.host.fabric.actions import Action
from fedkeeper.host.fabric.auth import Identity
from fedkeeper.host.fabric.faults import FaultDecision, FaultPlan
from fedkeeper.host.fabric.limits import FabricLimits
from fedkeeper.host.fabric.pool import RunOutcome, RunRequest, WorkerPool, now_ms
from fedkeeper.host.fabric.records import Activation, RecordStore, Status
from fedkeeper.host.fabric.worker import WorkerKey

log = logging.getLogger("fedkeeper.host.fabric.invoker")


def new_id() -> str:
    """OpenWhisk's activation and transaction ids: 32 lowercase hex digits."""
    return uuid.uuid4().hex


def image_pull_error(image: str) -> str:
    return f"Failed to pull container image '{image}'."


class TooManyRequests(Exception):
    """The namespace has ``allowed`` activations in flight already (answered with 429)."""

    def __init__(self, count: int, allowed: int) -> None:
        super().__init__(f"Too many concurrent requests in flight (count: {count}, allowed: {allowed}).")
        self.count = count
        self.allowed = allowed


class Invoker:
    """Starts activations and turns their outcomes into records."""

    def __init__(
        self, limits: FabricLimits, pool: WorkerPool, records: RecordStore, faults: FaultPlan | None = None
    ) -> None:
        self.limits = limits
        self.pool = pool
        self.records = records
        self.faults = faults or FaultPlan()
        self.api_host = ""
        self.in_flight: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def start(
        self, action: Action, params: dict[str, Any], identity: Identity, transaction_id: str
    ) -> tuple[str, asyncio.Future[Activation | None]]:
        """Admit one activation; returns its id and a future of its record (``None``: record lost)."""
        count = self.in_flight.get(action.namespace, 0)
        if count >= self.limits.concurrent_invocations:
            raise TooManyRequests(count, self.limits.concurrent_invocations)
        activation_id = new_id()
        future = self.records.expect(activation_id)
        self.in_flight[action.namespace] = count + 1
        task = asyncio.create_task(
            self._execute(activation_id, transaction_id, action, params, identity, now_ms())
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return activation_id, future

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _execute(
        self,
        activation_id: str,
        transaction_id: str,
        action: Action,
        params: dict[str, Any],
        identity: Identity,
        arrived_ms: int,
    ) -> None:
        record: Activation | None = None
        decision = self.faults.decide(action.name, params)
        try:
            if decision.latency_s > 0:
                await asyncio.sleep(decision.latency_s)
            outcome = await self._outcome(
                activation_id, transaction_id, action, params, identity, arrived_ms, decision
            )
            fault = [{"key": "fault", "value": _describe(decision)}] if decision.any else []
            record = _record(activation_id, action, identity, outcome, fault)
        except asyncio.CancelledError:
            raise
        except Exception:  # a fabric bug must still end the activation, as a whisk internal error
            log.exception("activation %s of %s failed inside the fabric", activation_id, action.path)
            failure = RunOutcome.unrun(
                Status.INTERNAL_ERROR, "There was an error processing your request.", arrived_ms
            )
            record = _record(activation_id, action, identity, failure)
        finally:
            self.in_flight[action.namespace] -= 1
            self.records.finish(activation_id, None if decision.lost_record else record)

    async def _outcome(
        self,
        activation_id: str,
        transaction_id: str,
        action: Action,
        params: dict[str, Any],
        identity: Identity,
        arrived_ms: int,
        decision: FaultDecision,
    ) -> RunOutcome:
        if decision.status is not None:
            # The injected status is reported without running the action, as the platform would
            # when it fails around the action.
            return RunOutcome.unrun(decision.status, f"Injected fault: {decision.status.label}.", arrived_ms)
        if action.exec.code is None:
            # A blackbox action without code: this fabric runs no images (see docs/fabric.md).
            message = image_pull_error(action.exec.image or "")
            return RunOutcome.unrun(Status.INTERNAL_ERROR, message, arrived_ms)
        context: dict[str, Any] = {
            "namespace": action.namespace,
            "action_name": f"/{action.namespace}/{action.name}",
            "action_version": action.version,
            "activation_id": activation_id,
            "transaction_id": transaction_id,
        }
        if action.annotation("provide-api-key") is True:
            context["api_key"] = identity.key
        request = RunRequest(
            key=WorkerKey(action.namespace, action.name, action.version),
            limits=action.limits,
            init_value={
                "name": action.name,
                "main": action.exec.main,
                "code": action.exec.code,
                "binary": action.exec.binary,
                "env": {"__OW_API_HOST": self.api_host},
            },
            params=params,
            context=context,
            arrived_ms=arrived_ms,
            crash=decision.crash,
        )
        return await self.pool.run(request)


def _record(
    activation_id: str,
    action: Action,
    identity: Identity,
    outcome: RunOutcome,
    annotations: list[dict[str, Any]] | None = None,
) -> Activation:
    """The record of ``action``'s activation that ended with ``outcome``."""
    return Activation(
        activation_id=activation_id,
        namespace=action.namespace,
        name=action.name,
        version=action.version,
        subject=identity.subject,
        kind=action.exec.kind,
        limits=action.limits,
        start=outcome.start_ms,
        end=outcome.end_ms,
        status=outcome.status,
        result=outcome.result,
        logs=outcome.logs,
        wait_ms=outcome.wait_ms,
        init_ms=outcome.init_ms,
        timeout=outcome.timeout,
        extra_annotations=annotations or [],
    )


def _describe(decision: FaultDecision) -> dict[str, Any]:
    return {
        "status": decision.status.label if decision.status is not None else None,
        "crash": decision.crash,
        "lost_record": decision.lost_record,
        "latency_ms": round(decision.latency_s * 1000, 3),
    }
