"""The contract every Provider keeps, run against each platform's real components.

A new platform gets this suite by adding its ``<name>_provider`` fixture to conftest.py and
the fixture's name to ``CONTRACT_PROVIDERS``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fedkeeper.function.errors import PayloadTooLarge, ProviderError
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.host.packaging import function_dir
from fedkeeper.host.providers.base import FunctionSpec, Provider
from fedkeeper.host.providers.registry import provider_from_binding

from .conftest import CONTRACT_PROVIDERS

NODEINFO_FIELDS = {"platform", "machine", "python", "cpu_count", "memory_mb", "process_uptime_s", "echo"}


@pytest.fixture(params=CONTRACT_PROVIDERS)
def provider(request: pytest.FixtureRequest) -> Provider:
    value: Provider = request.getfixturevalue(request.param)
    return value


def nodeinfo(name: str, **changes: Any) -> FunctionSpec:
    settings: dict[str, Any] = {"memory_mb": 256, "timeout_s": 30, **changes}
    return FunctionSpec(name=name, source=function_dir("nodeinfo"), **settings)


def test_deploying_twice_updates_in_place_and_invoke_returns_nodeinfo(
    provider: Provider, unique_name: str
) -> None:
    provider.deploy(nodeinfo(unique_name))
    provider.deploy(nodeinfo(unique_name, memory_mb=512))  # the second deploy is an update, not an error
    try:
        record = provider.invoke_sync(unique_name, {"echo": "hello"}, timeout_s=60)
        assert record.status is ActivationStatus.SUCCESS, record.result
        assert record.ok and record.error is None
        assert record.activation_id
        assert record.result is not None and set(record.result) >= NODEINFO_FIELDS
        assert record.result["echo"] == "hello"
        assert record.start_ms is not None and record.end_ms is not None and record.start_ms <= record.end_ms

        again = provider.invoke_sync(unique_name, {}, timeout_s=60)
        assert again.ok and again.activation_id != record.activation_id
    finally:
        provider.remove(unique_name)


def test_function_error_is_an_application_error_with_its_message(
    provider: Provider, unique_name: str
) -> None:
    provider.deploy(nodeinfo(unique_name))
    try:
        record = provider.invoke_sync(unique_name, {"fail": "x"}, timeout_s=60)
    finally:
        provider.remove(unique_name)
    assert record.status is ActivationStatus.APPLICATION_ERROR
    assert record.activation_id
    assert record.error is not None and "failed on request: x" in record.error


def test_bound_parameters_reach_the_function_and_callers_cannot_override_them(
    provider: Provider, unique_name: str
) -> None:
    provider.deploy(nodeinfo(unique_name, bound={"echo": "bound at deploy"}))
    try:
        record = provider.invoke_sync(unique_name, {"echo": "from the caller"}, timeout_s=60)
    finally:
        provider.remove(unique_name)
    assert record.ok, record.result
    assert record.result is not None and record.result["echo"] == "bound at deploy"


def test_remove_reports_whether_it_existed_and_invoke_after_remove_raises(
    provider: Provider, unique_name: str
) -> None:
    provider.deploy(nodeinfo(unique_name))
    assert provider.invoke_sync(unique_name, {}, timeout_s=60).ok
    assert provider.remove(unique_name) is True
    assert provider.remove(unique_name) is False
    with pytest.raises(ProviderError):
        provider.invoke_sync(unique_name, {}, timeout_s=30)


def test_request_past_the_declared_limit_raises_payload_too_large(
    provider: Provider, unique_name: str
) -> None:
    limit = provider.capabilities.max_request_bytes
    params = {"echo": "x" * limit}
    assert len(json.dumps(params)) > limit
    provider.deploy(nodeinfo(unique_name))
    try:
        with pytest.raises(PayloadTooLarge):
            provider.invoke_sync(unique_name, params, timeout_s=30)
        assert provider.invoke_sync(unique_name, {"echo": "x" * (limit // 2)}, timeout_s=60).ok
    finally:
        provider.remove(unique_name)


def test_declared_capabilities_are_consistent(provider: Provider) -> None:
    caps = provider.capabilities
    assert caps.max_request_bytes > 0 and caps.max_result_bytes > 0 and caps.max_duration_s > 0
    if not caps.async_invoke:
        with pytest.raises(ProviderError):
            provider.invoke_async("anything", {})


def test_a_provider_rebuilt_from_its_deploy_time_binding_reaches_the_same_functions(
    provider: Provider, unique_name: str
) -> None:
    # fl_invoker_weights_update holds each target as {"platform", "cluster", "settings"} (JSON).
    binding = {
        "platform": provider.platform,
        "cluster": provider.cluster,
        "settings": json.loads(json.dumps(provider.settings.model_dump(mode="json"))),
    }
    provider.deploy(nodeinfo(unique_name))
    try:
        with provider_from_binding(binding) as rebuilt:
            assert type(rebuilt) is type(provider)
            assert rebuilt.invoke_sync(unique_name, {"echo": 1}, timeout_s=60).ok
    finally:
        provider.remove(unique_name)
