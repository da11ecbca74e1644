"""Fixtures: real fabric processes on ephemeral ports, and a thin REST client for them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.fabric.process import FabricProcess

# Small enough for quick tests, large enough for a 2-core machine under load.
QUICK_LIMITS: dict[str, Any] = {
    "blocking_wait_s": 20,
    "memory_poll_s": 0.05,
    "max_workers": 6,
    "idle_timeout_s": 120,
}


def basic(key: str) -> tuple[str, str]:
    user, _, secret = key.partition(":")
    return user, secret


class FabricClient:
    """Raw REST calls to one fabric with one namespace's key (the guest key unless given), and its
    admin key for ``/admin/*`` (no fedkeeper code in between)."""

    def __init__(self, url: str, admin: str | None = None, key: str = GUEST_AUTH) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.auth = basic(key)
        self.admin = basic(admin) if admin else None

    def ns(self, path: str) -> str:
        return f"{self.url}/api/v1/namespaces/_/{path}"

    def put_action(
        self,
        name: str,
        code: str,
        *,
        limits: dict[str, Any] | None = None,
        annotations: dict[str, Any] | None = None,
        parameters: dict[str, Any] | None = None,
        kind: str = "python:3",
        overwrite: bool = True,
    ) -> requests.Response:
        body: dict[str, Any] = {"exec": {"kind": kind, "code": code}}
        if limits is not None:
            body["limits"] = limits
        if annotations is not None:
            body["annotations"] = [{"key": k, "value": v} for k, v in annotations.items()]
        if parameters is not None:
            body["parameters"] = [{"key": k, "value": v} for k, v in parameters.items()]
        query = {"overwrite": "true"} if overwrite else {}
        return self.session.put(self.ns(f"actions/{name}"), json=body, params=query, timeout=30)

    def deploy(self, name: str, code: str, **kwargs: Any) -> dict[str, Any]:
        response = self.put_action(name, code, **kwargs)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def invoke(
        self, name: str, params: dict[str, Any] | None = None, *, blocking: bool = False, result: bool = False
    ) -> requests.Response:
        query = {}
        if blocking:
            query["blocking"] = "true"
        if result:
            query["result"] = "true"
        return self.session.post(self.ns(f"actions/{name}"), json=params or {}, params=query, timeout=60)

    def run(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Blocking invoke; the full record whatever its status."""
        response = self.invoke(name, params, blocking=True)
        assert response.status_code in (200, 500, 502), response.text
        return dict(response.json())

    def activation(self, activation_id: str) -> requests.Response:
        return self.session.get(self.ns(f"activations/{activation_id}"), timeout=10)

    def wait_record(self, activation_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.activation(activation_id)
            if response.status_code == 200:
                return dict(response.json())
            assert response.status_code == 404, response.text
            time.sleep(0.05)
        raise AssertionError(f"activation {activation_id} has no record after {timeout} s")

    def set_faults(self, plan: dict[str, Any]) -> requests.Response:
        return self.session.put(f"{self.url}/admin/v1/faults", json=plan, auth=self.admin, timeout=10)

    def get_faults(self) -> requests.Response:
        return self.session.get(f"{self.url}/admin/v1/faults", auth=self.admin, timeout=10)

    def close(self) -> None:
        self.session.close()


def annotation(record: dict[str, Any], key: str, default: Any = None) -> Any:
    return next((a["value"] for a in record["annotations"] if a["key"] == key), default)


@pytest.fixture(scope="module")
def fabric() -> Iterator[FabricClient]:
    """One fabric per test module."""
    with FabricProcess(limits=QUICK_LIMITS) as process:
        client = FabricClient(process.url, process.admin_key)
        yield client
        client.close()


@pytest.fixture
def start_fabric() -> Iterator[Callable[..., FabricClient]]:
    """Start dedicated fabrics (``start_fabric(limits={...}, faults={...}, auth=[...], key=...)``);
    all stop after the test."""
    started: list[tuple[FabricProcess, FabricClient]] = []

    def start(**kwargs: Any) -> FabricClient:
        limits = {**QUICK_LIMITS, **kwargs.pop("limits", {})}
        key = kwargs.pop("key", GUEST_AUTH)
        process = FabricProcess(limits=limits, **kwargs).start()
        client = FabricClient(process.url, process.admin_key, key)
        started.append((process, client))
        return client

    yield start
    for process, client in started:
        client.close()
        process.cleanup()


@pytest.fixture
def name() -> str:
    """A fresh action name, so tests sharing a fabric never see each other's actions."""
    return f"t{uuid.uuid4().hex[:12]}"
