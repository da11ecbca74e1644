"""Clients joining and leaving: the operator's requests, the keeper's re-plan, and the validation
window's verdict (revert a worse join, keep a better one, continue after a resume), on a real store."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fedkeeper.function.config import parse_config
from fedkeeper.function.errors import ConfigError, StoreError
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.host.cli import cli
from fedkeeper.host.ledger import Ledger
from fedkeeper.host.plan import Plan
from fedkeeper.host.reconfiguration import Reconfigurer, Yield, join, leave, window_yield, worse
from fedkeeper.host.reporting import Reporter

WINDOW = 2


def _config_data(**server: Any) -> dict[str, Any]:
    return {
        "providers": {"openwhisk": {"local": {"local": True}}},
        "scenarios": {
            "federated_learning": {
                "server_config": {
                    "cluster": "local",
                    "num_clients_per_round": 4,
                    "standby_clients": 2,
                    "validation_window": WINDOW,
                    "prices": {"openwhisk": {"invocation": 0.01}},
                    **server,
                },
                "clients_info": {"total_num_clients": 4, "ow_clients_count": 4},
            }
        },
    }


def _config(**server: Any) -> Any:
    return parse_config(_config_data(**server))


class Session:
    """A session's store and a keeper's reconfigurer over it, as a (resumed) keeper builds it."""

    def __init__(self, store: Store, logs: Path, session_id: str = "s-reconfig") -> None:
        self.config = _config()
        self.plan = Plan.build(self.config)
        self.logs = logs
        self.store: SessionStore = store.for_session(session_id)
        if not store.db.sessions.find_one({"_id": session_id}):
            scenario = self.config.fl.model_dump(mode="json", exclude={"mongo_config", "functions"})
            self.store.record.create(
                {"scenario": scenario, "clients": [p.as_doc() for p in self.plan.placements]}
            )

    def reconfigurer(self) -> Reconfigurer:
        reporter = Reporter(self.logs, self.store.id, io.StringIO())
        return Reconfigurer(self.config.fl.server_config, self.plan, self.store, Ledger(self.store), reporter)

    def aggregated(self, round_number: int, accuracy: float, cost: float) -> None:
        self.store.rounds.open(round_number, [0])
        self.store.rounds.add_metrics(round_number, {"accuracy": accuracy, "cost": cost})

    def events(self) -> list[dict[str, Any]]:
        lines = (self.logs / self.store.id / "keeper.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def conditions(self) -> list[tuple[str, str]]:
        return [(c["type"], c["reason"]) for c in self.store.record.get()["conditions"]]


@pytest.fixture
def session(mongo_url: str, mongo_db_name: str, tmp_path: Path) -> Iterator[Session]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield Session(store, tmp_path)
    store.db.client.drop_database(mongo_db_name)


def _three_rounds_then_join(session: Session) -> Reconfigurer:
    """Rounds 0..2 with the two starting clients (accuracy +0.3 for 2.0 over rounds 1..2), then 2 and 3 join."""
    keeper = session.reconfigurer()
    for r, accuracy in enumerate((0.5, 0.7, 0.8)):
        assert keeper.at_boundary(r) == (0, 1)
        session.aggregated(r, accuracy, 1.0)
    assert join(session.store, "local", 2) == [2, 3]
    assert keeper.at_boundary(3) == (0, 1, 2, 3)
    return keeper


def test_a_join_that_gains_less_accuracy_per_cost_is_reverted_after_the_window(session: Session) -> None:
    keeper = _three_rounds_then_join(session)
    session.aggregated(3, 0.82, 2.0)
    assert keeper.at_boundary(4) == (0, 1, 2, 3)  # still validating
    session.aggregated(4, 0.83, 2.0)

    assert keeper.at_boundary(5) == (0, 1)
    members = session.store.membership.get()
    assert (members.active, members.requested, members.set_aside, members.window) == (
        (0, 1),
        (0, 1),
        (2, 3),
        None,
    )
    assert session.conditions() == [
        ("Reconfigured", "ClientsJoined"),
        ("ReconfigurationReverted", "WorseAccuracyPerCost"),
    ]
    changed, reverted = session.events()
    assert changed["event"] == "reconfigured" and changed["joined"] == [2, 3] and changed["round"] == 3
    assert changed["cost_before"] == pytest.approx(2 * 0.01)  # two invocations a round
    assert changed["cost_after"] == pytest.approx(4 * 0.01)
    assert reverted["event"] == "reconfiguration_reverted"
    assert reverted["before"] == {"first": 1, "last": 2, "gain": pytest.approx(0.3), "cost": 2.0}
    assert reverted["after"] == {"first": 3, "last": 4, "gain": pytest.approx(0.03), "cost": 4.0}
    with pytest.raises(ConfigError, match="0 free client slot"):  # set aside: they do not come back
        join(session.store, "local")


def test_a_join_that_gains_more_accuracy_per_cost_is_kept(session: Session) -> None:
    keeper = _three_rounds_then_join(session)
    session.aggregated(3, 0.95, 0.5)
    session.aggregated(4, 0.99, 0.5)  # +0.19 for 1.0, against +0.3 for 2.0 before

    assert keeper.at_boundary(5) == (0, 1, 2, 3)
    assert session.conditions()[-1] == ("ReconfigurationKept", "NotWorse")
    assert session.events()[-1]["event"] == "reconfiguration_kept"


def test_a_resumed_keeper_finishes_the_window_its_predecessor_opened(session: Session) -> None:
    _three_rounds_then_join(session)
    session.aggregated(3, 0.82, 2.0)
    resumed = Session(session.store.store, session.logs).reconfigurer()  # new objects, same store
    assert resumed.at_boundary(4) == (0, 1, 2, 3)
    assert resumed.at_boundary(4) == (0, 1, 2, 3)  # a boundary seen twice changes nothing
    session.aggregated(4, 0.83, 2.0)
    assert resumed.at_boundary(5) == (0, 1)
    assert resumed.at_boundary(5) == (0, 1)
    assert [kind for kind, _ in session.conditions()] == ["Reconfigured", "ReconfigurationReverted"]


def test_a_change_asked_for_during_an_opened_round_or_a_window_waits_for_the_next_boundary(
    session: Session,
) -> None:
    keeper = session.reconfigurer()
    assert keeper.at_boundary(0) == (0, 1)
    session.store.rounds.open(0, [0, 1])
    join(session.store, "openwhisk/local")
    assert keeper.at_boundary(0) == (0, 1)  # the round is open: its selection stands
    session.aggregated(0, 0.5, 1.0)
    assert keeper.at_boundary(1) == (0, 1, 2)
    leave(session.store, [0])
    assert keeper.at_boundary(1) == (0, 1, 2)  # change 1 is being validated
    session.aggregated(1, 0.6, 1.0)
    session.aggregated(2, 0.7, 1.0)
    assert keeper.at_boundary(3) == (1, 2)  # kept (no baseline before round 1), then the leave
    assert session.conditions() == [
        ("Reconfigured", "ClientsJoined"),
        ("ReconfigurationKept", "NoBaseline"),
        ("Reconfigured", "ClientsLeft"),
    ]


def test_a_worse_leave_is_kept_because_a_client_that_left_cannot_return(session: Session) -> None:
    keeper = _three_rounds_then_join(session)
    for r, accuracy in ((3, 0.95), (4, 0.99)):
        session.aggregated(r, accuracy, 0.5)
    leave(session.store, [3])
    assert keeper.at_boundary(5) == (0, 1, 2)
    session.aggregated(5, 0.99, 1.0)
    session.aggregated(6, 0.99, 1.0)
    assert keeper.at_boundary(7) == (0, 1, 2)
    assert session.conditions()[-1] == ("ReconfigurationKept", "LeftCannotReturn")
    assert session.store.membership.get().left == (3,)


def test_bad_requests_are_refused_with_one_line_and_write_nothing(session: Session) -> None:
    with pytest.raises(
        ConfigError, match=r"--cluster edge: hosts no client .* \(clusters: openwhisk/local\)"
    ):
        join(session.store, "edge")
    with pytest.raises(ConfigError, match="2 free client slot"):
        join(session.store, "local", 3)
    with pytest.raises(ConfigError, match=r"client 2 is not a member .* \(members: 0, 1\)"):
        leave(session.store, [2])
    with pytest.raises(ConfigError, match="cannot remove every client"):
        leave(session.store, [0, 1])
    with pytest.raises(StoreError, match="no session 's-none'"):
        join(session.store.store.for_session("s-none"), "local")
    assert session.store.membership.get().requested == (0, 1)


def test_accuracy_per_cost_decides_and_free_rounds_compare_per_round() -> None:
    before = Yield(1, 2, gain=0.2, cost=2.0)
    assert worse(before, Yield(3, 4, gain=0.1, cost=2.0))
    assert not worse(before, Yield(3, 4, gain=0.1, cost=0.5))
    assert worse(Yield(1, 2, 0.2, 0.0), Yield(3, 4, 0.1, 0.0))
    assert not worse(Yield(1, 2, 0.2, 0.0), Yield(3, 4, 0.3, 0.0))
    metrics = {0: {"accuracy": 0.5, "cost": 1.0}, 1: {"accuracy": 0.6, "cost": 1.5}}
    assert window_yield(metrics, 1, 1) == Yield(1, 1, pytest.approx(0.1), 1.5)
    assert window_yield(metrics, 0, 1) is None  # nothing before round 0 to gain from
    assert window_yield(metrics, 1, 2) is None  # round 2 not aggregated


def test_standby_clients_must_leave_a_client_to_start_with() -> None:
    with pytest.raises(ConfigError, match="standby_clients 4: at least one of the 4 clients"):
        _config(standby_clients=4)


def test_the_clients_commands_change_a_session_and_say_what_is_wrong_in_one_line(
    session: Session, mongo_url: str, mongo_db_name: str, tmp_path: Path
) -> None:
    data = _config_data()
    data["scenarios"]["federated_learning"]["mongo_config"] = {"url": mongo_url, "database": mongo_db_name}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, [*args, "-c", str(config)])

    added = run("clients", "add", "s-reconfig", "--cluster", "local")
    assert added.exit_code == 0 and "clients 2 join at the next round" in added.output, added.output
    wrong = run("clients", "add", "s-reconfig", "--cluster", "nowhere")
    assert wrong.exit_code != 0 and wrong.output.count("\n") == 1, wrong.output
    assert "fedkeeper: --cluster nowhere: hosts no client of session s-reconfig" in wrong.output
    missing = run("clients", "remove", "s-reconfig", "7")
    assert missing.exit_code != 0 and "client 7 is not a member of session s-reconfig" in missing.output
    assert run("clients", "remove", "s-reconfig", "1").exit_code == 0
    shown = run("status", "s-reconfig")
    assert "clients: active [0, 1], asked for [0, 2], set aside [], left []" in shown.output, shown.output
