#!/usr/bin/env python
"""One FL workload through fedkeeper (local fabric + MongoDB) and through Flower's simulation.

Both sides train the same model (``fedkeeper.function.learning.architecture``) on the same IID
partitions (``fedkeeper.function.learning.partition``) of the same data
(``fedkeeper.function.learning.datasets``) with the same local-training core
(``fedkeeper.function.tasks.client.train_partition`` over ``train_local``, which also fixes the
per-(client, round) shuffle seed and keeps its compiled model warm) and evaluate with the same numpy
``evaluate``; only the orchestration differs: fedkeeper's keeper, FaaS fabric and MongoDB versus
Flower's simulation engine (ServerApp in the driver process, ClientApps in Ray actors). A third run,
``flower-quickstart``, is Flower with its TensorFlow quickstart's client: a Keras model built and
compiled in every call, trained with ``fit`` (same rows, same order). Each run is its own child
process, so that one cannot warm another's caches and its peak memory is its own process tree.

    python bench/round_vs_flower.py            # 10 clients, 5 rounds (~1 min per run on 2 cores)
    python bench/round_vs_flower.py --quick    # 4 clients, 2 rounds: a smoke run

Prints per-round wall time and test accuracy of each run and the ratios fedkeeper / flower and
fedkeeper / flower-quickstart. Needs ``pip install -r bench/requirements.txt`` (Flower with its Ray
simulation backend).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

import psutil

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("fedkeeper", "flower", "flower-quickstart")
QUICKSTART = "flower-quickstart"
DATASET: Final = "mnist5k"
SAMPLING_SEED = 42
DATABASE = "bench"
# fabric memory reservations (MB): a client reserves more than a managing function, so that the
# fabric's user memory admits exactly `parallel` clients next to one managing function
CLIENT_MB = 2048
MANAGING_MB = 1024
RSS_SAMPLE_S = 0.25
SIDE_TIMEOUT_S = 3600.0
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "FLWR_TELEMETRY_ENABLED": "0",  # Flower reports usage events over the network otherwise
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
}


# --------------------------------------------------------------------------- the workload
@dataclass(frozen=True)
class Workload:
    """What both sides run."""

    rounds: int = 5
    clients: int = 10
    hidden: int = 128
    epochs: int = 1
    batch: int = 32
    learning_rate: float = 0.001
    parallel: int = 2
    poll_s: float = 0.5  # fedkeeper only: the keeper's poll_interval_s (its default)

    def describe(self) -> str:
        return (
            f"{DATASET}, mlp 784-{self.hidden}-10, {self.clients} clients (all {self.clients} every round), "
            f"iid, {self.epochs} local epoch(s), batch {self.batch}, adam lr {self.learning_rate}, "
            f"{self.rounds} rounds"
        )

    def as_args(self) -> list[str]:
        return [
            "--rounds", str(self.rounds), "--clients", str(self.clients), "--hidden", str(self.hidden),
            "--epochs", str(self.epochs), "--batch", str(self.batch), "--lr", str(self.learning_rate),
            "--parallel", str(self.parallel), "--poll", str(self.poll_s),
        ]  # fmt: skip

    def data_spec(self) -> Any:
        from fedkeeper.function.config import TrainingTestData

        return TrainingTestData(dataset=DATASET)

    def sampling(self) -> Any:
        from fedkeeper.function.config import DataSampling

        return DataSampling(method="iid", seed=SAMPLING_SEED)

    def model_params(self) -> Any:
        from fedkeeper.function.config import ModelParams

        return ModelParams(**self.model_fields())

    def model_fields(self) -> dict[str, Any]:
        return {
            "model": "mlp",
            "input_size": 784,
            "hidden_size": self.hidden,
            "output_size": 10,
            "optimizer": "adam",
            "learning_rate": self.learning_rate,
            "local_epochs": self.epochs,
            "batch_size": self.batch,
        }


@dataclass
class SideResult:
    """What one side measured (written by the child as JSON, read by the parent)."""

    side: str
    version: str
    parallelism: str
    round_s: list[float]
    accuracy: list[float]
    total_s: float  # from starting the side's infrastructure to the last round's metrics
    notes: list[str] = field(default_factory=list)
    peak_rss_mb: float | None = None  # filled in by the parent
    load_before: float | None = None  # 1-minute load average when the side started (parent)

    @property
    def rounds_s(self) -> float:
        return sum(self.round_s)


# --------------------------------------------------------------------------- fedkeeper side
def fedkeeper_config(w: Workload, fabric_url: str, mongo_url: str, logs_dir: Path) -> dict[str, Any]:
    managing = {"memory": MANAGING_MB, "timeout": 300}
    return {
        "providers": {"openwhisk": {"bench": {"base_url": fabric_url, "local": False}}},
        "logs_dir": str(logs_dir),
        "scenarios": {
            "federated_learning": {
                "server_config": {
                    "cluster": "bench",
                    "max_rounds": w.rounds,
                    "target_accuracy": 1.0,  # never reached: every round runs
                    "num_clients_per_round": w.clients,
                    "min_fit_fraction": 1.0,
                    "poll_interval_s": w.poll_s,
                    "activation_timeout_s": 360,  # past fl_client's 300 s
                    "seed": SAMPLING_SEED,
                },
                "clients_info": {"total_num_clients": w.clients, "ow_clients_count": w.clients},
                "data_sampling": {"method": "iid", "seed": SAMPLING_SEED},
                "mongo_config": {"url": mongo_url, "database": DATABASE},
                "training_test_data": {"dataset": DATASET},
                "model_params": w.model_fields(),
                "functions": {
                    "fl_client": {"memory": CLIENT_MB, "timeout": 300},
                    "fl_server_init": managing,
                    "fl_invoker_weights_update": managing,
                    "fl_server_aggregator": managing,
                },
            }
        },
    }


def fabric_limits(w: Workload) -> dict[str, int]:
    """Room for ``parallel`` fl_client workers plus one managing function, no more."""
    return {"user_memory_mb": w.parallel * CLIENT_MB + MANAGING_MB, "max_workers": w.parallel + 1}


def cold_activations(fabric_url: str) -> dict[str, str]:
    """Activation id -> action name of every cold start, from the records' ``initTime`` annotation
    (OpenWhisk's list API, so this works against any OpenWhisk)."""
    import requests

    from fedkeeper.function.config import GUEST_AUTH

    user, key = GUEST_AUTH.split(":")
    cold: dict[str, str] = {}
    skip = 0
    while True:
        response = requests.get(
            f"{fabric_url}/api/v1/namespaces/_/activations",
            params={"limit": "200", "skip": str(skip), "docs": "true"},
            auth=(user, key),
            timeout=30,
        )
        response.raise_for_status()
        page = response.json()
        for record in page:
            if any(a.get("key") == "initTime" for a in record.get("annotations", [])):
                cold[record["activationId"]] = record["name"]
        if len(page) < 200:
            return cold
        skip += len(page)


def activation_s(entry: Any) -> float:
    """How long a settled ledger entry's activation ran, in seconds."""
    return float(entry.end_ms - entry.start_ms) / 1000


def round_details(entries: list[Any], rounds: int, cold: dict[str, str]) -> list[str]:
    """Per round: how long the clients' activations spanned and how long the aggregator took."""
    details = []
    for number in range(rounds):
        mine = [e for e in entries if e.round == number and e.start_ms and e.end_ms]
        clients = [e for e in mine if e.function == "fl_client"]
        aggregators = [e for e in mine if e.function == "fl_server_aggregator"]
        span = (max(e.end_ms for e in clients) - min(e.start_ms for e in clients)) / 1000 if clients else 0.0
        cold_clients = sum(e.activation_id in cold for e in clients)
        text = f"round {number + 1}: client activations span {span:.2f} s ({cold_clients} cold)"
        if aggregators:
            last = aggregators[-1]
            state = "cold" if last.activation_id in cold else "warm"
            text += f", aggregator {activation_s(last):.2f} s ({state})"
        details.append(text)
    return details


def run_fedkeeper(w: Workload, work: Path) -> SideResult:
    from importlib.metadata import version

    from fedkeeper.function.config import parse_config
    from fedkeeper.function.store.db import Store
    from fedkeeper.host.fabric.process import FabricProcess
    from fedkeeper.host.ledger import Ledger
    from fedkeeper.host.run import opened
    from fedkeeper.host.store.embedded import EmbeddedMongo

    limits = fabric_limits(w)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        mongo = EmbeddedMongo(":memory:").start()
        stack.callback(mongo.stop)
        fabric = FabricProcess(limits=limits).start()
        stack.callback(fabric.cleanup)
        services_s = time.monotonic() - started
        config = parse_config(fedkeeper_config(w, fabric.url, mongo.url, work / "logs"), "<bench config>")
        run = stack.enter_context(opened(config))
        run.deploy(say=lambda line: print(line, flush=True))
        deploy_s = time.monotonic() - started - services_s
        store = Store(mongo.url, DATABASE)
        store.ensure_indexes()
        session = run.keeper(store).start()
        total_s = time.monotonic() - started
        rounds = store.for_session(session).rounds.all()
        entries = list(Ledger(store.for_session(session)).entries())
        cold = cold_activations(fabric.url)
    metrics = [r["metrics"] for r in rounds]
    per_action: dict[str, int] = {}
    for name in cold.values():
        per_action[name] = per_action.get(name, 0) + 1
    init = [e for e in entries if e.function == "fl_server_init" and e.start_ms and e.end_ms]
    init_s = activation_s(init[-1]) if init else float("nan")
    return SideResult(
        side="fedkeeper",
        version=version("fedkeeper"),
        parallelism=(
            f"local fabric: at most {w.parallel} fl_client workers at once (user memory "
            f"{limits['user_memory_mb']} MB, fl_client {CLIENT_MB} MB, managing functions {MANAGING_MB} MB, "
            f"max_workers {limits['max_workers']}); keeper polls every {w.poll_s:g} s; "
            "MongoDB: secantusd-py in memory"
        ),
        round_s=[float(m["duration_s"]) for m in metrics],
        accuracy=[float(m["accuracy"]) for m in metrics],
        total_s=total_s,
        notes=[
            "round time = keeper dispatch of the first client .. aggregator's metrics (includes "
            "server-side evaluation)",
            f"startup: MongoDB + fabric up {services_s:.2f} s, deploy {deploy_s:.2f} s, "
            f"fl_server_init activation {init_s:.2f} s (cold)",
            "fabric cold starts: " + ", ".join(f"{name} {n}" for name, n in sorted(per_action.items())),
            *round_details(entries, len(metrics), cold),
        ],
    )


# --------------------------------------------------------------------------- Flower side
def quickstart_train(w: Workload, weights: list[Any], client: int, rows: Any, round_number: int) -> Any:
    """Flower's TensorFlow quickstart client: build and compile a Keras model in this call, set the
    weights, ``fit``. The rows and their per-epoch order are ``train_partition``'s, so the result
    is the same model (``fit`` and the warm core compute the same steps)."""
    import numpy as np

    from fedkeeper.function.learning.datasets import load_dataset
    from fedkeeper.function.learning.models import build_model
    from fedkeeper.function.learning.training import LocalResult
    from fedkeeper.function.tasks.client import shuffle_seed

    params = w.model_params()
    dataset = load_dataset(w.data_spec())
    x, y = dataset.x_train[rows], dataset.y_train[rows]
    model = build_model(params, dataset.num_features, dataset.num_classes)
    model.set_weights(weights)
    rng = np.random.default_rng(shuffle_seed(params, round_number, client) % 2**64)
    history: dict[str, list[float]] = {}
    for _ in range(params.local_epochs):
        order = rng.permutation(len(x))
        history = model.fit(
            x[order], y[order], batch_size=params.batch_size, epochs=1, shuffle=False, verbose=0
        ).history
    return LocalResult(model.get_weights(), len(x), history["loss"][-1], history["accuracy"][-1])


def make_client_app(w: Workload, quickstart: bool) -> Any:
    """A Flower ``ClientApp`` whose train step is fedkeeper's own ``fl_client`` core (or, with
    ``quickstart``, :func:`quickstart_train`)."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from fedkeeper.function.learning.datasets import load_dataset
        from fedkeeper.function.learning.partition import partition
        from fedkeeper.function.tasks.client import train_partition

        client = int(context.node_config["partition-id"])
        server_round = cast(int, msg.content.config_records["config"]["server-round"])
        weights = msg.content.array_records["arrays"].to_numpy_ndarrays()
        spec = w.data_spec()
        parts = partition(load_dataset(spec).y_train, w.clients, w.sampling())
        # Flower counts rounds from 1, fedkeeper from 0: the same round gets the same shuffle seed.
        if quickstart:
            result = quickstart_train(w, weights, client, parts[client], server_round - 1)
        else:
            result = train_partition(weights, spec, w.model_params(), parts[client], client, server_round - 1)
        content = RecordDict(
            {
                "arrays": ArrayRecord(result.weights),
                "metrics": MetricRecord(
                    {
                        "train_loss": result.loss,
                        "train_accuracy": result.accuracy,
                        "num-examples": result.num_examples,
                    }
                ),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def make_server_app(w: Workload, marks: list[tuple[float, float]]) -> Any:
    """A Flower ``ServerApp``: FedAvg over every client each round, central evaluation after each."""
    from flwr.app import ArrayRecord, Context, MetricRecord
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    from fedkeeper.function.learning.architecture import initial_weights
    from fedkeeper.function.learning.datasets import load_dataset
    from fedkeeper.function.learning.evaluation import evaluate

    app = ServerApp()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        dataset = load_dataset(w.data_spec())
        loss, accuracy = evaluate(
            arrays.to_numpy_ndarrays(), dataset.x_test, dataset.y_test, w.model_params(), dataset.num_classes
        )
        marks.append((time.monotonic(), accuracy))
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        dataset = load_dataset(w.data_spec())
        start = initial_weights(w.model_params(), dataset.num_features, dataset.num_classes)
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,  # fedkeeper evaluates centrally only; so does this side
            min_train_nodes=w.clients,
            min_available_nodes=w.clients,
        )
        strategy.start(
            grid=grid, initial_arrays=ArrayRecord(start), num_rounds=w.rounds, evaluate_fn=evaluate_fn
        )

    return app


def run_flower(w: Workload, work: Path, quickstart: bool = False) -> SideResult:
    side = QUICKSTART if quickstart else "flower"
    try:
        import flwr
        from flwr.simulation import run_simulation
    except ImportError as exc:
        raise SystemExit(f"flower side: {exc}: pip install -r bench/requirements.txt") from None

    marks: list[tuple[float, float]] = []  # (time, accuracy) after evaluating round 0, 1, ...
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": w.parallel, "num_gpus": 0, "include_dashboard": False},
    }
    started = time.monotonic()
    run_simulation(
        server_app=make_server_app(w, marks),
        client_app=make_client_app(w, quickstart),
        num_supernodes=w.clients,
        backend_config=backend_config,  # type: ignore[arg-type]
    )
    if len(marks) != w.rounds + 1:
        raise SystemExit(f"{side} side: expected {w.rounds + 1} evaluations, got {len(marks)} (see its log)")
    total_s = marks[-1][0] - started
    times = [t for t, _ in marks]
    client = (
        "each call builds and compiles a Keras model and fits it (Flower's TensorFlow quickstart)"
        if quickstart
        else "each call runs fedkeeper's warm training core (train_partition)"
    )
    return SideResult(
        side=side,
        version=flwr.__version__,
        parallelism=(
            f"run_simulation, Ray backend with {w.parallel} CPUs and 1 CPU per client: {w.parallel} "
            f"ClientApp actors at once; ServerApp (FedAvg, evaluation) in the driver process; {client}"
        ),
        round_s=[b - a for a, b in itertools.pairwise(times)],
        accuracy=[acc for _, acc in marks[1:]],
        total_s=total_s,
        notes=[
            "round time = end of the previous central evaluation .. end of this round's central "
            "evaluation; round 0's evaluation of the initial weights is in the startup time",
            "Ray and its actors start while the ServerApp evaluates round 0, so their start-up falls in "
            "round 1: compare 'startup + round 1' rather than either alone",
        ],
    )


RUNNERS: dict[str, Callable[[Workload, Path], SideResult]] = {
    "fedkeeper": run_fedkeeper,
    "flower": run_flower,
    QUICKSTART: functools.partial(run_flower, quickstart=True),
}


# --------------------------------------------------------------------------- the parent
class TreeMemory:
    """Samples the summed RSS of a process and all its descendants; remembers who was seen."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self.seen: dict[int, float] = {}  # pid -> create_time, so a recycled pid is never touched
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _family(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            total = 0
            for proc in self._family():
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
                    self.seen.setdefault(proc.pid, proc.create_time())
            self.peak_bytes = max(self.peak_bytes, total)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def kill_leftovers(self) -> int:
        """Kill descendants that outlived the side's process (e.g. Ray daemons); returns how many."""
        leftovers = []
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.is_running():
                    leftovers.append(proc)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        return len(leftovers)


def run_side(side: str, w: Workload, work: Path, verbose: bool, run: int) -> SideResult:
    """Run one side in a child process; its output goes to ``work/<side>-<run>.log``."""
    result_path = work / f"{side}-{run}.json"
    log_path = work / f"{side}-{run}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--result", str(result_path),
               *w.as_args()]  # fmt: skip
    env = {**os.environ, **QUIET_ENV}
    load_before = os.getloadavg()[0]
    print(f"running {side} ... (log: {log_path}; load average {load_before:.1f})", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=None if verbose else log,
            stderr=None if verbose else subprocess.STDOUT,
        )
        with TreeMemory(child.pid) as memory:
            try:
                code = child.wait(timeout=SIDE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
        memory.kill_leftovers()
    if code != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-25:])
        raise SystemExit(f"{side} side failed (exit status {code}); last lines of {log_path}:\n{tail}")
    data = json.loads(result_path.read_text(encoding="utf-8"))
    result = SideResult(**data)
    result.peak_rss_mb = memory.peak_bytes / 2**20
    result.load_before = load_before
    return result


