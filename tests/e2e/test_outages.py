"""Outages of the fabric or the store are waited out, not charged to clients; past the tolerance
the session stops with one clear line and ``resume`` continues it once the outage is over."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymongo
import pytest
import yaml

from fedkeeper.function.config import parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.outages import OutageTooLong
from fedkeeper.host.run import opened
from fedkeeper.host.store.embedded import EmbeddedMongo

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, client_attempts, run_session, wait_for

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
SLOW_CLIENTS = {"seed": 1, "actions": {"fl_client": {"latency_ms": 2500}}}
# Longer than ACTIVATION_TIMEOUT_S: before, the keeper timed every in-flight client out, found the
# fabric still down and gave each up (max_retries 1); the session failed. The time-out leaves room
# for four TensorFlow cold starts at once on a busy two-core machine (10-20 s each there).
ACTIVATION_TIMEOUT_S = 45
OUTAGE_S = 52
WAITING = re.compile(r"waiting for openwhisk/local: down \d+ s")


def _fabric(state: Path, port: int = 0, faults: dict[str, Any] | None = SLOW_CLIENTS) -> FabricProcess:
    """A fabric keeping its actions in ``state``, so a restart on the same port serves them again."""
    return FabricProcess(port=port, state_dir=state, limits=E2E_LIMITS, faults=faults).start()


def _in_flight(store: Store, round_number: int) -> bool:
    query = {"round": round_number, "function": "fl_client", "status": LedgerStatus.SUBMITTED}
    return store.db.activations.count_documents(query) > 0


def _events(logs: Path, session: str) -> list[dict[str, Any]]:
    lines = (logs / session / "keeper.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_fabric_down_mid_round_past_the_retry_budget_is_waited_out_and_no_client_fails(
    mongo_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fabrics = [_fabric(tmp_path / "fabric")]
    port = fabrics[0].port
    restarted_at: list[datetime] = []
    ended = threading.Event()  # the session ended early: start no fabric that nobody would stop

    def outage(store: Store) -> None:
        wait_for(lambda: _in_flight(store, 1), 240, "round 1 clients in flight")
        fabrics[0].stop()
        if not ended.wait(OUTAGE_S):
            fabrics.append(_fabric(tmp_path / "fabric", port))
            restarted_at.append(datetime.now(UTC))

    try:
        data = training_config(
            fabrics[0].url, mongo_url, tmp_path / "logs", max_rounds=2,
            max_retries=1, retry_backoff_s=0.2, activation_timeout_s=ACTIVATION_TIMEOUT_S,
        )  # fmt: skip
        # The platform ends an attempt before the keeper gives up on it (config rule).
        data["scenarios"]["federated_learning"]["functions"]["fl_client"]["timeout"] = (
            ACTIVATION_TIMEOUT_S - 15
        )
        store, session = run_session(data, during=outage)
    finally:
        ended.set()
        for fabric in fabrics:
            fabric.cleanup()

    assert restarted_at  # the outage happened while the session ran
    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=2)
    assert all(doc["metrics"]["failed_clients"] == 0 for doc in store.for_session(session).rounds.all())
    # Every round-1 attempt made before the fabric came back either delivered or was booked to
    # the outage; none cost its client a retry.
    during = {
        e.status
        for e in Ledger(store.for_session(session)).entries()
        if e.round == 1 and e.client >= 0 and e.submitted_at < restarted_at[0]
    }
    assert LedgerStatus.UNAVAILABLE in during and during <= {
        "success",
        "record lost",
        LedgerStatus.UNAVAILABLE,
    }
    events = _events(tmp_path / "logs", session)
    assert any(e["event"] == "waiting" and e["what"] == "openwhisk/local" for e in events)
    assert any(e["event"] == "outage_over" and e["what"] == "openwhisk/local" for e in events)
    assert WAITING.search(capsys.readouterr().out)


def test_a_fabric_down_past_the_outage_tolerance_fails_the_session_and_resume_continues_it(
    mongo_url: str, tmp_path: Path
) -> None:
    fabric = _fabric(tmp_path / "fabric", faults=None)
    port, fabrics = fabric.port, [fabric]
    data = training_config(fabric.url, mongo_url, tmp_path / "logs", max_rounds=2, outage_tolerance_s=3)
    config = parse_config(data, "e2e.yaml")
    store = Store(config.fl.mongo_config.url, config.fl.mongo_config.database)
    store.ensure_indexes()
    try:
        with opened(config) as run:
            run.deploy(say=lambda _: None)
            fabric.stop()
            with pytest.raises(
                OutageTooLong, match=r"\(PlatformUnavailable\): openwhisk/local did not answer"
            ):
                run.keeper(store).start()
            (doc,) = store.sessions()
            assert doc["phase"] == "Failed"
            assert doc["conditions"][-1]["reason"] == "PlatformUnavailable"

            fabrics.append(_fabric(tmp_path / "fabric", port, faults=None))  # the cause is fixed
            session = run.keeper(store).resume(doc["_id"])
            run.remove(say=lambda _: None)
    finally:
        for f in fabrics:
            f.cleanup()

    assert session == doc["_id"]
    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    assert_every_selected_update_counted_once(store, session, rounds=2)


def test_a_store_down_past_the_outage_tolerance_exits_with_one_line_and_resume_completes_the_session(
    tmp_path: Path,
) -> None:
    mongo = EmbeddedMongo(tmp_path / "mongo").start()  # on disk, so a restart keeps the session
    servers, fabric = [mongo], _fabric(tmp_path / "fabric")
    keeper: subprocess.Popen[str] | None = None
    try:
        data = training_config(fabric.url, mongo.url, tmp_path / "logs", max_rounds=2, outage_tolerance_s=3)
        config_file = tmp_path / "config.yaml"
        config_file.write_text(yaml.safe_dump(data))
        database = data["scenarios"]["federated_learning"]["mongo_config"]["database"]
        watch: pymongo.MongoClient = pymongo.MongoClient(mongo.url, serverSelectionTimeoutMS=2000)
        subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "-c", str(config_file), "-d"],
            check=True, cwd=tmp_path, env=ENV, capture_output=True, timeout=120,
        )  # fmt: skip
        keeper = subprocess.Popen(
            [sys.executable, "-m", "fedkeeper", "start", "-c", str(config_file)],
            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        activations = watch[database].activations
        wait_for(
            lambda: (
                activations.count_documents(
                    {"round": 1, "function": "fl_client", "status": LedgerStatus.SUBMITTED}
                )
                > 0
            ),
            240,
            "round 1 clients in flight",
        )
        watch.close()
        mongo.stop()
        out, err = keeper.communicate(timeout=300)

        assert keeper.returncode == 1, out + err
        assert "Traceback" not in out + err
        (line,) = [ln for ln in err.splitlines() if ln.strip()]  # one line on stderr, nothing else
        assert line.startswith("fedkeeper: session ") and "(StoreUnavailable)" in line, line
        assert "waiting for mongodb: down" in out
        session = re.search(r"session (s-[\w-]+): starting", out).group(1)  # type: ignore[union-attr]

        servers.append(EmbeddedMongo(tmp_path / "mongo", port=mongo.port).start())  # the cause is fixed
        resumed = subprocess.run(
            [sys.executable, "-m", "fedkeeper", "resume", session, "-c", str(config_file)],
            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        store = Store(mongo.url, database)
        assert store.for_session(session).record.get()["phase"] == "Succeeded"
        assert_every_selected_update_counted_once(store, session, rounds=2)
        # clients that met the dead store were booked to the outage, not charged a retry
        assert {a["status"] for a in client_attempts(store, session)} <= {
            "success",
            "record lost",
            LedgerStatus.UNAVAILABLE,
        }
    finally:
        if keeper is not None and keeper.poll() is None:
            keeper.kill()
            keeper.wait(timeout=10)
        fabric.cleanup()
        for server in servers:
            server.stop()
