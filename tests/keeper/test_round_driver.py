"""The round driver's rules on a fake clock: quorum, deadline, retries, late updates, resume, and
the same machinery driving a round's federated evaluation.

The store and the ledger are real (the embedded MongoDB); the platform is
:class:`~tests.keeper.fakes.ScriptedProvider`, and time moves only when the driver sleeps.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.backoff import retry_policy
from fedkeeper.function.config import parse_config
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.statuses import Task
from fedkeeper.host.ledger import Ledger, LedgerStatus
from fedkeeper.host.outages import Outages, OutageWatch
from fedkeeper.host.plan import Plan
from fedkeeper.host.reporting import Reporter
from fedkeeper.host.rounds import ClosedRound, DriverContext, RoundDriver, SessionFailed
from tests.keeper.fakes import Attempt, FakeClock, ScriptedProvider

CLIENTS = 4
DEADLINE_S = 10.0


def _server(**changes: Any) -> dict[str, Any]:
    return {
        "cluster": "local",
        "num_clients_per_round": CLIENTS,
        "round_deadline_s": DEADLINE_S,
        "activation_timeout_s": 60.0,
        "max_retries": 2,
        "retry_backoff_s": 0.5,
        "poll_interval_s": 0.5,
        "outage_tolerance_s": 30.0,
        **changes,
    }


@dataclass
class Rig:
    """One session's round driver over a scripted platform, and what it is made of."""

    clock: FakeClock
    session: SessionStore
    provider: ScriptedProvider
    plan: Plan
    server: Any
    reporter: Reporter

    def driver(self) -> RoundDriver:
        """A new driver, as a keeper that starts (or resumes) makes one."""
        outages = Outages(
            self.server.outage_tolerance_s, retry_policy(self.server.retry_backoff_s), self.clock
        )
        watch = OutageWatch(
            outages, self.reporter, self.session.id, self.plan.client_only(), self.clock.sleep
        )
        return RoundDriver(
            DriverContext(
                self.server, self.plan, self.session, Ledger(self.session),
                {("openwhisk", "local"): self.provider}, watch, retry_policy(self.server.retry_backoff_s),
                self.clock, self.clock.sleep,
            )
        )  # fmt: skip

    def dying_driver(self, dies_at: float) -> RoundDriver:
        """A driver whose keeper dies (:class:`KeeperDied`) once it has slept past ``dies_at``."""
        driver = self.driver()

        def sleep_then_die(seconds: float) -> None:
            self.clock.sleep(seconds)
            if self.clock() >= dies_at:
                raise KeeperDied

        driver.sleep = sleep_then_die
        return driver

    def run(self, round_number: int = 0) -> ClosedRound:
        self.session.rounds.open(round_number, list(range(CLIENTS)))
        return self.driver().run(round_number)

    def evaluate(self, clients: list[int], round_number: int = 0) -> ClosedRound:
        """Train round ``round_number`` with every client, then drive ``clients``' evaluation of it."""
        self.run(round_number)
        self.session.rounds.open_evaluate(round_number, clients)
        return self.driver().evaluate(round_number)

    def statuses(self, client: int, task: Task = Task.FIT) -> list[LedgerStatus]:
        entries = [e for e in Ledger(self.session).entries() if e.client == client and e.task is task]
        return [e.status for e in sorted(entries, key=lambda e: e.attempt)]


@pytest.fixture
def rig(mongo_url: str, mongo_db_name: str, tmp_path: Path) -> Iterator[Any]:
    """Build a rig from a script and ``server_config`` changes; the database is dropped after."""
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    reporters: list[Reporter] = []

    def make(script: dict[int, list[Attempt]] | None = None, **server: Any) -> Rig:
        config = parse_config(
            {
                "providers": {"openwhisk": {"local": {"local": True}}},
                "scenarios": {
                    "federated_learning": {
                        "server_config": _server(**server),
                        "clients_info": {"total_num_clients": CLIENTS, "ow_clients_count": CLIENTS},
                        "functions": {"fl_client": {"timeout": 50}},
                    }
                },
            }
        )
        session = store.for_session("s-driver")
        session.record.create({})
        clock = FakeClock()
        reporter = Reporter(tmp_path / "logs", session.id, stream=io.StringIO())
        reporters.append(reporter)
        provider = ScriptedProvider(clock, store, script or {})
        return Rig(clock, session, provider, Plan.build(config), config.fl.server_config, reporter)

    yield make
    for reporter in reporters:
        reporter.close()
    store.db.client.drop_database(mongo_db_name)


