"""Fault injection: each kind gives OpenWhisk's status for it; plans are seeded and per action."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import requests

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.fabric.faults import NO_FAULT, FaultPlan, FaultPlanError

from .conftest import FabricClient, annotation, basic
from .snippets import ECHO, SLEEP

OTHER_KEY = "0f7c2d1e-other-tenant:another-namespace-key"


@pytest.fixture
def clean_faults(fabric: FabricClient) -> Iterator[FabricClient]:
    yield fabric
    fabric.set_faults({})


@pytest.mark.parametrize(
    ("kind", "status", "code", "http"),
    [
        ("application_error", "application error", 1, 502),
        ("developer_error", "action developer error", 2, 502),
        ("internal_error", "whisk internal error", 3, 500),
    ],
)
def test_each_injected_status_fault_gives_openwhisks_status(
    clean_faults: FabricClient, name: str, kind: str, status: str, code: int, http: int
) -> None:
    fabric = clean_faults
    fabric.deploy(name, ECHO)
    assert fabric.set_faults({"actions": {name: {kind: 1.0}}}).status_code == 200
    response = fabric.invoke(name, blocking=True)
    assert response.status_code == http
    record = response.json()
    assert record["response"]["status"] == status
    assert record["response"]["statusCode"] == record["statusCode"] == code
    assert record["response"]["success"] is False
    assert "error" in record["response"]["result"]
    assert annotation(record, "fault")["status"] == status
    # The stored record says the same.
    assert fabric.activation(record["activationId"]).json()["response"]["status"] == status


def test_faults_apply_per_action_over_the_default(clean_faults: FabricClient, name: str) -> None:
    fabric = clean_faults
    fabric.deploy(name, ECHO)
    fabric.deploy(name + "-spared", ECHO)
    fabric.set_faults(
        {"default": {"application_error": 1.0}, "actions": {name + "-spared": {"application_error": 0}}}
    )
    assert fabric.run(name)["response"]["status"] == "application error"
    spared = fabric.run(name + "-spared")
    assert spared["response"]["status"] == "success"
    assert annotation(spared, "fault") is None


def test_injected_crash_kills_the_worker_mid_run(clean_faults: FabricClient, name: str) -> None:
    fabric = clean_faults
    fabric.deploy(name, SLEEP)
    healthy = fabric.run(name, {"seconds": 0})
    fabric.set_faults({"actions": {name: {"crash": 1.0}}})
    crashed = fabric.run(name, {"seconds": 0.5})
    assert crashed["response"]["status"] == "action developer error"
    assert crashed["response"]["result"] == {
        "error": "The action did not produce a valid response and exited unexpectedly."
    }
    fabric.set_faults({})
    after = fabric.run(name, {"seconds": 0})
    assert annotation(after, "initTime") is not None  # a new worker replaced the killed one
    assert after["response"]["result"]["worker"] != healthy["response"]["result"]["worker"]


def test_lost_record_never_appears(start_fabric: Callable[..., FabricClient], name: str) -> None:
    fabric = start_fabric(limits={"blocking_wait_s": 1.0}, faults={"actions": {name: {"lost_record": 1.0}}})
    fabric.deploy(name, ECHO)
    activation_id = fabric.invoke(name).json()["activationId"]
    blocking = fabric.invoke(name, blocking=True)
    assert blocking.status_code == 202  # the wait ran out: no record ever came
    time.sleep(0.5)
    assert fabric.activation(activation_id).status_code == 404
    assert fabric.activation(blocking.json()["activationId"]).status_code == 404
    listed = fabric.session.get(fabric.ns("activations"), params={"name": name}, timeout=5).json()
    assert listed == []


def test_added_latency_delays_the_activation(clean_faults: FabricClient, name: str) -> None:
    fabric = clean_faults
    fabric.deploy(name, ECHO)
    fabric.run(name)  # warm
    fabric.set_faults({"actions": {name: {"latency_ms": [300, 400]}}})
    started = time.monotonic()
    record = fabric.run(name)
    assert time.monotonic() - started >= 0.3
    assert record["response"]["status"] == "success"
    assert 300 <= annotation(record, "fault")["latency_ms"] <= 400
    assert annotation(record, "waitTime") >= 300


def test_same_seed_gives_the_same_faults(clean_faults: FabricClient, name: str) -> None:
    fabric = clean_faults
    fabric.deploy(name, ECHO)
    plan = {"seed": 11, "actions": {name: {"application_error": 0.5}}}

    def statuses() -> list[str]:
        fabric.set_faults(plan)  # a new plan restarts its random sequence
        return [fabric.run(name)["response"]["status"] for _ in range(12)]

    first = statuses()
    assert first == statuses()
    assert {"success", "application error"} == set(first)


def test_fault_plan_admin_endpoint_validates_and_needs_auth(clean_faults: FabricClient) -> None:
    fabric = clean_faults
    url = f"{fabric.url}/admin/v1/faults"
    assert requests.get(url, timeout=5).status_code == 401
    bad = fabric.set_faults({"default": {"crash": 2}})
    assert bad.status_code == 400
    assert "default.crash must be a probability in [0, 1] (got 2)" in bad.json()["error"]
    too_much = fabric.set_faults({"default": {"application_error": 0.6, "internal_error": 0.6}})
    assert too_much.status_code == 400
    good = fabric.set_faults({"seed": 3, "default": {"latency_ms": 5}})
    assert good.status_code == 200
    assert fabric.get_faults().json() == good.json()
    assert good.json()["default"]["latency_ms"] == 5


def test_fault_plan_file_given_at_start_applies(start_fabric: Callable[..., FabricClient], name: str) -> None:
    fabric = start_fabric(faults={"seed": 1, "default": {"internal_error": 1.0}})
    fabric.deploy(name, ECHO)
    assert fabric.invoke(name, blocking=True).status_code == 500
    assert fabric.get_faults().json()["default"]["internal_error"] == 1.0


def test_no_namespace_key_may_read_or_replace_the_fault_plan(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    fabric = start_fabric(auth=[f"{OTHER_KEY}=other"])
    fabric.deploy(name, ECHO)
    for key in (GUEST_AUTH, OTHER_KEY):
        tenant = basic(key)
        replaced = fabric.session.put(
            f"{fabric.url}/admin/v1/faults",
            json={"default": {"internal_error": 1.0}},
            auth=tenant,
            timeout=10,
        )
        assert replaced.status_code == 403, replaced.text
        assert fabric.session.get(f"{fabric.url}/admin/v1/faults", auth=tenant, timeout=10).status_code == 403
    assert fabric.get_faults().json()["default"]["internal_error"] == 0.0
    assert fabric.invoke(name, blocking=True).status_code == 200  # everyone's activations still run
    wrong = ("x", "y")
    assert fabric.session.get(f"{fabric.url}/admin/v1/faults", auth=wrong, timeout=10).status_code == 401


def test_a_straggler_share_of_activations_waits_straggler_ms_more_and_other_plans_draw_the_same() -> None:
    plan = FaultPlan.parse({"seed": 5, "actions": {"c": {"straggler": 0.3, "straggler_ms": [5000, 15000]}}})
    delays = [plan.decide("c").latency_s for _ in range(2000)]
    slow = [d for d in delays if d > 0]
    assert 0.25 < len(slow) / len(delays) < 0.35
    assert all(5.0 <= d <= 15.0 for d in slow)
    assert plan.to_json()["actions"]["c"]["straggler_ms"] == [5000, 15000]
    plain = {"seed": 5, "default": {"application_error": 0.3, "latency_ms": [0, 10]}}
    with_none = {"seed": 5, "default": {"application_error": 0.3, "latency_ms": [0, 10], "straggler": 0}}
    first, second = FaultPlan.parse(plain), FaultPlan.parse(with_none)
    assert [first.decide("x") for _ in range(50)] == [second.decide("x") for _ in range(50)]
    assert "straggler" not in first.to_json()["default"]


def test_a_target_applies_its_rule_only_to_the_activations_whose_params_match() -> None:
    plan = FaultPlan.parse(
        {
            "actions": {"c": {"application_error": 1.0}},
            "targets": [
                {
                    "action": "c",
                    "params": {"round": 1, "client": 2},
                    "application_error": 0,
                    "latency_ms": 900,
                }
            ],
        }
    )
    hit = plan.decide("c", {"session": "s", "round": 1, "client": 2, "attempt": 1})
    assert hit.status is None and hit.latency_s == 0.9
    for params in ({"round": 1, "client": 3}, {"round": 2, "client": 2}, {"client": 2}, None):
        missed = plan.decide("c", params)
        assert missed.status is not None and missed.latency_s == 0
    assert plan.decide("other", {"round": 1, "client": 2}) is NO_FAULT
    assert FaultPlan.parse(plan.to_json()).to_json() == plan.to_json()


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"action": "c"}, "fault plan.targets must be a list"),
        ([{"params": {}}], "fault plan.targets[0].action must be an action name"),
        ([{"action": "c", "params": [1]}], "fault plan.targets[0].params must be an object"),
        ([{"action": "c", "crash": 2}], "fault plan.targets[0].crash must be a probability"),
    ],
)
def test_a_malformed_target_is_refused_with_its_place_in_the_plan(targets: object, message: str) -> None:
    with pytest.raises(FaultPlanError, match=message.replace("[", r"\[").replace(".", r"\.")):
        FaultPlan.parse({"targets": targets})
