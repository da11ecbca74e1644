"""The clients' history behind ``straggler_aware``: folded once per round, read in O(1) queries.

Whole keeper sessions run on the fake clock over :class:`~tests.keeper.fakes.ScriptedProvider`
(the managing functions only do their bookkeeping), against the embedded MongoDB; a pymongo
``CommandListener`` counts what the history costs.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from fedkeeper.function.store.blobs import BlobStore
from fedkeeper.function.store.db import Store
from fedkeeper.host.history import ClientHistory, History, fold
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger
from fedkeeper.host.rounds import ClosedRound
from tests.keeper.fakes import scripted_keeper

DEADLINE_S = 10.0
FAST = 2  # clients 0 and 1 finish in 1 s; the others take 30 s, past the deadline
PER_ROUND = 3


class Commands(monitoring.CommandListener):
    """Counts each command by its name and collection, and keeps the activations' filters."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.activation_filters: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        if not isinstance(collection, str):
            return
        with self._lock:
            self.counts[(event.command_name, collection)] += 1
            if event.command_name == "find" and collection == "activations":
                self.activation_filters.append(dict(event.command.get("filter", {})))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def counted(mongo_url: str, mongo_db_name: str) -> Iterator[tuple[Store, Commands]]:
    """A store whose every command is counted."""
    commands = Commands()
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_url, tz_aware=True, event_listeners=[commands])
    store = Store(mongo_url, mongo_db_name)
    store.db = client[mongo_db_name]
    store.blobs = BlobStore(store.db)
    store.ensure_indexes()
    yield store, commands
    client.drop_database(mongo_db_name)
    client.close()


def _keeper(
    store: Store,
    tmp_path: Path,
    clients: int,
    rounds: int,
    selection: str,
    rotation_rounds: int | None = None,
) -> Keeper:
    """A keeper whose clients 0..FAST-1 finish in 1 s and the others in 30 s, past the deadline."""
    server = {
        "max_rounds": rounds,
        "num_clients_per_round": PER_ROUND,
        "min_fit_fraction": 0.5,
        "round_deadline_s": DEADLINE_S,
        "retry_backoff_s": 0.5,
        "selection": selection,
        "rotation_rounds": rotation_rounds,
    }
    return scripted_keeper(
        store, tmp_path / "logs", [1.0 if c < FAST else 30.0 for c in range(clients)], server
    )


def test_straggler_aware_prefers_fast_clients_and_still_rotates_every_client_in(
    counted: tuple[Store, Commands], tmp_path: Path
) -> None:
    store, _ = counted
    # 6 clients, 3 a round, each at least once in 6 rounds: one rotation slot, two for the fastest.
    keeper = _keeper(store, tmp_path, clients=6, rounds=8, selection="straggler_aware", rotation_rounds=6)
    session_id = keeper.start()
    selections = [set(doc["selected"]) for doc in store.for_session(session_id).rounds.all()]
    per_client = Counter(c for chosen in selections for c in chosen)
    assert min(per_client[c] for c in range(FAST)) > max(per_client[c] for c in range(FAST, 6))
    for start in range(len(selections) - 6 + 1):
        assert set().union(*selections[start : start + 6]) == set(range(6))
    history = ClientHistory(store.for_session(session_id)).read()
    assert history.folded == 7
    assert history.clients[0].mean_s == pytest.approx(1.0) and history.clients[5].lates >= 1


@pytest.mark.parametrize("clients", [4, 16])
def test_the_history_costs_one_read_one_ledger_query_and_one_write_per_round_whatever_the_clients(
    counted: tuple[Store, Commands], tmp_path: Path, clients: int
) -> None:
    store, commands = counted
    rounds = 3
    _keeper(store, tmp_path, clients=clients, rounds=rounds, selection="straggler_aware").start()
    assert commands.counts[("find", "client_history")] == rounds
    assert commands.counts[("update", "client_history")] == rounds
    round_reads = [f for f in commands.activation_filters if set(f) == {"session", "round"}]
    assert len(round_reads) == rounds


def test_random_selection_reads_and_writes_no_history(
    counted: tuple[Store, Commands], tmp_path: Path
) -> None:
    store, commands = counted
    _keeper(store, tmp_path, clients=8, rounds=2, selection="random").start()
    assert not [key for key in commands.counts if key[1] == "client_history"]


def test_a_round_is_folded_into_the_history_once(mongo_url: str, mongo_db_name: str) -> None:
    store = Store(mongo_url, mongo_db_name)
    session = store.for_session("s-fold")
    history = ClientHistory(session)
    closed = ClosedRound(0, (0, 1), (0,), late=(1,))
    once = fold(History(), closed, Ledger(session).round_entries(0), DEADLINE_S)
    try:
        assert history.write(once)
        assert not history.write(fold(once, closed, [], DEADLINE_S))  # a resumed keeper folds it again
        assert history.read() == once
        assert once.clients[1].lates == 1 and once.clients[1].mean_s == DEADLINE_S
        assert once.clients[0].last_selected == 0
    finally:
        store.db.client.drop_database(mongo_db_name)
