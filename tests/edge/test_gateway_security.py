"""The edge gateway's guards, against the real gateway process: a bearer token, data sets only
by configured name, archives sized before they are inflated, caches bounded in bytes."""

from __future__ import annotations

import base64
import io
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.errors import InvalidUpdate
from fedkeeper.function.store import weights as wire
from fedkeeper.host.edge.process import GatewayProcess

from . import reference

MODEL = ModelParams(hidden_size=8, local_epochs=1, batch_size=32)


def _job(client: int, dataset: dict[str, Any], weights: str | None = None) -> dict[str, Any]:
    return {
        "session": "s-guard",
        "round": 1,
        "client": client,
        "attempt": 1,
        "weights": weights or wire.to_b64(reference.glorot([64, MODEL.hidden_size, 10], seed=0)),
        "model": MODEL.model_dump(mode="json"),
        "data": {"dataset": dataset, "indices": list(range(20))},
    }


@pytest.fixture(scope="module")
def gateway(guest_kernel: Path) -> Iterator[GatewayProcess]:
    args = ["--kernel", str(guest_kernel), "--dataset-cache-mb", "1"]
    with GatewayProcess(1, args=args) as process:
        yield process


@pytest.fixture
def http(gateway: GatewayProcess) -> Iterator[requests.Session]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {gateway.token}"
    yield session
    session.close()


@pytest.fixture
def web_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every path asked of it."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_requests_without_the_gateway_token_get_401(gateway: GatewayProcess) -> None:
    job = _job(0, TrainingTestData().model_dump(mode="json"))
    url = f"{gateway.url}/v1/clients/0/train"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {gateway.token}"}):
        response = requests.post(url, json=job, headers=headers, timeout=10)
        assert response.status_code == 401 and response.json() == {"error": "missing or wrong gateway token"}
        assert requests.get(f"{gateway.url}/v1/health", headers=headers, timeout=10).status_code == 401
    prefix = {"Authorization": f"Bearer {gateway.token[:-1]}"}
    assert requests.get(f"{gateway.url}/v1/health", headers=prefix, timeout=10).status_code == 401


def test_data_set_paths_and_urls_from_requests_are_never_opened(
    gateway: GatewayProcess, http: requests.Session, web_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, seen = web_server
    existing = tmp_path / "mnist.npz"
    existing.write_bytes(b"PK not really")
    answers = []
    for path in (str(existing), str(tmp_path / "missing.npz"), f"{url}/mnist.npz"):
        job = _job(0, {"dataset": "mnist", "path": path})
        response = http.post(f"{gateway.url}/v1/clients/0/train", json=job, timeout=30)
        answers.append((response.status_code, response.json()["error"]))
    # The same answer whether the file exists or not (no oracle), and no fetch was made.
    assert len(set(answers)) == 1 and answers[0][0] == 400, answers
    assert answers[0][1].startswith("job.data.dataset.dataset: 'mnist' is not configured for this gateway")
    assert seen == []
    builtin_with_path = _job(0, {"dataset": "digits", "path": str(existing)})
    response = http.post(f"{gateway.url}/v1/clients/0/train", json=builtin_with_path, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"].startswith("job.data.dataset.path: the gateway loads data sets only by")


def test_compressed_weights_are_sized_before_they_are_inflated(
    gateway: GatewayProcess, http: requests.Session
) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a0=np.zeros(25_000_000, np.float32))  # 100 MB in ~100 kB
    job = _job(0, TrainingTestData().model_dump(mode="json"), base64.b64encode(buffer.getvalue()).decode())
    response = http.post(f"{gateway.url}/v1/clients/0/train", json=job, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"] == (
        "job.weights: weights are not a valid .npz archive: 100000128 bytes once decompressed, "
        f"past the limit of {8 * 1024 * 1024}"
    )


def test_npy_header_claiming_more_than_its_member_holds_is_refused() -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (100_000_000,)}
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a0.npy", header.getvalue() + b"\0" * 16)
    with pytest.raises(InvalidUpdate, match=r"a0.npy: header declares 800000000 bytes, it holds \d+"):
        wire.decode(buffer.getvalue())


def test_loaded_data_sets_stay_within_the_cache_limit(
    gateway: GatewayProcess, http: requests.Session
) -> None:
    # Each split of digits is ~0.46 MB; the gateway was started with a 1 MB data-set cache.
    for seed in range(4):
        dataset = TrainingTestData(seed=seed).model_dump(mode="json")
        job = _job(0, dataset)
        job["data"]["indices"] = [0, 10**6]  # loads the data set, then is refused before any guest
        response = http.post(f"{gateway.url}/v1/clients/0/train", json=job, timeout=60)
        assert response.status_code == 400 and "out of range" in response.json()["error"]
    cache = http.get(f"{gateway.url}/v1/health", timeout=10).json()["cache"]
    assert 1 <= cache["datasets"] <= 2 and 0 < cache["dataset_bytes"] <= 1024 * 1024, cache
