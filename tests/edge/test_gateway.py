"""The edge gateway and EdgeProvider over real QEMU guests: FedAvg rounds, bad jobs, crashes."""

from __future__ import annotations

import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests

from fedkeeper.function.config import EdgeCluster, ModelParams, TrainingTestData
from fedkeeper.function.errors import PlatformUnavailable, ProviderError
from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.store import weights as wire
from fedkeeper.host.edge.gateway import EXECUTION_HEADER
from fedkeeper.host.edge.process import GatewayProcess, running_daemon
from fedkeeper.host.providers.base import FunctionSpec
from fedkeeper.host.providers.edge import EdgeProvider

from . import reference

SPEC = TrainingTestData()  # digits
MODEL = ModelParams(hidden_size=32, optimizer="adam", learning_rate=0.01, local_epochs=1, batch_size=32)
CLIENT_SPEC = FunctionSpec("fl_client", Path("functions/fl_client"), timeout_s=60, instances=4)


def _job(
    client: int, rnd: int, weights: list[np.ndarray], indices: np.ndarray, **model: Any
) -> dict[str, Any]:
    return {
        "session": "s-edge-test",
        "round": rnd,
        "client": client,
        "attempt": 1,
        "weights": wire.to_b64(weights),
        "model": MODEL.model_copy(update=model).model_dump(mode="json"),
        "data": {"dataset": SPEC.model_dump(mode="json"), "indices": [int(i) for i in indices]},
    }


@pytest.fixture(scope="module")
def dataset() -> Any:
    return load_dataset(SPEC)


@pytest.fixture(scope="module")
def partitions(dataset: Any) -> list[np.ndarray]:
    order = np.random.default_rng(0).permutation(len(dataset.y_train))
    return np.array_split(order, 4)


@pytest.fixture(scope="module")
def provider(guest_kernel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeProvider]:
    """An edge cluster of 4 guests, deployed as ``main.py -d`` would: a detached gateway daemon."""
    edge = EdgeProvider("edge-test", EdgeCluster(), state_dir=tmp_path_factory.mktemp("edge-state"))
    edge.deploy(CLIENT_SPEC)
    yield edge
    assert edge.remove("fl_client") is True
    assert edge.remove("fl_client") is False
    edge.close()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _health(edge: EdgeProvider) -> dict[str, Any]:
    response = requests.get(edge.gateway_url() + "/v1/health", headers=_auth(edge.token), timeout=10)
    health: dict[str, Any] = response.json()
    return health


def _fedavg(replies: list[dict[str, Any]]) -> list[np.ndarray]:
    total = sum(r["num_examples"] for r in replies)
    arrays = [wire.from_b64(r["weights"]) for r in replies]
    return [
        (sum(a[i] * r["num_examples"] for a, r in zip(arrays, replies, strict=True)) / total).astype(
            np.float32
        )
        for i in range(len(arrays[0]))
    ]


