"""Async mode (FedBuff) on the fake clock over the scripted provider, with the real store.

What it proves: at most ``max_in_flight`` activations run; every ``buffer_size`` updates make one
model version; an update (even one a revived activation stores twice) is in exactly one buffer; a
failed activation is re-invoked; a keeper killed mid-stream resumes and counts every update once.
"""

from __future__ import annotations

import csv
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION, CLIENT_FUNCTION
from fedkeeper.function.config import Config, parse_config
from fedkeeper.function.invoke.base import ActivationRecord
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.plan import Plan
from fedkeeper.host.rounds import STOPPED, SessionFailed
from fedkeeper.host.serve.documents import StatusReader
from tests.keeper.fakes import WEIGHTS, Attempt, FakeClock, ScriptedProvider

CLIENTS = 4


class KeeperDied(Exception):
    """The keeper process is gone (raised from its sleep)."""


@dataclass
class CountingProvider(ScriptedProvider):
    """Records how many activations were running (by the clock) whenever one more is invoked;
    ``revive`` runs every dispatch twice, as a platform reviving an activation would."""

    most_running: int = 0
    revive: bool = False

    def invoke_async(self, name: str, params: Mapping[str, Any]) -> str:
        running = sum(1 for r in self.running.values() if self.clock() < r.started + r.script.duration_s)
        self.most_running = max(self.most_running, running + 1)
        activation_id = super().invoke_async(name, params)
        if self.revive:
            self.running[f"{activation_id}-revived"] = replace(self.running[activation_id])
        return activation_id


@dataclass
class SlowAggregatorProvider(CountingProvider):
    """An aggregator that takes ``aggregate_s`` (clock time, during which clients finish) and, to
    give the keeper the chance, answers only once a client was dispatched while it ran (or after
    ``patience_s`` of real time): ``during[v]`` are the ``(client, version)`` dispatched while
    version ``v``'s call was pending."""

    aggregate_s: float = 1.0
    patience_s: float = 2.0
    during: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    unclaimed_then: list[int] = field(default_factory=list)  # updates waiting at each such dispatch
    _pending: int | None = None
    _dispatched: threading.Event = field(default_factory=threading.Event)

    def invoke_async(self, name: str, params: Mapping[str, Any]) -> str:
        activation_id = super().invoke_async(name, params)
        pending = self._pending  # (the aggregator's thread may end the call meanwhile)
        if pending is not None:
            self.during[pending].append((int(params["client"]), int(params["version"])))
            self.unclaimed_then.append(self.store.for_session(str(params["session"])).updates.unclaimed())
            self._dispatched.set()
        return activation_id

    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        if name == AGGREGATOR_FUNCTION and params.get("mode") == "async":
            version = int(params["round"])
            self.during[version] = []
            self._dispatched.clear()
            self._pending = version
            self.clock.sleep(self.aggregate_s)
            self._dispatched.wait(self.patience_s)
            self._pending = None
        return super().invoke_sync(name, params, timeout_s)


@dataclass
class DownWhileAggregatingProvider(CountingProvider):
    """The platform goes down for ``outage_s`` (clock time) as version ``version``'s aggregator
    call starts: that call, the stream's invokes and its polls all meet the outage."""

    version: int = 1
    outage_s: float = 5.0

    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        if name == AGGREGATOR_FUNCTION and int(params["round"]) == self.version and not self.down_until:
            self.down_until = self.clock() + self.outage_s
        return super().invoke_sync(name, params, timeout_s)


def _config(tmp_path: Path, **server: Any) -> Config:
    return parse_config(
        {
            "logs_dir": str(tmp_path / "logs"),
            "providers": {"openwhisk": {"local": {"local": True}}},
            "scenarios": {
                "federated_learning": {
                    "server_config": {
                        "cluster": "local",
                        "mode": "async",
                        "num_clients_per_round": CLIENTS,
                        "max_in_flight": 2,
                        "buffer_size": 3,
                        "max_rounds": 4,
                        "activation_timeout_s": 60.0,
                        "max_retries": 2,
                        "retry_backoff_s": 0.5,
                        "poll_interval_s": 0.5,
                        **server,
                    },
                    "clients_info": {"total_num_clients": CLIENTS, "ow_clients_count": CLIENTS},
                    "functions": {"fl_client": {"timeout": 50}},
                }
            },
        }
    )


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _keeper(config: Config, store: Store, provider: ScriptedProvider, clock: FakeClock) -> Keeper:
    plan = Plan.build(config)
    return Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)


def _script(durations: dict[int, float]) -> dict[int, list[Attempt]]:
    return {c: [Attempt(duration_s=d)] for c, d in durations.items()}


def _buffers(session: SessionStore, versions: int) -> list[list[str]]:
    """Each version's buffer as ``client/dispatch``, from the consumed marks."""
    return [[f"{m['client']}/{m['round']}" for m in session.updates.claimed(v)] for v in range(versions)]


