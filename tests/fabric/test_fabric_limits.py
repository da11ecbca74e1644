"""Limits: timeout and memory kills, payload limits, capacity, concurrency, queueing, warm reuse."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .conftest import FabricClient, annotation
from .snippets import BIG_RESULT, CHATTY, ECHO, HOG, SLEEP

MB = 1024 * 1024


def test_timeout_kills_worker_and_reports_developer_error(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, SLEEP, limits={"timeout": 500})
    response = fabric.invoke(name, {"seconds": 5}, blocking=True)
    assert response.status_code == 502
    record = response.json()
    assert record["response"]["status"] == "action developer error"
    assert record["response"]["result"] == {
        "error": "The action exceeded its time limits of 500 milliseconds."
    }
    assert annotation(record, "timeout") is True
    assert record["duration"] < 3000
    # The killed worker is gone: the next activation is a cold start in a new process.
    follow_up = fabric.run(name, {"seconds": 0})
    assert follow_up["response"]["status"] == "success"
    assert annotation(follow_up, "initTime") is not None


def test_memory_limit_kills_worker_and_reports_developer_error(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, HOG, limits={"memory": 128})
    record = fabric.run(name, {"mb": 300, "hold": 5})
    assert record["response"]["status"] == "action developer error"
    assert record["response"]["result"] == {"error": "The action exhausted its memory and was aborted."}
    assert record["duration"] < 4500
    within = fabric.run(name, {"mb": 10, "hold": 0})
    assert within["response"]["status"] == "success"


def test_parameters_past_one_megabyte_are_refused_with_413(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    body = json.dumps({"blob": "x" * MB}).encode()
    response = fabric.session.post(
        fabric.ns(f"actions/{name}"), data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 413
    assert response.json()["error"] == f"Request larger than allowed: {len(body)} > {MB} bytes."
    just_under = json.dumps({"blob": "x" * (MB - 100)}).encode()
    ok = fabric.session.post(
        fabric.ns(f"actions/{name}"),
        data=just_under,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert ok.status_code == 202


def test_result_past_five_megabytes_is_a_developer_error(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, BIG_RESULT)
    size = 5 * MB
    record = fabric.run(name, {"size": size})
    assert record["response"]["status"] == "action developer error"
    length = len(json.dumps({"blob": "x" * size}))
    assert record["response"]["result"] == {
        "error": f"The action produced a response that exceeded the allowed length: {length} > {5 * MB} bytes."
    }
    assert fabric.run(name, {"size": 4 * MB})["response"]["status"] == "success"


def test_logs_are_capped_by_the_action_logs_limit(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, CHATTY, limits={"logs": 1})
    record = fabric.run(name, {"lines": 3000})
    assert record["response"]["status"] == "success"
    assert sum(len(line) for line in record["logs"]) < 1.1 * MB
    assert record["logs"][-1].endswith(
        f"Logs were truncated because the total bytes size exceeds the limit of {MB} bytes."
    )


def test_warm_worker_is_reused_and_only_cold_starts_have_init_time(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    cold = fabric.run(name)
    warm = fabric.run(name)
    assert annotation(cold, "initTime") is not None
    assert annotation(warm, "initTime") is None
    assert cold["response"]["result"]["worker"] == warm["response"]["result"]["worker"]


def test_update_retires_workers_of_the_old_version(fabric: FabricClient, name: str) -> None:
    fabric.deploy(name, ECHO)
    before = fabric.run(name)
    fabric.deploy(name, ECHO)
    after = fabric.run(name)
    assert after["version"] == "0.0.2"
    assert annotation(after, "initTime") is not None
    assert after["response"]["result"]["worker"] != before["response"]["result"]["worker"]


def test_idle_workers_are_evicted_after_the_idle_timeout(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    fabric = start_fabric(limits={"idle_timeout_s": 0.3})
    fabric.deploy(name, ECHO)
    first = fabric.run(name)
    time.sleep(1.0)
    second = fabric.run(name)
    assert annotation(second, "initTime") is not None
    assert second["response"]["result"]["worker"] != first["response"]["result"]["worker"]


def _run_together(fabric: FabricClient, calls: list[tuple[str, dict]]) -> list[dict]:
    """Start every call (non-blocking, in order) and wait for all records."""
    ids = [fabric.invoke(action, params).json()["activationId"] for action, params in calls]
    with ThreadPoolExecutor(len(ids)) as pool:
        return list(pool.map(fabric.wait_record, ids))


def test_capacity_of_one_worker_runs_activations_sequentially(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    fabric = start_fabric(limits={"max_workers": 1})
    fabric.deploy(name, SLEEP)
    first, second, third = _run_together(fabric, [(name, {"seconds": 0.7})] * 3)
    assert second["start"] >= first["end"] and third["start"] >= second["end"]  # FIFO, one at a time
    assert annotation(second, "waitTime") >= 500
    assert annotation(third, "waitTime") > annotation(second, "waitTime")
    assert annotation(second, "initTime") is None  # the same warm worker served them


def test_full_capacity_evicts_idle_workers_of_other_actions(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    fabric = start_fabric(limits={"max_workers": 1})
    fabric.deploy(name + "a", ECHO)
    fabric.deploy(name + "b", ECHO)
    a = fabric.run(name + "a")
    b = fabric.run(name + "b")
    again = fabric.run(name + "a")
    assert all(annotation(r, "initTime") is not None for r in (a, b, again))
    assert len({r["response"]["result"]["worker"] for r in (a, b, again)}) == 3


def test_memory_budget_limits_workers_alive_at_once(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    fabric = start_fabric(limits={"user_memory_mb": 300, "max_workers": 4})
    fabric.deploy(name, SLEEP, limits={"memory": 256})
    first, second = _run_together(fabric, [(name, {"seconds": 0.6})] * 2)
    assert second["start"] >= first["end"]  # 2 x 256 MB do not fit in 300 MB
    big = name + "-big"
    fabric.deploy(big, ECHO, limits={"memory": 512})
    record = fabric.run(big)
    assert record["response"]["status"] == "whisk internal error"
    assert record["response"]["result"] == {"error": "Failed to provision resources to run the action."}


def test_action_concurrency_shares_one_worker(start_fabric: Callable[..., FabricClient], name: str) -> None:
    fabric = start_fabric(limits={"max_workers": 1})
    fabric.deploy(name, SLEEP, limits={"concurrency": 2})
    first, second = _run_together(fabric, [(name, {"seconds": 1.0})] * 2)
    assert first["response"]["result"]["worker"] == second["response"]["result"]["worker"]
    assert second["start"] < first["end"]  # both ran at once in the one worker


def test_in_flight_limit_answers_429(start_fabric: Callable[..., FabricClient], name: str) -> None:
    fabric = start_fabric(limits={"concurrent_invocations": 2})
    fabric.deploy(name, SLEEP)
    accepted = [fabric.invoke(name, {"seconds": 1.0}) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    refused = fabric.invoke(name, {"seconds": 1.0})
    assert refused.status_code == 429
    assert refused.json()["error"] == "Too many concurrent requests in flight (count: 2, allowed: 2)."
    for response in accepted:
        fabric.wait_record(response.json()["activationId"])
    assert fabric.invoke(name, {"seconds": 0}).status_code == 202  # capacity is back


def test_blocking_invoke_answers_202_when_the_wait_runs_out(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    fabric = start_fabric(limits={"blocking_wait_s": 0.5})
    fabric.deploy(name, SLEEP)
    response = fabric.invoke(name, {"seconds": 1.5}, blocking=True)
    assert response.status_code == 202
    activation_id = response.json()["activationId"]
    assert response.headers["x-openwhisk-activation-id"] == activation_id
    assert fabric.wait_record(activation_id)["response"]["status"] == "success"


def test_records_are_bounded_by_bytes_dropping_the_oldest(
    start_fabric: Callable[..., FabricClient], name: str
) -> None:
    megabyte = 1024 * 1024
    fabric = start_fabric(limits={"max_record_bytes": 3 * megabyte})
    fabric.deploy(name, BIG_RESULT)
    ids = [fabric.run(name, {"size": megabyte})["activationId"] for _ in range(5)]
    kept = [fabric.activation(i).status_code for i in ids]
    # Each record holds a 1 MB result plus its envelope: only two fit in 3 MB, the newest two.
    assert kept == [404, 404, 404, 200, 200]
    listed = fabric.session.get(fabric.ns("activations"), params={"count": "true"}, timeout=10).json()
    assert listed == {"activations": 2}
