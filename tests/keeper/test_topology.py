"""Topology hierarchical: the plan's groups, where their local aggregators run, and the clustering."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION
from fedkeeper.function.config import parse_config
from fedkeeper.function.prices import GB, Prices
from fedkeeper.host.cli import capability_report
from fedkeeper.host.placement import Placement, Route
from fedkeeper.host.plan import Plan
from fedkeeper.host.topology import (
    Costing,
    balance_bounds,
    candidate_sites,
    cluster_clients,
    plan_cost,
)
from tests.keeper.test_plan import EDGE, GCF, SERVER
from tests.keeper.test_plan import _config as three_platforms

PRICES = {
    "openwhisk": Prices(gb_transferred=0.02),
    "google": Prices(gb_transferred=0.12),
    "aws": Prices(gb_transferred=0.09),
    "edge": Prices(gb_transferred=0.0),
}


def _plan(**topology: Any) -> Plan:
    data = three_platforms()
    data["scenarios"]["federated_learning"]["server_config"]["topology"] = {
        "kind": "hierarchical",
        **topology,
    }
    return Plan.build(parse_config(data))


def test_groups_by_cluster_run_their_local_aggregator_where_the_platform_can_host_it() -> None:
    plan = _plan(groups="by_cluster")
    assert [(g.clients, g.host) for g in plan.groups] == [
        ((0, 1), SERVER),
        ((2,), GCF),  # GCF reaches the store: the aggregator is deployed there
        ((3,), SERVER),  # an edge device cannot host it: the server cluster does
    ]
    aggregators = [d.key for d in plan.deployments if d.spec.name == AGGREGATOR_FUNCTION]
    assert aggregators == [SERVER, GCF]
    gcf = next(d for d in plan.deployments if d.key == GCF and d.spec.name == AGGREGATOR_FUNCTION)
    assert "store" in gcf.spec.bound
    assert plan.communication_cost > 0  # the edge update and GCF's partial cross clusters


def test_groups_by_platform_explicit_and_flat() -> None:
    assert [g.clients for g in _plan(groups="by_platform").groups] == [(0, 1), (2,), (3,)]
    explicit = _plan(groups="explicit", members=[[0, 2], [1, 3]])
    assert [(g.clients, g.host) for g in explicit.groups] == [((0, 2), SERVER), ((1, 3), SERVER)]
    flat = Plan.build(parse_config(three_platforms()))
    assert flat.groups == () and flat.communication_cost == 0.0
    assert [d.key for d in flat.deployments if d.spec.name == AGGREGATOR_FUNCTION] == [SERVER]


def _placements(clusters: list[tuple[str, str]]) -> list[Placement]:
    return [Placement(i, p, c, Route.DIRECT) for i, (p, c) in enumerate(clusters)]


def _costing(server: tuple[str, str]) -> Costing:
    return Costing(PRICES.__getitem__, update_bytes=GB // 10, model_bytes=GB // 10, server=server)


def _naive(clients: list[int], sites: list[tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """Round robin: balanced by count, blind to prices."""
    return {c: sites[i % len(sites)] for i, c in enumerate(clients)}


LAYOUTS = [
    # skewed: most clients on GCF, a few on each other cloud
    [("google", "g")] * 7 + [("aws", "a")] * 2 + [("openwhisk", "ow")] * 3,
    # interleaved three clouds
    [("openwhisk", "ow"), ("google", "g"), ("aws", "a"), ("google", "g")] * 3,
    # one cloud far larger, uneven examples below
    [("aws", "a")] * 9 + [("google", "g")] * 1 + [("openwhisk", "ow")] * 2,
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tolerance", [0.0, 0.25, 1.0])
def test_clustering_keeps_every_group_within_the_balance_and_costs_no_more_than_round_robin(
    layout: list[tuple[str, str]], tolerance: float
) -> None:
    placements = _placements(layout)
    server = ("openwhisk", "ow")
    sites = candidate_sites(placements, server)
    examples = {p.client: float(100 + 37 * (p.client % 4)) for p in placements}
    costing = _costing(server)
    assignment = cluster_clients(placements, sites, costing, examples, tolerance)

    assert set(assignment) == set(examples)
    low, high = balance_bounds(examples, len(sites), tolerance)
    for site in sites:
        load = sum(examples[c] for c, s in assignment.items() if s == site)
        assert low <= load <= high, (site, load, low, high)
    naive = _naive(list(examples), sites)
    assert plan_cost(assignment, placements, costing) <= plan_cost(naive, placements, costing)


def test_clustering_beats_round_robin_where_clients_cluster_on_one_cloud() -> None:
    placements = _placements(LAYOUTS[1])
    server = ("openwhisk", "ow")
    sites = candidate_sites(placements, server)
    examples = dict.fromkeys(range(len(placements)), 1.0)
    costing = _costing(server)
    assignment = cluster_clients(placements, sites, costing, examples, 0.25)
    moved = [p.client for p in placements if assignment[p.client] != p.key]
    assert len(moved) == 1  # GCF's six clients are one past the bound: one leaves its cloud
    assert plan_cost(assignment, placements, costing) < plan_cost(
        _naive(list(examples), sites), placements, costing
    )


def test_clustering_is_at_most_the_best_assignment_found_by_brute_force_plus_a_margin() -> None:
    """On a small case the heuristic is close to the optimum under the same constraint."""
    placements = _placements([("google", "g")] * 4 + [("aws", "a")] + [("openwhisk", "ow")])
    server = ("openwhisk", "ow")
    sites = candidate_sites(placements, server)
    examples = dict.fromkeys(range(len(placements)), 1.0)
    costing = _costing(server)
    low, high = balance_bounds(examples, len(sites), 0.25)
    best = min(
        plan_cost(dict(enumerate(choice)), placements, costing)
        for choice in itertools.product(sites, repeat=len(placements))
        if all(low <= sum(s == site for s in choice) <= high for site in sites)
    )
    got = plan_cost(cluster_clients(placements, sites, costing, examples, 0.25), placements, costing)
    assert best <= got <= best * 1.5


def test_one_heavy_client_still_gets_an_assignment_within_one_clients_slack() -> None:
    placements = _placements([("google", "g"), ("aws", "a"), ("openwhisk", "ow"), ("google", "g")])
    examples = {0: 1.0, 1: 1.0, 2: 1000.0, 3: 5.0}  # one client outweighs the rest
    sites = candidate_sites(placements, ("openwhisk", "ow"))
    assignment = cluster_clients(placements, sites, _costing(("openwhisk", "ow")), examples, 0.0)
    low, high = balance_bounds(examples, len(sites), 0.0)
    assert (low, high) == (sum(examples.values()) / 3 - 1000.0, sum(examples.values()) / 3 + 1000.0)
    assert assignment[2] == ("openwhisk", "ow")  # it stays home; the rest are within the slack


def test_clustered_groups_in_the_plan_use_a_site_per_capable_cluster() -> None:
    plan = _plan(groups="clustered")
    hosts = {g.host for g in plan.groups}
    assert hosts <= {SERVER, GCF} and EDGE not in hosts
    assert sorted(c for g in plan.groups for c in g.clients) == [0, 1, 2, 3]


def test_fedkeeper_check_prints_the_groups_and_the_plans_cost() -> None:
    data = three_platforms()
    server = data["scenarios"]["federated_learning"]["server_config"]
    server["topology"] = {"kind": "hierarchical", "groups": "by_cluster"}
    server["prices"] = {"openwhisk": {"gb_transferred": 0.02}}
    lines, problems = capability_report(parse_config(data))
    plan = Plan.build(parse_config(data))
    assert problems == 0
    assert "group 1: clients [2] -> local aggregator on google/gcf" in lines
    assert lines[-1] == (
        f"topology hierarchical: 3 local aggregators, communication cost {plan.communication_cost:.6f} USD "
        "per round (updates to their aggregators, partials to openwhisk/local)"
    )
    assert plan.communication_cost > 0
