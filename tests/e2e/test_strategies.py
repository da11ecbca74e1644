"""One session per family of strategies on the local fabric: a server optimizer (FedAdam, killed
mid-round and resumed), client-side control variates (SCAFFOLD) and robust aggregation (Krum).

Tiny on purpose: digits, an mlp of 16, 3 clients, 2 rounds. Clients are slowed a little so that a
round is reliably in flight when the keeper is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.updates import StoredUpdate
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.ledger import LedgerStatus

from .conftest import E2E_LIMITS, training_config
from .helpers import assert_every_selected_update_counted_once, run_session, wait_for

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2
SLOW_CLIENTS = {"seed": 1, "actions": {"fl_client": {"latency_ms": 1500}}}


@pytest.fixture(scope="module")
def slow_fabric() -> Iterator[FabricProcess]:
    with FabricProcess(limits=E2E_LIMITS, faults=SLOW_CLIENTS) as process:
        yield process


def _config(fabric: FabricProcess, mongo_url: str, logs: Path, strategy: Any, **model: Any) -> dict[str, Any]:
    data = training_config(
        fabric.url, mongo_url, logs, strategy=strategy, max_rounds=ROUNDS, num_clients_per_round=3
    )
    fl = data["scenarios"]["federated_learning"]
    fl["clients_info"] = {"total_num_clients": 3, "ow_clients_count": 3}
    fl["model_params"].update(hidden_size=16, **model)
    return data


def _store(data: dict[str, Any]) -> Store:
    mongo = data["scenarios"]["federated_learning"]["mongo_config"]
    return Store(mongo["url"], mongo["database"])


def _killed_mid_round_and_resumed(data: dict[str, Any], tmp_path: Path) -> tuple[Store, str]:
    """``main.py -d -s`` SIGKILLed while round 1's clients run, then ``fedkeeper resume``."""
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(data))
    store = _store(data)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    keeper = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "-c", str(config_file), "-d", "-s"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(
            lambda: (
                store.db.activations.count_documents(
                    {"round": 1, "function": "fl_client", "status": LedgerStatus.SUBMITTED}
                )
                > 0
            ),
            timeout_s=300,
            what="round 1 activations in flight",
        )
        keeper.send_signal(signal.SIGKILL)
        keeper.wait(timeout=30)
    finally:
        if keeper.poll() is None:
            keeper.kill()
    (doc,) = list(store.db.sessions.find())
    session = str(doc["_id"])
    assert doc["phase"] == "Running" and doc["round"] == 1
    resumed = subprocess.run(
        [sys.executable, "-m", "fedkeeper", "resume", session, "-c", str(config_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return store, session


def test_a_fedadam_session_killed_mid_round_and_resumed_ends_with_the_uninterrupted_weights(
    slow_fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    strategy = {"name": "fedadam", "eta": 0.01, "beta_1": 0.9, "beta_2": 0.99}
    killed, killed_session = _killed_mid_round_and_resumed(
        _config(slow_fabric, mongo_url, tmp_path / "logs", strategy), tmp_path
    )
    whole, whole_session = run_session(_config(slow_fabric, mongo_url, tmp_path / "logs", strategy))

    runs = [killed.for_session(killed_session), whole.for_session(whole_session)]
    for store, session in ((killed, killed_session), (whole, whole_session)):
        assert store.for_session(session).record.get()["phase"] == "Succeeded"
        assert_every_selected_update_counted_once(store, session, rounds=ROUNDS)
    for round_number in range(1, ROUNDS + 1):
        weights = [wire.checksum(run.weights.get(round_number)) for run in runs]
        assert weights[0] == weights[1], f"round {round_number} weights differ"
        moments = [run.strategy.server(round_number) for run in runs]
        assert moments[0] is not None and moments[1] is not None
        assert set(moments[0].arrays) == {"m", "v"}
        assert wire.checksum(moments[0].flat()) == wire.checksum(moments[1].flat())


def test_scaffold_keeps_the_server_and_every_clients_control_variate_in_the_store(
    slow_fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    data = _config(slow_fabric, mongo_url, tmp_path / "logs", "scaffold", optimizer="sgd", learning_rate=0.5)
    store, session = run_session(data)

    accuracies = assert_every_selected_update_counted_once(store, session, rounds=ROUNDS)
    assert accuracies[-1] > max(accuracies[0], 0.6), accuracies  # the corrected round learns
    run = store.for_session(session)
    for round_number in range(ROUNDS):
        server = run.strategy.server(round_number + 1)
        assert server is not None and any(a.any() for a in server.arrays["c"])
        doc = run.rounds.get(round_number)
        for client in doc["selected"]:
            assert doc["fit"][str(client)]["control_variates"] is True
            own = run.strategy.client(client, round_number + 1)
            assert own is not None and any(a.any() for a in own)
    assert run.rounds.get(0)["metrics"]["strategy"] == "scaffold"


def test_krum_sets_each_rounds_weights_to_the_update_it_selects(
    slow_fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    data = _config(slow_fabric, mongo_url, tmp_path / "logs", {"name": "krum", "num_malicious_clients": 0})
    store, session = run_session(data)

    assert_every_selected_update_counted_once(store, session, rounds=ROUNDS)
    run = store.for_session(session)
    for round_number in range(ROUNDS):
        (chosen,) = run.rounds.get(round_number)["metrics"]["krum_selected"]
        (update,) = list(run.updates.stream(round_number, [chosen]))
        assert isinstance(update, StoredUpdate)
        assert wire.checksum(run.weights.get(round_number + 1)) == wire.checksum(update.weights)


def test_a_session_aggregated_in_two_shards_ends_with_the_unsharded_weights(
    slow_fabric: FabricProcess, mongo_url: str, tmp_path: Path
) -> None:
    strategy = {"name": "fedavgm", "server_learning_rate": 0.9, "server_momentum": 0.5}
    data = _config(slow_fabric, mongo_url, tmp_path / "logs", strategy)
    data["scenarios"]["federated_learning"]["server_config"]["aggregation_shards"] = 2
    sharded, sharded_session = run_session(data)
    whole, whole_session = run_session(_config(slow_fabric, mongo_url, tmp_path / "logs", strategy))

    assert_every_selected_update_counted_once(sharded, sharded_session, rounds=ROUNDS)
    for round_number in range(1, ROUNDS + 1):
        assert wire.checksum(sharded.for_session(sharded_session).weights.get(round_number)) == wire.checksum(
            whole.for_session(whole_session).weights.get(round_number)
        ), f"round {round_number} weights differ"
    # each round: two shard activations in the ledger, then the one that joins them
    shards = sharded.db.activations.find(
        {"session": sharded_session, "function": "fl_server_aggregator", "status": LedgerStatus.SUCCESS}
    )
    assert sorted((a["round"], a["client"]) for a in shards) == sorted(
        (r, c) for r in range(ROUNDS) for c in (-1, -2, -3)
    )
    assert sharded.db.aggregation_shards.count_documents({"session": sharded_session}) == 0
