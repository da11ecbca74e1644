"""The ``Provider`` protocol: a platform's invoke client plus its deploy API.

The invoking half (:class:`~fedkeeper.function.invoke.base.InvokeClient`, records, capabilities)
is function side, since the invoker calls its targets from inside a function; deploying and
removing run only beside the keeper.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from fedkeeper.function.errors import ProviderError
from fedkeeper.function.invoke.base import InvokeClient, Needs, unsupported

if TYPE_CHECKING:
    from fedkeeper.function.config import Config


@dataclass(frozen=True)
class FunctionSpec:
    """A function to deploy: its source folder and the platform settings.

    ``bound`` holds deploy-time parameters (store URL, credentials): OpenWhisk binds them as
    action parameters, GCF and Lambda as environment variables. They are never sent per call.
    """

    name: str
    source: Path
    memory_mb: int = 256
    timeout_s: int = 60
    concurrency: int = 1
    bound: Mapping[str, Any] = field(default_factory=dict)
    web_export: bool = False
    instances: int = 1  # devices to run (edge fleets); FaaS platforms scale by themselves and ignore it

    @property
    def needs(self) -> Needs:
        """What deploying this spec asks of a platform's limits."""
        return Needs(duration_s=self.timeout_s, memory_mb=self.memory_mb)


class Provider(InvokeClient):
    """A FaaS platform (or the edge gateway) that hosts fedkeeper's functions: invoke and deploy.

    Parameters
    ----------
    cluster
        The cluster's name in ``config.yaml``; used in ledger entries and logs.
    settings
        The cluster's validated configuration model.
    """

    @classmethod
    def from_config(cls, cluster: str, settings: Any, config: Config) -> Self:
        """The provider of a configured cluster. A platform that needs more of the configuration
        than its cluster's settings (the SSH hosts read their registry from the scenario's store)
        overrides this."""
        return cls(cluster, settings)

    def refuse_unsupported(self, spec: FunctionSpec) -> None:
        """Raise ProviderError naming every limit of this platform that ``spec`` is outside."""
        reasons = unsupported(self.capabilities, spec.needs)
        if reasons:
            raise ProviderError(f"{self.where}: function {spec.name}: {'; '.join(reasons)}")

    @abstractmethod
    def deploy(self, spec: FunctionSpec) -> None:
        """Create or update the function (idempotent)."""

    @abstractmethod
    def remove(self, name: str) -> bool:
        """Delete the function; ``False`` when it did not exist (safe to call twice)."""
