"""Provider fixtures over real components, one per platform.

* OpenWhisk: the local fabric (``FabricProcess``).
* GCF: :class:`GcfFake` (v2 REST control plane + functions-framework instances), driven by the
  real ``google-cloud-functions`` client.
* Lambda: ``moto_server`` behind :class:`LambdaEmulator` (awslambdaric runs the handlers).

The backends are session-scoped (started once, stopped at the end); providers are per test.
A new platform joins the contract suite by adding its ``<name>_provider`` fixture here and its
name to ``CONTRACT_PROVIDERS``.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fedkeeper.function.config import AwsCluster, GoogleCluster, OpenWhiskCluster
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.providers.aws_lambda import LambdaProvider
from fedkeeper.host.providers.gcf import GcfProvider
from fedkeeper.host.providers.openwhisk import OpenWhiskProvider

from .harness.gcf_fake import GcfFake
from .harness.lambda_runtime import LambdaBackend, LambdaEmulator

CONTRACT_PROVIDERS = ["openwhisk_provider", "gcf_provider", "lambda_provider"]
MISBEHAVE = Path(__file__).parent / "functions" / "misbehave"
AWS_REGION = "eu-west-1"
LAMBDA_ROLE = f"arn:aws:iam::{LambdaBackend.ACCOUNT}:role/fedkeeper-lambda"
# Dummy keys (moto accepts any); long and distinctive so a leak is easy to grep for.
AWS_KEYS = {
    "access_key_id": "AKIAFKTEST7XQ2LM4NPZ",
    "secret_access_key": "fk/test+Secret/9sLq2Vw8ZrT4bN6mK1xC3dE5",
}


# --------------------------------------------------------------------------- backends
@pytest.fixture(scope="session")
def fabric() -> Iterator[FabricProcess]:
    with FabricProcess() as process:
        yield process


@pytest.fixture(scope="session")
def gcf_fake() -> Iterator[GcfFake]:
    with GcfFake() as fake:
        yield fake


@pytest.fixture(scope="session")
def lambda_backend() -> Iterator[LambdaBackend]:
    with LambdaBackend(region=AWS_REGION) as backend:
        yield backend


@pytest.fixture(scope="session")
def lambda_endpoint(lambda_backend: LambdaBackend) -> LambdaEmulator:
    assert lambda_backend.emulator is not None
    return lambda_backend.emulator


# --------------------------------------------------------------------------- settings and providers
def gcf_settings(fake: GcfFake, **changes: Any) -> GoogleCluster:
    values: dict[str, Any] = {
        "project": "fk-test",
        "region": "europe-west1",
        "api_endpoint": fake.url,
        "allow_unauthenticated": True,
        "operation_timeout_s": 60,
        "max_instances": 3,
    }
    values.update(changes)
    return GoogleCluster.model_validate(values)


def lambda_settings(endpoint: LambdaEmulator, **changes: Any) -> AwsCluster:
    values: dict[str, Any] = {
        "region": AWS_REGION,
        "endpoint_url": endpoint.url,
        "role_arn": LAMBDA_ROLE,
        "operation_timeout_s": 30,
        **AWS_KEYS,
    }
    values.update(changes)
    return AwsCluster.model_validate(values)


@pytest.fixture
def openwhisk_provider(fabric: FabricProcess) -> Iterator[OpenWhiskProvider]:
    with OpenWhiskProvider("ow-test", OpenWhiskCluster(base_url=fabric.url)) as provider:
        yield provider  # type: ignore[misc]


@pytest.fixture
def gcf_provider(gcf_fake: GcfFake) -> Iterator[GcfProvider]:
    provider = GcfProvider("gcf-test", gcf_settings(gcf_fake))
    yield provider
    provider.close()


@pytest.fixture
def lambda_provider(lambda_endpoint: LambdaEmulator) -> Iterator[LambdaProvider]:
    provider = LambdaProvider("aws-test", lambda_settings(lambda_endpoint))
    yield provider
    provider.close()


@pytest.fixture
def dead_url() -> str:
    """An http:// URL on which nothing listens (a port just released by the kernel)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def unique_name() -> str:
    """A function name no other test uses (the backends live for the whole session)."""
    return f"fk_{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- keys
@pytest.fixture
def no_google_iam(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip google-auth's background "regional access boundary" look-up for service accounts.

    It asks iamcredentials.googleapis.com, which tests cannot reach (and need not: it only adds
    a routing header that the fake ignores).
    """
    from google.auth.credentials import CredentialsWithRegionalAccessBoundary

    monkeypatch.setattr(
        CredentialsWithRegionalAccessBoundary,
        "_is_regional_access_boundary_lookup_required",
        lambda self: False,
    )


def service_account_info(token_uri: str, project: str = "fk-test") -> dict[str, Any]:
    """A service-account key with a fresh RSA key, in the JSON layout Google issues."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": uuid.uuid4().hex + uuid.uuid4().hex[:8],
        "private_key": pem,
        "client_email": f"fedkeeper-{uuid.uuid4().hex[:6]}@{project}.iam.gserviceaccount.com",
        "client_id": str(uuid.uuid4().int)[:21],
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }


def key_fragments(info: dict[str, Any]) -> list[str]:
    """Pieces of a key that must never show: its id, and every line of the PEM body."""
    lines = [line for line in info["private_key"].splitlines() if line and "-----" not in line]
    return [info["private_key_id"], *lines]
