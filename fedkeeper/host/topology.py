"""Hierarchical topology: which clients each local aggregator reduces, and where it runs.

Worked out once, by :meth:`fedkeeper.host.plan.Plan.build`, from ``server_config.topology``. A
group's local aggregator runs on a cluster whose platform meets
:data:`~fedkeeper.function.catalog.LOCAL_AGGREGATOR_NEEDS` (the aggregator is deployed there),
else on the server cluster.

``groups: clustered`` assigns clients to sites (every capable client-hosting cluster, and the
server cluster if some client's cannot host one) to minimise the round's communication cost
under a data-balance constraint:

* an update sent from a client's cluster to its group's site costs ``update_bytes`` times the
  link's price; a partial sent from a site to the server cluster costs ``model_bytes`` times it.
  A link within one cluster is free; across clusters it is the sender's platform's
  ``gb_transferred`` (egress) plus the receiver's (the store read, as ``costs.py`` prices it).
* every site's group holds examples within ``balance_tolerance`` of the mean group's, with at
  least one client's examples of slack (clients are indivisible; with it every case has an answer).

The heuristic: clients with the most to lose first (regret: second-cheapest minus cheapest site)
each take their cheapest site with room under the upper bound; groups under the lower bound then
take the cheapest clients that other groups can spare; last, single moves that lower the cost
within the bounds, until none does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedkeeper.function.catalog import LOCAL_AGGREGATOR_NEEDS
from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.config import FederatedLearning, Topology
from fedkeeper.function.invoke.base import unsupported
from fedkeeper.function.learning.architecture import architecture
from fedkeeper.function.prices import GB, Prices
from fedkeeper.host.placement import Placement

Key = tuple[str, str]


@dataclass(frozen=True)
class Group:
    """Group ``index``: its clients, and the cluster its local aggregator runs on."""

    index: int
    clients: tuple[int, ...]
    host: Key

    @property
    def where(self) -> str:
        return f"{self.host[0]}/{self.host[1]}"


def can_host(key: Key) -> bool:
    """Whether a cluster's platform can run a local aggregator (the one capability check)."""
    return not unsupported(catalog_platform(key[0]).capabilities, LOCAL_AGGREGATOR_NEEDS)


def link_price(src: Key, dst: Key, prices_of: Callable[[str], Prices]) -> float:
    """Price per byte from cluster ``src`` to ``dst``: free within a cluster, else both ends'."""
    if src == dst:
        return 0.0
    return (prices_of(src[0]).gb_transferred + prices_of(dst[0]).gb_transferred) / GB


@dataclass(frozen=True)
class Costing:
    """What the clustering prices: the links' prices, an update's and a partial's bytes."""

    prices_of: Callable[[str], Prices]
    update_bytes: int
    model_bytes: int
    server: Key

    def client(self, placement: Placement, site: Key) -> float:
        return self.update_bytes * link_price(placement.key, site, self.prices_of)

    def site(self, site: Key) -> float:
        return self.model_bytes * link_price(site, self.server, self.prices_of)


def hierarchy(
    fl: FederatedLearning, placements: Sequence[Placement], server: Key
) -> tuple[tuple[Group, ...], float]:
    """The scenario's groups and their communication cost per round (none and 0 when flat).

    Updates and partials are priced at the model's size in float32; every client counts the same
    examples (the partitions' sizes are known only once ``fl_server_init`` has split the data).
    """
    topology = fl.server_config.topology
    if not topology.hierarchical:
        return (), 0.0
    model = fl.model_params
    shapes = architecture(model, model.input_size, model.output_size).weight_shapes()
    model_bytes = 4 * sum(math.prod(shape) for shape in shapes)
    costing = Costing(fl.server_config.prices_of, model_bytes, model_bytes, server)
    groups = plan_groups(topology, placements, server, costing)
    assignment = {c: g.host for g in groups for c in g.clients}
    return groups, plan_cost(assignment, placements, costing)