def test_a_round_closes_as_soon_as_every_selected_client_has_delivered(rig: Any) -> None:
    r = rig({c: [Attempt(duration_s=1.0 + c)] for c in range(CLIENTS)})
    started = r.clock()
    closed = r.run()
    assert closed.included == (0, 1, 2, 3) and closed.failed == () and closed.late == ()
    assert r.clock() - started < DEADLINE_S  # it did not wait for the deadline
    assert r.provider.invoked == [(c, 1) for c in range(CLIENTS)]
    assert r.session.rounds.get(0)["included"] == [0, 1, 2, 3]


def test_past_the_deadline_with_quorum_the_round_closes_and_stragglers_are_late(rig: Any) -> None:
    r = rig({2: [Attempt(duration_s=100)], 3: [Attempt(duration_s=100)]}, min_fit_fraction=0.5)
    started = r.clock()
    closed = r.run()
    assert closed.included == (0, 1) and closed.late == (2, 3) and closed.failed == ()
    assert DEADLINE_S <= r.clock() - started < DEADLINE_S + 1
    assert r.statuses(2) == [LedgerStatus.TIMED_OUT]


def test_without_quorum_the_round_waits_past_the_deadline_for_a_slow_client(rig: Any) -> None:
    r = rig({3: [Attempt(duration_s=40)]}, min_fit_fraction=1.0)
    started = r.clock()
    closed = r.run()
    assert closed.included == (0, 1, 2, 3)
    assert r.clock() - started >= 40


def test_a_late_update_stored_after_the_close_is_not_counted(rig: Any) -> None:
    r = rig({3: [Attempt(duration_s=30)]}, min_fit_fraction=0.75)
    closed = r.run()
    assert closed.late == (3,)
    r.clock.sleep(30)
    r.provider.finish_due()  # the straggler finishes and writes its update
    assert 3 in r.session.updates.clients(0)
    assert r.driver().run(0).included == (0, 1, 2)  # the closing set stays frozen
    assert r.session.rounds.get(0)["included"] == [0, 1, 2]


def test_a_failed_attempt_is_retried_with_a_new_attempt_number_and_counts_once(rig: Any) -> None:
    r = rig({1: [Attempt(ok=False), Attempt(ok=False), Attempt()]})
    closed = r.run()
    assert closed.included == (0, 1, 2, 3) and closed.retries == 2
    assert [a for c, a in r.provider.invoked if c == 1] == [1, 2, 3]
    assert r.statuses(1) == [
        LedgerStatus.APPLICATION_ERROR,
        LedgerStatus.APPLICATION_ERROR,
        LedgerStatus.SUCCESS,
    ]


def test_a_client_out_of_retries_fails_and_the_round_closes_on_quorum(rig: Any) -> None:
    r = rig({1: [Attempt(ok=False)]}, min_fit_fraction=0.75, max_retries=1)
    closed = r.run()
    assert closed.included == (0, 2, 3) and closed.failed == (1,)
    assert [a for c, a in r.provider.invoked if c == 1] == [1, 2]


def test_when_the_quorum_cannot_be_reached_the_session_fails_with_how_to_resume(rig: Any) -> None:
    r = rig({1: [Attempt(ok=False)], 2: [Attempt(ok=False)]}, min_fit_fraction=0.75, max_retries=0)
    with pytest.raises(SessionFailed, match=r"only 2 of 4 clients delivered.*fedkeeper resume s-driver"):
        r.run()


def test_an_update_whose_record_is_lost_counts_and_its_entry_is_booked_record_lost(rig: Any) -> None:
    r = rig({0: [Attempt(lost_record=True)]})
    closed = r.run()
    assert closed.included == (0, 1, 2, 3)
    assert r.statuses(0) == [LedgerStatus.RECORD_LOST]
    assert r.provider.invoked.count((0, 1)) == 1  # no second attempt for a delivered update


def test_a_platform_outage_costs_no_retry_and_the_round_goes_on_once_it_is_back(rig: Any) -> None:
    r = rig(max_retries=0)
    r.provider.down_until = r.clock() + 5
    closed = r.run()
    assert closed.included == (0, 1, 2, 3)
    assert {s for c in range(CLIENTS) for s in r.statuses(c)} == {
        LedgerStatus.UNAVAILABLE,
        LedgerStatus.SUCCESS,
    }


def test_a_full_platform_is_met_with_backpressure_and_no_client_fails_or_retries(rig: Any) -> None:
    r = rig(max_retries=0)  # a refusal counted as an attempt would give its client up
    r.provider.concurrency = 2
    closed = r.run()
    assert closed.included == (0, 1, 2, 3) and closed.failed == () and closed.retries == 0
    assert r.provider.throttled == 1  # one refusal sets the window; the driver then holds back
    assert sorted(r.provider.invoked) == [(c, 1) for c in range(CLIENTS)]
    assert all(r.statuses(c) == [LedgerStatus.SUCCESS] for c in range(CLIENTS))


