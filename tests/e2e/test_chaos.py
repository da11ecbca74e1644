"""Training survives 30% injected activation failures of every kind."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from fedkeeper.host.fabric.process import FabricProcess

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, client_attempts, run_session

# 30% of activations fail, spread over every kind the fabric can inject; records get lost too.
CHAOS = {
    "seed": 11,
    "default": {
        "application_error": 0.075,
        "developer_error": 0.075,
        "internal_error": 0.075,
        "crash": 0.075,
        "lost_record": 0.05,
        "latency_ms": [0, 200],
    },
}


def test_thirty_percent_failures_lose_and_duplicate_nothing_and_the_ledger_shows_every_retry(
    mongo_url: str, tmp_path: Path
) -> None:
    with FabricProcess(limits=E2E_LIMITS, faults=CHAOS) as fabric:
        data = training_config(
            fabric.url,
            mongo_url,
            tmp_path / "logs",
            max_retries=10,
            retry_backoff_s=0.1,
            activation_timeout_s=40,
        )
        # A lost record is retried only once the platform must have ended the activation; a client
        # that times out in a cold start is one more failure the retries absorb.
        data["scenarios"]["federated_learning"]["functions"]["fl_client"]["timeout"] = 30
        store, session = run_session(data)

    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=3)

    attempts = client_attempts(store, session)
    failed = [a for a in attempts if a["status"] not in ("success", "record lost")]
    assert failed, "the fault plan injected nothing"
    statuses = {a["status"] for a in failed}
    assert statuses & {"application error", "action developer error", "whisk internal error"}
    by_client: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for a in attempts:
        by_client[(a["round"], a["client"])].append(a)
    for a in failed:  # every failure was followed by another attempt of the same client
        later = [b for b in by_client[(a["round"], a["client"])] if b["attempt"] > a["attempt"]]
        stored = store.db.updates.find_one({"session": session, "round": a["round"], "client": a["client"]})
        assert later or stored["attempt"] < a["attempt"], a
    assert max(a["attempt"] for a in attempts) > 1
    # the managing functions were hit by the same plan and retried too
    server = [e for e in store.db.activations.find({"session": session, "client": -1})]
    assert all(e["status"] != "submitted" for e in server)


def test_past_the_deadline_a_round_closes_on_quorum_and_late_updates_are_left_out(
    mongo_url: str, tmp_path: Path
) -> None:
    # Client activations take 0-9 s longer than usual; the round deadline is 4 s.
    stragglers = {"seed": 5, "actions": {"fl_client": {"latency_ms": [0, 9000]}}}
    with FabricProcess(limits=E2E_LIMITS, faults=stragglers) as fabric:
        data = training_config(
            fabric.url, mongo_url, tmp_path / "logs", max_rounds=2, min_fit_fraction=0.25, round_deadline_s=4
        )
        store, session = run_session(data, remove=False)
        time.sleep(10)  # let the stragglers finish and write their (late) updates

    for doc in store.for_session(session).rounds.all():
        included = doc["included"]
        assert 1 <= len(included) <= 4
        assert sorted(doc["metrics"]["accepted"]) == included  # only the closing set was aggregated
        late = store.for_session(session).updates.clients(doc["round"]) - set(included)
        timed_out = {
            e["client"]
            for e in store.db.activations.find(
                {"session": session, "round": doc["round"], "status": "timed out"}
            )
        }
        assert late <= timed_out  # a late update exists only for an activation the round gave up on
    assert any(len(doc["included"]) < 4 for doc in store.for_session(session).rounds.all()), (
        "no round closed on quorum"
    )
