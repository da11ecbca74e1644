"""The plan: placements, routes, bindings and limits, worked out once from the config."""

from __future__ import annotations

from typing import Any

from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION, MANAGING_FUNCTIONS
from fedkeeper.function.config import parse_config
from fedkeeper.host.placement import Route
from fedkeeper.host.plan import Plan

SERVER = ("openwhisk", "local")
GCF = ("google", "gcf")
EDGE = ("edge", "fleet")


def _config() -> dict[str, Any]:
    return {
        "providers": {
            "openwhisk": {"local": {"local": True}},
            "google": {"gcf": {"project": "p"}},
            "edge": {"fleet": {}},
        },
        "scenarios": {
            "federated_learning": {
                "server_config": {"cluster": "local", "num_clients_per_round": 2},
                "clients_info": {
                    "total_num_clients": 4,
                    "ow_clients_count": 2,
                    "gcf_clients_count": 1,
                    "edge_clients_count": 1,
                },
                "functions": {"fl_client": {"memory": 2048, "timeout": 170}},
            }
        },
    }


def test_clients_are_placed_in_catalog_order_and_routed_by_their_platforms_capabilities() -> None:
    plan = Plan.build(parse_config(_config()))
    assert [(p.client, p.key, p.route) for p in plan.placements] == [
        (0, SERVER, Route.DIRECT),
        (1, SERVER, Route.DIRECT),
        (2, GCF, Route.VIA_INVOKER),
        (3, EDGE, Route.VIA_INVOKER),
    ]
    assert plan.invoked(1) == (SERVER, CLIENT_FUNCTION)
    assert plan.invoked(2) == (SERVER, INVOKER_FUNCTION)  # the invoker runs on the server cluster
    assert plan.client_only() == {"google/gcf", "edge/fleet"}


def test_the_invoker_is_bound_to_exactly_the_clusters_behind_it_and_clients_to_the_store_where_they_reach_it() -> (
    None
):
    plan = Plan.build(parse_config(_config()))
    assert [(d.key, d.spec.name, d.spec.instances) for d in plan.deployments] == [
        *((SERVER, name, 1) for name in MANAGING_FUNCTIONS),
        (SERVER, CLIENT_FUNCTION, 2),
        (GCF, CLIENT_FUNCTION, 1),
        (EDGE, CLIENT_FUNCTION, 1),
    ]
    bound = {(d.key, d.spec.name): dict(d.spec.bound) for d in plan.deployments}
    assert set(bound[(SERVER, INVOKER_FUNCTION)]["targets"]) == {"google/gcf", "edge/fleet"}
    assert bound[(SERVER, INVOKER_FUNCTION)]["targets"]["google/gcf"]["settings"]["project"] == "p"
    assert "store" in bound[(SERVER, CLIENT_FUNCTION)] and "store" in bound[(GCF, CLIENT_FUNCTION)]
    assert bound[(EDGE, CLIENT_FUNCTION)] == {}  # devices cannot reach the store: no credentials go there


def test_each_functions_limits_come_from_its_settings_once() -> None:
    plan = Plan.build(parse_config(_config()))
    assert plan.limits[CLIENT_FUNCTION].timeout == 170
    assert {
        (d.spec.memory_mb, d.spec.timeout_s) for d in plan.deployments if d.spec.name == CLIENT_FUNCTION
    } == {(2048, 170)}


def test_federated_evaluation_leaves_out_clients_whose_platform_cannot_evaluate_with_the_reason() -> None:
    plan = Plan.build(parse_config(_config()))
    assert plan.evaluators() == (0, 1, 2)  # OpenWhisk and GCF clients; not the edge devices
    assert plan.cannot_evaluate() == {"edge/fleet": "fixed trainer: trains only, no federated evaluation"}
