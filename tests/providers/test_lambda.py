"""LambdaProvider against moto_server (control plane) and awslambdaric (execution)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from fedkeeper.function.config import AwsCluster, parse_config
from fedkeeper.function.errors import ConfigError, PayloadTooLarge, PlatformUnavailable, ProviderError
from fedkeeper.function.invoke.base import MB, ActivationStatus
from fedkeeper.function.tasks.entry import BOUND_ENV
from fedkeeper.host.packaging import build_zip, function_dir
from fedkeeper.host.providers.aws_lambda import HANDLER, LambdaProvider
from fedkeeper.host.providers.base import FunctionSpec

from .conftest import AWS_KEYS, AWS_REGION, MISBEHAVE, lambda_settings
from .harness.lambda_runtime import LambdaEmulator


def boto_lambda(endpoint: LambdaEmulator) -> Any:
    return boto3.client(
        "lambda",
        region_name=AWS_REGION,
        endpoint_url=endpoint.url,
        aws_access_key_id=AWS_KEYS["access_key_id"],
        aws_secret_access_key=AWS_KEYS["secret_access_key"],
    )


@pytest.fixture
def misbehave(lambda_provider: LambdaProvider, unique_name: str) -> Iterator[str]:
    lambda_provider.deploy(FunctionSpec(unique_name, MISBEHAVE, timeout_s=2, bound={"WHO": "bound"}))
    yield unique_name
    lambda_provider.remove(unique_name)


def test_deploy_creates_the_function_from_the_zip_with_settings_and_bound_env(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, unique_name: str
) -> None:
    spec = FunctionSpec(
        unique_name, function_dir("nodeinfo"), memory_mb=384, timeout_s=45, bound={"k": [1, 2]}
    )
    lambda_provider.deploy(spec)
    try:
        config = boto_lambda(lambda_endpoint).get_function_configuration(FunctionName=unique_name)
        assert config["Handler"] == HANDLER == "lambda_function.handler"
        assert config["Runtime"] == "python3.11"
        assert config["MemorySize"] == 384 and config["Timeout"] == 45
        assert json.loads(config["Environment"]["Variables"][BOUND_ENV]) == {"k": [1, 2]}
        digest = base64.b64encode(hashlib.sha256(build_zip(function_dir("nodeinfo"))).digest()).decode()
        assert config["CodeSha256"] == digest
    finally:
        lambda_provider.remove(unique_name)


def test_redeploy_updates_code_and_configuration(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, unique_name: str
) -> None:
    client = boto_lambda(lambda_endpoint)
    lambda_provider.deploy(FunctionSpec(unique_name, function_dir("nodeinfo"), timeout_s=30))
    try:
        first = client.get_function_configuration(FunctionName=unique_name)
        lambda_provider.deploy(FunctionSpec(unique_name, MISBEHAVE, timeout_s=20, bound={"WHO": "new"}))
        second = client.get_function_configuration(FunctionName=unique_name)
        assert second["CodeSha256"] != first["CodeSha256"]
        assert second["Timeout"] == 20 and second["LastUpdateStatus"] == "Successful"
        # The new code runs, with the new environment.
        record = lambda_provider.invoke_sync(unique_name, {"env": BOUND_ENV}, timeout_s=30)
        assert record.ok and record.result is not None
        assert json.loads(record.result["value"]) == {"WHO": "new"}
    finally:
        lambda_provider.remove(unique_name)


def test_limits_outside_lambda_ranges_are_refused(lambda_provider: LambdaProvider) -> None:
    with pytest.raises(ProviderError, match=r"timeout 901 s is outside 1\.\.900 s"):
        lambda_provider.deploy(FunctionSpec("too_long", MISBEHAVE, timeout_s=901))
    with pytest.raises(ProviderError, match=r"memory 64 MB is outside 128\.\.10240 MB"):
        lambda_provider.deploy(FunctionSpec("too_small", MISBEHAVE, memory_mb=64))


def test_request_id_becomes_the_activation_id_and_tail_logs_come_back(
    lambda_provider: LambdaProvider, misbehave: str
) -> None:
    record = lambda_provider.invoke_sync(misbehave, {}, timeout_s=30)
    assert record.ok and record.result is not None
    assert record.activation_id == record.result["request_id"]  # the id the function saw in its context
    assert record.logs[0] == f"START RequestId: {record.activation_id} Version: $LATEST"


def test_handler_exception_is_an_application_error_with_its_message(
    lambda_provider: LambdaProvider, misbehave: str
) -> None:
    record = lambda_provider.invoke_sync(misbehave, {"fail": "bad partition"}, timeout_s=30)
    assert record.status is ActivationStatus.APPLICATION_ERROR
    assert record.result == {"error": "bad partition"}
    assert any("Failed: bad partition" in line for line in record.logs)


def test_function_timeout_is_a_developer_error_flagged_as_timeout(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, misbehave: str
) -> None:
    record = lambda_provider.invoke_sync(
        misbehave, {"sleep": 5}, timeout_s=30
    )  # the function's Timeout is 2 s
    assert record.status is ActivationStatus.DEVELOPER_ERROR and record.timeout
    assert record.error is not None and "Task timed out after 2.00 seconds" in record.error
    assert lambda_provider.invoke_sync(misbehave, {}, timeout_s=30).ok  # a fresh environment takes over


def test_caller_timeout_is_a_developer_error_flagged_as_timeout(
    lambda_provider: LambdaProvider, unique_name: str
) -> None:
    lambda_provider.deploy(FunctionSpec(unique_name, MISBEHAVE, timeout_s=30))
    try:
        started = time.monotonic()
        record = lambda_provider.invoke_sync(unique_name, {"sleep": 10}, timeout_s=1)
        assert time.monotonic() - started < 5
    finally:
        lambda_provider.remove(unique_name)
    assert record.status is ActivationStatus.DEVELOPER_ERROR and record.timeout


def test_runtime_exit_is_a_developer_error(lambda_provider: LambdaProvider, misbehave: str) -> None:
    record = lambda_provider.invoke_sync(misbehave, {"crash": 7}, timeout_s=30)
    assert record.status is ActivationStatus.DEVELOPER_ERROR and not record.timeout
    assert record.error is not None and record.error.startswith("Runtime.ExitError:")
    assert lambda_provider.invoke_sync(misbehave, {}, timeout_s=30).ok


def test_reply_past_six_megabytes_is_a_developer_error(
    lambda_provider: LambdaProvider, misbehave: str
) -> None:
    record = lambda_provider.invoke_sync(misbehave, {"reply_bytes": 6 * MB + 1}, timeout_s=30)
    assert record.status is ActivationStatus.DEVELOPER_ERROR
    assert record.error is not None and record.error.startswith("Function.ResponseSizeTooLarge:")


def test_non_object_reply_is_a_developer_error(lambda_provider: LambdaProvider, misbehave: str) -> None:
    record = lambda_provider.invoke_sync(misbehave, {"raw": "text"}, timeout_s=30)
    assert record.status is ActivationStatus.DEVELOPER_ERROR


def test_oversize_request_is_refused_before_it_is_sent(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, misbehave: str
) -> None:
    before = lambda_endpoint.invocations
    with pytest.raises(PayloadTooLarge, match="past Lambda's 6291456 byte limit"):
        lambda_provider.invoke_sync(misbehave, {"blob": "x" * (6 * MB)}, timeout_s=30)
    with pytest.raises(PayloadTooLarge, match="past Lambda's 1048576 byte limit"):
        lambda_provider.invoke_event(misbehave, {"blob": "x" * MB})
    assert lambda_endpoint.invocations == before


def test_event_invocation_runs_without_a_result_record(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, misbehave: str
) -> None:
    request_id = lambda_provider.invoke_event(misbehave, {"env": "AWS_LAMBDA_FUNCTION_NAME"})
    deadline = time.monotonic() + 30
    while request_id not in lambda_endpoint.event_results and time.monotonic() < deadline:
        time.sleep(0.05)
    ok, body = lambda_endpoint.event_results[request_id]
    assert ok and json.loads(body)["value"] == misbehave
    with pytest.raises(ProviderError, match="cannot invoke asynchronously"):
        lambda_provider.invoke_async(misbehave, {})


def test_concurrent_invocations_scale_out_to_separate_environments(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, misbehave: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda _: lambda_provider.invoke_sync(misbehave, {"sleep": 1}, 30), range(2)))
    assert all(r.ok for r in records)
    assert len({r.result["pid"] for r in records if r.result}) == 2


def test_killed_environments_are_replaced(
    lambda_endpoint: LambdaEmulator, lambda_provider: LambdaProvider, misbehave: str
) -> None:
    first = lambda_provider.invoke_sync(misbehave, {}, timeout_s=30)
    assert lambda_endpoint.kill_workers(misbehave) >= 1
    second = lambda_provider.invoke_sync(misbehave, {}, timeout_s=30)
    assert first.ok and second.ok and first.result and second.result
    assert first.result["pid"] != second.result["pid"]


def test_unreachable_endpoint_is_an_outage_for_invoke_and_probe_and_a_provider_error_for_deploy(
    dead_url: str, unique_name: str
) -> None:
    settings = AwsCluster.model_validate({"endpoint_url": dead_url, "region": AWS_REGION, **AWS_KEYS})
    with LambdaProvider("down", settings) as provider:
        for call in (
            lambda: provider.invoke_sync(unique_name, {}, timeout_s=5),
            lambda: provider.probe(unique_name),
        ):
            with pytest.raises(
                PlatformUnavailable, match=r"cannot reach Lambda \(EndpointConnectionError\)"
            ) as caught:
                call()
            assert caught.value.what == "aws/down"
        with pytest.raises(ProviderError, match="create failed: Could not connect to the endpoint URL"):
            provider.deploy(FunctionSpec(unique_name, MISBEHAVE))
        with pytest.raises(ProviderError, match="delete failed: Could not connect to the endpoint URL"):
            provider.remove(unique_name)


def test_missing_role_is_a_clear_deploy_error(lambda_endpoint: LambdaEmulator, unique_name: str) -> None:
    settings = lambda_settings(lambda_endpoint, role_arn="arn:aws:iam::123456789012:role/no-such-role")
    with LambdaProvider("norole", settings) as provider, pytest.raises(ProviderError) as caught:
        provider.deploy(FunctionSpec(unique_name, MISBEHAVE))
    assert str(caught.value).startswith(f"Lambda cluster 'norole': function {unique_name}: create refused: ")
    assert "cannot be assumed" in str(caught.value)


def test_half_a_key_pair_is_a_config_error() -> None:
    data = {"providers": {"aws": {"main": {"access_key_id": "AKIAONLYHALF"}}}}
    with pytest.raises(
        ConfigError, match=r"^c\.yaml: providers\.aws\.main: access_key_id and secret_access_key go together"
    ):
        parse_config(data, "c.yaml")
