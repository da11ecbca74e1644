"""The ``InvokeClient`` protocol: how to call a platform's functions, and what a platform can do.

Callers ask a client what it can do (``client.capabilities.async_invoke``), never which
platform it is; that keeps the keeper and the invoker free of per-platform branches. A host-side
:class:`~fedkeeper.host.providers.base.Provider` is an invoke client that can also deploy.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Self

import requests
import urllib3.exceptions

from fedkeeper.function.errors import ProviderError

MB = 1024 * 1024


@dataclass(frozen=True)
class Capabilities:
    """What a platform can do and its limits, declared once per platform in the catalog.

    Attributes
    ----------
    async_invoke
        Can start an activation, return its id at once, and report its record later.
    store_access
        Its functions can be bound with store credentials at deploy time and reach MongoDB,
        so ``fl_client`` can read weights and write its update itself.
    max_request_bytes, max_result_bytes
        Payload limits of one invocation.
    max_duration_s
        The longest a single activation may run.
    memory_mb
        The memory a function may be given, ``(low, high)``; None where the platform sets no range.
    custom_objective
        Its clients run fedkeeper's own trainer, which takes a strategy's terms into the local
        objective (FedProx's proximal term, SCAFFOLD's gradient correction).
    evaluate
        Its clients can run an evaluate activation (federated evaluation on held-out data), not
        only train.
    """

    async_invoke: bool
    store_access: bool
    max_request_bytes: int
    max_result_bytes: int
    max_duration_s: int
    memory_mb: tuple[int, int] | None = None
    custom_objective: bool = True
    evaluate: bool = True


@dataclass(frozen=True)
class Needs:
    """What a function (or a role such as "runs the managing functions") asks of a platform.

    ``None`` asks nothing of that limit.
    """

    async_invoke: bool = False
    store_access: bool = False
    duration_s: int | None = None
    memory_mb: int | None = None
    request_bytes: int | None = None
    custom_objective: bool = False
    evaluate: bool = False


def unsupported(capabilities: Capabilities, needs: Needs) -> list[str]:
    """Why a platform cannot serve ``needs``: one short reason per unmet need, none when it can.

    The one check of needs against capabilities (deploy limits, routes, the server cluster and
    ``fedkeeper check`` all ask it).
    """
    reasons: list[str] = []
    if needs.async_invoke and not capabilities.async_invoke:
        reasons.append("no async invoke")
    if needs.store_access and not capabilities.store_access:
        reasons.append("no store access")
    if needs.duration_s is not None and not 1 <= needs.duration_s <= capabilities.max_duration_s:
        reasons.append(f"timeout {needs.duration_s} s is outside 1..{capabilities.max_duration_s} s")
    if needs.memory_mb is not None and capabilities.memory_mb is not None:
        low, high = capabilities.memory_mb
        if not low <= needs.memory_mb <= high:
            reasons.append(f"memory {needs.memory_mb} MB is outside {low}..{high} MB")
    if needs.request_bytes is not None and needs.request_bytes > capabilities.max_request_bytes:
        reasons.append(
            f"request of {needs.request_bytes} bytes is past the {capabilities.max_request_bytes} byte limit"
        )
    if needs.custom_objective and not capabilities.custom_objective:
        reasons.append("fixed trainer: no proximal term or gradient correction")
    if needs.evaluate and not capabilities.evaluate:
        reasons.append("fixed trainer: trains only, no federated evaluation")
    return reasons


class ActivationStatus(StrEnum):
    """OpenWhisk's activation outcomes, which every provider maps onto."""

    PENDING = "pending"
    SUCCESS = "success"
    APPLICATION_ERROR = "application error"
    DEVELOPER_ERROR = "action developer error"
    INTERNAL_ERROR = "whisk internal error"

    @property
    def done(self) -> bool:
        return self is not ActivationStatus.PENDING


@dataclass
class ActivationRecord:
    """One activation as a provider reports it."""

    activation_id: str
    status: ActivationStatus
    result: dict[str, Any] | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    timeout: bool = False
    logs: list[str] = field(default_factory=list)
    init_ms: int | None = None  # a cold start's initialisation; None when warm or not reported

    @property
    def ok(self) -> bool:
        return self.status is ActivationStatus.SUCCESS

    @property
    def error(self) -> str | None:
        if self.ok or not self.status.done:
            return None
        if isinstance(self.result, dict) and "error" in self.result:
            return str(self.result["error"])
        return self.status.value


def now_ms() -> int:
    return int(time.time() * 1000)


def never_sent(exc: requests.ConnectionError) -> bool:
    """Whether no connection was made, so the request never left (refused, DNS, connect timeout).

    Such a failure means the platform cannot be reached (an outage), and the request provably
    started nothing there.
    """
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    # urllib3's NewConnectionError (refused) and NameResolutionError subclass ConnectTimeoutError.
    return isinstance(reason, urllib3.exceptions.ConnectTimeoutError)


class InvokeClient(ABC):
    """A FaaS platform (or the edge gateway) as a caller of fedkeeper's functions sees it.

    Parameters
    ----------
    cluster
        The cluster's name in ``config.yaml``; used in ledger entries and logs.
    settings
        The cluster's validated configuration model.
    """

    platform: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, cluster: str, settings: Any) -> None:
        self.cluster = cluster
        self.settings = settings
        # False: invoke_async raises Throttled at the first refusal for the concurrency limit
        # instead of retrying; for a caller that holds invocations back itself (the round driver).
        self.retry_throttled = True

    @property
    def where(self) -> str:
        """``platform/cluster``, as logs and outage messages name it."""
        return f"{self.platform}/{self.cluster}"

    @abstractmethod
    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        """Invoke and wait for the outcome."""

    def invoke_async(self, name: str, params: Mapping[str, Any]) -> str:
        """Start an activation and return its id (only where ``capabilities.async_invoke``)."""
        raise ProviderError(f"{self.platform} cluster {self.cluster!r} cannot invoke asynchronously")

    def fetch(self, name: str, activation_ids: Collection[str], since_ms: int) -> dict[str, ActivationRecord]:
        """Records of the given activations that have finished (only where ``async_invoke``)."""
        raise ProviderError(f"{self.platform} cluster {self.cluster!r} has no activation records")

    def probe(self, name: str) -> bool:
        """Ask cheaply whether the platform answers, starting no activation of ``name``.

        Returns True when it answered, False when this platform has no cheap probe (the
        keeper's next attempt is then the probe). Raises ``PlatformUnavailable`` when it does
        not answer, as an invoke would.
        """
        return False

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
