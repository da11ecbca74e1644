"""A store holding one recorded session (written through the keeper's own store and ledger calls),
and ``fedkeeper serve`` serving it from a child process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import yaml
from openapi_schema_validator import OAS31Validator

from fedkeeper.function.config import GUEST_AUTH, Config, parse_config
from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.statuses import Phase
from fedkeeper.host.ledger import SERVER, Ledger, LedgerEntry, LedgerStatus
from fedkeeper.host.placement import place_clients
from fedkeeper.host.serve import openapi
from fedkeeper.host.serve.process import ServeProcess

TOKEN = "serve-test-token-0123456789abcdef"
SIZES = [100, 120, 90, 110]


def serve_config(mongo_url: str, database: str, **more: Any) -> dict[str, Any]:
    """Three OpenWhisk clients and one GCF client (reached through the invoker), four per round."""
    return {
        "providers": {
            "openwhisk": {"local": {"base_url": "http://127.0.0.1:9", "auth": GUEST_AUTH}},
            "google": {"gcf": {"project": "fedkeeper-test", "credentials": '{"private_key": "k"}'}},
        },
        "scenarios": {
            "federated_learning": {
                "server_config": {"cluster": "local", "max_rounds": 3, "num_clients_per_round": 4},
                "clients_info": {"total_num_clients": 4, "ow_clients_count": 3, "gcf_clients_count": 1},
                "mongo_config": {"url": mongo_url, "database": database},
                "functions": {"fl_invoker_weights_update": {"timeout": 240}},
            }
        },
        **more,
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Recorder:
    """Writes a session the way the keeper does: store calls for rounds, ledger calls for activations."""

    store: Store
    config: Config
    session: str

    def __post_init__(self) -> None:
        self.bound = self.store.for_session(self.session)
        self.ledger = Ledger(self.bound)
        fl = self.config.fl
        self.bound.record.create(
            {
                "scenario": fl.model_dump(mode="json", exclude={"mongo_config", "functions"}),
                "clients": [p.as_doc() for p in place_clients(self.config)],
            }
        )

    def activation(
        self, round_number: int, function: str, client: int, attempt: int = 1,
        status: str | None = ActivationStatus.SUCCESS.value, ms: int = 1500, target: str | None = None,
    ) -> None:  # fmt: skip
        entry = LedgerEntry(self.session, round_number, function, client, attempt, "openwhisk", "local")
        entry.target = target
        self.ledger.submit(entry)
        activation_id = uuid.uuid4().hex
        self.ledger.set_activation_id(entry, activation_id)
        if status is None:  # still running
            return
        if status == LedgerStatus.TIMED_OUT:
            self.ledger.settle(entry, LedgerStatus.TIMED_OUT, error="no record after 180s")
            return
        record = ActivationRecord(activation_id, ActivationStatus(status), {}, 1_000_000, 1_000_000 + ms)
        self.ledger.settle(entry, LedgerStatus.of(record), record, None if record.ok else "boom")


def record_session(store: Store, config: Config, session: str) -> None:
    """Round 0 aggregated (client 3 timed out once, then delivered); round 1 open with one client
    delivered and client 0 still running."""
    r = Recorder(store, config, session)
    bound = r.bound
    bound.record.set_phase(Phase.RUNNING, "RoundsStarted")
    r.activation(0, "fl_server_init", SERVER, ms=4000)
    bound.partitions.put([np.arange(n) for n in SIZES])
    bound.record.mark_initialised()
    bound.rounds.open(0, [0, 1, 2, 3])
    for client in (0, 1, 2):
        r.activation(0, "fl_client", client, ms=2000 + 100 * client)
    timed_out = LedgerStatus.TIMED_OUT
    r.activation(0, "fl_invoker_weights_update", 3, attempt=1, status=timed_out, target="google/gcf")
    r.activation(0, "fl_invoker_weights_update", 3, attempt=2, ms=3000, target="google/gcf")
    bound.rounds.close(0, [0, 1, 2, 3])
    r.activation(0, "fl_server_aggregator", SERVER, ms=800)
    metrics = {"accuracy": 0.5, "loss": 1.25, "train_loss": 1.5, "train_accuracy": 0.45,
               "accepted": [0, 1, 2, 3], "rejected": {}}  # fmt: skip
    bound.rounds.finish(0, metrics)
    bound.rounds.add_metrics(
        0,
        {
            "retries": 1,
            "failed_clients": 0,
            "duration_s": 12.5,
            "cost": 0.25,
            "cumulative_cost": 0.25,
            "bytes": {"client_to_store": 4096, "store_to_client": 8192},
        },
    )
    evaluated = {
        "federated_loss": 1.3,
        "federated_accuracy": 0.48,
        "evaluated_clients": 2,
        "failed_evaluations": 1,
    }
    bound.rounds.add_metrics(0, evaluated)
    bound.record.advance_round(1)
    bound.rounds.open(1, [0, 1, 2, 3])
    r.activation(1, "fl_client", 1, ms=1800)
    r.activation(1, "fl_client", 0, status=None)


@dataclass
class Served:
    server: ServeProcess
    store: Store
    session: str
    config_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def served(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``fedkeeper serve`` (with a token) over a store holding the recorded session ``s-recorded``."""
    database = f"fk_serve_{uuid.uuid4().hex[:8]}"
    data = serve_config(mongo_url, database, serve={"token": TOKEN})
    path = write_config(tmp_path_factory.mktemp("serve") / "config.yaml", data)
    store = Store(mongo_url, database)
    store.ensure_indexes()
    record_session(store, parse_config(data), "s-recorded")
    try:
        with ServeProcess(path) as server:
            yield Served(server, store, "s-recorded", path)
    finally:
        store.db.client.drop_database(database)


@pytest.fixture(scope="session")
def description() -> dict[str, Any]:
    return openapi.document()


def assert_matches(description: dict[str, Any], path: str, method: str, status: int, body: Any) -> None:
    """``body`` is what the OpenAPI description says ``method path`` answers with ``status``."""
    response = description["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": description["components"]}).validate(body)
