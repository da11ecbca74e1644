"""The edge platform's deploy API: a fleet of QEMU-emulated devices behind the edge gateway on this host.

``deploy`` of ``fl_client`` with ``spec.instances = N`` starts (or resizes) a detached gateway
daemon with N guests; ``remove`` stops it. Invoking lives in
:class:`~fedkeeper.function.invoke.edge.EdgeClient` (the invoker function needs it).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from fedkeeper.function.config import EdgeCluster
from fedkeeper.function.errors import ProviderError
from fedkeeper.function.invoke.edge import CLIENT_FUNCTION, EdgeClient
from fedkeeper.function.tasks.contract import EDGE_TOKEN_FILE
from fedkeeper.host.providers.base import FunctionSpec, Provider


class EdgeProvider(EdgeClient, Provider):
    """QEMU edge devices as a platform, deployed and removed from the keeper's host.

    Parameters
    ----------
    cluster, settings
        The cluster's name and its :class:`~fedkeeper.function.config.EdgeCluster` settings.
    state_dir
        Where the gateway daemon keeps its pid, log and URL (default :func:`~fedkeeper.function.invoke.edge.default_state_dir`).
    gateway_args
        More ``python -m fedkeeper.host.edge`` flags for the daemon (``--accel``, ``--kernel`` ...).
    """

    def __init__(
        self,
        cluster: str,
        settings: EdgeCluster,
        *,
        state_dir: Path | None = None,
        gateway_args: list[str] | None = None,
    ) -> None:
        super().__init__(cluster, settings, state_dir=state_dir)
        self.gateway_args = list(gateway_args or [])

    def _with_token(self, settings: EdgeCluster) -> EdgeCluster:
        """Without a configured token, the one in the state dir (created on first use)."""
        if settings.token is None:
            from fedkeeper.host.edge.token import load_or_create  # the fleet's modules load on first use

            token = load_or_create(self.state_dir / EDGE_TOKEN_FILE)
            settings = settings.model_copy(update={"token": SecretStr(token)})
        return settings

    # ------------------------------------------------------------------ control plane
    def deploy(self, spec: FunctionSpec) -> None:
        """Run ``spec.instances`` guests for ``fl_client``; a running fleet of another size, token or
        firmware is replaced."""
        from fedkeeper.host.edge.firmware import ensure_built
        from fedkeeper.host.edge.process import running_daemon, start_daemon, stop_daemon
        from fedkeeper.host.edge.token import fingerprint

        if spec.name != CLIENT_FUNCTION:
            raise ProviderError(
                f"edge cluster {self.cluster!r} hosts only {CLIENT_FUNCTION}, not {spec.name!r}"
            )
        if spec.instances < 1:
            raise ProviderError(
                f"edge cluster {self.cluster!r}: instances must be at least 1 (got {spec.instances})"
            )
        running = running_daemon(self.state_dir)
        same = running is not None and (running.instances, running.token_id, running.firmware) == (
            spec.instances,
            fingerprint(self.token),
            self.settings.firmware,
        )
        if same:
            return
        if running is not None:
            stop_daemon(self.state_dir)
        s = self.settings
        kernel = ensure_built(s.firmware)
        args = [
            "--firmware", s.firmware,
            "--kernel", str(kernel),
            "--qemu", s.qemu,
            "--boot-timeout-s", str(s.boot_timeout_s),
            "--job-timeout-s", str(spec.timeout_s),
            *(["--memory-mb", str(s.memory_mb)] if s.memory_mb is not None else []),
            *(f"--dataset={name}={path}" for name, path in s.datasets.items()),
            *self.gateway_args,
        ]  # fmt: skip
        start_daemon(
            self.state_dir,
            spec.instances,
            s.gateway_host,
            s.gateway_port,
            args,
            start_timeout=s.boot_timeout_s + 60.0,
            token=self.token,
        )

    def remove(self, name: str) -> bool:
        from fedkeeper.host.edge.process import stop_daemon

        if name != CLIENT_FUNCTION:
            return False
        return stop_daemon(self.state_dir)
