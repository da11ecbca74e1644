"""No credential reaches a log record or an exception message, at any log level."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fedkeeper.function.config import GoogleCluster, parse_config
from fedkeeper.function.errors import FedkeeperError
from fedkeeper.function.invoke.credentials import ServiceAccountKey
from fedkeeper.function.redaction import MASK, redact, redact_value, register_secret
from fedkeeper.host.providers.aws_lambda import LambdaProvider
from fedkeeper.host.providers.base import FunctionSpec
from fedkeeper.host.providers.gcf import GcfProvider

from .conftest import AWS_KEYS, MISBEHAVE, gcf_settings, key_fragments, lambda_settings, service_account_info
from .harness.gcf_fake import GcfFake
from .harness.lambda_runtime import LambdaEmulator


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of every logger, botocore's and google-auth's DEBUG lines included."""
    caplog.set_level(logging.DEBUG)
    yield caplog


def collect_errors(messages: list[str]) -> Callable[[Callable[[], Any]], None]:
    """Run a call that may fail; keep the text of whatever it raises (message and repr)."""

    def run(call: Callable[[], Any]) -> None:
        try:
            call()
        except (FedkeeperError, ValueError) as exc:
            messages.extend([str(exc), repr(exc)])

    return run


def assert_absent(fragments: list[str], *texts: str) -> None:
    for fragment in fragments:
        for text in texts:
            assert fragment not in text, f"credential fragment {fragment[:6]}… leaked"


def test_service_account_key_never_reaches_logs_or_errors(
    debug_logs: pytest.LogCaptureFixture, no_google_iam: None, unique_name: str
) -> None:
    messages: list[str] = []
    attempt = collect_errors(messages)
    with GcfFake(require_auth=True) as fake:
        info = service_account_info(f"{fake.url}/token")
        fake.trust(info)
        settings = gcf_settings(fake, allow_unauthenticated=False, credentials=json.dumps(info))
        logging.getLogger("fedkeeper.test").info("settings: %r", settings)  # a config that gets logged
        with GcfProvider("secured", settings) as provider:
            provider.deploy(FunctionSpec(unique_name, MISBEHAVE))
            records = [
                provider.invoke_sync(unique_name, {}, timeout_s=30),
                provider.invoke_sync(unique_name, {"fail": "boom"}, timeout_s=30),
            ]
            attempt(lambda: provider.invoke_sync("not_deployed", {}, timeout_s=30))
            provider.remove(unique_name)
        # A key the platform does not trust: refused, and the refusal names no key material.
        stranger = service_account_info(f"{fake.url}/token")
        strange = gcf_settings(fake, allow_unauthenticated=False, credentials=json.dumps(stranger))
        with GcfProvider("stranger", strange) as provider:
            attempt(lambda: provider.deploy(FunctionSpec(unique_name, MISBEHAVE)))
        tokens = [header.removeprefix("Bearer ") for header in fake.seen_auth]
    # A damaged key: the error points at the field, not at the text.
    attempt(lambda: ServiceAccountKey.load(json.dumps(info)[:-40], "providers.google.g.credentials"))

    assert records[0].ok and len(messages) == 6 and tokens
    texts = (debug_logs.text, *messages, *(json.dumps(r.result) for r in records))
    assert_absent([*key_fragments(info), *key_fragments(stranger), *tokens], *texts)
    assert "Bearer" not in debug_logs.text


def test_aws_keys_never_reach_logs_or_errors(
    debug_logs: pytest.LogCaptureFixture, lambda_endpoint: LambdaEmulator, unique_name: str
) -> None:
    messages: list[str] = []
    attempt = collect_errors(messages)
    settings = lambda_settings(lambda_endpoint)
    logging.getLogger("fedkeeper.test").info("settings: %r", settings)
    with LambdaProvider("aws", settings) as provider:
        provider.deploy(FunctionSpec(unique_name, MISBEHAVE))
        records = [
            provider.invoke_sync(unique_name, {}, timeout_s=30),
            provider.invoke_sync(unique_name, {"fail": "boom"}, timeout_s=30),
        ]
        provider.remove(unique_name)
        attempt(lambda: provider.invoke_sync(unique_name, {}, timeout_s=30))
    broken = lambda_settings(lambda_endpoint, role_arn="arn:aws:iam::123456789012:role/missing")
    with LambdaProvider("aws", broken) as provider:
        attempt(lambda: provider.deploy(FunctionSpec(unique_name, MISBEHAVE)))

    assert records[0].ok and len(messages) == 4
    texts = (debug_logs.text, *messages, *(json.dumps(r.result) for r in records))
    assert_absent(list(AWS_KEYS.values()), *texts)
    # botocore logs the signed Authorization header at DEBUG: proof the mask did its work there.
    assert f"Credential={MASK}/" in debug_logs.text