def test_four_edge_clients_train_an_mlp_over_rounds_and_accuracy_rises(
    provider: EdgeProvider, dataset: Any, partitions: list[np.ndarray]
) -> None:
    weights = reference.glorot([64, MODEL.hidden_size, 10], seed=0)
    accuracies = [reference.loss_and_accuracy(weights, dataset.x_test, dataset.y_test)[1]]
    activation_ids: set[str] = set()
    with ThreadPoolExecutor(4) as pool:
        for rnd in range(1, 4):
            jobs = [_job(c, rnd, weights, partitions[c]) for c in range(4)]
            records = list(pool.map(lambda job: provider.invoke_sync("fl_client", job, 60), jobs))
            assert [r.status for r in records] == [ActivationStatus.SUCCESS] * 4, [r.error for r in records]
            replies = [r.result for r in records if r.result is not None]
            assert [(r["client"], r["round"]) for r in replies] == [(c, rnd) for c in range(4)]
            assert [r["num_examples"] for r in replies] == [len(p) for p in partitions]
            activation_ids |= {r.activation_id for r in records}
            weights = _fedavg(replies)
            accuracies.append(reference.loss_and_accuracy(weights, dataset.x_test, dataset.y_test)[1])
    assert len(activation_ids) == 12 and all(re.fullmatch(r"[0-9a-f]{32}", a) for a in activation_ids)
    assert accuracies[-1] > accuracies[0] + 0.3, accuracies
    assert accuracies[-1] >= 0.8 and accuracies[-1] >= accuracies[1], accuracies
    health = _health(provider)
    assert health["instances"] == 4 and health["alive"] == 4
    # sticky: each client on its own instance, which booted its data once
    assert sorted(c for d in health["details"] for c in d["clients"]) == [0, 1, 2, 3]
    assert all(len(d["clients"]) == 1 and d["jobs"] >= 3 and d["pss_kb"] > 0 for d in health["details"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weights": "not base64!"}, "job.weights: weights are not valid base64"),
        ({"model": {"model": "cnn"}}, "job.model.model: edge devices train only 'mlp' models (got 'cnn')"),
        ({"model": {"hidden_size": 16}}, "job.weights: array 0 has shape (64, 32), the mlp needs (64, 16)"),
        ({"model": {"input_size": 32}}, "job.model.input_size: 32, but the data set has 64 features"),
        ({"model": {"batch_size": 0}}, "job.model.batch_size: Input should be greater than 0 (got 0)"),
        ({"data": {"indices": [0, 99999]}}, "job.data.indices: 99999 is out of range for 1437 training rows"),
        ({"data": {"indices": []}}, "job.data.indices: empty"),
        ({"round": "one"}, "job.round: expected int, got str"),
        ({"float64": True}, "job.weights: array 0 has dtype float64, the mlp needs float32"),
        ({"nan": True}, "job.weights: array 2 contains NaN or infinite values"),
    ],
)
def test_malformed_jobs_get_one_line_application_errors(
    provider: EdgeProvider, partitions: list[np.ndarray], change: dict[str, Any], message: str
) -> None:
    weights = reference.glorot([64, MODEL.hidden_size, 10], seed=0)
    if change.pop("float64", False):
        weights = [w.astype(np.float64) for w in weights]
    if change.pop("nan", False):
        weights[2][0, 0] = np.nan
    job = _job(1, 1, weights, partitions[1])
    for key, value in change.items():
        job[key] = {**job[key], **value} if isinstance(value, dict) else value
    record = provider.invoke_sync("fl_client", job, 30)
    assert record.status is ActivationStatus.APPLICATION_ERROR
    assert record.error is not None and record.error.startswith(message), record.error
    assert "\n" not in record.error and re.fullmatch(r"[0-9a-f]{32}", record.activation_id)


def test_raw_http_errors_are_json_with_an_execution_id(
    provider: EdgeProvider, partitions: list[np.ndarray]
) -> None:
    url = provider.gateway_url()
    http = requests.Session()
    http.headers.update(_auth(provider.token))
    job = _job(7, 1, reference.glorot([64, MODEL.hidden_size, 10], seed=0), partitions[1])
    mismatch = http.post(f"{url}/v1/clients/1/train", json=job, timeout=10)
    assert mismatch.status_code == 400
    assert mismatch.json() == {"error": "job.client: 7 does not match the URL's client 1"}
    bad_json = http.post(f"{url}/v1/clients/1/train", data=b"{not json", timeout=10)
    assert bad_json.status_code == 400 and bad_json.json() == {"error": "request body is not valid JSON"}
    assert re.fullmatch(r"[0-9a-f]{32}", bad_json.headers[EXECUTION_HEADER])
    not_object = http.post(f"{url}/v1/clients/1/train", json=[1, 2], timeout=10)
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["error"]
    too_big = http.post(f"{url}/v1/clients/1/train", data=b"x" * (9 << 20), timeout=30)
    assert too_big.status_code == 413 and too_big.json()["error"].startswith("job too large")
    assert http.post(f"{url}/v1/clients/abc/train", json={}, timeout=10).status_code == 404
    http.close()