def ratio(a: float, b: float) -> str:
    return f"{a / b:6.2f}x" if b > 0 else "    n/a"


@dataclass(frozen=True)
class Row:
    """One line of the summary: a figure computed from each run of a side."""

    label: str
    figure: Callable[[SideResult], float]
    digits: int = 2


SUMMARY = (
    Row("rounds 2.. (warm), s", lambda r: sum(r.round_s[1:])),
    Row("startup (before round 1), s", lambda r: r.total_s - r.rounds_s),
    Row("startup + round 1 (cold), s", lambda r: r.total_s - sum(r.round_s[1:])),
    Row("end to end, s", lambda r: r.total_s),
    Row("peak RSS of the process tree, MB", lambda r: r.peak_rss_mb or 0.0, 0),
)


def report(w: Workload, runs: dict[str, list[SideResult]]) -> Iterator[str]:
    """The tables: medians over the runs of each side (one run unless ``--repeat``), ratios last.

    ``fk/flower`` compares orchestration alone (both sides run the same warm training core);
    ``fk/quickstart`` compares with Flower as its TensorFlow quickstart writes a client.
    """
    fk_runs, fl_runs, qs_runs = runs["fedkeeper"], runs["flower"], runs[QUICKSTART]
    fk, fl, qs = fk_runs[-1], fl_runs[-1], qs_runs[-1]
    repeat = len(fk_runs)
    yield ""
    yield f"fedkeeper {fk.version} vs Flower {fl.version} — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, " + (
        f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}"
    )
    yield f"workload: {w.describe()}"
    loads = ", ".join(
        f"{r.side} {r.load_before or 0:.1f}"
        for group in zip(fk_runs, fl_runs, qs_runs, strict=True)
        for r in group
    )
    yield f"load average (1 min) when each run started: {loads} (on {os.cpu_count()} cores)"
    if repeat > 1:
        yield f"each figure is the median of {repeat} runs per side (the sides alternate)"
    for result in (fk, fl, qs):
        yield f"  {result.side:<17} parallelism: {result.parallelism}"
    yield ""
    yield (
        f"{'round':>5}  {'fedkeeper s':>11}  {'flower s':>9}  {'quickstart s':>12}  {'fk accuracy':>11}  "
        f"{'flower acc':>10}  {'qs acc':>7}  {'fk/flower':>9}  {'fk/quickstart':>13}"
    )
    for i in range(w.rounds):
        a, b, c = (median(r.round_s[i] for r in side) for side in (fk_runs, fl_runs, qs_runs))
        yield (
            f"{i + 1:>5}  {a:>11.2f}  {b:>9.2f}  {c:>12.2f}  {fk.accuracy[i]:>11.4f}  {fl.accuracy[i]:>10.4f}  "
            f"{qs.accuracy[i]:>7.4f}  {ratio(a, b):>9}  {ratio(a, c):>13}"
        )
    a, b, c = (median(r.rounds_s for r in side) for side in (fk_runs, fl_runs, qs_runs))
    yield f"{'sum':>5}  {a:>11.2f}  {b:>9.2f}  {c:>12.2f}  {'':>11}  {'':>10}  {'':>7}  {ratio(a, b):>9}  {ratio(a, c):>13}"
    yield ""
    yield f"{'':<34}{'fedkeeper':>10}  {'flower':>9}  {'quickstart':>10}  {'fk/flower':>9}  {'fk/quickstart':>13}"
    for row in SUMMARY:
        a, b, c = (median(row.figure(r) for r in side) for side in (fk_runs, fl_runs, qs_runs))
        d = row.digits
        yield f"{row.label:<34}{a:>10.{d}f}  {b:>9.{d}f}  {c:>10.{d}f}  {ratio(a, b):>9}  {ratio(a, c):>13}"
    accuracies = [r.accuracy for r in fk_runs + fl_runs + qs_runs]
    gap = max(abs(x - y) for other in accuracies for x, y in zip(accuracies[0], other, strict=True))
    yield f"{'largest accuracy difference':<34}{gap:>10.4f}"
    yield ""
    for result in (fk, fl, qs):
        for note in result.notes:
            yield f"  {result.side}: {note}"
    if repeat > 1:
        yield "  (the per-round fedkeeper details above are from its last run)"
    yield (
        "  peak RSS: summed resident memory of the side's process and all its descendants, sampled every "
        f"{RSS_SAMPLE_S} s (shared libraries count once per process)"
    )


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


