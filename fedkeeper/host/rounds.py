"""The round driver: one round's dispatch, polling, retries and closing.

Given a round whose selection is stored, :meth:`RoundDriver.run` invokes every selected client
(recording each attempt in the ledger first), polls the records in batches, re-invokes failures
with bounded backed-off retries, and closes the round on completion, or on quorum once the
deadline has passed. It returns a :class:`ClosedRound`: who is included, who failed, who was
late. Everything it knows is in the store, so a round left open by a keeper that died is rebuilt
from the store and driven on (:meth:`RoundDriver.restore`).

:meth:`RoundDriver.evaluate` drives a round's federated evaluation the same way (the same
ledger, retries, outages and deadline), with evaluate activations of the same functions and the
stored evaluations as what counts; it has no quorum: failed evaluations are passed on as failures.

Time comes from an injected clock and sleep function, and platforms are reached through the
providers' interface only, so the driver's rules run the same against a fake clock and a fake
provider (``tests/keeper/test_round_driver.py``) as against the fabric.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedkeeper.function.backoff import Backoff
from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION
from fedkeeper.function.config import ServerConfig
from fedkeeper.function.errors import (
    STORE,
    FedkeeperError,
    PlatformUnavailable,
    ProviderError,
    Throttled,
    Unavailable,
)
from fedkeeper.function.invoke.base import ActivationRecord
from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.statuses import RoundStatus, Task
from fedkeeper.host.ledger import Ledger, LedgerEntry, LedgerStatus
from fedkeeper.host.outages import OutageWatch
from fedkeeper.host.plan import Plan
from fedkeeper.host.providers.base import Provider
from fedkeeper.host.reporting import Reporter

RECORD_GRACE_S = 3.0  # a finished activation's record shows up just after its update
MIN_POLL_S = 0.05
# Records are listed from the oldest open attempt's submission on, less this much for the
# platform's clock running behind the keeper's (NTP keeps hosts well within it). Every poll reads
# every record in that window, so a wider one costs a round of a thousand clients dearly.
RECORD_SKEW_S = 10.0
# Clients invoked per pass of the round loop: records are polled between batches, so a thousand
# dispatches never keep the keeper from seeing (and refilling) what finished meanwhile.
DISPATCH_BATCH = 50
STOPPED = "session stopped before this activation finished"


class SessionFailed(FedkeeperError):
    """The session cannot go on (quorum impossible, managing function failing past its retries)."""


@dataclass(frozen=True)
class ClosedRound:
    """A round whose closing set is frozen in the store.

    Attributes
    ----------
    included
        The clients whose updates the round aggregates (frozen once, by the first close).
    failed
        Selected clients with no update and no attempt running at the close: out of retries,
        given up to an outage, or waiting for a retry when the round closed on quorum.
    late
        Selected clients whose attempt was still running when the round closed (an update it
        stores later is not counted; in ``mode: semi_async`` a later round folds it in).
    retries
        Attempts after a client's first, in this keeper's run of the round.
    """

    number: int
    selected: tuple[int, ...]
    included: tuple[int, ...]
    failed: tuple[int, ...] = ()
    late: tuple[int, ...] = ()
    retries: int = 0

    @classmethod
    def of(cls, doc: dict[str, Any], retries: int = 0) -> ClosedRound:
        """The closed round a ``rounds`` document holds (rounds closed before ``failed`` and
        ``late`` were stored count every selected client left out as failed)."""
        selected = tuple(int(c) for c in doc["selected"])
        included = tuple(int(c) for c in doc["included"])
        late = tuple(int(c) for c in doc.get("late", ()))
        left_out = [c for c in selected if c not in included and c not in late]
        failed = tuple(int(c) for c in doc.get("failed", left_out))
        return cls(int(doc["round"]), selected, included, failed, late, retries)


@dataclass
class RoundState:
    """The driver's view of one open round (rebuilt from the store on resume)."""

    number: int
    selected: list[int]
    started: float  # driver clock
    task: Task = Task.FIT
    done: set[int] = field(default_factory=set)
    pending: dict[int, LedgerEntry] = field(default_factory=dict)
    sent: dict[int, float] = field(default_factory=dict)  # driver clock of each pending attempt
    retry_at: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)  # the last attempt number (ledger key)
    charged: dict[int, int] = field(default_factory=dict)  # attempts that count against max_retries
    given_up: set[int] = field(default_factory=set)
    late: set[int] = field(default_factory=set)
    retries: int = 0