def _batched_run(r: Rig, batch: int) -> ClosedRound:
    """Round 0 with every client, by a driver that invokes ``batch`` clients per pass."""
    r.session.rounds.open(0, list(range(CLIENTS)))
    driver = r.driver()
    driver.dispatch_batch = batch
    return driver.run(0)


def test_clients_are_invoked_in_batches_with_a_poll_after_each_batch(rig: Any) -> None:
    r = rig()
    closed = _batched_run(r, batch=2)
    assert closed.included == (0, 1, 2, 3)
    first = r.provider.calls[: r.provider.calls.index(("invoke", 3)) + 1]
    assert first == [("invoke", 0), ("invoke", 1), ("fetch", 2), ("invoke", 2), ("invoke", 3)]


def test_a_full_batch_is_followed_by_the_next_without_waiting(rig: Any) -> None:
    r = rig()
    _batched_run(r, batch=2)
    started = {run.client: run.started for run in r.provider.running.values()}
    assert started[2] == started[0]  # the fake clock moves only when the driver sleeps


def test_a_batch_is_in_the_ledger_before_its_first_client_is_invoked(rig: Any) -> None:
    r = rig()
    seen: list[list[tuple[int, str | None]]] = []
    invoke = r.provider.invoke_async

    def noting_the_ledger(name: str, params: Any) -> str:
        entries = Ledger(r.session).open_entries(0)
        seen.append(sorted((e.client, e.activation_id) for e in entries))
        return invoke(name, params)

    r.provider.invoke_async = noting_the_ledger
    _batched_run(r, batch=2)
    assert seen[0] == [(0, None), (1, None)]  # both entries written, neither invoked yet
    assert seen[2][:2] == [(0, "a1"), (1, "a2")]  # the batch's activation ids, before the next batch


def test_a_429_holds_back_the_rest_of_the_batch_on_that_cluster_without_invoking_it(rig: Any) -> None:
    r = rig(max_retries=0)  # a refusal counted as an attempt would give its client up
    r.provider.concurrency = 2
    r.session.rounds.open(0, list(range(CLIENTS)))
    driver = r.driver()
    driver.dispatch_batch = CLIENTS
    closed = driver.run(0)
    assert closed.included == (0, 1, 2, 3) and closed.failed == () and closed.retries == 0
    # the window is what ran at the refusal, the batch's own accepted invokes included
    assert driver.windows == {("openwhisk", "local"): 2}
    # client 2 is refused; client 3, behind it in the batch, is not sent into the full cluster
    assert r.provider.calls[:4] == [("invoke", 0), ("invoke", 1), ("invoke", 2), ("fetch", 2)]
    assert r.provider.throttled == 1
    assert sorted(r.provider.invoked) == [(c, 1) for c in range(CLIENTS)]  # withdrawn numbers reused
    assert all(r.statuses(c) == [LedgerStatus.SUCCESS] for c in range(CLIENTS))
    assert r.session.record.get()["counters"]["active"] == 0


def test_an_outage_met_mid_batch_holds_back_the_rest_of_the_batch_at_no_cost(rig: Any) -> None:
    r = rig(max_retries=0)
    invoke = r.provider.invoke_async

    def down_after_two(name: str, params: Any) -> str:
        if len(r.provider.invoked) == 2 and not r.provider.down_until:
            r.provider.down_until = r.clock() + 5  # the platform goes down after two invokes
        return invoke(name, params)

    r.provider.invoke_async = down_after_two
    closed = _batched_run(r, batch=CLIENTS)
    assert closed.included == (0, 1, 2, 3) and closed.failed == () and closed.retries == 0
    # client 2's invokes probe the platform until it is back; client 3, behind it, is sent once, after
    assert r.provider.calls.count(("invoke", 3)) == 1
    assert r.provider.calls.index(("invoke", 3)) > max(
        i for i, c in enumerate(r.provider.calls) if c == ("invoke", 2)
    )
    assert r.statuses(2)[-1] == LedgerStatus.SUCCESS
    assert set(r.statuses(2)[:-1]) == {LedgerStatus.UNAVAILABLE}
    assert r.statuses(3) == [LedgerStatus.SUCCESS]  # its withdrawn entries left no trace


class KeeperDied(Exception):
    """Raised by the fake sleep to stop a driver mid-round, as a killed keeper stops."""


