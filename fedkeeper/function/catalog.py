"""The two catalogs: the platforms fedkeeper runs on and the functions it deploys.

Every table that used to name platforms or functions is derived from these: the ``providers:``,
``clients_info:`` and ``functions:`` sections of the config, the CLI's cluster flags, the client
numbering, the invoke-client and provider registries, the entry adapters' handlers. Adding a
platform is its modules (``function/invoke/<module>.py``, ``host/providers/<module>.py``, its
cluster model in ``function/settings.py``) and one line in :data:`PLATFORMS`; code asks a
platform's :class:`~fedkeeper.function.invoke.base.Capabilities`, never its name.

This module is function side: it names each platform's provider class by its class name only, and
the host finds it in ``fedkeeper.host.providers.<module>`` (see
:mod:`fedkeeper.host.providers.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke.base import MB, Capabilities, Needs
from fedkeeper.function.prices import FREE, GCF_GEN1, LAMBDA_X86, Prices
from fedkeeper.function.settings import (
    AwsCluster,
    EdgeCluster,
    FunctionSettings,
    GoogleCluster,
    HostsCluster,
    OpenWhiskCluster,
)
from fedkeeper.function.tasks.contract import EDGE_MAX_JOB_TIMEOUT_S, EDGE_MAX_REQUEST_BYTES


# --------------------------------------------------------------------------- platforms
@dataclass(frozen=True)
class Platform:
    """One platform: how the config, the CLI, the keeper and the invoker know it.

    Attributes
    ----------
    name
        Its key under ``providers:`` in ``config.yaml`` (and in deploy-time bindings).
    title
        How help and messages name it.
    settings
        The pydantic model of one cluster's settings under ``providers.<name>``.
    module
        ``fedkeeper.function.invoke.<module>`` holds its invoke client, and
        ``fedkeeper.host.providers.<module>`` its provider.
    client, provider
        The class names of its invoke client (function side) and provider (host side).
    flags
        The cluster-selection options of ``fedkeeper check`` / ``deploy.py``.
    count_key
        The ``clients_info`` field counting its clients.
    capabilities
        What it can do and its limits.
    prices
        Its default price table (``server_config.prices.<name>`` overrides it).
    """

    name: str
    title: str
    settings: type[BaseModel]
    module: str
    client: str
    provider: str
    flags: tuple[str, str]
    count_key: str
    capabilities: Capabilities
    prices: Prices = FREE

    @property
    def client_path(self) -> str:
        """``"module:Class"`` of the invoke client, for a lazy import."""
        return f"fedkeeper.function.invoke.{self.module}:{self.client}"


# Clients are numbered platform by platform in this order. The limits are each platform's own:
# OpenWhisk's defaults (1 MB parameters, 5 MB result, 300 s), GCF 2nd-gen HTTP functions (32 MB,
# 3600 s; event-driven ones stop at 540 s), Lambda (6 MB synchronous payloads, 900 s), and the edge
# gateway's own job limits; SSH hosts take a job of any size the invoker holds (64 MB here) for up to an
# hour (a Raspberry Pi trains slowly). Lambda's Event invocations exist, but their outcome cannot be fetched.
# Prices: GCF 1st gen and Lambda x86 list prices (function/prices.py); self-hosted platforms are free.
# fmt: off
PLATFORMS: tuple[Platform, ...] = (
    Platform("openwhisk", "OpenWhisk", OpenWhiskCluster, "openwhisk", "OpenWhiskClient", "OpenWhiskProvider", ("-o", "--openwhisk"), "ow_clients_count", Capabilities(async_invoke=True, store_access=True, max_request_bytes=1 * MB, max_result_bytes=5 * MB, max_duration_s=300)),
    Platform("google", "Google Cloud Functions", GoogleCluster, "gcf", "GcfClient", "GcfProvider", ("-g", "--gcf"), "gcf_clients_count", Capabilities(async_invoke=False, store_access=True, max_request_bytes=32 * MB, max_result_bytes=32 * MB, max_duration_s=3600, memory_mb=(128, 32768)), GCF_GEN1),
    Platform("aws", "AWS Lambda", AwsCluster, "aws_lambda", "LambdaClient", "LambdaProvider", ("-l", "--lambda"), "aws_clients_count", Capabilities(async_invoke=False, store_access=True, max_request_bytes=6 * MB, max_result_bytes=6 * MB, max_duration_s=900, memory_mb=(128, 10240)), LAMBDA_X86),
    Platform("edge", "edge fleet", EdgeCluster, "edge", "EdgeClient", "EdgeProvider", ("-e", "--edge"), "edge_clients_count", Capabilities(async_invoke=False, store_access=False, max_request_bytes=EDGE_MAX_REQUEST_BYTES, max_result_bytes=EDGE_MAX_REQUEST_BYTES, max_duration_s=int(EDGE_MAX_JOB_TIMEOUT_S), custom_objective=False, evaluate=False)),
    Platform("hosts", "SSH hosts", HostsCluster, "hosts", "HostsClient", "HostsProvider", ("-H", "--hosts"), "hosts_clients_count", Capabilities(async_invoke=False, store_access=False, max_request_bytes=64 * MB, max_result_bytes=64 * MB, max_duration_s=3600)),
)
# fmt: on
_BY_NAME = {p.name: p for p in PLATFORMS}

# A client runs fl_client directly (the keeper invokes it and tracks its activation; it reads and
# writes the store itself) where its platform has these; elsewhere it goes through the invoker.
DIRECT_CLIENT_NEEDS = Needs(async_invoke=True, store_access=True)
# The managing functions: the keeper tracks the invoker's activations (async), and all three read
# and write the store.
MANAGING_NEEDS = Needs(async_invoke=True, store_access=True)
# A local aggregator (topology hierarchical) is invoked synchronously and reads and writes the store.
LOCAL_AGGREGATOR_NEEDS = Needs(store_access=True)
# A client takes part in federated evaluation only where its platform runs an evaluate activation.
EVALUATE_NEEDS = Needs(evaluate=True)


def platform(name: str) -> Platform:
    """The catalog entry of ``name``, with a ConfigError listing the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown platform {name!r} (known: {', '.join(_BY_NAME)})") from None


