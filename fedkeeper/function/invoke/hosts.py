"""Invoking clients on remote hosts (Raspberry Pis and the like) over SSH.

Each registered host serves one or more clients: client ``n`` of a cluster runs on
``hosts[n % len(hosts)]`` (the hosts in the order the registry lists them). A call logs in with the
installation's key, the host's key pinned at registration, and runs the host's client runtime
(:mod:`fedkeeper.function.tasks.stdio`) with the job as one JSON frame on stdin; the reply frame
comes back on stdout. Registering and deploying live in :mod:`fedkeeper.host.hosts`, and
:class:`~fedkeeper.host.providers.hosts.HostsProvider` binds the key and the host list to the
invoker, the way other platforms' credentials are bound.

Outcome -> :class:`ActivationRecord` status: a reply -> SUCCESS, a reply with ``error`` ->
APPLICATION_ERROR, anything SSH (unreachable, a changed host key, a lost link, a time-out) ->
DEVELOPER_ERROR: a failed activation, which the keeper revives like any other.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

import paramiko

from fedkeeper.function import catalog
from fedkeeper.function.errors import PayloadTooLarge, ProviderError
from fedkeeper.function.invoke import ssh
from fedkeeper.function.invoke.base import (
    ActivationRecord,
    ActivationStatus,
    Capabilities,
    InvokeClient,
    now_ms,
)
from fedkeeper.function.redaction import register_secret
from fedkeeper.function.settings import BoundHost, HostsCluster

RUNNER_MODULE = "fedkeeper.function.tasks.stdio"


def runner_command(root: str) -> list[str]:
    """The one fixed command a host runs for us: its runtime's interpreter on the stdio runner."""
    return [f"{root.rstrip('/')}/venv/bin/python", "-m", RUNNER_MODULE]


def endpoint(host: BoundHost) -> ssh.Endpoint:
    return ssh.Endpoint(host.address, host.port, host.user)


def register_key_text(text: str) -> None:
    """Mask a private key in every log and error: whole, and line by line (a fragment too)."""
    register_secret(text, *(line.strip() for line in text.splitlines() if "-----" not in line))


class HostsClient(InvokeClient):
    """SSH hosts as a platform: synchronous, no store access, jobs travel inline.

    Parameters
    ----------
    cluster, settings
        The cluster's name and its :class:`~fedkeeper.function.settings.HostsCluster` settings,
        with the key and the hosts bound (the provider binds them at deploy).
    """

    platform: ClassVar[str] = "hosts"
    capabilities: ClassVar[Capabilities] = catalog.platform("hosts").capabilities

    def __init__(self, cluster: str, settings: HostsCluster) -> None:
        super().__init__(cluster, settings)
        self.settings: HostsCluster = self._bound(settings)
        assert self.settings.private_key is not None  # _bound checked it
        text = self.settings.private_key.get_secret_value()
        register_key_text(text)
        self._pkey = ssh.parse_private(text, f"hosts cluster {cluster!r}: private_key")

    def _bound(self, settings: HostsCluster) -> HostsCluster:
        """The settings with the key and the hosts: a client gets them bound; only the keeper's
        provider reads the key store and the registry."""
        if settings.private_key is None or settings.hosts is None:
            raise ProviderError(
                f"hosts cluster {self.cluster!r}: no key or host list is bound; redeploy with `main.py -d`"
            )
        return settings

    @property
    def hosts(self) -> list[BoundHost]:
        return list(self.settings.hosts or [])

    def host_for(self, client: int) -> BoundHost:
        hosts = self.hosts
        if not hosts:
            raise ProviderError(f"hosts cluster {self.cluster!r} has no registered hosts")
        return hosts[client % len(hosts)]

    def session(self, host: BoundHost) -> paramiko.SSHClient:
        """A logged-in connection to ``host``, its key checked against the pinned one."""
        where = f"hosts cluster {self.cluster!r}: host {host.fl_id}"
        client, _ = ssh.connect(
            endpoint(host),
            host_key=ssh.parse_public(host.host_key, f"{where}: host_key"),
            pkey=self._pkey,
            connect_timeout_s=self.settings.connect_timeout_s,
            dead_link_s=self.settings.dead_link_s,
        )
        return client

    def call(self, host: BoundHost, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One request to ``host``'s runtime; SshError when the host cannot be reached or answers nothing."""
        with self.session(host) as client:
            return ssh.call(
                client,
                endpoint(host).where,
                runner_command(host.root),
                request,
                timeout_s=timeout_s,
                reply_limit=self.capabilities.max_result_bytes,
            )

    def on_host(self, params: Mapping[str, Any], host: BoundHost) -> dict[str, Any]:
        """``params`` with a job's data files replaced by their copies on ``host`` (staged at deploy)."""
        data = params.get("data")
        staged = self.settings.data_files
        if not staged or not isinstance(data, dict) or not isinstance(data.get("dataset"), dict):
            return dict(params)
        dataset = {
            field: posixpath.join(host.root, staged[value])
            if isinstance(value, str) and value in staged
            else value
            for field, value in data["dataset"].items()
        }
        return {**params, "data": {**data, "dataset": dataset}}

    # ------------------------------------------------------------------ invocation
    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        start = now_ms()
        activation = uuid.uuid4().hex
        client = params.get("client", 0)
        if not isinstance(client, int) or isinstance(client, bool):
            return ActivationRecord(
                activation,
                ActivationStatus.APPLICATION_ERROR,
                {"error": f"job.client: expected int, got {type(client).__name__}"},
                start_ms=start,
                end_ms=now_ms(),
            )
        size = len(json.dumps(params))
        if size > self.capabilities.max_request_bytes:
            raise PayloadTooLarge(
                f"hosts cluster {self.cluster!r}: request of {size} bytes is past the "
                f"{self.capabilities.max_request_bytes} byte limit"
            )
        host = self.host_for(client)
        request = {
            "op": "run",
            "function": name,
            "params": self.on_host(params, host),
            "activation": activation,
        }
        try:
            reply = self.call(host, request, timeout_s)
        except ssh.SshError as exc:
            return ActivationRecord(
                activation,
                ActivationStatus.DEVELOPER_ERROR,
                {"error": f"host {host.fl_id}: {exc}"},
                start_ms=start,
                end_ms=now_ms(),
                timeout=isinstance(exc, ssh.CommandTimeout),
            )
        status = ActivationStatus.APPLICATION_ERROR if "error" in reply else ActivationStatus.SUCCESS
        return ActivationRecord(activation, status, reply, start_ms=start, end_ms=now_ms())
