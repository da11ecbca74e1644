"""What one command does, worked out once: the :class:`Plan`.

From the configuration (and the opened providers, whose settings the invoker is bound to): where
each client runs and how the keeper reaches it, which cluster runs the managing functions, and
every function to deploy with its limits and deploy-time bindings. Deployment, the keeper,
``fedkeeper check``, the tests and the benchmarks all read this one object; none of them places,
routes or binds anything itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fedkeeper.function.catalog import (
    AGGREGATOR_FUNCTION,
    CLIENT_FUNCTION,
    EVALUATE_NEEDS,
    INVOKER_FUNCTION,
    MANAGING_FUNCTIONS,
)
from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.config import FUNCTION_NAMES, Config
from fedkeeper.function.invoke.base import unsupported
from fedkeeper.function.prices import CURRENCY
from fedkeeper.function.settings import FunctionSettings
from fedkeeper.host.packaging import function_dir
from fedkeeper.host.placement import Placement, Route, place_clients
from fedkeeper.host.providers.base import FunctionSpec, Provider
from fedkeeper.host.services import store_url
from fedkeeper.host.topology import Group, hierarchy

Key = tuple[str, str]  # (platform, cluster): a cluster among the opened providers


@dataclass(frozen=True)
class Deployment:
    """One function on one cluster; ``spec`` holds its limits and deploy-time bindings."""

    platform: str
    cluster: str
    spec: FunctionSpec

    @property
    def key(self) -> Key:
        return (self.platform, self.cluster)

    @property
    def where(self) -> str:
        return f"{self.platform}/{self.cluster}"


@dataclass(frozen=True)
class Plan:
    """Placements, routes, the server cluster, deployments with their bindings, and limits.

    Attributes
    ----------
    server
        The cluster that runs the managing functions (and the invoker).
    placements
        Client ``i`` is ``placements[i]``: its cluster and its route.
    deployments
        Every function this configuration deploys, in deploy order (managing functions first).
    limits
        Each catalog function's settings (memory, timeout, concurrency).
    groups
        With ``topology: hierarchical``, the groups of clients and where each one's local
        aggregator runs (``host/topology.py``); empty when flat.
    communication_cost
        A round's cost of moving every client's update to its group's aggregator and each
        partial to the server cluster, at the clustering's link prices (0 when flat).
    """

    server: Key
    placements: tuple[Placement, ...]
    deployments: tuple[Deployment, ...]
    limits: Mapping[str, FunctionSettings]
    groups: tuple[Group, ...] = ()
    communication_cost: float = 0.0

    @classmethod
    def build(cls, config: Config, providers: Mapping[Key, Provider] | None = None) -> Plan:
        """The plan of ``config``'s ``federated_learning`` scenario.

        ``providers``: the opened clusters; the invoker is bound to their settings (an edge
        cluster's include its gateway token). Without them, the config's settings: enough for
        ``fedkeeper check``, which deploys nothing and opens no provider.
        """
        fl = config.fl
        placements = tuple(place_clients(config))
        server = (config.server_platform, fl.server_config.cluster)
        limits = {name: fl.functions.settings(name) for name in FUNCTION_NAMES}
        mongo = fl.mongo_config
        store = {"store": {"url": store_url(mongo), "database": mongo.database}}

        def settings(key: Key) -> Any:
            if providers is not None:
                return providers[key].settings
            return config.providers.clusters(key[0])[key[1]]

        counts = _clients_per_cluster(placements)
        via_invoker = {p.key for p in placements if p.route is Route.VIA_INVOKER}
        targets = {
            f"{platform}/{cluster}": {
                "platform": platform,
                "cluster": cluster,
                "settings": settings((platform, cluster)).model_dump(mode="json"),
            }
            for platform, cluster in counts
            if (platform, cluster) in via_invoker
        }

        def spec(name: str, bound: Mapping[str, Any], instances: int = 1) -> FunctionSpec:
            limit = limits[name]
            return FunctionSpec(
                name=name,
                source=function_dir(name),
                memory_mb=limit.memory,
                timeout_s=limit.timeout,
                concurrency=limit.concurrency,
                bound=bound,
                instances=instances,
            )

        invoker = {**store, "targets": targets}
        deployments = [
            Deployment(*server, spec(name, invoker if name == INVOKER_FUNCTION else store))
            for name in MANAGING_FUNCTIONS
        ]
        for (platform, cluster), count in counts.items():
            bound = store if catalog_platform(platform).capabilities.store_access else {}
            deployments.append(Deployment(platform, cluster, spec(CLIENT_FUNCTION, bound, count)))
        groups, cost = hierarchy(fl, placements, server)
        for host in dict.fromkeys(g.host for g in groups if g.host != server):
            deployments.append(Deployment(*host, spec(AGGREGATOR_FUNCTION, store)))
        return cls(server, placements, tuple(deployments), MappingProxyType(limits), groups, cost)

    @property
    def server_where(self) -> str:
        return f"{self.server[0]}/{self.server[1]}"

    def clients_per_cluster(self) -> dict[Key, int]:
        """How many clients each client-hosting cluster runs (catalog order)."""
        return _clients_per_cluster(self.placements)

    def invoked(self, client: int) -> tuple[Key, str]:
        """The cluster and function an attempt of ``client`` invokes: ``fl_client`` on its own
        cluster (direct), else the invoker on the server cluster."""
        placement = self.placements[client]
        if placement.route is Route.DIRECT:
            return placement.key, CLIENT_FUNCTION
        return self.server, INVOKER_FUNCTION

    def cannot_evaluate(self) -> dict[str, str]:
        """``platform/cluster`` -> why its clients cannot take part in federated evaluation, for
        each client-hosting cluster whose platform cannot (the one capability check)."""
        reasons = {
            key: unsupported(catalog_platform(key[0]).capabilities, EVALUATE_NEEDS)
            for key in self.clients_per_cluster()
        }
        return {f"{p}/{c}": "; ".join(why) for (p, c), why in reasons.items() if why}

    def evaluators(self) -> tuple[int, ...]:
        """The clients that can evaluate: federated evaluation's pool."""
        cannot = self.cannot_evaluate()
        return tuple(p.client for p in self.placements if p.target not in cannot)

    def client_only(self) -> set[str]:
        """``platform/cluster`` of every cluster that hosts clients but not the managing functions."""
        return {f"{p}/{c}" for p, c in self.clients_per_cluster()} - {self.server_where}

    def topology_lines(self) -> list[str]:
        """The groups, where each one's local aggregator runs, and the plan's communication cost."""
        lines = [
            f"group {g.index}: clients {list(g.clients)} -> local aggregator on {g.where}"
            for g in self.groups
        ]
        lines.append(
            f"topology hierarchical: {len(self.groups)} local aggregators, communication cost "
            f"{self.communication_cost:.6f} {CURRENCY} per round (updates to their aggregators, partials to "
            f"{self.server_where})"
        )
        return lines

    def on(self, key: Key) -> list[Deployment]:
        """What is deployed to one cluster."""
        return [d for d in self.deployments if d.key == key]


def _clients_per_cluster(placements: tuple[Placement, ...]) -> dict[Key, int]:
    counts: dict[Key, int] = {}
    for p in placements:
        counts[p.key] = counts.get(p.key, 0) + 1
    return counts
