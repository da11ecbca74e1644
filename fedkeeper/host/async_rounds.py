"""Async mode's activation stream (FedBuff): clients re-invoked with the newest model, no barrier.

:class:`AsyncDriver` keeps up to ``max_in_flight`` client activations running. Each is a
*dispatch*: a session-wide number that keys its ledger entries and its update (the update's
``round``), so a revived activation of the same dispatch finds its update stored and stores
nothing twice; the dispatch's params carry the model ``version`` it trains on. A client whose
update is stored is ready again at once; a failed one is retried after the backoff (at most
``max_retries`` failures in a row, then it is given up), an outage costs no retry.

What counts is in the store: updates are claimed into a version's buffer atomically
(:meth:`~fedkeeper.function.store.updates.Updates.claim`), and :meth:`AsyncDriver.restore` picks the
open activations up from the ledger, so a keeper that died mid-stream goes on where it stopped.
The keeper (:mod:`fedkeeper.host.keeper`) calls :meth:`AsyncDriver.pump` until a buffer is full,
then aggregates it into the next version, and goes on calling it (on the version aggregated from)
while the aggregator runs: the stream never waits for a version. The driver is used from the
keeper's thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedkeeper.function.catalog import INVOKER_FUNCTION
from fedkeeper.function.errors import PlatformUnavailable, ProviderError, Unavailable
from fedkeeper.function.invoke.base import ActivationRecord
from fedkeeper.function.store.statuses import UpdateStatus
from fedkeeper.host.ledger import LedgerEntry, LedgerStatus
from fedkeeper.host.rounds import (
    RECORD_GRACE_S,
    STOPPED,
    Driver,
    DriverContext,
    SessionFailed,
    fetch_records,
)


@dataclass
class Flight:
    """One dispatch running: its ledger entry, when it was sent, when its update was seen stored."""

    entry: LedgerEntry
    sent: float
    delivered_at: float | None = None
    rejected: bool = False  # what it stored failed the update checks


@dataclass
class StreamCounts:
    """What happened since the last version (rounds.csv's figures for the next one)."""

    dispatched: int = 0
    retries: int = 0
    failed: int = 0
    cold_starts: int = 0


@dataclass
class StreamState:
    flights: dict[int, Flight] = field(default_factory=dict)  # client -> its running dispatch
    ready_at: dict[int, float] = field(default_factory=dict)  # idle clients -> when they may go
    failures: dict[int, int] = field(default_factory=dict)  # failures in a row
    given_up: set[int] = field(default_factory=set)
    next_dispatch: int = 0
    counts: StreamCounts = field(default_factory=StreamCounts)


class AsyncDriver(Driver):
    """Keeps one session's clients training on the newest version, ``max_in_flight`` at a time,
    acting through the session's :class:`~fedkeeper.host.rounds.DriverContext`."""

    def __init__(self, context: DriverContext) -> None:
        super().__init__(context)
        self.state = StreamState()
        plan = self.plan
        via_invoker = [p.client for p in plan.placements if plan.invoked(p.client)[1] == INVOKER_FUNCTION]
        if via_invoker:
            raise SessionFailed(
                f"server_config.mode: async needs clients that reach the store themselves; clients "
                f"{via_invoker} run behind the invoker"
            )

    @property
    def in_flight(self) -> int:
        return len(self.state.flights)

    def restore(self) -> None:
        """The stream's state from the ledger: open activations are polled again, every other
        client is ready now."""
        now, wall = self.clock(), datetime.now(UTC)
        state = self.state = StreamState(next_dispatch=self.ledger.last_client_round() + 1)
        for entry in self.ledger.open_client_entries():
            sent = now - max((wall - entry.submitted_at).total_seconds(), 0.0)
            state.flights[entry.client] = Flight(entry, sent)
        for placement in self.plan.placements:
            if placement.client not in state.flights:
                state.ready_at[placement.client] = now

    # ------------------------------------------------------------------ one turn
    def pump(self, version: int, hold_at: int | None = None) -> None:
        """Poll what runs, then dispatch ready clients on ``version`` up to ``max_in_flight``.

        ``hold_at``: ready clients wait while this many updates are stored and unclaimed. The
        keeper passes ``buffer_size`` while the next version is being made from ``version``: once
        the buffer after it is full in the store, an update trained on ``version`` now could go
        into a later version only, staler than one trained on the new version moments later (a
        slow aggregator would otherwise pile up stale updates from fast clients).

        Raises :class:`SessionFailed` when every client is given up.
        """
        self.watch.check()
        self._poll()
        now = self.clock()
        ready = sorted(self.state.ready_at.items(), key=lambda item: (item[1], item[0]))
        held = hold_at is not None and any(due <= now for _, due in ready)
        if held and self.session.updates.unclaimed() >= (hold_at or 0):
            ready = []
        for client, due in ready:
            if self.in_flight >= self.server.in_flight_limit:
                break
            if due <= now:
                del self.state.ready_at[client]
                self._dispatch(client, version)
        if not self.state.flights and not self.state.ready_at:
            raise SessionFailed(
                f"async: every client is given up ({self.server.max_retries + 1} failed attempts in a row each); "
                f"once the cause is fixed: fedkeeper resume {self.session.id}"
            )

    def take_counts(self) -> StreamCounts:
        """The counts since the last call (one version's)."""
        counts, self.state.counts = self.state.counts, StreamCounts()
        return counts

    def stop(self) -> None:
        """The session stopped: what still runs is booked as cut off (its update is never claimed)."""
        for flight in self.state.flights.values():
            self.ledger.settle(flight.entry, LedgerStatus.TIMED_OUT, error=STOPPED)
        self.state.flights.clear()

    # ------------------------------------------------------------------ attempts
    def _dispatch(self, client: int, version: int) -> None:
        key, function = self.plan.invoked(client)
        provider = self.providers[key]
        dispatch = self.state.next_dispatch
        entry = self.ledger.new_entry(dispatch, function, client, 1, provider.platform, provider.cluster)
        while not self.ledger.submit(entry):  # a number used by a keeper that died: take the next
            entry.round = dispatch = dispatch + 1
        self.state.next_dispatch = dispatch + 1
        params: dict[str, Any] = {
            "session": self.session.id,
            "round": dispatch,
            "client": client,
            "attempt": 1,
            "version": version,
        }
        try:
            activation_id = provider.invoke_async(function, params)
        except PlatformUnavailable as exc:
            self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=str(exc))
            self._wait_out(client, exc)
            return
        except ProviderError as exc:
            self.ledger.settle(entry, LedgerStatus.NOT_STARTED, error=str(exc))
            self._failed(client, str(exc))
            return
        self.watch.back(provider.where)
        self.ledger.set_activation_id(entry, activation_id)
        self.state.flights[client] = Flight(entry, self.clock())
        self.state.counts.dispatched += 1
        self.watch.reporter.event(
            "dispatched", round=dispatch, client=client, version=version, function=function,
            cluster=f"{provider.platform}/{provider.cluster}", activation_id=activation_id,
        )  # fmt: skip

    def _poll(self) -> None:
        """One batch of record fetches per provider and function, then one read of what is stored."""
        flights = self.state.flights
        for flight in list(flights.values()):
            entry = flight.entry
            if entry.activation_id is None:  # submitted by a keeper that died before invoking
                self._land(entry.client)
                self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error="keeper stopped before invoking")
                self.state.ready_at[entry.client] = self.clock()
        records = fetch_records([f.entry for f in flights.values()], self.providers, self.watch, self._note)
        stored = self.session.updates.delivered([f.entry.round for f in flights.values()])
        now = self.clock()
        for client, flight in list(flights.items()):
            entry = flight.entry
            record = records.get(entry.activation_id or "")
            if (entry.round, client) in stored and flight.delivered_at is None:
                flight.delivered_at = now
                flight.rejected = stored[(entry.round, client)] == UpdateStatus.REJECTED
            if record is not None and record.status.done:
                self._land(client)
                self._settle(flight, record)
            elif flight.delivered_at is not None and now - flight.delivered_at > RECORD_GRACE_S:
                self._land(client)
                self.ledger.settle(
                    entry, LedgerStatus.RECORD_LOST, error="update stored, activation record not seen"
                )
                self._delivered(flight)
            elif now - flight.sent > self.server.activation_timeout_s and not self.outages.is_down(
                f"{entry.platform}/{entry.cluster}"
            ):
                self._land(client)
                self.ledger.settle(
                    entry, LedgerStatus.TIMED_OUT, error=f"no record after {now - flight.sent:.0f}s"
                )
                self._failed(client, "timed out")

    def _settle(self, flight: Flight, record: ActivationRecord) -> None:
        entry, client = flight.entry, flight.entry.client
        self.state.counts.cold_starts += int(bool(record.init_ms))
        if flight.delivered_at is not None:  # stored: it counts, whatever the record says after
            self.ledger.settle(entry, LedgerStatus.of(record), record, record.error)
            self._delivered(flight)
            return
        outage = (
            Unavailable.in_result(record.result, f"{entry.platform}/{entry.cluster}")
            if not record.ok
            else None
        )
        if outage is not None:
            self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, record, record.error)
            self._wait_out(client, outage)
            return
        error = record.error or "activation succeeded but stored no update"
        status = LedgerStatus.of(record) if not record.ok else LedgerStatus.APPLICATION_ERROR
        self.ledger.settle(entry, status, record, error)
        self._failed(client, error)

    def _land(self, client: int) -> None:
        del self.state.flights[client]

    def _delivered(self, flight: Flight) -> None:
        """A stored update: its client goes again at once; a rejected one is a failure in a row
        (a client whose updates keep failing their checks is given up)."""
        if flight.rejected:
            self._failed(flight.entry.client, "its update was rejected (the update's reason says why)")
        else:
            self._ready(flight.entry.client)

    def _ready(self, client: int) -> None:
        """``client`` delivered: it trains again on the newest version at once."""
        self.state.failures[client] = 0
        self.state.ready_at[client] = self.clock()

    def _wait_out(self, client: int, error: Unavailable) -> None:
        """Retry ``client`` when ``error.what`` is next probed, at no cost to its retries."""
        outage = self.outages.failed(error)
        self.state.ready_at[client] = outage.next_probe
        self.watch.waiting(outage)

    def _failed(self, client: int, reason: str) -> None:
        failures = self.state.failures[client] = self.state.failures.get(client, 0) + 1
        self.state.counts.failed += 1
        if failures > self.server.max_retries:
            self.state.given_up.add(client)
            self._note(f"async: client {client} given up after {failures} failures in a row ({reason[:120]})")
            return
        self.state.counts.retries += 1
        delay = self.retry.delay(failures)
        self.state.ready_at[client] = self.clock() + delay
        self.watch.reporter.event("activation_failed", client=client, reason=reason, retry_in_s=delay)

    def _note(self, message: str) -> None:
        self.watch.reporter.event("note", message=message)
        self.watch.reporter.say(message)
