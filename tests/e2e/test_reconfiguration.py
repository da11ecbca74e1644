"""Clients joining a running session on the local fabric: a join that buys less accuracy per unit
cost than the rounds before it is reverted once the validation window has run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.reconfiguration import join
from fedkeeper.host.serve.documents import StatusReader
from fedkeeper.host.serve.openapi import document
from tests.serve.conftest import assert_matches

from .conftest import training_config
from .helpers import run_session


def _join_after_round_two(store: Store) -> None:
    """Once the session has aggregated two rounds, bring the three standby clients in."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        sessions = store.sessions()
        if sessions and int(sessions[0]["round"]) >= 2:
            join(store.for_session(sessions[0]["_id"]), "local", 3)
            return
        time.sleep(0.1)


def test_a_client_joins_mid_session_and_the_worse_plan_is_reverted_after_the_window(
    fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    # One client trains alone; three more join. Each round then runs four clients on two cores for
    # about the accuracy one gained before, so accuracy per GB-second falls and the join is reverted.
    config = training_config(
        fabric.url, mongo_url, tmp_path / "logs", max_rounds=6, standby_clients=3, validation_window=2,
        prices={"openwhisk": {"gb_second": 1.0}},
    )  # fmt: skip
    store, session = run_session(config, during=_join_after_round_two)

    events = [json.loads(line) for line in (tmp_path / "logs" / session / "keeper.jsonl").open()]
    (changed,) = [e for e in events if e["event"] == "reconfigured"]
    (reverted,) = [e for e in events if e["event"] == "reconfiguration_reverted"]
    start = changed["round"]
    assert changed["joined"] == [1, 2, 3] and changed["previous"] == [0] and start in (2, 3), changed
    assert changed["cost_after"] > changed["cost_before"] > 0
    before, after = reverted["before"], reverted["after"]
    assert (before["last"], after["first"], after["last"]) == (start - 1, start, start + 1)
    assert after["gain"] / after["cost"] < before["gain"] / before["cost"], reverted

    rounds = {d["round"]: d["selected"] for d in store.for_session(session).rounds.all()}
    assert [rounds[r] for r in range(start)] == [[0]] * start
    assert rounds[start] == rounds[start + 1] == [0, 1, 2, 3]
    assert [rounds[r] for r in range(start + 2, 6)] == [[0]] * (4 - start)

    status = StatusReader(store).session(session)
    assert_matches(document(), "/api/v1/sessions/{session}", "get", 200, status)
    kinds = [(c["type"], c["reason"]) for c in status["status"]["conditions"]]
    assert kinds.index(("Reconfigured", "ClientsJoined")) < kinds.index(
        ("ReconfigurationReverted", "WorseAccuracyPerCost")
    ), kinds
    membership = status["status"]["membership"]
    assert (membership["active"], membership["setAside"], membership["validating"]) == ([0], [1, 2, 3], None)
