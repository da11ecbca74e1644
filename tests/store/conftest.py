"""The store's tests share one session, ``s1``, in a fresh database of the session-wide server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fedkeeper.function.store.db import SessionStore, Store


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[SessionStore]:
    s = Store(mongo_url, mongo_db_name)
    s.ensure_indexes()
    session = s.for_session("s1")
    session.record.create({"config_digest": "x", "scenario": {}})
    yield session
    s.db.client.drop_database(mongo_db_name)
