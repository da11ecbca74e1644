"""Invoking the edge platform: a fleet of QEMU-emulated devices behind the edge gateway.

Deploying (starting the gateway daemon with its guests) lives in
:class:`~fedkeeper.host.providers.edge.EdgeProvider`. ``invoke_sync`` posts a
:class:`~fedkeeper.function.tasks.contract.ClientJob` and maps the answer onto an activation record:
200 -> success, 4xx -> application error (the job is at fault), anything else (a guest that
died or timed out, a gateway that is down) -> developer error, which the keeper revives.

The gateway's URL is ``http://gateway_host:gateway_port`` when the port is fixed in the config,
and otherwise read from the daemon's state dir, so an invoker running in another process (a
fabric worker) reaches the same gateway. Every call carries the gateway's bearer token: the
configured ``token``, or one generated at deploy into the state dir; either way it is part of
the settings, so deploy binds it to the invoker like any other credential.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import requests

from fedkeeper.function import catalog
from fedkeeper.function.catalog import CLIENT_FUNCTION
from fedkeeper.function.config import EdgeCluster
from fedkeeper.function.errors import PlatformUnavailable, ProviderError
from fedkeeper.function.invoke.base import (
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    InvokeClient,
    never_sent,
    now_ms,
)
from fedkeeper.function.redaction import register_secret
from fedkeeper.function.tasks.contract import (
    EDGE_EXECUTION_HEADER,
    EDGE_MAX_JOB_TIMEOUT_S,
    EDGE_STATE_FILE,
    EDGE_TIMEOUT_HEADER,
)

STATE_ENV = "FEDKEEPER_EDGE_STATE_DIR"
CONNECT_TIMEOUT_S = 5.0


def default_state_dir(cluster: str) -> Path:
    """``$FEDKEEPER_EDGE_STATE_DIR/<cluster>`` or ``~/.fedkeeper/edge/<cluster>``: an absolute path, the
    same in every process of the user, whatever its working directory."""
    root = os.environ.get(STATE_ENV)
    return (Path(root) if root else Path.home() / ".fedkeeper" / "edge").resolve() / cluster


@dataclass(frozen=True)
class EdgeFleet:
    """An edge cluster's devices as its gateway reports them; ``generation`` counts adds and removes,
    ``clients`` is where it routes each client it knows (client -> device)."""

    generation: int
    devices: tuple[int, ...]
    clients: Mapping[int, int] = field(default_factory=dict)


class EdgeClient(InvokeClient):
    """QEMU edge devices as a platform: synchronous, no store access, jobs travel inline.

    Parameters
    ----------
    cluster, settings
        The cluster's name and its :class:`~fedkeeper.function.config.EdgeCluster` settings.
    state_dir
        Where the gateway daemon keeps its pid, log and URL (default :func:`default_state_dir`).
    """

    platform = "edge"
    capabilities: ClassVar[Capabilities] = catalog.platform("edge").capabilities

    def __init__(
        self,
        cluster: str,
        settings: EdgeCluster,
        *,
        state_dir: Path | None = None,
    ) -> None:
        super().__init__(cluster, settings)
        self.state_dir = state_dir or default_state_dir(cluster)
        self.settings: EdgeCluster = self._with_token(settings)
        register_secret(self.token)
        self._session = requests.Session()

    def _with_token(self, settings: EdgeCluster) -> EdgeCluster:
        """The settings with the gateway's token: a client gets it bound (the invoker's binding
        carries it); only the keeper's provider may create one."""
        if settings.token is None:
            raise ProviderError(
                f"edge cluster {self.cluster!r}: no gateway token is bound; redeploy with `main.py -d`"
            )
        return settings

    @property
    def token(self) -> str:
        """The gateway's bearer token."""
        assert self.settings.token is not None  # set in __init__
        return self.settings.token.get_secret_value()

    def gateway_url(self) -> str:
        """Where the gateway serves: the fixed port of the config, or the running daemon's URL."""
        s = self.settings
        if s.gateway_port:
            host = f"[{s.gateway_host}]" if ":" in s.gateway_host else s.gateway_host
            return f"http://{host}:{s.gateway_port}"
        # Read the daemon's state file directly: this runs inside the invoker function too, whose
        # zip does not carry fedkeeper.host.edge. A stale file only makes the call fail, and be retried.
        try:
            return str(json.loads((self.state_dir / EDGE_STATE_FILE).read_text(encoding="utf-8"))["url"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ProviderError(
                f"edge cluster {self.cluster!r}: no gateway runs from {self.state_dir} (deploy fl_client first)"
            ) from None

    # ------------------------------------------------------------------ invocation
    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        if name != CLIENT_FUNCTION:
            raise ProviderError(f"edge cluster {self.cluster!r} hosts only {CLIENT_FUNCTION}, not {name!r}")
        client = params.get("client")
        if not isinstance(client, int) or isinstance(client, bool):
            return ActivationRecord(
                uuid.uuid4().hex,
                ActivationStatus.APPLICATION_ERROR,
                {"error": f"job.client: expected int, got {type(client).__name__}"},
                start_ms=now_ms(),
                end_ms=now_ms(),
            )
        start = now_ms()
        guest_timeout = max(1.0, min(float(timeout_s), EDGE_MAX_JOB_TIMEOUT_S))
        try:
            url = self.gateway_url()
            response = self._session.post(
                f"{url}/v1/clients/{client}/train",
                json=dict(params),
                headers={EDGE_TIMEOUT_HEADER: f"{guest_timeout:g}", "Authorization": f"Bearer {self.token}"},
                # the gateway gives up on the guest first, so its 503 (not our timeout) is the usual answer
                timeout=(CONNECT_TIMEOUT_S, guest_timeout + 30.0),
            )
        except requests.Timeout:
            return ActivationRecord(
                uuid.uuid4().hex,
                ActivationStatus.DEVELOPER_ERROR,
                {"error": f"edge gateway did not answer within {guest_timeout + 30.0:g} s"},
                start_ms=start,
                end_ms=now_ms(),
                timeout=True,
            )
        except requests.ConnectionError as exc:
            if never_sent(exc):  # the gateway is down, not the device's job
                raise PlatformUnavailable(
                    self.where, f"edge cluster {self.cluster!r}: gateway unreachable ({type(exc).__name__})"
                ) from None
            return ActivationRecord(
                uuid.uuid4().hex,
                ActivationStatus.DEVELOPER_ERROR,
                {"error": f"edge gateway lost after sending: {str(exc).splitlines()[0]}"},
                start_ms=start,
                end_ms=now_ms(),
            )
        except (requests.RequestException, ProviderError) as exc:
            return ActivationRecord(
                uuid.uuid4().hex,
                ActivationStatus.DEVELOPER_ERROR,
                {"error": f"edge gateway unreachable: {str(exc).splitlines()[0]}"},
                start_ms=start,
                end_ms=now_ms(),
            )
        activation = response.headers.get(EDGE_EXECUTION_HEADER) or uuid.uuid4().hex
        try:
            body = response.json()
        except ValueError:
            body = {"error": f"edge gateway answered HTTP {response.status_code} without JSON"}
        if not isinstance(body, dict):
            body = {"error": f"edge gateway answered HTTP {response.status_code} with a non-object"}
        if response.status_code == 200 and "error" not in body:
            status = ActivationStatus.SUCCESS
        elif 400 <= response.status_code < 500:
            status = ActivationStatus.APPLICATION_ERROR
        else:
            status = ActivationStatus.DEVELOPER_ERROR
        if status is not ActivationStatus.SUCCESS and "error" not in body:
            body = {"error": f"edge gateway answered HTTP {response.status_code}"}
        return ActivationRecord(
            activation,
            status,
            body,
            start_ms=start,
            end_ms=now_ms(),
            timeout=response.status_code == 504,
        )

    def probe(self, name: str) -> bool:
        """The gateway's health endpoint (raises PlatformUnavailable when it does not answer)."""
        try:
            self._session.get(
                f"{self.gateway_url()}/v1/health",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=(CONNECT_TIMEOUT_S, CONNECT_TIMEOUT_S),
            )
        except requests.ConnectionError as exc:
            if never_sent(exc):
                raise PlatformUnavailable(
                    self.where, f"edge cluster {self.cluster!r}: gateway unreachable ({type(exc).__name__})"
                ) from None
        except requests.RequestException:
            pass  # it answered something: the next attempt tells what is wrong
        return True

    # ------------------------------------------------------------------ the fleet
    def _control(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call to the gateway's fleet endpoints; its JSON object, or one line naming what failed."""
        where = f"edge cluster {self.cluster!r}"
        try:
            response = self._session.request(
                method,
                f"{self.gateway_url()}{path}",
                json=payload,
                headers={"Authorization": f"Bearer {self.token}"},
                # adding a device waits for its boot
                timeout=(
                    CONNECT_TIMEOUT_S,
                    EDGE_MAX_JOB_TIMEOUT_S if method == "POST" else CONNECT_TIMEOUT_S,
                ),
            )
            body = response.json()
        except requests.ConnectionError as exc:
            if never_sent(exc):
                raise PlatformUnavailable(
                    self.where, f"{where}: gateway unreachable ({type(exc).__name__})"
                ) from None
            raise ProviderError(f"{where}: gateway lost: {str(exc).splitlines()[0]}") from None
        except (requests.RequestException, ValueError) as exc:
            raise ProviderError(f"{where}: gateway's {path} failed: {str(exc).splitlines()[0]}") from None
        if not isinstance(body, dict) or response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            raise ProviderError(f"{where}: {error or f'gateway answered HTTP {response.status_code}'}")
        return body

    @staticmethod
    def _as_fleet(body: dict[str, Any]) -> EdgeFleet:
        try:
            return EdgeFleet(
                int(body["generation"]),
                tuple(sorted(int(d) for d in body["devices"])),
                {int(c): int(d) for c, d in body.get("clients", {}).items()},
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ProviderError(f"edge gateway's fleet is malformed: {json.dumps(body)[:200]}") from None

    def fleet(self) -> EdgeFleet:
        """The gateway's devices and their generation (one GET)."""
        return self._as_fleet(self._control("GET", "/v1/devices"))

    def add_device(self) -> tuple[int, EdgeFleet]:
        """Boot one more device; its id and the fleet after it."""
        body = self._control("POST", "/v1/devices")
        return int(body["device"]), self._as_fleet(body)

    def remove_device(self, device: int) -> EdgeFleet:
        """Power device ``device`` off for good; the fleet after it."""
        return self._as_fleet(self._control("DELETE", f"/v1/devices/{device}"))

    def pin_clients(self, clients: Mapping[int, int]) -> None:
        """Route each client (slot) of ``clients`` to its device from now on."""
        self._control("PUT", "/v1/assignment", {"clients": {str(c): d for c, d in clients.items()}})

    def close(self) -> None:
        self._session.close()