def plan_groups(
    topology: Topology,
    placements: Sequence[Placement],
    server: Key,
    costing: Costing,
    examples: Mapping[int, float] | None = None,
) -> tuple[Group, ...]:
    """The groups of ``topology`` (none when flat). ``examples``: each client's (1 each if None)."""
    if not topology.hierarchical:
        return ()
    sites: dict[int, Key]
    if topology.groups == "clustered":
        weights = {p.client: float((examples or {}).get(p.client, 1.0)) for p in placements}
        sites = cluster_clients(
            placements, candidate_sites(placements, server), costing, weights, topology.balance_tolerance
        )
        members: dict[Key, list[int]] = {}
        for client, site in sorted(sites.items()):
            members.setdefault(site, []).append(client)
        return tuple(Group(i, tuple(clients), site) for i, (site, clients) in enumerate(members.items()))
    by: Callable[[Placement], object]
    if topology.groups == "explicit":
        lists = [list(m) for m in topology.members or []]
    else:
        by = (lambda p: p.key) if topology.groups == "by_cluster" else (lambda p: p.platform)
        keyed: dict[object, list[int]] = {}
        for p in placements:
            keyed.setdefault(by(p), []).append(p.client)
        lists = list(keyed.values())
    return tuple(
        Group(i, tuple(clients), _host(clients, placements, server)) for i, clients in enumerate(lists)
    )


def _host(clients: Sequence[int], placements: Sequence[Placement], server: Key) -> Key:
    """The capable cluster hosting most of ``clients`` (the first such on a tie), else the server's."""
    counts: dict[Key, int] = {}
    for client in clients:
        key = placements[client].key
        if can_host(key):
            counts[key] = counts.get(key, 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else server


def candidate_sites(placements: Sequence[Placement], server: Key) -> list[Key]:
    """Every capable client-hosting cluster, and the server's if some client's cannot host."""
    sites: list[Key] = []
    for p in placements:
        key = p.key if can_host(p.key) else server
        if key not in sites:
            sites.append(key)
    return sites


def plan_cost(assignment: Mapping[int, Key], placements: Sequence[Placement], costing: Costing) -> float:
    """A round's communication cost under ``assignment`` (client -> site): updates and partials."""
    used = set(assignment.values())
    return sum(costing.client(placements[c], s) for c, s in assignment.items()) + sum(
        costing.site(s) for s in used
    )


def balance_bounds(weights: Mapping[int, float], groups: int, tolerance: float) -> tuple[float, float]:
    """The examples a group may hold: the mean's ``1 -/+ tolerance``, with one client's slack."""
    mean = sum(weights.values()) / groups
    slack = max(tolerance * mean, max(weights.values(), default=0.0))
    return mean - slack, mean + slack


def cluster_clients(
    placements: Sequence[Placement],
    sites: Sequence[Key],
    costing: Costing,
    weights: Mapping[int, float],
    tolerance: float,
) -> dict[int, Key]:
    """Client -> site, minimising :func:`plan_cost` with every site's examples within bounds."""
    low, high = balance_bounds(weights, len(sites), tolerance)
    load = dict.fromkeys(sites, 0.0)
    cost = {(c, s): costing.client(placements[c], s) for c in weights for s in sites}

    def regret(client: int) -> float:
        ranked = sorted(cost[(client, s)] for s in sites)
        return ranked[1] - ranked[0] if len(ranked) > 1 else 0.0

    assignment: dict[int, Key] = {}
    for client in sorted(weights, key=lambda c: (-regret(c), c)):
        room = [s for s in sites if load[s] + weights[client] <= high] or list(sites)
        site = min(room, key=lambda s: (cost[(client, s)], load[s]))
        assignment[client] = site
        load[site] += weights[client]
    # Fill groups under the lower bound from those that can spare a client. With one client of
    # slack there always is one: a group at or above the mean exists and stays above the bound.
    for site in sites:
        while load[site] < low:
            movable = [
                c for c, s in assignment.items()
                if s != site and load[s] - weights[c] >= low and load[site] + weights[c] <= high
            ]  # fmt: skip
            client = min(movable, key=lambda c: (cost[(c, site)] - cost[(c, assignment[c])], c))
            load[assignment[client]] -= weights[client]
            assignment[client], load[site] = site, load[site] + weights[client]
    improved = True
    while improved:  # single moves that lower the cost and keep both groups within bounds
        improved = False
        for client, now in sorted(assignment.items()):
            for site in sites:
                gain = cost[(client, now)] - cost[(client, site)]
                fits = load[now] - weights[client] >= low and load[site] + weights[client] <= high
                if site != now and gain > 0 and fits:
                    load[now] -= weights[client]
                    load[site] += weights[client]
                    assignment[client], now, improved = site, site, True
    return assignment
