"""Which client runs where, and how the keeper reaches it.

The route is decided here and only here, from the platform's declared capabilities (its catalog
line, which its invoke client and provider read too):
a platform that can start activations asynchronously *and* reach the store runs ``fl_client``
directly; any other is reached through ``fl_invoker_weights_update`` on the server cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fedkeeper.function.catalog import DIRECT_CLIENT_NEEDS, PLATFORMS
from fedkeeper.function.config import Config
from fedkeeper.function.invoke.base import Capabilities, unsupported


class Route(StrEnum):
    DIRECT = "direct"
    VIA_INVOKER = "via invoker"


def route_for(capabilities: Capabilities) -> Route:
    """DIRECT where the platform meets :data:`~fedkeeper.function.catalog.DIRECT_CLIENT_NEEDS`."""
    return Route.VIA_INVOKER if unsupported(capabilities, DIRECT_CLIENT_NEEDS) else Route.DIRECT


@dataclass(frozen=True)
class Placement:
    """Client ``client`` runs on ``platform/cluster`` and is reached by ``route``."""

    client: int
    platform: str
    cluster: str
    route: Route

    @property
    def key(self) -> tuple[str, str]:
        """Its cluster's key among the opened providers."""
        return (self.platform, self.cluster)

    @property
    def target(self) -> str:
        """The key under which the invoker holds this cluster's binding."""
        return f"{self.platform}/{self.cluster}"

    def as_doc(self) -> dict[str, Any]:
        return {"client": self.client, "platform": self.platform, "cluster": self.cluster}


def place_clients(config: Config) -> list[Placement]:
    """Number clients 0..n-1 platform by platform (catalog order), round-robin over each platform's
    clusters."""
    info = config.fl.clients_info
    placements: list[Placement] = []
    for platform in PLATFORMS:
        clusters = sorted(config.providers.clusters(platform.name))
        for i in range(info.count(platform)):
            cluster = clusters[i % len(clusters)]
            route = route_for(platform.capabilities)
            placements.append(Placement(len(placements), platform.name, cluster, route))
    return placements