@dataclass(frozen=True)
class DriverContext:
    """What a session's drivers (:class:`RoundDriver`, the async stream's
    :class:`~fedkeeper.host.async_rounds.AsyncDriver`) act through; the keeper builds it once.

    Attributes
    ----------
    server
        ``server_config``: quorum (``min_fit_fraction``), deadline, retries, time-outs, polling.
    plan
        Which cluster and function each client's attempt invokes.
    session
        The store, bound to the session.
    ledger
        The session's activation ledger.
    providers
        Every configured cluster, keyed by ``(platform, cluster)``.
    watch
        The session's outages: what is down, and waiting for it aloud.
    retry
        The backoff between a client's attempts.
    clock, sleep
        Monotonic time and waiting; injected so tests run rounds on a fake clock.
    """

    server: ServerConfig
    plan: Plan
    session: SessionStore
    ledger: Ledger
    providers: Mapping[tuple[str, str], Provider]
    watch: OutageWatch
    retry: Backoff
    clock: Callable[[], float]
    sleep: Callable[[float], None]


class Driver:
    """The part every driver shares: its context's pieces, by name."""

    def __init__(self, context: DriverContext) -> None:
        self.context = context
        self.server = context.server
        self.plan = context.plan
        self.session = context.session
        self.ledger = context.ledger
        self.providers = context.providers
        self.watch = context.watch
        self.outages = context.watch.outages
        self.retry = context.retry
        self.clock = context.clock
        self.sleep = context.sleep

    @property
    def reporter(self) -> Reporter:
        return self.watch.reporter


