"""``bench/convergence.py``'s ``--algorithms`` variants: parameters over the defaults, refusals."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "convergence.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convergence_bench", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_a_variant_overrides_its_algorithms_defaults_and_keeps_the_rest(bench: ModuleType) -> None:
    assert bench.strategy_params("fedadam:eta=0.003") == ("fedadam", {"eta": 0.003, "tau": 1e-3})
    assert bench.strategy_params("fedavgm") == ("fedavgm", {"server_momentum": 0.5})
    both = bench.strategy_params("fedavgm:server_momentum=0.9;server_learning_rate=0.5")
    assert both == ("fedavgm", {"server_momentum": 0.9, "server_learning_rate": 0.5})
    args = bench.parse_args(["--algorithms", "fedavg,fedavgm:server_momentum=0.9", "--report"])
    assert args.algorithms == ["fedavg", "fedavgm:server_momentum=0.9"]


def test_a_variant_sets_the_clients_optimizer_and_learning_rate_apart_from_the_strategy(
    bench: ModuleType,
) -> None:
    entry = "fedavgm:server_momentum=0.7;client_optimizer=nadam;client_learning_rate=0.002"
    assert bench.strategy_params(entry) == ("fedavgm", {"server_momentum": 0.7})
    model = bench.Setup().model_params(entry, 784, 10)
    assert (model.optimizer, model.learning_rate) == ("nadam", 0.002)
    default = bench.Setup().model_params("fedavgm", 784, 10)
    assert (default.optimizer, default.learning_rate) == ("adam", 0.001)
    assert bench.Setup().model_params("scaffold", 784, 10).optimizer == "sgd"


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("fedx", "unknown 'fedx'"),
        ("fedavg:client_optimizer=rmsprop", "client_optimizer: Input should be 'adam', 'sgd' or 'nadam'"),
        ("fedavg:client_learning_rate=-1", "client_learning_rate: Input should be greater than 0"),
        ("scaffold:client_optimizer=adam", "scaffold needs client_optimizer sgd"),
        ("fedavgm:bogus=1", "unknown parameter(s) 'bogus'; valid: server_learning_rate"),
        ("fedavgm:server_momentum", "'server_momentum' is not key=value"),
    ],
)
def test_a_bad_variant_is_refused_in_one_line_naming_it(
    bench: ModuleType, entry: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(["--algorithms", entry, "--report"])
    assert exited.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert "--algorithms" in line and says in line
