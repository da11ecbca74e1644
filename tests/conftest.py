"""Shared fixtures: a real MongoDB wire-protocol server for the whole session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pymongo
import pytest

from fedkeeper.store.embedded import EmbeddedMongo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def mongo_url() -> Iterator[str]:
    """``FEDKEEPER_TEST_MONGO_URL`` when set (a real mongod), else a ``secantusd-py`` in memory."""
    external = os.environ.get("FEDKEEPER_TEST_MONGO_URL")
    if external:
        yield external
        return
    with EmbeddedMongo(":memory:") as server:
        yield server.url


@pytest.fixture
def mongo_db_name() -> str:
    """A fresh database name per test, so tests sharing the server never see each other's data."""
    return f"fk_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mongo_db(mongo_url: str, mongo_db_name: str) -> Iterator[pymongo.database.Database]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_url)
    yield client[mongo_db_name]
    client.drop_database(mongo_db_name)
    client.close()
