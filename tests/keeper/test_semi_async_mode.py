"""semi_async mode on the fake clock over the scripted provider, with the real store and ledger.

What it proves: rounds close at their deadline as in sync mode; a late client's update is taken
by the next round that aggregates after it is stored (staleness 1 here), by one round only, also
when the keeper is killed and resumed; a late activation stays open in the ledger until its record
comes (then booked by its record, not as a failure), and is never invoked again.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.catalog import CLIENT_FUNCTION
from fedkeeper.function.config import Config, parse_config
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.rounds import folded
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger, LedgerEntry, LedgerStatus
from fedkeeper.host.plan import Plan
from fedkeeper.host.rounds import STOPPED
from fedkeeper.host.serve.documents import StatusReader
from tests.keeper.fakes import WEIGHTS, Attempt, FakeClock, ScriptedProvider

CLIENTS = 4
SLOW = 3  # runs past every round's deadline
ROUNDS = 3


class KeeperDied(Exception):
    """The keeper process is gone (raised from its sleep)."""


def _config(tmp_path: Path, client_timeout: int = 50, **server: Any) -> Config:
    return parse_config(
        {
            "logs_dir": str(tmp_path / "logs"),
            "providers": {"openwhisk": {"local": {"local": True}}},
            "scenarios": {
                "federated_learning": {
                    "server_config": {
                        "cluster": "local",
                        "mode": "semi_async",
                        "num_clients_per_round": CLIENTS,
                        "min_fit_fraction": 0.75,
                        "round_deadline_s": 10.0,
                        "max_rounds": ROUNDS,
                        "activation_timeout_s": 60.0,
                        "max_retries": 2,
                        "retry_backoff_s": 0.5,
                        "poll_interval_s": 0.5,
                        **server,
                    },
                    "clients_info": {"total_num_clients": CLIENTS, "ow_clients_count": CLIENTS},
                    "functions": {"fl_client": {"timeout": client_timeout}},
                }
            },
        }
    )


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _provider(store: Store, clock: FakeClock, lost_record: bool = False) -> ScriptedProvider:
    """Clients 0-2 finish in seconds; client 3 takes 15 s, past the 10 s deadline of every round
    (with ``lost_record`` its records never show)."""
    script = {c: [Attempt(duration_s=d)] for c, d in {0: 1.0, 1: 2.0, 2: 3.0}.items()}
    script[SLOW] = [Attempt(duration_s=15.0, lost_record=lost_record)]
    return ScriptedProvider(clock, store, script)


def _keeper(config: Config, store: Store, provider: ScriptedProvider, clock: FakeClock) -> Keeper:
    plan = Plan.build(config)
    return Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)


def _takers(session: SessionStore) -> dict[tuple[int, int], list[int]]:
    """Every late update ``(round, client)`` -> the rounds whose frozen set folds it in."""
    takers: dict[tuple[int, int], list[int]] = {}
    for doc in session.rounds.all():
        for key in folded(doc):
            takers.setdefault(key, []).append(int(doc["round"]))
    return takers


def _fits(session: SessionStore) -> list[LedgerEntry]:
    return [e for e in Ledger(session).entries() if e.function == CLIENT_FUNCTION]


def test_a_late_update_is_taken_by_the_next_round_once_with_staleness_one(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    config = _config(tmp_path)
    session_id = _keeper(config, store, _provider(store, clock), clock).start()
    session = store.for_session(session_id)
    assert session.record.get()["phase"] == "Succeeded"
    for number in range(ROUNDS):
        doc = session.rounds.get(number)
        assert doc["included"] == [0, 1, 2] and doc["late"] == [SLOW] and doc["failed"] == []
    # round r's late update is stored during round r + 1, which takes it (and no other round does)
    assert _takers(session) == {(0, SLOW): [1], (1, SLOW): [2]}
    for number in (0, 1):
        mark = session.updates.marks(number, [SLOW])[0]
        assert mark["consumed_by"] == number + 1
    assert folded(session.rounds.get(0)) == []
    # the last round's late activation was cut off when the session stopped: its update (stored
    # after the session ended) is taken by no round
    assert session.updates.marks(ROUNDS - 1, [SLOW]) == []


def test_a_late_activation_stays_open_until_its_record_comes_and_is_never_invoked_again(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    config = _config(tmp_path)
    provider = _provider(store, clock)
    session_id = _keeper(config, store, provider, clock).start()
    session = store.for_session(session_id)
    slow = sorted((e for e in _fits(session) if e.client == SLOW), key=lambda e: e.round)
    assert [(e.round, e.attempt) for e in slow] == [(r, 1) for r in range(ROUNDS)]  # one attempt each
    assert Counter(c for c, _ in provider.invoked)[SLOW] == ROUNDS
    # booked by their records once they finished, not as time-outs; the last one cut off by the stop
    assert [e.status for e in slow] == [LedgerStatus.SUCCESS, LedgerStatus.SUCCESS, LedgerStatus.TIMED_OUT]
    assert slow[-1].error == STOPPED
    rows = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert [r["in_flight"] for r in rows] == ["1"] * ROUNDS  # each round closed with one still running
    assert StatusReader(store, config).session(session_id)["spec"]["mode"] == "semi_async"


def test_a_late_activation_whose_record_never_shows_is_booked_as_record_lost_once_its_update_is_there(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    config = _config(tmp_path, client_timeout=16, activation_timeout_s=17.0)
    session = store.for_session(
        _keeper(config, store, _provider(store, clock, lost_record=True), clock).start()
    )
    first = next(e for e in _fits(session) if (e.round, e.client) == (0, SLOW))
    assert (
        first.status == LedgerStatus.RECORD_LOST
        and first.error == "update stored, activation record not seen"
    )
    assert _takers(session)[(0, SLOW)] == [1]


@pytest.mark.parametrize("dies_at", [1012.0, 1019.0, 1021.0, 1031.0])
def test_a_keeper_killed_and_resumed_folds_every_late_update_once(
    store: Store, tmp_path: Path, dies_at: float
) -> None:
    clock = FakeClock()
    config = _config(tmp_path, max_rounds=4)
    provider = _provider(store, clock)
    dying = _keeper(config, store, provider, clock)

    def sleep_then_die(seconds: float) -> None:
        clock.sleep(seconds)
        if clock() >= dies_at:
            raise KeeperDied

    dying.sleep = sleep_then_die
    with pytest.raises(KeeperDied):
        dying.start()
    session = dying.session
    _keeper(config, store, provider, clock).resume(session.id)
    assert session.record.get()["phase"] == "Succeeded"
    takers = _takers(session)
    assert all(len(rounds) == 1 for rounds in takers.values())  # no late update in two rounds
    for (number, client), (taker,) in takers.items():
        assert taker > number and session.updates.marks(number, [client])[0]["consumed_by"] == taker
    # every late update stored before the last round closed is in one round (which rounds leave
    # the slow client late depends on where the keeper died)
    late = session.rounds.late_clients(3)
    stored = [(r, c) for r, c in late if session.updates.marks(r, [c])]
    assert (0, SLOW) in stored and sorted(takers) == stored
    # no round's client was invoked twice (a late activation is polled again after the resume,
    # never revived)
    keys = [(e.round, e.client) for e in _fits(session)]
    assert len(keys) == len(set(keys))


def test_a_late_update_is_claimed_by_one_round_and_a_round_freezes_its_set_once(store: Store) -> None:
    session = store.for_session("s-claims")
    session.record.create({})
    session.rounds.open(0, [0, 1, 2, 3])
    session.rounds.close(0, [0, 1], late=[2, 3])
    session.updates.put(0, 0, WEIGHTS, 10, 0.5, 0.5)  # included in round 0: never late
    session.updates.put(0, 3, WEIGHTS, 10, 0.5, 0.5)  # stored after round 0 closed without it
    session.updates.put(1, 2, WEIGHTS, 10, 0.5, 0.5)  # round 1's own: its round is not earlier
    late = session.rounds.late_clients(1)
    assert late == [(0, 2), (0, 3)]
    assert [(m["round"], m["client"]) for m in session.updates.claim_late(1, late)] == [(0, 3)]
    assert session.updates.claim_late(2, session.rounds.late_clients(2)) == []  # taken already
    assert [(m["round"], m["client"]) for m in session.updates.claim_late(1, late)] == [(0, 3)]
    session.rounds.open(1, [0])
    assert session.rounds.fold(1, [(0, 3)]) == [(0, 3)]
    assert session.rounds.fold(1, []) == [(0, 3)]  # first write wins