# --------------------------------------------------------------------------- functions
class Role(StrEnum):
    """Where a function is deployed."""

    MANAGING = "managing"  # on the server cluster
    CLIENT = "client"  # on every cluster hosting clients
    PROBE = "probe"  # deployed by the cluster check only


@dataclass(frozen=True)
class Function:
    """One of fedkeeper's functions.

    Attributes
    ----------
    name
        Its deployed name (and its folder under ``functions/``).
    role
        Where it is deployed.
    handler
        ``"module:callable"`` taking the merged parameters and returning a JSON object.
    defaults
        Its ``functions.<name>`` settings when the config gives none (None: not configurable).
    summary
        What it does, in one line.
    """

    name: str
    role: Role
    handler: str
    defaults: FunctionSettings | None
    summary: str


# fmt: off
FUNCTIONS: tuple[Function, ...] = (
    Function("fl_server_init", Role.MANAGING, "fedkeeper.function.tasks.server_init:handle", FunctionSettings(memory=1280, timeout=120), "round-0 weights and the clients' partitions"),
    Function("fl_client", Role.CLIENT, "fedkeeper.function.tasks.client:handle", FunctionSettings(memory=1280, timeout=180), "one client's local training"),
    Function("fl_invoker_weights_update", Role.MANAGING, "fedkeeper.function.tasks.invoker:handle", FunctionSettings(memory=512, timeout=240), "calls a client without async invoke or store access, stores its update"),
    Function("fl_server_aggregator", Role.MANAGING, "fedkeeper.function.tasks.aggregator:handle", FunctionSettings(memory=1536, timeout=180), "aggregates a round's updates and evaluates"),
    Function("nodeinfo", Role.PROBE, "fedkeeper.function.tasks.nodeinfo:handle", None, "reports the platform it runs on"),
)
# fmt: on
# The functions a training configuration deploys (each has settings under ``functions:``).
TRAINING_FUNCTIONS: tuple[Function, ...] = tuple(f for f in FUNCTIONS if f.defaults is not None)
# The managing functions, in deploy order (all on the server cluster).
MANAGING_FUNCTIONS: tuple[str, ...] = tuple(f.name for f in FUNCTIONS if f.role is Role.MANAGING)
SERVER_INIT_FUNCTION, INVOKER_FUNCTION, AGGREGATOR_FUNCTION = MANAGING_FUNCTIONS
CLIENT_FUNCTION: str = next(f.name for f in FUNCTIONS if f.role is Role.CLIENT)
PROBE_FUNCTION: str = next(f.name for f in FUNCTIONS if f.role is Role.PROBE)
