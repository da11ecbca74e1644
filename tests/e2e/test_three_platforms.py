"""One session over three FaaS platforms: the local OpenWhisk, GCF (functions-framework), Lambda (awslambdaric)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from providers.conftest import AWS_KEYS, AWS_REGION, LAMBDA_ROLE
from providers.harness.gcf_fake import GcfFake
from providers.harness.lambda_runtime import LambdaBackend

from fedkeeper.function.store.db import Store
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.outages import OutageTooLong

from .conftest import E2E_LIMITS, training_config
from .helpers import client_attempts, run_session

PLATFORM_OF = {0: "openwhisk", 1: "openwhisk", 2: "google", 3: "google", 4: "aws", 5: "aws"}


def stop_when_round_one_opens(gcf: GcfFake) -> Callable[[Store], None]:
    def stop(store: Store) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not store.db.rounds.find_one({"round": 1}):
            time.sleep(0.05)
        gcf.stop()

    return stop


@pytest.fixture
def backends() -> Iterator[tuple[FabricProcess, GcfFake, LambdaBackend]]:
    with (
        FabricProcess(limits=E2E_LIMITS) as fabric,
        GcfFake() as gcf,
        LambdaBackend(region=AWS_REGION) as aws,
    ):
        yield fabric, gcf, aws


def lambda_cluster(aws: LambdaBackend) -> dict[str, Any]:
    assert aws.emulator is not None
    return {"region": AWS_REGION, "endpoint_url": aws.emulator.url, "role_arn": LAMBDA_ROLE, **AWS_KEYS}


def three_platform_config(
    backends: tuple[FabricProcess, GcfFake, LambdaBackend], mongo_url: str, logs: Path, **server: Any
) -> dict[str, Any]:
    fabric, gcf, aws = backends
    assert aws.emulator is not None
    data = training_config(fabric.url, mongo_url, logs, num_clients_per_round=6, **server)
    data["providers"]["google"] = {
        "gcf": {
            "project": "fk-e2e",
            "region": "europe-west1",
            "api_endpoint": gcf.url,
            "allow_unauthenticated": True,
        }
    }
    data["providers"]["aws"] = {"lambda": lambda_cluster(aws)}
    fl = data["scenarios"]["federated_learning"]
    fl["clients_info"] = {
        "total_num_clients": 6,
        "ow_clients_count": 2,
        "gcf_clients_count": 2,
        "aws_clients_count": 2,
    }
    return data


def test_one_session_trains_over_openwhisk_gcf_and_lambda_with_one_ledger(
    backends: tuple[FabricProcess, GcfFake, LambdaBackend], mongo_url: str, tmp_path: Path
) -> None:
    store, session = run_session(three_platform_config(backends, mongo_url, tmp_path / "logs"))

    rounds = store.for_session(session).rounds.all()
    assert [r["included"] for r in rounds] == [[0, 1, 2, 3, 4, 5]] * 3
    accuracies = [r["metrics"]["accuracy"] for r in rounds]
    assert accuracies[-1] > accuracies[0], accuracies
    ledger = list(store.db.activations.find({"session": session, "client": {"$gte": 0}}))
    assert {(e["client"], e["function"]) for e in ledger} == {
        (0, "fl_client"), (1, "fl_client"),
        (2, "fl_invoker_weights_update"), (3, "fl_invoker_weights_update"),
        (4, "fl_invoker_weights_update"), (5, "fl_invoker_weights_update"),
    }  # fmt: skip
    by_platform = {e["client"]: e.get("target_activation_id") for e in ledger if e["client"] >= 2}
    assert all(by_platform.values()), "the GCF/Lambda execution ids are in the ledger too"
    rows = list(csv.DictReader((tmp_path / "logs" / session / "activations.csv").open()))
    assert {r["activation_id"] for r in rows if r["client"]} == {e["activation_id"] for e in ledger}
    assert {r["target_platform"] for r in rows if r["client"]} == {"", "google", "aws"}


def test_a_platform_killed_mid_round_costs_no_retries_then_the_round_closes_on_quorum(
    backends: tuple[FabricProcess, GcfFake, LambdaBackend], mongo_url: str, tmp_path: Path
) -> None:
    _, gcf, _ = backends

    # A short tolerance: GCF never comes back, and its clients are given up once it is past.
    data = three_platform_config(
        backends, mongo_url, tmp_path / "logs", min_fit_fraction=0.6, max_retries=2, retry_backoff_s=0.1,
        outage_tolerance_s=3,
    )  # fmt: skip
    store, session = run_session(data, during=stop_when_round_one_opens(gcf), remove=False)

    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    rounds = store.for_session(session).rounds.all()
    assert rounds[0]["included"] == [0, 1, 2, 3, 4, 5]
    for r in rounds[1:]:
        assert r["included"] == [0, 1, 4, 5], r  # GCF's clients given up; quorum 4 of 6 closed the round
        assert r["metrics"]["failed_clients"] == 2
    gcf_attempts = [a for a in client_attempts(store, session) if a["round"] == 1 and a["client"] in (2, 3)]
    # An unreachable GCF is an outage: its attempts are booked unavailable and cost no retry. Only a
    # call already inside GCF when it stopped may end as the client's failure (the connection was
    # lost after sending, so the function may have run).
    assert any(a["status"] == "unavailable" for a in gcf_attempts), gcf_attempts
    charged = [a for a in gcf_attempts if a["status"] != "unavailable"]
    assert len(charged) <= 2 and len({a["client"] for a in charged}) == len(charged), gcf_attempts


def test_a_platform_down_past_the_tolerance_stops_a_round_that_needs_its_clients(
    backends: tuple[FabricProcess, GcfFake, LambdaBackend], mongo_url: str, tmp_path: Path
) -> None:
    _, gcf, _ = backends
    data = three_platform_config(
        backends, mongo_url, tmp_path / "logs", max_retries=1, retry_backoff_s=0.1, outage_tolerance_s=3
    )  # every client needed: without GCF's the round cannot close
    with pytest.raises(OutageTooLong, match=r"\(PlatformUnavailable\): google/gcf did not answer"):
        run_session(data, during=stop_when_round_one_opens(gcf), remove=False)
    mongo = data["scenarios"]["federated_learning"]["mongo_config"]
    (doc,) = Store(mongo_url, mongo["database"]).db.sessions.find()
    assert doc["phase"] == "Failed" and doc["conditions"][-1]["reason"] == "PlatformUnavailable"


def test_gcf_answering_503_mid_round_is_waited_for_without_spending_retries(
    backends: tuple[FabricProcess, GcfFake, LambdaBackend], mongo_url: str, tmp_path: Path
) -> None:
    _, gcf, _ = backends

    def gcf_down_until_both_its_clients_waited(store: Store) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not store.db.rounds.find_one({"round": 1}):
            time.sleep(0.05)
        gcf.unavailable = True
        waited: set[int] = set()
        while time.monotonic() < deadline and waited != {2, 3}:
            time.sleep(0.05)
            found = store.db.activations.find(
                {"round": 1, "client": {"$in": [2, 3]}, "status": "unavailable"}
            )
            waited = {int(a["client"]) for a in found}
        gcf.unavailable = False

    # No retry to spend and every client needed: the round can only close if GCF's clients wait.
    data = three_platform_config(backends, mongo_url, tmp_path / "logs", max_retries=0, retry_backoff_s=0.1)
    store, session = run_session(data, during=gcf_down_until_both_its_clients_waited)

    assert store.for_session(session).record.get()["phase"] == "Succeeded"
    for r in store.for_session(session).rounds.all():
        assert r["included"] == [0, 1, 2, 3, 4, 5], r
        assert r["metrics"]["failed_clients"] == 0
    gcf_attempts = [a for a in client_attempts(store, session) if a["round"] == 1 and a["client"] in (2, 3)]
    assert {a["client"] for a in gcf_attempts if a["status"] == "unavailable"} == {2, 3}, gcf_attempts
    lines = (tmp_path / "logs" / session / "keeper.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert any(e["event"] == "outage_over" and e["what"] == "google/gcf" for e in events)  # the target's


def test_deploy_py_checks_all_three_platforms_and_removes_from_each(
    backends: tuple[FabricProcess, GcfFake, LambdaBackend], mongo_url: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(three_platform_config(backends, mongo_url, tmp_path / "logs")))
    root = Path(__file__).resolve().parents[2]

    def deploy_py(*flags: str) -> list[str]:
        proc = subprocess.run(
            [sys.executable, str(root / "deploy.py"), "-c", str(config), "-a", "-s", "test", "-f", "nodeinfo", *flags],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout.splitlines()

    lines = deploy_py("-d")
    for where in ("openwhisk/local", "google/gcf", "aws/lambda"):
        (line,) = [ln for ln in lines if ln.startswith(where)]
        assert "reachable  cold start" in line and "python 3." in line, line
    removed = deploy_py("-r")
    assert sum("removed nodeinfo" in ln for ln in removed) == 3
    assert sum("not deployed nodeinfo" in ln for ln in deploy_py("-r")) == 3


def test_weights_past_lambdas_payload_limit_go_by_reference(mongo_url: str, tmp_path: Path) -> None:
    """A cnn's weights (6.6 MB, ~9 MB as base64) exceed Lambda's 6 MB request: the client uses the store."""
    with FabricProcess(limits=E2E_LIMITS) as fabric, LambdaBackend(region=AWS_REGION) as aws:
        assert aws.emulator is not None
        data = training_config(
            fabric.url, mongo_url, tmp_path / "logs", max_rounds=1, num_clients_per_round=2
        )
        data["providers"]["aws"] = {"lambda": lambda_cluster(aws)}
        fl = data["scenarios"]["federated_learning"]
        fl["clients_info"] = {"total_num_clients": 2, "ow_clients_count": 1, "aws_clients_count": 1}
        fl["training_test_data"] = {"dataset": "mnist5k"}
        fl["model_params"].update(model="cnn", input_size=784, learning_rate=0.001)
        store, session = run_session(data)

    (round_doc,) = store.for_session(session).rounds.all()
    assert round_doc["included"] == [0, 1]
    (invoker,) = list(store.db.activations.find({"session": session, "client": 1}))
    assert invoker["function"] == "fl_invoker_weights_update" and invoker["status"] == "success"
    update = store.db.updates.find_one({"session": session, "round": 0, "client": 1})
    assert update["blob"]["size"] > 6 * 1024 * 1024  # the update itself is past Lambda's limit
    assert update["activation_id"] == invoker["target_activation_id"]  # written by the Lambda client itself