def test_every_buffer_size_updates_make_one_version_with_at_most_max_in_flight_running(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, store, _script({0: 1.0, 1: 2.0, 2: 3.0, 3: 5.0}))
    config = _config(tmp_path)
    session_id = _keeper(config, store, provider, clock).start()
    session = store.for_session(session_id)
    assert session.record.get()["phase"] == "Succeeded"
    buffers = _buffers(session, 4)
    assert [len(b) for b in buffers] == [3, 3, 3, 3]
    assert not session.updates.claimed(4)
    assert provider.most_running == 2
    every = [key for b in buffers for key in b]
    assert len(every) == len(set(every))  # no update in two buffers
    # the aggregator folded exactly the claimed buffer of each version
    assert [session.rounds.get(v)["metrics"]["accepted"] for v in range(4)] == buffers
    # a faster client trains more often: clients are re-invoked as soon as they finish
    calls = Counter(c for c, _ in provider.invoked)
    assert calls[0] > calls[3]
    rows = list(csv.DictReader((tmp_path / "logs" / session_id / "rounds.csv").open()))
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    assert all(r["in_flight"] != "" and r["staleness_max"] != "" for r in rows)
    assert max(int(r["staleness_max"]) for r in rows) >= 1  # later versions fold stale updates
    assert StatusReader(store, config).session(session_id)["spec"]["mode"] == "async"


def test_a_later_version_trains_on_the_newest_model(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, store, _script({c: 1.0 for c in range(CLIENTS)}))
    _keeper(_config(tmp_path), store, provider, clock).start()
    versions = [int(run.version or 0) for run in provider.running.values()]
    assert max(versions) == 3 and min(versions) == 0


def test_an_update_a_revived_activation_stores_again_is_counted_once(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, store, _script({c: 1.0 + c for c in range(CLIENTS)}), revive=True)
    session = store.for_session(_keeper(_config(tmp_path), store, provider, clock).start())
    every = [key for b in _buffers(session, 4) for key in b]
    assert len(every) == 12 and len(every) == len(set(every))
    dispatches = [int(key.split("/")[1]) for key in every]
    assert len(dispatches) == len(set(dispatches))  # one update per dispatch, however often it ran
    # and a revived activation writing again finds the dispatch's update there
    first = session.updates.claimed(0)[0]
    again = session.updates.put(int(first["round"]), int(first["client"]), WEIGHTS, 10, 0.5, 0.5, version=0)
    assert again is False


def test_a_failed_activation_is_re_invoked_and_a_client_failing_too_often_is_given_up(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    script = {1: [Attempt(ok=False), Attempt()], 3: [Attempt(ok=False)]}
    provider = CountingProvider(clock, store, script)
    session = store.for_session(_keeper(_config(tmp_path, max_retries=1), store, provider, clock).start())
    fit = [e for e in Ledger(session).entries() if e.function == CLIENT_FUNCTION]
    one = sorted((e for e in fit if e.client == 1), key=lambda e: e.round)
    assert one[0].status == LedgerStatus.APPLICATION_ERROR and one[1].status == LedgerStatus.SUCCESS
    three = [e for e in fit if e.client == 3]
    assert [e.status for e in three] == [LedgerStatus.APPLICATION_ERROR] * 2  # 1 + max_retries, then given up
    assert all(not k.startswith("3/") for b in _buffers(session, 4) for k in b)


def test_a_client_whose_updates_keep_being_rejected_is_given_up_and_never_in_a_buffer(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, store, {2: [Attempt(rejected=True)]})
    session = store.for_session(_keeper(_config(tmp_path, max_retries=1), store, provider, clock).start())
    assert session.record.get()["phase"] == "Succeeded"
    assert sum(c == 2 for c, _ in provider.invoked) == 2  # 1 + max_retries rejections, then given up
    assert all(not k.startswith("2/") for b in _buffers(session, 4) for k in b)


def test_every_client_failing_fails_the_session_with_how_to_resume(store: Store, tmp_path: Path) -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, store, {c: [Attempt(ok=False)] for c in range(CLIENTS)})
    keeper = _keeper(_config(tmp_path, max_retries=0), store, provider, clock)
    with pytest.raises(
        SessionFailed, match=r"every client is given up \(1 failed attempts.*fedkeeper resume"
    ):
        keeper.start()