class RoundDriver(Driver):
    """Drives one session's rounds from open to closed.

    Parameters
    ----------
    context
        The session's :class:`DriverContext`.
    budget_since
        Client attempts before this (wall time) do not count against their retries.
    """

    def __init__(self, context: DriverContext, budget_since: datetime | None = None) -> None:
        super().__init__(context)
        self.budget_since = budget_since
        self.client_only = self.plan.client_only()
        self.dispatch_batch = DISPATCH_BATCH  # clients invoked per pass of the round loop
        # Backpressure: a platform's 429 ends the invoke at once, and its number of attempts in
        # flight then is the most this driver keeps there (until the driver is made again).
        self.windows: dict[tuple[str, str], int] = {}
        for provider in self.providers.values():
            provider.retry_throttled = False
        # semi_async: activations still running when their round closed, by (round, client), with
        # when they were sent (driver clock). Polled until their record comes, never retried.
        self.late: dict[tuple[int, int], tuple[LedgerEntry, float]] | None = None

    # ------------------------------------------------------------------ the round
    def run(self, round_number: int) -> ClosedRound:
        """Drive the stored round ``round_number`` until it closes; a closed one is read back.

        Raises :class:`SessionFailed` when too few clients can deliver for the quorum, and
        :class:`~fedkeeper.host.outages.OutageTooLong` when an outage lasts past the tolerance.
        """
        return self._run(round_number, Task.FIT)

    def evaluate(self, round_number: int) -> ClosedRound:
        """Drive round ``round_number``'s stored evaluation phase until it closes (read back if closed).

        ``included`` are the clients whose evaluation is stored. It closes when every selected
        client delivered, or at the deadline, or when the rest are out of retries; never on a quorum.
        """
        return self._run(round_number, Task.EVALUATE)

    def _run(self, round_number: int, task: Task) -> ClosedRound:
        rounds = self.session.rounds
        doc = rounds.phase(round_number, task)
        if doc["status"] != RoundStatus.OPEN:
            return ClosedRound.of(doc)
        state = self.restore(doc, task)
        if self.server.mode == "semi_async" and self.late is None:
            self._restore_late(round_number)
        prefix = "round" if task is Task.FIT else "evaluation"
        self.reporter.event(f"{prefix}_opened", round=round_number, selected=state.selected)
        self._drive(state)
        included = set(state.done)
        late = state.late - included
        failed = set(state.selected) - included - late
        rounds.close(round_number, sorted(included), sorted(failed), sorted(late), task)
        doc = rounds.phase(round_number, task)  # the first close wins
        closed = ClosedRound.of(doc, retries=state.retries)
        self.reporter.event(
            f"{prefix}_closed", round=round_number, included=list(closed.included),
            failed=list(closed.failed), late=list(closed.late),
        )  # fmt: skip
        return closed

    def restore(self, doc: dict[str, Any], task: Task = Task.FIT) -> RoundState:
        """An open round's (or evaluation's) state from the store: stored results, activations
        still open, budgets."""
        round_number, selected = int(doc["round"]), [int(c) for c in doc["selected"]]
        now, wall = self.clock(), datetime.now(UTC)
        age = (wall - doc["started_at"]).total_seconds()  # the original start keeps its deadline
        state = RoundState(round_number, selected, started=now - max(age, 0.0), task=task)
        state.done = self._delivered(state)
        for entry in self.ledger.open_entries(round_number, task):
            if entry.client in selected and entry.function in (CLIENT_FUNCTION, INVOKER_FUNCTION):
                state.pending[entry.client] = entry
                state.sent[entry.client] = now - max((wall - entry.submitted_at).total_seconds(), 0.0)
        functions = {self.plan.invoked(c)[1] for c in selected}
        budgets = self.ledger.budgets(round_number, functions, self.budget_since, task)
        for client in selected:
            state.attempts[client], state.charged[client] = budgets.get(
                (self.plan.invoked(client)[1], client), (0, 0)
            )
            if client not in state.done and client not in state.pending:
                state.retry_at[client] = now
        return state

    def _restore_late(self, round_number: int) -> None:
        """semi_async: the late activations of earlier rounds, from the ledger (each once)."""
        now, wall = self.clock(), datetime.now(UTC)
        self.late = {}
        with self.ledger.batched():
            for entry in self.ledger.open_client_entries():
                if entry.round >= round_number:
                    continue
                if entry.activation_id is None:  # never invoked: nothing runs, nothing to revive
                    self.ledger.settle(
                        entry, LedgerStatus.UNAVAILABLE, error="keeper stopped before invoking"
                    )
                    continue
                sent = now - max((wall - entry.submitted_at).total_seconds(), 0.0)
                self.late[(entry.round, entry.client)] = (entry, sent)

    def stop(self) -> None:
        """The session stopped: late activations still running are booked as cut off."""
        with self.ledger.batched():
            for entry, _ in (self.late or {}).values():
                self.ledger.settle(entry, LedgerStatus.TIMED_OUT, error=STOPPED)
        self.late = {}

    def _delivered(self, state: RoundState) -> set[int]:
        """Selected clients whose result (update, or evaluation) is stored (asking only about
        those not yet known to have delivered)."""
        results = self.session.updates if state.task is Task.FIT else self.session.evaluations
        return state.done | results.clients(state.number, among=set(state.selected) - state.done)

    def _drive(self, state: RoundState) -> None:
        """Dispatch, poll and retry until the round may close."""
        # An evaluation has no quorum: what failed is passed to aggregate_evaluate as failures.
        fraction = self.server.min_fit_fraction if state.task is Task.FIT else 0.0
        quorum = math.ceil(fraction * len(state.selected))
        deadline = state.started + self.server.round_deadline_s
        # Poll fast right after something changed, then back off to poll_interval_s: short
        # activations are seen soon after they end, long ones cost few requests. Fast only while
        # at most a batch is in flight (a small round, or a round's end): with more, the platforms
        # have work queued, and each poll reads every record finished since the oldest was sent.
        interval, last_seen = MIN_POLL_S, (-1, -1, -1)
        while True:
            self.watch.check()
            with self.ledger.batched():
                full = self._dispatch_due(state, self.clock())
            self._give_up_on_outages(state, quorum)
            self._poll(state)
            self.reporter.progress(
                state.number,
                len(state.selected),
                len(state.done),
                len(state.given_up),
                state.retries,
                self.clock() - state.started,
            )
            if state.done >= set(state.selected):
                return self._close_open_entries(state)
            if len(state.done) >= quorum and self.clock() >= deadline:
                self._note(
                    f"round {state.number}: deadline passed with quorum ({len(state.done)}/{quorum}); closing"
                )
                return self._close_open_entries(state)
            if not (set(state.pending) - state.done) and not state.retry_at:
                if len(state.done) >= quorum:
                    return self._close_open_entries(state)
                raise SessionFailed(
                    f"round {state.number}: only {len(state.done)} of {len(state.selected)} clients delivered an "
                    f"update after {self.server.max_retries} retries each; quorum is {quorum}; "
                    f"once the cause is fixed: fedkeeper resume {self.session.id}"
                )
            seen = (len(state.done), len(state.pending), len(state.retry_at))
            fast = seen != last_seen and len(state.pending) <= self.dispatch_batch
            interval = MIN_POLL_S if fast else min(interval * 1.5, self.server.poll_interval_s)
            last_seen = seen
            if not full:  # after a full batch more clients may be due: the next one goes out at once
                self.sleep(interval)

    def _dispatch_due(self, state: RoundState, now: float) -> bool:
        """Invoke the next batch of clients due by ``now`` (at most ``dispatch_batch``), as far
        as each cluster's window has room; True when the batch was full (more may be due).

        The batch's ledger entries are written in one write before any of them is invoked, and
        their activation ids in one write after the last invoke: a keeper that dies in between
        leaves entries without an id, which a resumed one books as never invoked and retries (an
        activation that ran all the same stores an update the unique key keeps once).
        """
        batch = self._due(state, now)
        entries = self._submit(state, [e for c in batch if (e := self._new_attempt(state, c)) is not None])
        invoked = self._invoke_all(state, entries)
        self.ledger.set_activation_ids(invoked)
        for entry in invoked:
            state.pending[entry.client] = entry
            self.reporter.event(
                "dispatched", round=state.number, client=entry.client, attempt=entry.attempt,
                function=entry.function, task=state.task.value, cluster=f"{entry.platform}/{entry.cluster}",
                activation_id=entry.activation_id,
            )  # fmt: skip
        return len(batch) >= self.dispatch_batch

    def _due(self, state: RoundState, now: float) -> list[int]:
        """The next clients to invoke: due by ``now``, their platform reachable, their cluster's
        window not full; taken off ``state.retry_at``."""
        in_flight = Counter((e.platform, e.cluster) for e in state.pending.values())
        batch: list[int] = []
        for client, due in sorted(state.retry_at.items()):
            if len(batch) >= self.dispatch_batch:
                break
            key = self.plan.invoked(client)[0]
            if due > now or in_flight[key] >= self.windows.get(key, math.inf):
                continue
            # The client's own platform: a target down behind the invoker is waited for too.
            provider = self._client_provider(client)
            if not self._reachable(provider):  # one probe at a time while it is down
                state.retry_at[client] = self.outages.next_probe(provider.where)
                continue
            del state.retry_at[client]
            if client not in state.done:
                batch.append(client)
                in_flight[key] += 1
        return batch

    def _new_attempt(self, state: RoundState, client: int) -> LedgerEntry | None:
        """The ledger entry of ``client``'s next attempt, charged to its retries; None (and the
        client given up) once it is out of retries."""
        charged = state.charged.get(client, 0)
        if charged > self.server.max_retries:
            state.given_up.add(client)
            self._note(
                f"round {state.number}: client {client} gave no {_result(state)} after {charged} attempts"
            )
            return None
        attempt = state.attempts.get(client, 0) + 1
        state.attempts[client] = attempt
        state.charged[client] = charged + 1  # refunded if an outage stops or loses this attempt
        if charged > 0:
            state.retries += 1
        key, function = self.plan.invoked(client)
        provider = self.providers[key]
        entry = self.ledger.new_entry(
            state.number, function, client, attempt, provider.platform, provider.cluster, state.task
        )
        if function == INVOKER_FUNCTION:
            entry.target = self.plan.placements[client].target
        return entry

    def _take_back(self, state: RoundState, entry: LedgerEntry) -> None:
        """``entry`` is no attempt after all (never invoked, or refused before it started): its
        number is used again and it costs no retry."""
        client = entry.client
        state.attempts[client] = entry.attempt - 1
        state.charged[client] = max(0, state.charged.get(client, 1) - 1)
        if state.charged[client] > 0:
            state.retries -= 1

    def _submit(self, state: RoundState, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        """Record ``entries`` in the ledger (one write); those whose attempt number a keeper that
        died had used are taken back and retried at once with the next free number."""
        recorded = self.ledger.submit_all(entries)
        if len(recorded) < len(entries):
            kept = {id(e) for e in recorded}
            for entry in entries:
                if id(entry) not in kept:
                    self._take_back(state, entry)
                    state.attempts[entry.client] = self.ledger.attempts(
                        state.number, entry.function, entry.client
                    )
                    state.retry_at[entry.client] = self.clock()
        return recorded

    def _invoke_all(self, state: RoundState, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        """Invoke the submitted ``entries`` in order; returns those the platforms accepted (each
        with its ``activation_id``).

        After a 429 the rest of the batch on that cluster is held back (it waits for room in the
        cluster's window); after an outage, the rest on the platform that is down (it waits for
        the next probe). Held-back entries are withdrawn in one write: they were never invoked.
        """
        invoked: list[LedgerEntry] = []
        held: list[tuple[LedgerEntry, float]] = []  # withdrawn, and when to try again
        refused: set[tuple[str, str]] = set()  # clusters that answered 429 in this batch
        down: set[str] = set()  # what was found down in this batch
        for entry in entries:
            key = (entry.platform, entry.cluster)
            provider = self.providers[key]
            wheres = {provider.where, self._client_provider(entry.client).where} & down
            if key in refused:
                held.append((entry, self.clock()))
                continue
            if wheres:
                held.append((entry, max(self.outages.next_probe(w) for w in wheres)))
                continue
            try:
                entry.activation_id = provider.invoke_async(entry.function, self._params(state, entry))
            except Throttled:  # nothing started: wait for room, as neither a failure nor an outage
                refused.add(key)
                held.append((entry, self.clock()))
                running = [*state.pending.values(), *invoked]  # this batch's accepted ones count too
                self.windows[key] = max(1, sum((e.platform, e.cluster) == key for e in running))
                self.reporter.event(
                    "throttled", round=state.number, client=entry.client, window=self.windows[key]
                )
            except PlatformUnavailable as exc:
                down.add(exc.what)
                self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=str(exc))
                self._outage_retry(state, entry.client, exc)
            except ProviderError as exc:
                self.ledger.settle(entry, LedgerStatus.NOT_STARTED, error=str(exc))
                self._schedule_retry(state, entry.client, str(exc))
            else:
                self.watch.back(provider.where)
                state.sent[entry.client] = self.clock()
                invoked.append(entry)
        self.ledger.withdraw_all([entry for entry, _ in held])
        for entry, retry_at in held:
            self._take_back(state, entry)
            state.retry_at[entry.client] = retry_at
        return invoked

    def _params(self, state: RoundState, entry: LedgerEntry) -> dict[str, Any]:
        """What an attempt is invoked with."""
        params: dict[str, Any] = {
            "session": self.session.id,
            "round": state.number,
            "client": entry.client,
            "attempt": entry.attempt,
        }
        if state.task is not Task.FIT:  # a fit call stays what it always was
            params["task"] = state.task.value
        if entry.function == INVOKER_FUNCTION:
            params.update(target=entry.target, timeout_s=self.plan.limits[CLIENT_FUNCTION].timeout)
        return params

    def _reachable(self, provider: Provider) -> bool:
        """False while ``provider``'s platform is down: not yet due for a probe, or its probe failed.

        A platform with a cheap probe (:meth:`Provider.probe`) is probed here; any other is
        probed by the next attempt itself.
        """
        where = provider.where
        if not self.outages.is_down(where):
            return True
        if not self.outages.may_probe(where):
            return False
        try:
            answered = provider.probe(CLIENT_FUNCTION)
        except PlatformUnavailable as exc:
            self.watch.waiting(self.outages.failed(exc))
            return False
        except ProviderError:
            answered = True  # it answered; the attempt will say what is wrong
        if answered:
            self.watch.back(where)
        return True

    def _give_up_on_outages(self, state: RoundState, quorum: int) -> None:
        """Past the tolerance, clients waiting for a client-only platform seen down in this round
        are given up; the round closes by the quorum rule, or the session stops if it cannot."""
        for outage in self.outages.too_long():
            if outage.what not in self.client_only or outage.last_seen < state.started:
                continue  # others stop the session in check(); one not seen this round gets a probe
            waiting = [c for c in state.retry_at if self._client_provider(c).where == outage.what]
            for client in waiting:
                del state.retry_at[client]
                state.given_up.add(client)
                self._note(
                    f"round {state.number}: client {client} given up: {outage.what} down "
                    f"{outage.length_s:.0f} s, past outage_tolerance_s"
                )
            if len(set(state.selected) - state.given_up) < quorum:
                raise self.outages.stop(outage, self.session.id)

    def _close_open_entries(self, state: RoundState) -> None:
        """Settle what is still open when the round closes: a short last poll, then by the store.

        A record appears just after its action returns, so a finished client's record gets a
        moment to show up before it is booked as lost. A client still running is late.
        """
        grace_until = self.clock() + RECORD_GRACE_S
        while state.pending:
            self._poll(state)
            if not any(c in state.done for c in state.pending) or self.clock() >= grace_until:
                break
            self.sleep(min(self.server.poll_interval_s, 0.2))
        with self.ledger.batched():
            for entry in state.pending.values():
                if entry.client in state.done:
                    self.ledger.settle(
                        entry,
                        LedgerStatus.RECORD_LOST,
                        error=f"{_result(state)} stored, activation record not seen",
                    )
                else:
                    state.late.add(entry.client)
                    if self.late is not None and state.task is Task.FIT:  # semi_async: it may still count
                        self.late[(state.number, entry.client)] = (
                            entry,
                            state.sent.get(entry.client, state.started),
                        )
                        continue
                    self.ledger.settle(
                        entry, LedgerStatus.TIMED_OUT, error="round closed before this activation finished"
                    )
        state.pending.clear()

    # ------------------------------------------------------------------ attempts
    def _client_provider(self, client: int) -> Provider:
        """The platform ``client`` runs on (behind the invoker or not)."""
        return self.providers[self.plan.placements[client].key]

    def _poll(self, state: RoundState) -> None:
        """Fetch the records of every open activation, one batch per provider and function.

        Then read which results (updates, or evaluations) are stored, once: one can be stored
        before its record is visible (or its record may be lost), so the client counts as done
        from the store; its entry stays open until its record comes or the round closes.
        """
        polled: list[LedgerEntry] = []
        for client, entry in list(state.pending.items()):
            if entry.activation_id is None:  # submitted by a keeper that died (or lost the store) first
                state.pending.pop(client)
                self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error="keeper stopped before invoking")
                self._refund(state, client)  # not the client's failure
                self._schedule_retry(state, client, "never invoked")
                continue
            polled.append(entry)
        late = [entry for entry, _ in (self.late or {}).values()]
        records = fetch_records(polled + late, self.providers, self.watch, self._note)
        state.done |= self._delivered(state)
        with self.ledger.batched():
            self._settle_polled(state, polled, records)
            self._settle_late(records)

    def _settle_late(self, records: dict[str, ActivationRecord]) -> None:
        """semi_async: book the late activations whose records came (what they stored waits for
        the next round's aggregation), and time out those past ``activation_timeout_s``."""
        late = self.late or {}
        for key, (entry, sent) in list(late.items()):
            record = records.get(entry.activation_id or "")
            age = self.clock() - sent
            if record is not None and record.status.done:
                self.ledger.settle(entry, LedgerStatus.of(record), record, record.error)
            elif age > self.server.activation_timeout_s and not self.outages.is_down(
                f"{entry.platform}/{entry.cluster}"
            ):
                if self.session.updates.has(entry.round, entry.client):
                    error = "update stored, activation record not seen"
                    self.ledger.settle(entry, LedgerStatus.RECORD_LOST, error=error)
                else:
                    error = f"late activation: no record after {age:.0f}s"
                    self.ledger.settle(entry, LedgerStatus.TIMED_OUT, error=error)
            else:
                continue
            del late[key]

    def _settle_polled(
        self, state: RoundState, polled: list[LedgerEntry], records: dict[str, ActivationRecord]
    ) -> None:
        """Settle the polled entries whose records came, and time out those waited for too long."""
        for entry in polled:
            record = records.get(entry.activation_id or "")
            where = f"{entry.platform}/{entry.cluster}"
            age = self.clock() - state.sent.get(entry.client, state.started)
            if record is not None and record.status.done:
                state.pending.pop(entry.client)
                self._settle(state, entry, record)
            elif self.outages.is_down(where):
                continue  # its record may come once the platform is back: no time-out meanwhile
            elif age > self.server.activation_timeout_s:
                state.pending.pop(entry.client)
                if entry.client in state.done:
                    self.ledger.settle(
                        entry, LedgerStatus.RECORD_LOST,
                        error=f"{_result(state)} stored, activation record not seen",
                    )  # fmt: skip
                    continue
                if self.outages.overlapped(where, entry.submitted_at):  # lost in the outage
                    error = f"no record after {age:.0f}s; {where} was down meanwhile"
                    self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=error)
                    self._refund(state, entry.client)
                    state.retry_at[entry.client] = self.clock()
                    continue
                self.ledger.settle(entry, LedgerStatus.TIMED_OUT, error=f"no record after {age:.0f}s")
                self._schedule_retry(state, entry.client, "timed out")

    def _settle(self, state: RoundState, entry: LedgerEntry, record: ActivationRecord) -> None:
        """Book a finished activation; it counts only if its result is in the store (``state.done``)."""
        if entry.client in state.done:  # a failure here after an update was stored needs no retry
            self.ledger.settle(entry, LedgerStatus.of(record), record, record.error)
            if record.ok:
                self.watch.back(entry.target, STORE)
                self.reporter.event(
                    f"{_result(state)}_stored",
                    round=state.number,
                    client=entry.client,
                    activation_id=entry.activation_id,
                )
            return
        where = entry.target or f"{entry.platform}/{entry.cluster}"
        outage = Unavailable.in_result(record.result, where) if not record.ok else None
        if outage is not None:  # the client could not reach the store (or its target platform)
            self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, record, record.error)
            self._outage_retry(state, entry.client, outage)
            return
        error = record.error or f"activation succeeded but stored no {_result(state)}"
        status = LedgerStatus.of(record) if not record.ok else LedgerStatus.APPLICATION_ERROR
        self.ledger.settle(entry, status, record, error)
        self._schedule_retry(state, entry.client, error)

    def _refund(self, state: RoundState, client: int) -> None:
        """An outage stopped or lost this attempt: it does not count against the client's retries."""
        state.charged[client] = max(0, state.charged.get(client, 1) - 1)

    def _outage_retry(self, state: RoundState, client: int, error: Unavailable) -> None:
        """Retry ``client`` when ``error.what`` is next probed, at no cost to its retries."""
        self._refund(state, client)
        outage = self.outages.failed(error)
        state.retry_at[client] = outage.next_probe
        self.watch.waiting(outage)

    def _schedule_retry(self, state: RoundState, client: int, reason: str) -> None:
        attempt = state.attempts.get(client, 1)
        delay = self.retry.delay(max(state.charged.get(client, 1), 1))
        state.retry_at[client] = self.clock() + delay
        self.reporter.event(
            "activation_failed", round=state.number, client=client, attempt=attempt, task=state.task.value,
            reason=reason, retry_in_s=delay,
        )  # fmt: skip
        if not self.reporter.tty:
            doing = "" if state.task is Task.FIT else f" {state.task.value}"
            self.reporter.say(
                f"  round {state.number}: client {client}{doing} attempt {attempt} failed ({reason[:120]}); "
                f"retry in {delay:.1f}s"
            )

    # ------------------------------------------------------------------ helpers
    def _note(self, message: str) -> None:
        self.reporter.event("note", message=message)
        self.reporter.say(message)