def test_a_resumed_driver_adopts_running_attempts_and_invokes_nobody_twice(rig: Any) -> None:
    r = rig({c: [Attempt(duration_s=5.0 * (c + 1))] for c in range(CLIENTS)})
    r.session.rounds.open(0, list(range(CLIENTS)))
    with pytest.raises(KeeperDied):  # at 7 s client 0 has delivered, the others are running
        r.dying_driver(r.clock() + 7).run(0)
    assert r.session.rounds.get(0)["status"] == "open"

    closed = r.driver().run(0)
    assert closed.included == (0, 1, 2, 3)
    assert sorted(r.provider.invoked) == [(c, 1) for c in range(CLIENTS)]  # each invoked exactly once
    assert all(r.statuses(c) == [LedgerStatus.SUCCESS] for c in range(CLIENTS))


# ---------------------------------------------------------------------- federated evaluation
def test_an_evaluation_invokes_the_chosen_clients_with_the_evaluate_task_and_closes_on_their_results(
    rig: Any,
) -> None:
    r = rig()
    closed = r.evaluate([1, 3])
    assert closed.selected == closed.included == (1, 3) and closed.failed == closed.late == ()
    assert r.provider.evaluated == [
        (1, 2),
        (3, 2),
    ]  # attempt numbers follow the fit's: the ledger key stays unique
    assert r.session.evaluations.clients(0) == {1, 3}
    assert r.statuses(1, Task.EVALUATE) == [LedgerStatus.SUCCESS] and r.statuses(1) == [LedgerStatus.SUCCESS]
    phase = r.session.rounds.phase(0, Task.EVALUATE)
    assert phase["status"] == "closed" and phase["included"] == [1, 3]
    assert r.session.rounds.get(0)["included"] == [0, 1, 2, 3]  # the fit's closing set is untouched
    assert r.driver().evaluate(0) == ClosedRound.of(phase)  # a closed evaluation is read back, nobody invoked
    assert len(r.provider.evaluated) == 2


def test_a_failed_evaluation_is_retried_then_passed_on_as_a_failure_without_failing_the_session(
    rig: Any,
) -> None:
    r = rig(max_retries=1)
    r.provider.evaluate_script = {2: [Attempt(ok=False)]}
    closed = r.evaluate([0, 2])  # no quorum: the evaluation closes whatever fails
    assert closed.included == (0,) and closed.failed == (2,)
    assert r.statuses(2, Task.EVALUATE) == [LedgerStatus.APPLICATION_ERROR] * 2  # first try and one retry
    assert r.session.rounds.phase(0, Task.EVALUATE)["failed"] == [2]


def test_a_slow_evaluation_closes_at_the_deadline_with_the_client_late(rig: Any) -> None:
    r = rig()
    r.provider.evaluate_script = {3: [Attempt(duration_s=40)]}
    started = r.clock()
    r.run()
    r.session.rounds.open_evaluate(0, [0, 3])
    closed = r.driver().evaluate(0)
    assert closed.included == (0,) and closed.late == (3,)
    assert r.clock() - started < 40


def test_a_revived_evaluation_whose_first_attempt_also_delivers_counts_once(rig: Any) -> None:
    r = rig(round_deadline_s=200.0)
    # The first attempt runs past activation_timeout_s, so the driver revives the evaluation.
    r.provider.evaluate_script = {2: [Attempt(duration_s=70), Attempt(duration_s=1)]}
    closed = r.evaluate([2])
    assert closed.included == (2,)
    assert r.statuses(2, Task.EVALUATE) == [LedgerStatus.TIMED_OUT, LedgerStatus.SUCCESS]
    r.clock.sleep(30)
    r.provider.finish_due()  # the timed-out first attempt delivers too, late
    assert [d["client"] for d in r.session.evaluations.results(0, [2])] == [2]  # one evaluation per client
    assert r.session.evaluations.results(0, [2])[0]["attempt"] == 3  # the revived one's (fit was attempt 1)


def test_a_resumed_driver_adopts_running_evaluations_and_invokes_nobody_twice(rig: Any) -> None:
    r = rig()
    r.provider.evaluate_script = {c: [Attempt(duration_s=5.0 * (c + 1))] for c in range(CLIENTS)}
    r.run()
    r.session.rounds.open_evaluate(0, [0, 1, 2])
    with pytest.raises(KeeperDied):
        r.dying_driver(r.clock() + 7).evaluate(0)
    assert r.session.rounds.phase(0, Task.EVALUATE)["status"] == "open"
    closed = r.driver().evaluate(0)
    assert closed.included == (0, 1, 2)
    assert sorted(r.provider.evaluated) == [(0, 2), (1, 2), (2, 2)]  # each evaluated exactly once
