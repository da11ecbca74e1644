"""The config models the catalogs refer to: each platform's cluster settings and a function's settings.

They sit apart from :mod:`fedkeeper.function.config` because the catalogs
(:mod:`fedkeeper.function.catalog`) name them and ``config.py`` builds its ``providers:``,
``clients_info:`` and ``functions:`` sections from the catalogs.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, SecretStr, model_validator

# The standalone OpenWhisk's guest key: the local fabric accepts it by default.
GUEST_AUTH = (
    "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
# A credential: masked in repr/str (so a logged config shows "**********"), but kept in JSON dumps,
# which is how deploy-time bindings carry it to fl_invoker_weights_update.
Secret = Annotated[
    SecretStr, PlainSerializer(lambda s: s.get_secret_value(), return_type=str, when_used="json")
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- providers
HttpUrl = Annotated[str, Field(pattern=r"^https?://")]


class PrometheusSources(_Model):
    """The Prometheus servers that scrape a cluster (FedKeeper's ``prometheus_config``).

    ``fedkeeper serve`` queries them (their HTTP API, read only) for the health of the platform's
    scrape targets and the nodes' CPU, memory and load, and shows that beside its own metrics.
    """

    platform_url: HttpUrl | None = None  # the one scraping the platform's own metrics (OpenWhisk's)
    node_url: HttpUrl | None = None  # the one scraping the cluster's node exporters


class OpenWhiskCluster(_Model):
    """One OpenWhisk deployment (or the local fabric when ``local`` is true)."""

    base_url: str = "http://127.0.0.1:3233"
    auth: str = GUEST_AUTH
    namespace: str = "guest"
    local: bool = False
    insecure: bool = False
    kind: str = "python:3"
    image: str | None = None
    prometheus: PrometheusSources | None = None

    @model_validator(mode="after")
    def _check(self) -> OpenWhiskCluster:
        if not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https:// (got {self.base_url!r})")
        if ":" not in self.auth:
            raise ValueError("auth must be 'uuid:key'")
        return self


class GoogleCluster(_Model):
    """A Google Cloud Functions (v2) project and region."""

    project: str
    region: str = "us-central1"
    runtime: str = "python311"
    credentials: Secret | None = None  # service-account JSON: a file path or the JSON text itself
    allow_unauthenticated: bool = False
    api_endpoint: str | None = None
    max_instances: PositiveInt = 10
    operation_timeout_s: PositiveFloat = 600.0  # wait for a create/update/delete operation

    @model_validator(mode="after")
    def _check(self) -> GoogleCluster:
        if self.api_endpoint is not None and not re.match(r"^https?://", self.api_endpoint):
            raise ValueError(f"api_endpoint must start with http:// or https:// (got {self.api_endpoint!r})")
        return self


class AwsCluster(_Model):
    """An AWS Lambda account and region."""

    region: str = "us-east-1"
    role_arn: str = "arn:aws:iam::123456789012:role/fedkeeper-lambda"
    runtime: str = "python3.11"
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    session_token: Secret | None = None
    endpoint_url: str | None = None
    operation_timeout_s: PositiveFloat = 300.0  # wait for a function to become Active / updated

    @model_validator(mode="after")
    def _check(self) -> AwsCluster:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together: set both or neither")
        if self.endpoint_url is not None and not re.match(r"^https?://", self.endpoint_url):
            raise ValueError(f"endpoint_url must start with http:// or https:// (got {self.endpoint_url!r})")
        return self


class EdgeCluster(_Model):
    """A fleet of QEMU-emulated edge devices behind one gateway on this host."""

    gateway_host: str = "127.0.0.1"
    gateway_port: NonNegativeInt = 0
    qemu: str = "qemu-system-i386"
    # What the guests run: the edge client on Zephyr RTOS (qemu_x86) or on its bare-metal board.
    firmware: Literal["zephyr", "baremetal"] = "zephyr"
    # Guest RAM (QEMU -m); None: the firmware's default (zephyr 6, baremetal 15).
    memory_mb: PositiveInt | None = None
    boot_timeout_s: PositiveFloat = 30.0
    # The gateway's bearer token; None: generated at deploy (kept 0600 in the gateway's state dir).
    token: Secret | None = None
    # Data sets jobs may name beyond the built-in ones: name -> .npz file or URL (e.g. mnist).
    datasets: dict[str, str] = Field(default_factory=dict)


class FunctionSettings(_Model):
    """Platform limits for one deployed function."""

    memory: PositiveInt = 256
    timeout: PositiveInt = 60
    concurrency: PositiveInt = 1


class BoundHost(_Model):
    """One registered host as the invoker reaches it: bound at deploy from the host registry."""

    fl_id: str
    address: str
    port: Annotated[int, Field(gt=0, lt=65536)] = 22
    user: str
    # The host key pinned at first contact, as an OpenSSH public key line ("ssh-ed25519 AAAA...").
    host_key: str
    # Where the client runtime lives on the host (relative paths are under the user's home).
    root: str = ".fedkeeper-client"


class HostsCluster(_Model):
    """Remote hosts from the host registry (``fedkeeper hosts``), reached over SSH with the installation's key."""

    # Which registered hosts serve this cluster: those carrying every one of these labels (all when empty).
    labels: dict[str, str] = Field(default_factory=dict)
    connect_timeout_s: PositiveFloat = 10.0
    # How long a silent link may go unanswered (SSH keepalives every third of it) before an
    # activation counts as lost.
    dead_link_s: PositiveFloat = 15.0
    # The installation's private key (OpenSSH format); None: read from the key store at deploy.
    private_key: Secret | None = None
    # The hosts, in client order; None: read from the registry at deploy (then bound to the invoker).
    hosts: list[BoundHost] | None = None
    # The scenario's data files (keeper-side path -> its copy under each host's root), staged at deploy.
    data_files: dict[str, str] = Field(default_factory=dict)
