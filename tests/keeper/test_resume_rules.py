"""Which sessions ``resume`` continues, against a real store and a platform that does not answer.

A session is made ``Failed`` by a platform outage at its start (the OpenWhisk URL has nothing
listening), then given the state of a session whose last round is aggregated, so a resume
finishes it without calling any platform.
"""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkeeper.function.config import GUEST_AUTH, parse_config
from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.statuses import Phase
from fedkeeper.host.keeper import Keeper, SessionFailed
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.plan import Plan
from fedkeeper.host.providers.openwhisk import OpenWhiskProvider

ROUNDS = 2
ROTATED_AUTH = "0f3c1e2a-1111-4222-8333-944455556666:a-rotated-key-that-is-not-the-guest-one"


def _dead_url() -> str:
    """A local URL where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _config(mongo_url: str, database: str, logs: Path) -> dict[str, Any]:
    return {
        "logs_dir": str(logs),
        "providers": {"openwhisk": {"local": {"base_url": _dead_url(), "auth": GUEST_AUTH}}},
        "scenarios": {
            "federated_learning": {
                "server_config": {
                    "cluster": "local",
                    "max_rounds": ROUNDS,
                    "num_clients_per_round": 2,
                    "max_retries": 0,
                    "retry_backoff_s": 0.05,
                    "outage_tolerance_s": 0.5,
                },
                "clients_info": {"total_num_clients": 2, "ow_clients_count": 2},
                "mongo_config": {"url": mongo_url, "database": database},
                "model_params": {"hidden_size": 32},
            }
        },
    }


def _keeper(data: dict[str, Any], store: Store) -> Keeper:
    config = parse_config(data, "resume.yaml")
    provider = OpenWhiskProvider("local", config.providers.openwhisk["local"])
    provider.max_attempts = 1  # one refused connection is enough to know nothing answers
    providers = {("openwhisk", "local"): provider}
    return Keeper(config, Plan.build(config, providers), store, providers)


@pytest.fixture
def failed(mongo_url: str, mongo_db_name: str, tmp_path: Path) -> Iterator[tuple[Store, str, dict[str, Any]]]:
    """A session that failed at its start because its platform did not answer."""
    data = _config(mongo_url, mongo_db_name, tmp_path / "logs")
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    with pytest.raises(FedkeeperError):
        _keeper(data, store).start()
    (doc,) = store.sessions()
    yield store, str(doc["_id"]), data
    store.db.client.drop_database(mongo_db_name)


def _last_round_aggregated(store: Store, session: str) -> None:
    """What a keeper that died right after the last aggregation leaves in the store."""
    s = store.for_session(session)
    s.weights.put(0, [np.zeros((2, 2), dtype=np.float32)])
    s.record.mark_initialised()
    last = ROUNDS - 1
    s.record.advance_round(last)
    s.rounds.open(last, [0, 1])
    s.rounds.close(last, [0, 1])
    s.rounds.finish(last, {"accuracy": 0.5, "loss": 1.0, "accepted": [0, 1]})
    s.weights.put(ROUNDS, [np.zeros((2, 2), dtype=np.float32)])


def test_a_platform_outage_past_the_tolerance_fails_the_session_with_reason_platform_unavailable(
    failed: tuple[Store, str, dict[str, Any]],
) -> None:
    store, session, _ = failed
    doc = store.for_session(session).record.get()
    assert doc["phase"] == "Failed"
    assert doc["conditions"][-1]["reason"] == "PlatformUnavailable"
    statuses = {e.status for e in Ledger(store.for_session(session)).entries()}
    assert statuses == {LedgerStatus.UNAVAILABLE}  # the outage cost fl_server_init no retry


def test_resume_accepts_rotated_credentials_and_changed_timeouts_retries_and_urls(
    failed: tuple[Store, str, dict[str, Any]],
) -> None:
    store, session, data = failed
    _last_round_aggregated(store, session)
    # only the configuration check is in the way
    store.for_session(session).record.set_phase(Phase.RUNNING, "KeeperDied")
    changed = copy.deepcopy(data)
    changed["providers"]["openwhisk"]["local"].update(auth=ROTATED_AUTH, base_url=_dead_url())
    fl = changed["scenarios"]["federated_learning"]
    fl["server_config"].update(
        activation_timeout_s=900, round_deadline_s=1200, max_retries=7, retry_backoff_s=2.0,
        outage_tolerance_s=600, poll_interval_s=1.5,
    )  # fmt: skip
    fl["functions"] = {"fl_client": {"timeout": 300, "memory": 2048}}
    changed["logs_dir"] = str(Path(data["logs_dir"]).with_name("other-logs"))

    assert _keeper(changed, store).resume(session) == session
    assert store.for_session(session).record.get()["phase"] == "Succeeded"


def test_resume_refuses_a_changed_model_and_names_the_field(
    failed: tuple[Store, str, dict[str, Any]],
) -> None:
    store, session, data = failed
    changed = copy.deepcopy(data)
    changed["scenarios"]["federated_learning"]["model_params"]["hidden_size"] = 64

    with pytest.raises(SessionFailed, match=r"model_params\.hidden_size: was 32, now 64"):
        _keeper(changed, store).resume(session)
    assert store.for_session(session).record.get()["phase"] == "Failed"  # nothing was started


def test_resume_refuses_a_changed_codec_and_names_it(failed: tuple[Store, str, dict[str, Any]]) -> None:
    store, session, data = failed
    changed = copy.deepcopy(data)
    changed["scenarios"]["federated_learning"]["server_config"]["compression"] = {"codec": "topk"}

    with pytest.raises(
        SessionFailed,
        match=r"server_config\.compression: was 'none', now \{'codec': 'topk', 'fraction': 0\.1\}",
    ):
        _keeper(changed, store).resume(session)


def test_a_session_stored_before_codecs_resumes_as_none(failed: tuple[Store, str, dict[str, Any]]) -> None:
    store, session, data = failed
    _last_round_aggregated(store, session)
    fields = json.loads(store.for_session(session).record.get()["training_fingerprint"])
    del fields["server_config.compression"]
    store.db.sessions.update_one({"_id": session}, {"$set": {"training_fingerprint": json.dumps(fields)}})

    assert _keeper(data, store).resume(session) == session
    assert store.for_session(session).record.get()["phase"] == "Succeeded"


def test_the_stored_fingerprint_names_training_fields_and_holds_no_credential(
    failed: tuple[Store, str, dict[str, Any]],
) -> None:
    store, session, _ = failed
    stored = store.for_session(session).record.get()["training_fingerprint"]
    fields = json.loads(stored)
    assert fields["model_params.hidden_size"] == 32 and fields["server_config.seed"] == 0
    assert not [k for k in fields if "timeout" in k or "retries" in k or "url" in k]
    assert GUEST_AUTH.split(":")[1] not in stored