def test_a_keeper_killed_mid_stream_resumes_and_counts_every_update_exactly_once(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    provider = CountingProvider(clock, store, _script({0: 1.0, 1: 2.5, 2: 4.0, 3: 7.0}))
    config = _config(tmp_path, max_rounds=6)
    dying = _keeper(config, store, provider, clock)

    def sleep_then_die(seconds: float) -> None:
        clock.sleep(seconds)
        if clock() >= 1006.0:
            raise KeeperDied

    dying.sleep = sleep_then_die
    with pytest.raises(KeeperDied):
        dying.start()
    session = dying.session
    open_at_death = {e.round for e in Ledger(session).open_client_entries()}
    assert open_at_death  # it died with activations in flight
    assert 0 < int(session.record.get()["round"]) < 6
    clock.sleep(10)  # what was running finishes while no keeper watches
    provider.finish_due()
    _keeper(config, store, provider, clock).resume(session.id)
    assert session.record.get()["phase"] == "Succeeded"
    buffers = _buffers(session, 6)
    assert [len(b) for b in buffers] == [3] * 6
    every = [key for b in buffers for key in b]
    assert len(every) == len(set(every))
    # the activations in flight at the death were polled again: settled, their updates counted
    entries = {e.round: e for e in Ledger(session).entries() if e.function == CLIENT_FUNCTION}
    assert all(entries[d].settled for d in open_at_death)
    claimed_dispatches = {int(k.split("/")[1]) for k in every}
    assert open_at_death <= claimed_dispatches
    # no dispatch number was used twice across the two keepers
    dispatches = [e.round for e in Ledger(session).entries() if e.function == CLIENT_FUNCTION]
    assert len(dispatches) == len(set(dispatches))


def test_clients_train_on_while_a_version_is_aggregated_and_every_update_still_counts_once(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    # clients finish within the aggregator's 1 s: each call sees some become ready
    provider = SlowAggregatorProvider(clock, store, _script({0: 1.0, 1: 1.5, 2: 2.0, 3: 2.5}))
    config = _config(tmp_path, max_in_flight=2, max_rounds=4, poll_interval_s=0.1)
    session = store.for_session(_keeper(config, store, provider, clock).start())
    assert session.record.get()["phase"] == "Succeeded"
    # while each version's aggregator call ran, clients were re-dispatched, on that version
    assert sorted(provider.during) == [0, 1, 2, 3]
    for version, dispatched in provider.during.items():
        assert dispatched, f"no client dispatched while version {version} was aggregated"
        assert {v for _, v in dispatched} == {version}
    # ... but none once the next buffer was full in the store (it would only pile up stale updates)
    assert provider.unclaimed_then and max(provider.unclaimed_then) < 3
    # exactly once: no update in two buffers, one update per dispatch
    buffers = _buffers(session, 4)
    assert [len(b) for b in buffers] == [3, 3, 3, 3]
    every = [key for b in buffers for key in b]
    assert len(every) == len(set(every))
    fit = [e for e in Ledger(session).entries() if e.function == CLIENT_FUNCTION]
    assert len({e.round for e in fit}) == len(fit)  # no dispatch number used twice
    # what trained during an aggregation is folded into a later version, at its staleness
    marks = {int(m["round"]): (v, int(m["version"])) for v in range(4) for m in session.updates.claimed(v)}
    during_first = [
        e.round for e in fit if e.round in marks and marks[e.round][1] == 0 and marks[e.round][0] >= 1
    ]
    assert during_first  # trained on version 0, claimed by a later version
    # the ledger books every attempt: the aggregator calls, and what the stop cut off
    assert sum(e.function == AGGREGATOR_FUNCTION for e in Ledger(session).entries()) == 4
    assert all(e.settled for e in Ledger(session).entries())
    cut_off = [e for e in fit if e.status == LedgerStatus.TIMED_OUT]
    assert cut_off and all(e.error == STOPPED for e in cut_off)


def test_an_outage_during_the_aggregator_call_is_waited_out_by_both_threads_at_no_retry(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    provider = DownWhileAggregatingProvider(clock, store, _script({c: 1.0 + c / 2 for c in range(CLIENTS)}))
    # no retries at all: a charged failure would fail the aggregator, or give a client up
    config = _config(tmp_path, max_in_flight=4, max_retries=0, poll_interval_s=0.1)
    session = store.for_session(_keeper(config, store, provider, clock).start())
    assert session.record.get()["phase"] == "Succeeded"
    calls = [e for e in Ledger(session).entries() if e.function == AGGREGATOR_FUNCTION and e.round == 1]
    statuses = [e.status for e in sorted(calls, key=lambda e: e.attempt)]
    assert statuses[-1] == LedgerStatus.SUCCESS and len(statuses) > 1
    assert set(statuses[:-1]) == {LedgerStatus.UNAVAILABLE}
    every = [key for b in _buffers(session, 4) for key in b]
    assert len(every) == 12 and len(every) == len(set(every))
    assert {int(k.split("/")[0]) for b in _buffers(session, 4)[2:] for k in b} == set(range(CLIENTS))


def test_a_slow_aggregator_holds_ready_clients_once_the_next_buffer_is_full(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    # 4 in flight, buffer 3, an aggregator slower than every client: without the hold, each call
    # would see three updates stored and re-dispatch their clients on the old version regardless
    provider = SlowAggregatorProvider(
        clock, store, _script({0: 1.0, 1: 1.5, 2: 2.0, 3: 2.5}), aggregate_s=3.0, patience_s=0.2
    )
    config = _config(tmp_path, max_in_flight=4, max_rounds=4, poll_interval_s=0.1)
    session = store.for_session(_keeper(config, store, provider, clock).start())
    assert session.record.get()["phase"] == "Succeeded"
    assert max(provider.unclaimed_then, default=0) < 3
    every = [key for b in _buffers(session, 4) for key in b]
    assert len(every) == 12 and len(every) == len(set(every))
