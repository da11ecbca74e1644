"""Checks shared by the end-to-end tests: what a finished session must look like in the store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedkeeper.function.config import parse_config
from fedkeeper.function.store.db import Store
from fedkeeper.host.ledger import Ledger
from fedkeeper.host.run import opened


def run_session(
    data: dict[str, Any], during: Callable[[Store], None] | None = None, remove: bool = True
) -> tuple[Store, str]:
    """Deploy, train one session to its stop rule (``during`` runs beside it), then remove."""
    config = parse_config(data, "e2e.yaml")
    mongo = config.fl.mongo_config
    store = Store(mongo.url, mongo.database)
    store.ensure_indexes()
    with opened(config) as run:
        run.deploy(say=lambda _: None)
        watcher = threading.Thread(target=during, args=(store,), daemon=True) if during else None
        try:
            if watcher:
                watcher.start()
            session = run.keeper(store).start()
        finally:
            if remove:  # skipped where a platform was killed on purpose and cannot remove anything
                run.remove(say=lambda _: None)
    if watcher:
        watcher.join(timeout=5)
    return store, session


def assert_every_selected_update_counted_once(store: Store, session: str, rounds: int) -> list[float]:
    """Each round aggregated exactly its selected clients' updates, each once. Returns accuracies."""
    docs = store.for_session(session).rounds.all()
    assert [d["round"] for d in docs] == list(range(rounds))
    accuracies = []
    for doc in docs:
        r = doc["round"]
        assert doc["status"] == "aggregated", doc
        assert doc["included"] == sorted(doc["selected"]), f"round {r} lost updates: {doc}"
        assert sorted(doc["metrics"]["accepted"]) == sorted(doc["selected"])
        stored = Counter(u["client"] for u in store.db.updates.find({"session": session, "round": r}))
        assert all(n == 1 for n in stored.values())
        assert set(doc["selected"]) <= set(stored)
        accuracies.append(doc["metrics"]["accuracy"])
    assert store.for_session(session).weights.has(rounds)
    return accuracies


def client_attempts(store: Store, session: str) -> list[dict]:
    return [
        {
            "round": e.round,
            "client": e.client,
            "attempt": e.attempt,
            "status": e.status,
            "id": e.activation_id,
        }
        for e in Ledger(store.for_session(session)).entries()
        if e.function in ("fl_client", "fl_invoker_weights_update")
    ]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class KilledKeeper:
    """A session whose keeper was SIGKILLed: its store and how to run the CLI on its config."""

    store: Store
    config_file: Path
    env: dict[str, str]

    def resume(self, session: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """``fedkeeper resume`` in a new process."""
        return subprocess.run(
            [sys.executable, "-m", "fedkeeper", "resume", session, "-c", str(self.config_file)],
            cwd=cwd, env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip


def kill_keeper_when(
    data: dict[str, Any], cwd: Path, ready: Callable[[Store], bool], what: str
) -> KilledKeeper:
    """Deploy with ``main.py -d``, start ``main.py -s``, SIGKILL it once ``ready(store)`` holds."""
    config_file = cwd / "config.yaml"
    config_file.write_text(yaml.safe_dump(data))
    mongo = data["scenarios"]["federated_learning"]["mongo_config"]
    store = Store(mongo["url"], mongo["database"])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "-c", str(config_file), "-d"],
        check=True, cwd=cwd, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    keeper = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "-c", str(config_file), "-s"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: ready(store), timeout_s=240, what=what)
        keeper.send_signal(signal.SIGKILL)
        keeper.wait(timeout=30)
    finally:
        if keeper.poll() is None:
            keeper.kill()
    return KilledKeeper(store, config_file, env)
