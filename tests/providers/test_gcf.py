"""GcfProvider against the fake v2 control plane (real client library) and functions-framework."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedkeeper.function.config import GoogleCluster
from fedkeeper.function.errors import ConfigError, PlatformUnavailable, ProviderError
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.function.invoke.credentials import ServiceAccountKey
from fedkeeper.function.invoke.gcf import function_id
from fedkeeper.function.tasks.entry import BOUND_ENV
from fedkeeper.host.packaging import function_dir
from fedkeeper.host.providers.base import FunctionSpec
from fedkeeper.host.providers.gcf import GcfProvider

from .conftest import MISBEHAVE, gcf_settings, service_account_info
from .harness.gcf_fake import GcfFake


@pytest.fixture
def misbehave(gcf_provider: GcfProvider, unique_name: str) -> Iterator[str]:
    gcf_provider.deploy(FunctionSpec(unique_name, MISBEHAVE, timeout_s=2, bound={"WHO": "bound"}))
    yield unique_name
    gcf_provider.remove(unique_name)


def test_function_ids_replace_underscores_and_reject_what_gcf_refuses() -> None:
    assert function_id("fl_invoker_weights_update") == "fl-invoker-weights-update"
    for bad in ("1client", "x" * 64, "client_", "über"):
        with pytest.raises(ProviderError, match="cannot be a GCF id"):
            function_id(bad)


def test_deploy_uploads_the_zip_and_sets_runtime_memory_timeout_instances_and_bound_env(
    gcf_fake: GcfFake, gcf_provider: GcfProvider, unique_name: str
) -> None:
    spec = FunctionSpec(
        unique_name, function_dir("nodeinfo"), memory_mb=384, timeout_s=45, bound={"k": [1, 2]}
    )
    gcf_provider.deploy(spec)
    try:
        resource = gcf_fake.functions[gcf_provider.resource(unique_name)].resource
        assert resource["buildConfig"]["runtime"] == "python311"
        assert resource["buildConfig"]["entryPoint"] == "handler"
        service = resource["serviceConfig"]
        assert service["availableMemory"] == "384Mi"
        assert service["timeoutSeconds"] == 45
        assert service["maxInstanceCount"] == 3
        assert json.loads(service["environmentVariables"][BOUND_ENV]) == {"k": [1, 2]}
        token = resource["buildConfig"]["source"]["storageSource"]["object"].removesuffix(".zip")
        names = zipfile.ZipFile(io.BytesIO(gcf_fake.uploads[token])).namelist()
        assert {
            "main.py",
            "requirements.txt",
            "fedkeeper/__init__.py",
            "fedkeeper/function/tasks/entry.py",
        } <= set(names)
        assert gcf_provider.url(unique_name) == service["uri"]
    finally:
        gcf_provider.remove(unique_name)


def test_limits_outside_gcf_ranges_are_refused_before_any_request(
    gcf_provider: GcfProvider, gcf_fake: GcfFake
) -> None:
    before = len(gcf_fake.uploads)
    with pytest.raises(ProviderError, match=r"timeout 3601 s is outside 1\.\.3600"):
        gcf_provider.deploy(FunctionSpec("too_long", MISBEHAVE, timeout_s=3601))
    with pytest.raises(ProviderError, match="memory 64 MB is outside"):
        gcf_provider.deploy(FunctionSpec("too_small", MISBEHAVE, memory_mb=64))
    assert len(gcf_fake.uploads) == before


def test_execution_id_header_becomes_the_activation_id_and_bound_values_arrive_as_env(
    gcf_fake: GcfFake, gcf_provider: GcfProvider, misbehave: str
) -> None:
    record = gcf_provider.invoke_sync(misbehave, {"env": BOUND_ENV}, timeout_s=30)
    assert record.ok, record.result
    assert record.activation_id == gcf_fake.execution_ids[-1]
    assert record.result is not None and json.loads(record.result["value"]) == {"WHO": "bound"}


def test_timeout_is_a_developer_error_flagged_as_timeout(gcf_provider: GcfProvider, misbehave: str) -> None:
    record = gcf_provider.invoke_sync(misbehave, {"sleep": 3}, timeout_s=1)
    assert record.status is ActivationStatus.DEVELOPER_ERROR and record.timeout
    assert record.activation_id
    # The function's own limit (timeout_s=2 at deploy) is enforced by the platform: 504.
    platform = gcf_provider.invoke_sync(misbehave, {"sleep": 3}, timeout_s=10)
    assert platform.status is ActivationStatus.DEVELOPER_ERROR and platform.timeout


def test_crash_without_a_reply_is_a_developer_error_and_the_next_request_is_served(
    gcf_provider: GcfProvider, misbehave: str
) -> None:
    crashed = gcf_provider.invoke_sync(misbehave, {"crash": 3}, timeout_s=30)
    assert crashed.status is ActivationStatus.DEVELOPER_ERROR and not crashed.timeout
    assert crashed.error == "the function failed (HTTP 500)"
    assert gcf_provider.invoke_sync(misbehave, {}, timeout_s=30).ok


def test_killed_instances_are_replaced_on_the_next_request(
    gcf_fake: GcfFake, gcf_provider: GcfProvider, misbehave: str
) -> None:
    first = gcf_provider.invoke_sync(misbehave, {}, timeout_s=30)
    assert gcf_fake.kill_instances(function_id(misbehave)) >= 1
    second = gcf_provider.invoke_sync(misbehave, {}, timeout_s=30)
    assert first.ok and second.ok
    assert first.result is not None and second.result is not None
    assert first.result["pid"] != second.result["pid"]


def test_non_json_reply_is_a_developer_error(gcf_provider: GcfProvider, misbehave: str) -> None:
    record = gcf_provider.invoke_sync(misbehave, {"raw": "plain text"}, timeout_s=30)
    assert record.status is ActivationStatus.DEVELOPER_ERROR
    assert record.error is not None and "JSON" in record.error


def test_unreachable_front_end_is_an_outage_of_the_platform(unique_name: str) -> None:
    with GcfFake() as fake:
        provider = GcfProvider("gone", gcf_settings(fake))
        provider.deploy(FunctionSpec(unique_name, MISBEHAVE))
        assert provider.probe(unique_name) is True
    # The platform is gone but the provider still knows the URL (as the invoker would).
    with pytest.raises(PlatformUnavailable, match="cannot reach the function URL") as caught:
        provider.invoke_sync(unique_name, {}, timeout_s=5)
    assert caught.value.what == "google/gone"
    with pytest.raises(PlatformUnavailable, match="cannot reach the GCF API"):
        provider.probe(unique_name)
    provider.close()


def test_a_front_end_answering_503_is_an_outage_and_its_probe_says_so(
    gcf_fake: GcfFake, gcf_provider: GcfProvider, misbehave: str
) -> None:
    gcf_fake.unavailable = True
    try:
        with pytest.raises(PlatformUnavailable, match="HTTP 503"):
            gcf_provider.invoke_sync(misbehave, {}, timeout_s=5)
        with pytest.raises(PlatformUnavailable, match="503"):
            gcf_provider.probe(misbehave)
    finally:
        gcf_fake.unavailable = False
    assert gcf_provider.invoke_sync(misbehave, {}, timeout_s=30).ok


def test_unreachable_control_plane_is_a_clear_provider_error(dead_url: str, unique_name: str) -> None:
    with GcfProvider("down", GoogleCluster(project="p", api_endpoint=dead_url)) as provider:
        for call in (
            lambda: provider.deploy(FunctionSpec(unique_name, MISBEHAVE)),
            lambda: provider.remove(unique_name),
            lambda: provider.invoke_sync(unique_name, {}, timeout_s=5),
        ):
            with pytest.raises(PlatformUnavailable, match=r"cannot reach the GCF API \(ConnectionError\)$"):
                call()


def test_build_failure_fails_the_operation_with_one_clear_line(
    tmp_path: Path, gcf_provider: GcfProvider, unique_name: str
) -> None:
    (tmp_path / "main.py").write_text("def not_the_handler(request):\n    return '{}'\n")
    with pytest.raises(ProviderError) as caught:
        gcf_provider.deploy(FunctionSpec(unique_name, tmp_path))
    message = str(caught.value)
    assert message.startswith(f"GCF cluster 'gcf-test': function {unique_name}: create failed: ")
    assert "container failed to start" in message and "named 'handler'" in message
    assert "\n" not in message
    gcf_provider.remove(unique_name)


def test_operation_that_never_finishes_times_out_with_a_clear_error(
    gcf_fake: GcfFake, unique_name: str
) -> None:
    provider = GcfProvider("slow", gcf_settings(gcf_fake, operation_timeout_s=1))
    gcf_fake.hold_operations = True
    try:
        with pytest.raises(ProviderError, match=r"create did not finish within 1 s \(operation projects/"):
            provider.deploy(FunctionSpec(unique_name, MISBEHAVE))
    finally:
        gcf_fake.hold_operations = False
        provider.close()


# --------------------------------------------------------------------------- authentication
@pytest.fixture
def secured_fake(no_google_iam: None) -> Iterator[GcfFake]:
    with GcfFake(require_auth=True) as fake:
        yield fake


def test_invocations_carry_an_id_token_for_the_function_url(secured_fake: GcfFake, unique_name: str) -> None:
    info = service_account_info(f"{secured_fake.url}/token")
    secured_fake.trust(info)
    settings = gcf_settings(secured_fake, allow_unauthenticated=False, credentials=json.dumps(info))
    with GcfProvider("secured", settings) as provider:
        provider.deploy(FunctionSpec(unique_name, MISBEHAVE))  # control plane: the key's tokens
        assert provider.invoke_sync(unique_name, {}, timeout_s=30).ok
        assert provider.invoke_sync(unique_name, {}, timeout_s=30).ok
        assert len(secured_fake.seen_auth) == 2
        assert secured_fake.seen_auth[0] == secured_fake.seen_auth[1]  # the token is cached, not re-minted
        assert provider.remove(unique_name)


def test_an_untrusted_key_is_refused_by_the_control_plane(secured_fake: GcfFake, unique_name: str) -> None:
    info = service_account_info(f"{secured_fake.url}/token")  # never trusted
    settings = gcf_settings(secured_fake, allow_unauthenticated=False, credentials=json.dumps(info))
    with GcfProvider("untrusted", settings) as provider, pytest.raises(ProviderError):
        provider.deploy(FunctionSpec(unique_name, MISBEHAVE))


def test_skipping_the_token_where_the_function_is_private_raises(
    secured_fake: GcfFake, unique_name: str
) -> None:
    info = service_account_info(f"{secured_fake.url}/token")
    secured_fake.trust(info)
    deployer = GcfProvider("secured", gcf_settings(secured_fake, credentials=json.dumps(info)))
    # allow_unauthenticated=True: this provider sends no ID token, and the function is private.
    deployer.deploy(FunctionSpec(unique_name, MISBEHAVE))
    with pytest.raises(ProviderError, match="refused the ID token"):
        deployer.invoke_sync(unique_name, {}, timeout_s=30)
    deployer.remove(unique_name)
    deployer.close()


# --------------------------------------------------------------------------- credentials
def test_key_file_is_private_and_removed_on_close(tmp_path: Path) -> None:
    info = service_account_info("http://127.0.0.1:9/token")
    key = ServiceAccountKey.load(json.dumps(info), "providers.google.x.credentials")
    assert key is not None
    path = key.file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == info
    key.close()
    assert not path.exists()


def test_key_is_read_from_a_path_or_google_application_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = service_account_info("http://127.0.0.1:9/token")
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    from_path = ServiceAccountKey.load(str(path), "f")
    assert from_path is not None and from_path.client_email == info["client_email"]
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    from_env = ServiceAccountKey.load(None, "f")
    assert from_env is not None and from_env.source.startswith("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    assert ServiceAccountKey.load(None, "f") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "service_account", "private_key": "-----BEGIN', "not valid JSON (line 1 column"),
        ("[1, 2]", "must be a JSON object"),
        ('{"type": "authorized_user"}', "lacks private_key, client_email, token_uri"),
    ],
)
def test_bad_inline_keys_are_named_without_their_content(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ServiceAccountKey.load(text, "providers.google.g.credentials")
    assert str(caught.value).startswith("providers.google.g.credentials (inline JSON): ")
    assert message in str(caught.value)
    assert "BEGIN" not in str(caught.value)
    # No chained JSONDecodeError: it would carry the whole text along.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_missing_key_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=rf"^providers.google.g.credentials: file {missing}: no such file$"):
        ServiceAccountKey.load(str(missing), "providers.google.g.credentials")


def test_wrong_key_type_is_refused(tmp_path: Path) -> None:
    info = {**service_account_info("http://127.0.0.1:9/token"), "type": "external_account"}
    with pytest.raises(ConfigError, match="type is 'external_account', expected 'service_account'"):
        ServiceAccountKey.load(json.dumps(info), "c")


def test_no_credentials_and_no_endpoint_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no gcloud application-default credentials
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # and no metadata server
    provider = GcfProvider("real", GoogleCluster(project="p"))
    with pytest.raises(ConfigError, match=r"providers\.google\.real: no credentials"):
        provider.url("fl_client")
