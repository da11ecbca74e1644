"""``server_config.strategy``: a name or a mapping, checked against the registry in one line."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.config import parse_config, training_fingerprint
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.strategies import STRATEGIES, parameters
from fedkeeper.function.strategies.registry import EVALUATE_PARAMETERS

README = Path(__file__).resolve().parents[2] / "README.md"
BASE: dict[str, Any] = {
    "providers": {"openwhisk": {"local": {}}},
    "scenarios": {
        "federated_learning": {
            "server_config": {"cluster": "local", "num_clients_per_round": 2},
            "clients_info": {"total_num_clients": 2, "ow_clients_count": 2},
        }
    },
}


def _config(strategy: Any, **sections: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    fl = data["scenarios"]["federated_learning"]
    fl["server_config"]["strategy"] = strategy
    for key, value in sections.items():
        fl[key] = value
    return data


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "c.yaml")
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_plain_name_keeps_working_and_dumps_as_the_same_string() -> None:
    config = parse_config(_config("fedadam"), "c.yaml")
    assert config.fl.server_config.strategy.name == "fedadam"
    dumped = config.fl.model_dump(mode="json")
    assert dumped["server_config"]["strategy"] == "fedadam"
    # a session stored with the plain string resumes under the same fingerprint
    assert config.fl.fingerprint() == training_fingerprint(dumped)
    assert config.fl.fingerprint()["server_config.strategy"] == "fedadam"


def test_a_mapping_names_the_strategy_and_its_parameters_and_round_trips() -> None:
    config = parse_config(_config({"name": "fedadam", "eta": 0.01, "beta_1": 0.5}), "c.yaml")
    strategy = config.fl.server_config.strategy.build()
    assert (strategy.eta, strategy.beta_1, strategy.beta_2) == (0.01, 0.5, 0.99)  # type: ignore[attr-defined]
    dumped = config.fl.model_dump(mode="json")["server_config"]["strategy"]
    assert dumped == {"name": "fedadam", "eta": 0.01, "beta_1": 0.5}
    assert (
        parse_config(_config(dumped), "c.yaml").fl.server_config.strategy == config.fl.server_config.strategy
    )


def test_every_strategy_takes_federated_evaluation_parameters_off_by_default() -> None:
    default = parse_config(
        _config({"name": "fedadam", "eta": 0.01}), "c.yaml"
    ).fl.server_config.strategy.build()
    assert (default.fraction_evaluate, default.min_evaluate_clients) == (0.0, 2)
    data = _config({"name": "fedadam", "eta": 0.01, "fraction_evaluate": 0.5, "min_evaluate_clients": 3})
    strategy = parse_config(data, "c.yaml").fl.server_config.strategy.build()
    assert (strategy.fraction_evaluate, strategy.min_evaluate_clients) == (0.5, 3)
    assert strategy.eta == 0.01  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ("fedsgd", "strategy: unknown strategy 'fedsgd'; known: " + ", ".join(STRATEGIES)),
        (
            {"name": "fedadam", "etaa": 1},
            "fedadam: unknown parameter(s) 'etaa'; valid: eta, eta_l, beta_1, beta_2, tau, "
            "fraction_evaluate, min_evaluate_clients",
        ),
        (
            {"name": "fedavg", "eta": 1},
            "fedavg: unknown parameter(s) 'eta'; valid: fraction_evaluate, min_evaluate_clients",
        ),
        (
            {"name": "fedprox"},
            "fedprox: missing parameter(s) proximal_mu; valid: proximal_mu, fraction_evaluate, min_evaluate_clients",
        ),
        (
            {"name": "fedavg", "fraction_evaluate": 1.5},
            "fedavg: fraction_evaluate must be in [0, 1] (got 1.5)",
        ),
        ({"name": "fedavg", "min_evaluate_clients": 0}, "fedavg: min_evaluate_clients must be >= 1 (got 0)"),
        (
            {"name": "fedavg", "min_evaluate_clients": 1.5},
            "fedavg: min_evaluate_clients must be int (got 1.5)",
        ),
        ({"name": "krum", "num_malicious_clients": 1.5}, "krum: num_malicious_clients must be int (got 1.5)"),
        ({"name": "fedadam", "eta": "fast"}, "fedadam: eta must be float (got 'fast')"),
        ({"name": "fedadam", "beta_1": 1.0}, "fedadam: beta_1 must be in [0, 1) (got 1.0)"),
        ({"name": "fedtrimmedavg", "beta": 0.5}, "fedtrimmedavg: beta must be in [0, 0.5) (got 0.5)"),
        ({"eta": 0.1}, "strategy: needs a name"),
        (7, "strategy: must be a strategy name or {name: <strategy>"),
    ],
)
def test_a_bad_strategy_is_one_line_naming_the_field_and_the_valid_choices(
    strategy: Any, message: str
) -> None:
    error = _error(_config(strategy))
    assert error.startswith("c.yaml: scenarios.federated_learning.server_config.strategy: ")
    assert message in error


def test_sgd_only_strategies_refuse_another_client_optimizer() -> None:
    error = _error(_config("scaffold"))
    assert "scaffold assumes plain SGD client steps; set model_params.optimizer: sgd (got 'adam')" in error
    assert parse_config(_config("fednova", model_params={"optimizer": "sgd"}), "c.yaml")


def test_client_objective_strategies_refuse_clients_on_a_fixed_trainer() -> None:
    data = _config(
        {"name": "fedprox", "proximal_mu": 0.1},
        clients_info={"total_num_clients": 2, "edge_clients_count": 2},
    )
    data["providers"]["edge"] = {"fleet": {}}
    error = _error(data)
    assert "fedprox changes the clients' training, which edge clients cannot run" in error
    assert "fixed trainer" in error
    data["scenarios"]["federated_learning"]["server_config"]["strategy"] = "fedmedian"
    assert parse_config(data, "c.yaml")  # a server-side strategy mixes with edge clients


def test_readme_documents_every_strategy_and_its_parameters() -> None:
    text = README.read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \|[^|]*\| ([^|]*) \|", text, re.M)}
    for name in STRATEGIES:
        assert name in rows, f"README's strategy table lacks {name}"
        for parameter in parameters(name):
            if parameter not in EVALUATE_PARAMETERS:  # every strategy's: documented once, below the table
                assert f"`{parameter}`" in rows[name], f"README: {name} lacks parameter {parameter}"
    for parameter in EVALUATE_PARAMETERS:
        assert f"`{parameter}`" in text, f"README lacks federated evaluation's {parameter}"


def test_strategies_are_numpy_only() -> None:
    """They run in the aggregator and the keeper: no TensorFlow, no database driver."""
    package = Path(__file__).resolve().parents[2] / "fedkeeper" / "function" / "strategies"
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            roots = {name.split(".")[0] for name in names}
            assert not roots & {"tensorflow", "keras", "pymongo"}, f"{path.name} imports {roots}"
