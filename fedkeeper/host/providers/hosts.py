"""The SSH hosts' deploy API: the host registry and the installation's key, bound for the invoker.

A ``providers.hosts.<cluster>`` serves its clients on the registered hosts that carry its
``labels`` (all hosts when it names none), in FL-identifier order. Built from the configuration,
the provider reads those hosts from the registry in the scenario's MongoDB and the installation's
key from the key store, and puts both into its settings: that is the binding the invoker gets
(``private_key`` is a secret: masked in ``params/`` and logs, like every platform credential).
``deploy`` installs the client runtime and the scenario's data files on every one of those hosts
(idempotent, see :mod:`fedkeeper.host.hosts.runtime`); ``remove`` leaves hosts as they are, since the runtime
belongs to the host's registration (``fedkeeper hosts``), not to one configuration.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import SecretStr

from fedkeeper.function.config import Config, TrainingTestData
from fedkeeper.function.errors import ConfigError, ProviderError
from fedkeeper.function.invoke.hosts import HostsClient
from fedkeeper.function.settings import HostsCluster
from fedkeeper.host.hosts import keys, runtime
from fedkeeper.host.hosts.registry import Host, HostQuery, HostRegistry
from fedkeeper.host.providers.base import FunctionSpec, Provider
from fedkeeper.host.services import Services


class HostsProvider(HostsClient, Provider):
    """Registered SSH hosts as a platform, deployed to from the keeper's machine.

    Parameters
    ----------
    cluster, settings
        The cluster's name and its :class:`~fedkeeper.function.settings.HostsCluster` settings.
    registry
        The host registry; without it the settings must carry the key and the hosts (a binding).
    """

    def __init__(
        self,
        cluster: str,
        settings: HostsCluster,
        *,
        registry: HostRegistry | None = None,
        data: TrainingTestData | None = None,
    ) -> None:
        self.registry = registry
        self.data = data
        self.labels = dict(settings.labels)
        self._services: Services | None = None
        super().__init__(cluster, settings)

    @classmethod
    def from_config(cls, cluster: str, settings: Any, config: Config) -> Self:
        if config.scenarios.federated_learning is None:
            raise ConfigError(
                f"providers.hosts.{cluster}: the host registry lives in the scenario's MongoDB "
                "(scenarios.federated_learning.mongo_config), and there is no scenario"
            )
        services = Services(config)  # holds an embedded store while this provider is open
        try:
            registry = HostRegistry(services.store())
            provider = cls(cluster, settings, registry=registry, data=config.fl.training_test_data)
        except BaseException:
            services.close()
            raise
        provider._services = services
        return provider

    def _bound(self, settings: HostsCluster) -> HostsCluster:
        """The key from the key store and the hosts from the registry, where the settings lack them."""
        update: dict[str, Any] = {}
        if settings.private_key is None:
            update["private_key"] = SecretStr(keys.load().text)
        if settings.hosts is None and self.registry is not None:
            update["hosts"] = [h.bound() for h in self.registered()]
        if not settings.data_files and self.data is not None:
            update["data_files"] = runtime.data_files(self.data)
        return super()._bound(settings.model_copy(update=update) if update else settings)

    def registered(self) -> list[Host]:
        """The registry's hosts that serve this cluster, in client order."""
        if self.registry is None:
            raise ProviderError(f"hosts cluster {self.cluster!r}: no host registry (built from a binding)")
        return list(self.registry.all(HostQuery(labels=self.labels)))

    # ------------------------------------------------------------------ control plane
    def deploy(self, spec: FunctionSpec) -> None:
        """Install the client runtime on every host of the cluster (each function runs in it)."""
        self.refuse_unsupported(spec)
        hosts = self.registered()
        if not hosts:
            wanted = ", ".join(f"{k}={v}" for k, v in self.labels.items()) or "any labels"
            raise ProviderError(
                f"hosts cluster {self.cluster!r}: no registered host with {wanted} "
                "(fedkeeper hosts add ADDRESS registers one)"
            )
        assert self.registry is not None  # registered() checked it
        key = keys.load()
        bundle = runtime.Bundle.build()
        for host in hosts:
            runtime.deploy(host, key, bundle, self.registry, self.settings.data_files)

    def remove(self, name: str) -> bool:
        return False

    def close(self) -> None:
        if self._services is not None:
            self._services.close()
            self._services = None
