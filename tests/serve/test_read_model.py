"""The read model makes a fixed number of queries per document, whatever the session's size."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from pymongo import monitoring

from fedkeeper.function.config import Config, parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.host.ledger import Ledger, LedgerEntry
from fedkeeper.host.serve.documents import Page, StatusReader

from .conftest import record_session, serve_config


class Queries(monitoring.CommandListener):
    """Counts the commands a client sends (a cursor's further batches, ``getMore``, are the same query)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("getMore", "endSessions"):
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def counted(mongo_url: str, mongo_db_name: str) -> Iterator[tuple[StatusReader, Queries, Config]]:
    config = parse_config(serve_config(mongo_url, mongo_db_name))
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    queries = Queries()
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_url, event_listeners=[queries], tz_aware=True)
    store.db = client[mongo_db_name]  # the same store, seen through a client that counts
    yield StatusReader(store, config), queries, config
    client.drop_database(mongo_db_name)
    client.close()


def _queries(queries: Queries, call: Any) -> int:
    before = queries.count
    call()
    return queries.count - before


def test_each_document_takes_the_same_few_queries_for_a_small_and_a_large_session(
    counted: tuple[StatusReader, Queries, Config],
) -> None:
    reader, queries, config = counted
    record_session(reader.store, config, "s-small")
    record_session(reader.store, config, "s-large")
    ledger = Ledger(reader.store.for_session("s-large"))
    for attempt in range(2, 302):  # 300 more attempts of one client
        ledger.submit(LedgerEntry("s-large", 1, "fl_client", 2, attempt, "openwhisk", "local"))
    calls = {
        "session": (5, lambda s: reader.session(s)),
        "rounds": (2, lambda s: reader.rounds(s)),
        "activations": (3, lambda s: reader.activations(s, Page(limit=500))),
    }
    for name, (expected, call) in calls.items():
        assert _queries(queries, lambda c=call: c("s-small")) == expected, name
        assert _queries(queries, lambda c=call: c("s-large")) == expected, name
    assert reader.activations("s-large", Page(limit=500))["total"] == 309
    assert _queries(queries, reader.clusters) == 1
    assert _queries(queries, reader.sessions) == 2
    assert _queries(queries, reader.hosts) == 1  # no registry: only the look for one
    assert _queries(queries, lambda: reader.telemetry(20)) == 6