def fetch_records(
    entries: Iterable[LedgerEntry],
    providers: Mapping[tuple[str, str], Provider],
    watch: OutageWatch,
    note: Callable[[str], None],
) -> dict[str, ActivationRecord]:
    """The records of ``entries`` (each with an activation id), one batch per provider and function.

    A platform that is down and not due for a probe is skipped; one that fails to answer is noted
    as an outage (or a failed poll) and skipped.
    """
    groups: dict[tuple[str, str, str], list[LedgerEntry]] = defaultdict(list)
    for entry in entries:
        groups[(entry.platform, entry.cluster, entry.function)].append(entry)
    records: dict[str, ActivationRecord] = {}
    for (platform, cluster, function), group in groups.items():
        provider = providers[(platform, cluster)]
        if not watch.outages.may_probe(provider.where):
            continue
        since = min(int(e.submitted_at.timestamp() * 1000) for e in group) - int(RECORD_SKEW_S * 1000)
        try:
            records.update(
                provider.fetch(function, [e.activation_id for e in group if e.activation_id], since)
            )
        except PlatformUnavailable as exc:
            watch.waiting(watch.outages.failed(exc))
            continue
        except ProviderError as exc:
            note(f"polling {platform}/{cluster} failed: {exc}")
            continue
        watch.back(provider.where)
    return records


def _result(state: RoundState) -> str:
    """What a client of ``state`` delivers, in messages."""
    return "update" if state.task is Task.FIT else "evaluation"
