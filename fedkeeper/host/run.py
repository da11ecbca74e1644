"""The one wiring of a command: open the providers, plan once, then deploy, train, remove.

The CLI, the end-to-end tests and ``bench/`` all go through :func:`opened`, so each of them runs
the same plan through the same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedkeeper.function.catalog import PLATFORMS
from fedkeeper.function.config import Config
from fedkeeper.function.store.db import Store
from fedkeeper.host import deployment
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.plan import Key, Plan
from fedkeeper.host.providers.base import Provider
from fedkeeper.host.providers.registry import providers_from_config

ALL_PLATFORMS = tuple(p.name for p in PLATFORMS)


@contextmanager
def opened_providers(
    config: Config, platforms: tuple[str, ...] = ALL_PLATFORMS
) -> Iterator[dict[Key, Provider]]:
    """Every configured cluster of ``platforms``, closed on the way out."""
    providers: dict[Key, Provider] = {}
    try:
        for platform in platforms:
            for name, provider in providers_from_config(config, platform).items():
                providers[(platform, name)] = provider
        yield providers
    finally:
        for provider in providers.values():
            provider.close()


@dataclass(frozen=True)
class Run:
    """One command's configuration, its opened clusters and the plan made from them."""

    config: Config
    providers: Mapping[Key, Provider]
    plan: Plan

    def deploy(self, say: Callable[[str], None], params_dir: Path | None = None) -> None:
        """Deploy every function of the plan (``params_dir``: write ``params/`` first)."""
        if params_dir is not None:
            deployment.write_params(self.plan, params_dir)
        deployment.deploy(self.plan, self.providers, say)

    def keeper(self, store: Store) -> Keeper:
        """A keeper for this plan's sessions (``start()`` or ``resume(session)``)."""
        return Keeper(self.config, self.plan, store, self.providers)

    def remove(self, say: Callable[[str], None]) -> None:
        deployment.remove(self.plan, self.providers, say)


@contextmanager
def opened(config: Config) -> Iterator[Run]:
    """Open ``config``'s providers and plan its ``federated_learning`` scenario, once."""
    with opened_providers(config) as providers:
        yield Run(config, providers, Plan.build(config, providers))