def test_killed_guest_is_a_developer_error_and_the_revived_activation_completes(
    provider: EdgeProvider, partitions: list[np.ndarray]
) -> None:
    weights = reference.glorot([64, MODEL.hidden_size, 10], seed=0)
    client = 2
    assert provider.invoke_sync(
        "fl_client", _job(client, 9, weights, partitions[client]), 60
    ).ok  # data booted
    details = {c: d for d in _health(provider)["details"] for c in d["clients"]}
    victim, restarts = details[client]["pid"], details[client]["restarts"]
    record: list[ActivationRecord] = []
    long_job = _job(client, 10, weights, partitions[client], local_epochs=200)
    worker = threading.Thread(target=lambda: record.append(provider.invoke_sync("fl_client", long_job, 120)))
    worker.start()
    time.sleep(1.0)  # the guest is now training (200 epochs take several seconds)
    psutil.Process(victim).send_signal(signal.SIGKILL)
    worker.join(60)
    assert record and record[0].status is ActivationStatus.DEVELOPER_ERROR
    assert record[0].error is not None and "exited" in record[0].error and not record[0].timeout
    # the keeper revives the activation: the same job again, on a fresh guest with the same data
    revived = provider.invoke_sync("fl_client", _job(client, 10, weights, partitions[client]), 60)
    assert revived.ok, revived.error
    assert revived.activation_id != record[0].activation_id
    after = {c: d for d in _health(provider)["details"] for c in d["clients"]}[client]
    assert after["restarts"] == restarts + 1 and after["pid"] != victim and after["alive"]


def test_deploy_resizes_and_remove_stops_the_fleet(guest_kernel: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    edge = EdgeProvider("edge-resize", EdgeCluster(gateway_port=port), state_dir=tmp_path / "state")
    with pytest.raises(ProviderError, match="hosts only fl_client"):
        edge.deploy(FunctionSpec("fl_server_aggregator", Path("functions/fl_server_aggregator")))
    try:
        edge.deploy(FunctionSpec("fl_client", Path("functions/fl_client"), instances=1))
        first = running_daemon(tmp_path / "state")
        assert first is not None and first.instances == 1 and edge.gateway_url() == f"http://127.0.0.1:{port}"
        edge.deploy(FunctionSpec("fl_client", Path("functions/fl_client"), instances=1))
        assert running_daemon(tmp_path / "state") == first  # same size: left alone
        edge.deploy(FunctionSpec("fl_client", Path("functions/fl_client"), instances=2))
        second = running_daemon(tmp_path / "state")
        assert second is not None and second.instances == 2 and second.pid != first.pid
        assert second.firmware == "zephyr"
        assert _health(edge)["alive"] == 2
        # Another firmware for the same cluster: the fleet is replaced, same size, same token.
        baremetal = EdgeProvider(
            "edge-resize", EdgeCluster(gateway_port=port, firmware="baremetal"), state_dir=tmp_path / "state"
        )
        baremetal.deploy(FunctionSpec("fl_client", Path("functions/fl_client"), instances=2))
        third = running_daemon(tmp_path / "state")
        assert third is not None and third.firmware == "baremetal" and third.pid != second.pid
        health = _health(baremetal)
        assert (health["firmware"], health["alive"]) == ("baremetal", 2)
    finally:
        assert edge.remove("fl_client") is True
    for daemon in (second, third):
        assert (
            not psutil.pid_exists(daemon.pid) or psutil.Process(daemon.pid).status() == psutil.STATUS_ZOMBIE
        )
    assert edge.remove("fl_client") is False
    with pytest.raises(PlatformUnavailable, match="gateway unreachable"):  # an outage, not a job's failure
        edge.invoke_sync("fl_client", {"client": 0}, 5)
    assert not list((tmp_path / "state" / "run").glob("edge*.in"))


def test_gateway_process_prints_its_url_and_stops_its_guests(guest_kernel: Path) -> None:
    with GatewayProcess(2, args=["--kernel", str(guest_kernel)]) as gateway:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", gateway.url)
        health = requests.get(gateway.url + "/v1/health", headers=_auth(gateway.token), timeout=10).json()
        pids = [d["pid"] for d in health["details"]]
        assert health["alive"] == 2 and all(pids)
    assert not [
        p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