def test_config_repr_and_errors_mask_secrets() -> None:
    data = {
        "providers": {
            "aws": {"a": {"access_key_id": "AKIAREPRTEST", "secret_access_key": "s3cr3t-value-xyz"}}
        }
    }
    config = parse_config(data, "c.yaml")
    assert "s3cr3t-value-xyz" not in repr(config) and "s3cr3t-value-xyz" not in str(config)
    # Deploy-time bindings are JSON dumps: there the secret must survive, or the invoker has no key.
    dumped = config.providers.aws["a"].model_dump(mode="json")
    assert dumped["secret_access_key"] == "s3cr3t-value-xyz"
    google = GoogleCluster(project="p", credentials="/path/key.json")  # type: ignore[arg-type]
    assert "/path/key.json" not in repr(google)


def test_registered_secrets_are_masked_in_any_logger_and_in_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "tok-5c1f0e7a9b2d4e6f8a0b"
    register_secret(secret, "short")
    caplog.set_level(logging.DEBUG)
    logger = logging.getLogger("some.library.module")
    logger.debug("header: Bearer %s", secret)
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError:
        logger.exception("call failed")
    assert secret not in caplog.text
    assert f"header: Bearer {MASK}" in caplog.text and f"refused {MASK}" in caplog.text
    assert redact("a short word") == "a short word"  # values under 8 characters are not registered


def test_keys_from_the_standard_aws_chain_are_masked_too(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, lambda_endpoint: LambdaEmulator
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFKCHAIN0000TEST1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain/secret/+fk0000000000000000000000")
    caplog.set_level(logging.DEBUG)
    settings = lambda_settings(lambda_endpoint, access_key_id=None, secret_access_key=None)
    with LambdaProvider("chain", settings) as provider:
        assert provider.remove("fk_never_deployed") is False
    assert_absent(["AKIAFKCHAIN0000TEST1", "chain/secret/+fk0000000000000000000000"], caplog.text)
    assert f"Credential={MASK}/" in caplog.text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "cannot reach MongoDB at mongodb://fk:pw-9f8e7d6c@db:27017/x: timed out",
            "mongodb://***@db:27017/x",
        ),
        ("mongodb+srv://fk:pw-9f8e7d6c@cluster0.example.net/?retryWrites=true", "mongodb+srv://***@cluster0"),
        ("GET https://fk:pw-9f8e7d6c@host/path failed", "https://***@host/path"),
        ("url (got 'mongodb://fk:pw@9f8e7d6c@db')", "mongodb://***@db"),  # an unescaped "@" in it
        ("mongodb://db/x?authSource=admin&password=pw-9f8e7d6c", "password=***"),
        ('{"token": "pw-9f8e7d6c", "round": 1}', '"token": "***"'),
    ],
)
def test_one_redactor_masks_passwords_in_urls_and_secret_fields(text: str, shown: str) -> None:
    assert "9f8e7d6c" not in redact(text) and shown in redact(text)


def test_secret_keys_are_masked_in_params_and_bindings() -> None:
    bound = {
        "store": {"url": "mongodb://fk:pw-9f8e7d6c@db", "database": "fedkeeper"},
        "targets": {"edge/e": {"settings": {"token": "tok-9f8e7d6c", "gateway_port": 0}}},
    }
    assert redact_value(bound) == {
        "store": {"url": MASK, "database": "fedkeeper"},
        "targets": {"edge/e": {"settings": {"token": MASK, "gateway_port": 0}}},
    }
