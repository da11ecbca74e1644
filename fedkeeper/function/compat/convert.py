"""Map FedKeeper's original configuration, key by key, onto fedkeeper's native one.

Every key of FedKeeper's shape either lands on a native field, or is announced in one notice
line when it has no effect here, or stops loading with a one-line error that says what to do.
Settings FedKeeper's shape lacks take the native defaults, each announced. Keys that are in
neither shape are refused (the file is read strictly as FedKeeper's once detected); whole native
sections FedKeeper never had (``providers.aws``, ``providers.edge``, ``scenarios.test``) pass as
they are.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn, get_args
from urllib.parse import unquote, urlsplit

from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.compat.shape import FL, fedkeeper_marker
from fedkeeper.function.config import FUNCTION_NAMES, FunctionsConfig, ModelParams, Providers, ServerConfig
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke.credentials import ServiceAccountKey
from fedkeeper.function.learning.datasets import ARRAY_SOURCES, IMAGE_SHAPE, refuse_pickle
from fedkeeper.function.redaction import redact, register_secret

# Client counts whose clients are called through the invoker (they lack async invoke or store access).
VIA_INVOKER_COUNTS = ("gcf_clients_count", "edge_clients_count")
# OpenWhisk's default upper limit on an action's timeout; the invoker runs on the OpenWhisk server cluster.
OPENWHISK_MAX_TIMEOUT_S = 300
MANAGING_FUNCTIONS = tuple(name for name in FUNCTION_NAMES if name != CLIENT_FUNCTION)
# Settings FedKeeper's shape has no key for, announced with the native default each takes.
ANNOUNCED_DEFAULTS = {
    "max_rounds": "round limit",
    "target_accuracy": "target accuracy",
    "min_fit_fraction": "quorum (share of selected clients a late round needs)",
    "max_retries": "retries per client",
}
# Seconds the keeper waits past the longest function timeout before it retries an activation.
ACTIVATION_MARGIN_S = 30
_PLACEHOLDER = re.compile(r"<[^<>]*[A-Za-z][^<>]*>")
_ACTIONS_PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/actions/?$")
_GCF_URL = re.compile(
    r"^https://(?P<region>[a-z]+-[a-z]+[0-9]+)-(?P<project>[a-z][a-z0-9-]*)\.cloudfunctions\.net/?$"
)
_PASS_THROUGH_PROVIDERS = ("aws", "edge")
_MIGRATE = "run `fedkeeper config migrate FILE` for the native shape"


def to_native(data: dict[str, Any], source: str, notices: list[str]) -> dict[str, Any]:
    """``data`` itself when it is native; else its native equivalent, with notices appended."""
    marker = fedkeeper_marker(data)
    if marker is None:
        return data
    notices.append(f"{source}: read as FedKeeper's original config shape (it has {marker})")
    return _Converter(source, marker, notices).document(data)


@dataclass
class _Converter:
    source: str
    marker: str
    notices: list[str]
    longest_timeout_s: int = field(default=0)

    # ------------------------------------------------------------------ reporting
    def fail(self, where: str, message: str) -> NoReturn:
        # redact: a message may quote a value next to a registered credential.
        raise ConfigError(redact(f"{self.source}: {where}: {message}"))

    def note(self, where: str, message: str) -> None:
        self.notices.append(f"{where}: {message}")

    def section(self, data: dict[str, Any], key: str, where: str, required: bool = False) -> dict[str, Any]:
        value = data.get(key)
        path = f"{where}.{key}" if where else key
        if value is None:
            if required:
                self.fail(path, "missing")
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
        return value

    def only(self, data: dict[str, Any], where: str, known: set[str] | frozenset[str]) -> None:
        for key in data:
            if key not in known:
                path = f"{where}.{key}" if where else str(key)
                self.fail(
                    path,
                    f"not a key of FedKeeper's config shape, which this file was read as (it has "
                    f"{self.marker}); {_MIGRATE} and edit that instead",
                )

    # ------------------------------------------------------------------ values
    def text(self, data: dict[str, Any], key: str, where: str) -> str | None:
        value = data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.fail(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
        return str(value)

    def integer(self, data: dict[str, Any], key: str, where: str) -> int | None:
        number = self._parsed(data, key, where, whole=True)
        return None if number is None else int(number)

    def number(self, data: dict[str, Any], key: str, where: str) -> float | None:
        return self._parsed(data, key, where, whole=False)

    def _parsed(self, data: dict[str, Any], key: str, where: str, whole: bool) -> float | None:
        """``data[key]`` as a finite number (FedKeeper's files write numbers as strings)."""
        value = data.get(key)
        if value is None or value == "":
            return None
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or (whole and number != int(number)):
            kind = "a whole number" if whole else "a number"
            self.fail(f"{where}.{key}", f"expected {kind} (got {value!r})")
        return number

    def no_placeholders(self, value: Any, where: str) -> None:
        """FedKeeper's sample file ships ``<ADD ... HERE>`` placeholders: refuse any left unfilled."""
        if isinstance(value, dict):
            for key, item in value.items():
                self.no_placeholders(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.no_placeholders(item, f"{where}[{index}]")
        elif isinstance(value, str) and (found := _PLACEHOLDER.search(value)):
            self.fail(
                where, f"still holds the placeholder {found.group(0)}; put the real value (or ${{VAR}}) there"
            )

    # ------------------------------------------------------------------ document
    def document(self, data: dict[str, Any]) -> dict[str, Any]:
        self.no_placeholders(data, "")
        self.only(data, "", {"version", "name", "providers", "scenarios"})
        if "version" in data:
            self.note("version", "FedKeeper's file-format version; not used")
        if "name" in data:
            self.note(
                "name", "not used; every training session gets its own id (`fedkeeper status` lists them)"
            )
        providers = self.section(data, "providers", "")
        scenarios = self.section(data, "scenarios", "")
        self.only(providers, "providers", {"openwhisk", "google", *_PASS_THROUGH_PROVIDERS})
        self.only(scenarios, "scenarios", {"federated_learning", "test"})
        native_providers: dict[str, Any] = {
            "openwhisk": {
                name: self.openwhisk(name, self.section(clusters, name, "providers.openwhisk"))
                for clusters in [self.section(providers, "openwhisk", "providers")]
                for name in clusters
            },
            "google": {
                name: self.google(name, self.section(clusters, name, "providers.google"))
                for clusters in [self.section(providers, "google", "providers")]
                for name in clusters
            },
        }
        for platform in _PASS_THROUGH_PROVIDERS:
            if platform in providers:
                native_providers[platform] = providers[platform]
        native: dict[str, Any] = {"providers": native_providers, "scenarios": {}}
        if "test" in scenarios:
            native["scenarios"]["test"] = scenarios["test"]
        if "federated_learning" in scenarios:
            fl = self.section(scenarios, "federated_learning", "scenarios")
            native["scenarios"]["federated_learning"] = self.federated_learning(fl)
        return native

    # ------------------------------------------------------------------ providers
    def openwhisk(self, name: str, cluster: dict[str, Any]) -> dict[str, Any]:
        where = f"providers.openwhisk.{name}"
        self.only(cluster, where, {"base_url", "auth", "prometheus_config", "configurations"})
        auth_block = self.section(cluster, "auth", where)
        self.only(auth_block, f"{where}.auth", {"ow_auth", "ow_api_host", "ow_apigw_access_token"})
        ow_auth = self.text(auth_block, "ow_auth", f"{where}.auth")
        api_host = self.text(auth_block, "ow_api_host", f"{where}.auth")
        url = self.text(cluster, "base_url", where) or api_host
        if url is None:
            self.fail(where, "needs base_url (https://HOST:PORT/api/v1/namespaces/NAMESPACE/actions/)")
        if "://" not in url:  # ow_api_host is often given bare, as wsk takes it
            url = f"https://{url}"
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        userinfo, _, hostport = netloc.rpartition("@")
        url_auth = unquote(userinfo) or None
        register_secret(ow_auth, url_auth, *(url_auth or "").split(":"))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not hostport:
            self.fail(f"{where}.base_url", "must be an http(s) URL of the OpenWhisk API host")
        path = parts.path or "/"
        match = _ACTIONS_PATH.match(path)
        if path != "/" and match is None:
            self.fail(
                f"{where}.base_url",
                f"path {path!r} is not /api/v1/namespaces/NAMESPACE/actions/ (or nothing after the host)",
            )
        if ow_auth and url_auth and ow_auth != url_auth:
            self.fail(where, "the credentials in base_url and auth.ow_auth differ; keep one of them")
        auth = ow_auth or url_auth
        if auth is None:
            self.fail(where, "no credentials: set auth.ow_auth to UUID:KEY (or ${OW_AUTH})")
        native: dict[str, Any] = {"base_url": f"{parts.scheme}://{hostport}", "auth": auth}
        if match is not None:
            native["namespace"] = unquote(match.group("namespace"))
        if api_host and "base_url" in cluster:
            api = api_host if "://" in api_host else f"https://{api_host}"
            if urlsplit(api).netloc.rpartition("@")[2] != hostport:
                self.note(
                    f"{where}.auth.ow_api_host",
                    "differs from base_url's host; not used: fedkeeper and its functions reach the cluster at "
                    "base_url's host",
                )
        if "ow_apigw_access_token" in auth_block:
            self.note(
                f"{where}.auth.ow_apigw_access_token",
                "not used; fedkeeper does not go through the API gateway",
            )
        if "prometheus_config" in cluster:
            sources = self.prometheus(cluster, where, hostport)
            if sources:
                native["prometheus"] = sources
        if "configurations" in cluster:
            self.note(
                f"{where}.configurations",
                "describes the cluster's hosts; not used (fedkeeper asks the platform for its limits)",
            )
        return native

    def prometheus(self, cluster: dict[str, Any], where: str, hostport: str) -> dict[str, str]:
        """``prometheus_config{host, port_openwhisk_metrics, port_node_metrics}``: the two Prometheus
        servers that scrape the cluster, as URLs (an empty host is base_url's host)."""
        block = self.section(cluster, "prometheus_config", where)
        where = f"{where}.prometheus_config"
        self.only(block, where, {"host", "port_openwhisk_metrics", "port_node_metrics"})
        host = self.text(block, "host", where) or urlsplit(f"//{hostport}").hostname or ""
        base = host.rstrip("/") if "://" in host else f"http://{host}"
        sources: dict[str, str] = {}
        for key, field_name in (
            ("port_openwhisk_metrics", "platform_url"),
            ("port_node_metrics", "node_url"),
        ):
            port = self.integer(block, key, where)
            if port is None:
                continue
            if not 0 < port < 65536:
                self.fail(f"{where}.{key}", f"must be a TCP port, 1..65535 (got {port})")
            sources[field_name] = f"{base}:{port}"
        shown = ", ".join(f"{k.removesuffix('_url')} metrics at {redact(v)}" for k, v in sources.items())
        self.note(where, f"fedkeeper serve queries the Prometheus servers there ({shown})" if sources
                  else "no port given; no Prometheus server is queried")  # fmt: skip
        return sources

    def google(self, name: str, cluster: dict[str, Any]) -> dict[str, Any]:
        where = f"providers.google.{name}"
        self.only(cluster, where, {"base_url", "auth"})
        url = self.text(cluster, "base_url", where)
        match = _GCF_URL.match(url or "")
        if match is None:
            self.fail(
                f"{where}.base_url",
                f"expected https://REGION-PROJECT.cloudfunctions.net/ (got {url!r})",
            )
        native: dict[str, Any] = {"project": match.group("project"), "region": match.group("region")}
        key = {k: v for k, v in self.section(cluster, "auth", where).items() if v not in (None, "")}
        if not set(key) - {"type"}:  # FedKeeper's sample fills in only the type
            self.note(
                f"{where}.auth",
                "every field is empty; credentials come from GOOGLE_APPLICATION_CREDENTIALS or the "
                "machine's default Google credentials",
            )
            return native
        text = json.dumps(key)
        if "${" not in text:  # migrate keeps ${VAR} unexpanded: the key is checked when the file is loaded
            ServiceAccountKey.load(text, f"{self.source}: {where}.auth")  # one-line errors, no key material
        native["credentials"] = text
        return native

    # ------------------------------------------------------------------ scenario
    def federated_learning(self, fl: dict[str, Any]) -> dict[str, Any]:
        self.only(
            fl,
            FL,
            {
                "server_config",
                "clients_info",
                "data_sampling",
                "mongo_config",
                "training_test_data",
                "model_params",
                "functions",
            },
        )
        clients, per_round = self.clients_info(self.section(fl, "clients_info", FL, required=True))
        server = self.server_config(self.section(fl, "server_config", FL, required=True))
        if per_round is not None:
            server["num_clients_per_round"] = per_round
        native: dict[str, Any] = {"server_config": server, "clients_info": clients}
        native["model_params"] = {
            **self.data_sampling(self.section(fl, "data_sampling", FL)),
            **self.model_params(self.section(fl, "model_params", FL)),
        }
        self.note(f"{FL}.data_sampling", "FedKeeper's shape has no sampling method; clients get iid shards")
        if "mongo_config" in fl:
            native["mongo_config"] = self.mongo_config(self.section(fl, "mongo_config", FL))
        if "training_test_data" in fl:
            native["training_test_data"] = self.training_test_data(self.section(fl, "training_test_data", FL))
        if "functions" in fl:
            native["functions"] = self.functions(self.section(fl, "functions", FL))
        functions = native.setdefault("functions", {})
        self.invoker_outlasts_client(clients, functions)
        self.activation_timeout(server, functions)
        return native

    def server_config(self, section: dict[str, Any]) -> dict[str, Any]:
        where = f"{FL}.server_config"
        self.only(section, where, {"server_cluster_name", "server_manager_functions"})
        cluster = self.text(section, "server_cluster_name", where)
        if cluster is None:
            self.fail(
                f"{where}.server_cluster_name", "missing (the openwhisk cluster for the managing functions)"
            )
        managers = section.get("server_manager_functions")
        if managers is not None:
            if not isinstance(managers, list) or not all(isinstance(m, str) for m in managers):
                self.fail(f"{where}.server_manager_functions", "must be a list of function names")
            unknown = [m for m in managers if m not in MANAGING_FUNCTIONS]
            if unknown:
                self.fail(
                    f"{where}.server_manager_functions",
                    f"{unknown[0]!r} is not a managing function ({', '.join(MANAGING_FUNCTIONS)})",
                )
            if set(managers) != set(MANAGING_FUNCTIONS):
                self.note(
                    f"{where}.server_manager_functions",
                    f"fedkeeper always deploys all of {', '.join(MANAGING_FUNCTIONS)} to the server cluster",
                )
        for name, label in ANNOUNCED_DEFAULTS.items():
            default = ServerConfig.model_fields[name].default
            self.note(
                f"{where}.{name}", f"FedKeeper's shape has no {label}; using fedkeeper's default {default}"
            )
        return {"cluster": cluster}

    def invoker_outlasts_client(self, clients: dict[str, Any], functions: dict[str, Any]) -> None:
        """Clients off OpenWhisk are called by fl_invoker_weights_update, which waits for them, so it
        needs the longer timeout; on the server cluster it can have at most OpenWhisk's limit."""
        if not any(clients.get(key) for key in VIA_INVOKER_COUNTS):
            return
        timeout = {name: self.timeout(functions, name) for name in (CLIENT_FUNCTION, INVOKER_FUNCTION)}
        if timeout[INVOKER_FUNCTION] > timeout[CLIENT_FUNCTION]:
            return
        client = min(timeout[CLIENT_FUNCTION], OPENWHISK_MAX_TIMEOUT_S - ACTIVATION_MARGIN_S)
        invoker = client + ACTIVATION_MARGIN_S
        functions.setdefault(CLIENT_FUNCTION, {})["timeout"] = client
        functions.setdefault(INVOKER_FUNCTION, {})["timeout"] = invoker
        self.note(
            f"{FL}.functions",
            f"{CLIENT_FUNCTION} timeout {client} s and {INVOKER_FUNCTION} timeout {invoker} s (was "
            f"{timeout[CLIENT_FUNCTION]} s and {timeout[INVOKER_FUNCTION]} s): the invoker waits for the clients "
            f"it calls and OpenWhisk allows it at most {OPENWHISK_MAX_TIMEOUT_S} s",
        )

    @staticmethod
    def timeout(functions: dict[str, Any], name: str) -> int:
        return int(functions.get(name, {}).get("timeout", FunctionsConfig().settings(name).timeout))

    def activation_timeout(self, server: dict[str, Any], functions: dict[str, Any]) -> None:
        """The keeper must not retry an activation the platform may still be running."""
        default = float(ServerConfig.model_fields["activation_timeout_s"].default)
        longest = max(self.timeout(functions, name) for name in FUNCTION_NAMES)
        if longest >= default:
            server["activation_timeout_s"] = float(longest + ACTIVATION_MARGIN_S)
            self.note(
                f"{FL}.server_config.activation_timeout_s",
                f"{longest + ACTIVATION_MARGIN_S} s, past the longest function timeout ({longest} s), so the "
                "keeper never retries an activation that may still run",
            )

    def clients_info(self, section: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
        where = f"{FL}.clients_info"
        counts = ("total_num_clients", "edge_clients_count", "ow_clients_count", "gcf_clients_count")
        self.only(section, where, {*counts, "num_clients_per_round", "client_functions"})
        native = {key: value for key in counts if (value := self.integer(section, key, where)) is not None}
        functions = section.get("client_functions")
        if functions is not None and (
            not isinstance(functions, list) or [f for f in functions if f != CLIENT_FUNCTION]
        ):
            self.fail(f"{where}.client_functions", f"fedkeeper's only client function is {CLIENT_FUNCTION}")
        return native, self.integer(section, "num_clients_per_round", where)

    def data_sampling(self, section: dict[str, Any]) -> dict[str, Any]:
        """FedKeeper's data_sampling describes the model's shape: it maps onto model_params."""
        where = f"{FL}.data_sampling"
        sizes = ("input_size", "hidden_size", "output_size", "batch_size")
        self.only(section, where, {*sizes, "input_shape_x", "input_shape_y", "model"})
        native: dict[str, Any] = {
            key: value for key in sizes if (value := self.integer(section, key, where)) is not None
        }
        shape = (self.integer(section, "input_shape_x", where), self.integer(section, "input_shape_y", where))
        if shape != (None, None) and shape != IMAGE_SHAPE:
            self.fail(
                f"{where}.input_shape_x",
                f"images of {shape[0]}x{shape[1]}: fedkeeper's image data sets are {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}",
            )
        if (model := self.choice(section, "model", where, "model")) is not None:
            native["model"] = model
        return native

    def model_params(self, section: dict[str, Any]) -> dict[str, Any]:
        where = f"{FL}.model_params"
        self.only(section, where, {"lr", "optim", "local_epochs"})
        native: dict[str, Any] = {}
        if (lr := self.number(section, "lr", where)) is not None:
            native["learning_rate"] = lr
        if (epochs := self.integer(section, "local_epochs", where)) is not None:
            native["local_epochs"] = epochs
        if (optim := self.choice(section, "optim", where, "optimizer")) is not None:
            native["optimizer"] = optim
        return native

    def choice(self, section: dict[str, Any], key: str, where: str, native_field: str) -> str | None:
        """``section[key]`` lower-cased, if it is one of ``ModelParams.<native_field>``'s values."""
        value = self.text(section, key, where)
        if value is None:
            return None
        choices = get_args(ModelParams.model_fields[native_field].annotation)
        if value.lower() not in choices:
            self.fail(f"{where}.{key}", f"{value!r} is not one of {', '.join(choices)}")
        return value.lower()

    def mongo_config(self, section: dict[str, Any]) -> dict[str, Any]:
        where = f"{FL}.mongo_config"
        self.only(section, where, {"url", "db", "collection"})
        native: dict[str, Any] = {}
        url = self.text(section, "url", where)
        if url is not None:
            native["url"] = url if "://" in url else f"mongodb://{url}"  # FedKeeper gave host:port
            password = urlsplit(native["url"]).password
            register_secret(password and unquote(password))
        if (db := self.text(section, "db", where)) is not None:
            native["database"] = db
        if "collection" in section:
            self.note(
                f"{where}.collection",
                "not used; fedkeeper keeps sessions, rounds and weights in collections of its own in the database",
            )
        return native

    def training_test_data(self, section: dict[str, Any]) -> dict[str, Any]:
        where = f"{FL}.training_test_data"
        keys = {f"{name}_url": name for name in ARRAY_SOURCES}
        self.only(section, where, set(keys))
        native: dict[str, Any] = {"dataset": "arrays"}
        for key, name in keys.items():
            url = self.text(section, key, where)
            if url is None:
                self.fail(f"{where}.{key}", "missing (a .npy or .npz file or http(s) URL)")
            try:
                refuse_pickle(url, f"{where}.{key}")
            except ConfigError as exc:
                raise ConfigError(f"{self.source}: {exc}") from None
            native[name] = url
        return native

    def functions(self, section: dict[str, Any]) -> dict[str, Any]:
        native: dict[str, Any] = {}
        platforms = set(Providers.model_fields)
        for function in section:
            where = f"{FL}.functions.{function}"
            if function not in FUNCTION_NAMES:
                self.fail(where, f"not a fedkeeper function ({', '.join(FUNCTION_NAMES)})")
            blocks = self.section(section, function, f"{FL}.functions")
            self.only(blocks, where, platforms)
            settings: dict[str, set[int]] = {"memory": set(), "timeout": set(), "concurrency": set()}
            for platform in blocks:
                block = self.section(blocks, platform, where)
                self.settings(block, f"{where}.{platform}", settings)
            merged = {key: max(values) for key, values in settings.items() if values}
            if any(len(values) > 1 for values in settings.values()):
                self.note(
                    where, "settings differ between platforms; fedkeeper uses the largest of each on all"
                )
            if merged:
                native[function] = merged
        return native

    def settings(self, block: dict[str, Any], where: str, into: dict[str, set[int]]) -> None:
        self.only(
            block,
            where,
            {"func_path", "docker_image", "memory", "timeout", "params_file_path", "concurrency"},
        )
        if (memory := self.integer(block, "memory", where)) is not None:
            into["memory"].add(memory)
        if (timeout_ms := self.integer(block, "timeout", where)) is not None:
            into["timeout"].add(max(1, math.ceil(timeout_ms / 1000)))  # FedKeeper: ms; fedkeeper: s
        if (concurrency := self.integer(block, "concurrency", where)) is not None:
            into["concurrency"].add(concurrency)
        unused = {
            "func_path": "fedkeeper deploys its own function code; this file is not used",
            "docker_image": "not used; fedkeeper's functions run on the cluster's python runtime (after "
            "migrating, providers.openwhisk.CLUSTER.image sets a custom one)",
            "params_file_path": "not used; fedkeeper writes params/FUNCTION.json",
        }
        for key, message in unused.items():
            if key in block:
                self.note(f"{where}.{key}", message)