# --------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 2 with --quick)")
    p.add_argument(
        "--clients",
        type=int,
        default=None,
        help="clients, all train every round (default 10; 4 with --quick)",
    )
    p.add_argument("--hidden", type=int, default=128, help="mlp hidden units (default 128)")
    p.add_argument("--epochs", type=int, default=1, help="local epochs (default 1)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--lr", type=float, default=0.001, help="adam learning rate (default 0.001)")
    p.add_argument(
        "--parallel", type=int, default=2, help="clients training at once on either side (default 2)"
    )
    p.add_argument(
        "--poll",
        type=float,
        default=0.5,
        help="fedkeeper keeper's poll_interval_s (default 0.5, its default)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per side, medians reported (default 1)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 clients, 2 rounds")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, results)")
    p.add_argument("--verbose", action="store_true", help="show each side's output instead of logging it")
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # the child's role
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.clients = args.clients or (4 if args.quick else 10)
    for name in ("rounds", "clients", "hidden", "epochs", "batch", "parallel", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    for name in ("lr", "poll"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive (got {getattr(args, name)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    w = Workload(
        args.rounds, args.clients, args.hidden, args.epochs, args.batch, args.lr, args.parallel, args.poll
    )
    if args.side:  # a child: run one side, write its result
        work = args.result.with_name(f"{args.result.stem}-work")  # kept with the parent's --keep
        work.mkdir(parents=True, exist_ok=True)
        result = RUNNERS[args.side](w, work)
        args.result.write_text(json.dumps(asdict(result)), encoding="utf-8")
        return 0
    work = Path(tempfile.mkdtemp(prefix="round-vs-flower-"))
    try:
        runs: dict[str, list[SideResult]] = {side: [] for side in SIDES}
        for run in range(1, args.repeat + 1):
            for side in SIDES:
                runs[side].append(run_side(side, w, work, args.verbose, run))
        for line in report(w, runs):
            print(line)
    finally:
        if args.keep:
            print(f"\nwork folder kept: {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
