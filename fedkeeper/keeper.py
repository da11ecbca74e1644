"""The keeper: drives a session's rounds over the fabric.

Each round: select clients, invoke them asynchronously and record every activation in the
ledger, poll the records in batches, re-invoke failures with bounded backed-off retries, close
on completion or on quorum + deadline, aggregate, then advance the session in MongoDB *before*
the next round starts. All state is in the store, so :meth:`Keeper.resume` can continue after
the keeper process dies at any line.
"""

from __future__ import annotations

import math
import secrets
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import tenacity

from fedkeeper.config import Config
from fedkeeper.errors import FedkeeperError, ProviderError
from fedkeeper.ledger import NOT_STARTED, SERVER, TIMED_OUT, Ledger, LedgerEntry
from fedkeeper.placement import Route, place_clients, route_for
from fedkeeper.providers.base import ActivationRecord, Provider
from fedkeeper.reporting import Reporter, Stopwatch
from fedkeeper.store.db import Store
from fedkeeper.strategies.selection import select_clients

INIT, CLIENT, INVOKER, AGGREGATOR = (
    "fl_server_init",
    "fl_client",
    "fl_invoker_weights_update",
    "fl_server_aggregator",
)
RECORD_GRACE_S = 3.0
MIN_POLL_S = 0.05
RECORD_LOST = "record lost"  # the update is stored but the platform never showed the activation's record


class SessionFailed(FedkeeperError):
    """The session cannot go on (quorum impossible, managing function failing past its retries)."""


def new_session_id() -> str:
    return f"s-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def backoff_s(attempt: int, base_s: float, cap_s: float = 60.0) -> float:
    """Delay before attempt ``attempt + 1``: tenacity's exponential wait with jitter."""
    wait = tenacity.wait_exponential_jitter(multiplier=base_s, max=cap_s, jitter=base_s / 2)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait(state)) if base_s > 0 else 0.0


@dataclass
class RoundState:
    """The keeper's view of one open round (rebuilt from the store on resume)."""

    number: int
    selected: list[int]
    started: float
    done: set[int] = field(default_factory=set)
    pending: dict[int, LedgerEntry] = field(default_factory=dict)
    retry_at: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    given_up: set[int] = field(default_factory=set)
    retries: int = 0


class Keeper:
    """Runs sessions of one configuration.

    Parameters
    ----------
    config
        The validated configuration (its ``federated_learning`` scenario is used).
    store
        Where all state lives.
    providers
        Every configured cluster, keyed by ``(platform, cluster)``.
    clock
        Injected for tests; ``time.monotonic`` otherwise.
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        providers: dict[tuple[str, str], Provider],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.fl = config.fl
        self.server = self.fl.server_config
        self.store = store
        self.ledger = Ledger(store)
        self.providers = providers
        self.clock = clock
        self.server_provider = providers[("openwhisk", self.server.cluster)]
        self.placements = {p.client: p for p in place_clients(config)}
        self.reporter: Reporter | None = None
        self.session_id = ""

    # ------------------------------------------------------------------ session lifecycle
    def start(self) -> str:
        """Create a session, initialise it, and train it to a stop rule. Returns its id."""
        self.session_id = new_session_id()
        scenario = self.fl.model_dump(mode="json", exclude={"mongo_config", "functions"})
        self.store.create_session(
            {
                "_id": self.session_id,
                "config_digest": self.config.digest(),
                "scenario": scenario,
                "clients": [p.as_doc() for p in self.placements.values()],
            }
        )
        return self._run()

    def resume(self, session_id: str) -> str:
        """Continue a session whose keeper stopped or died."""
        session = self.store.session(session_id)
        if session["phase"] in ("Succeeded", "Failed"):
            raise SessionFailed(f"session {session_id} already finished ({session['phase']})")
        if session["config_digest"] != self.config.digest():
            raise SessionFailed(
                f"session {session_id} was started with another configuration; resume it with the same config"
            )
        self.session_id = session_id
        return self._run(resumed=True)

    def _run(self, resumed: bool = False) -> str:
        self.reporter = Reporter(self.config.logs_dir, self.session_id)
        reporter = self.reporter
        reporter.event("session_resumed" if resumed else "session_started", session=self.session_id)
        reporter.say(
            f"session {self.session_id}: {'resuming' if resumed else 'starting'} — "
            f"{len(self.placements)} clients, {self.server.num_clients_per_round} per round, "
            f"up to {self.server.max_rounds} rounds, target accuracy {self.server.target_accuracy}"
        )
        try:
            if not self.store.initialised(self.session_id):
                self._initialise()
            self.store.set_phase(self.session_id, "Running", "RoundsStarted")
            while True:
                session = self.store.session(self.session_id)
                round_number = int(session["round"])
                metrics = self._run_round(round_number)
                self.store.advance_round(self.session_id, round_number + 1)
                self._write_logs()
                stop = self._stop_reason(round_number, metrics, session)
                if stop:
                    self.store.set_phase(self.session_id, "Succeeded", stop[0], stop[1])
                    reporter.event("session_succeeded", reason=stop[0], message=stop[1])
                    reporter.say(f"session {self.session_id} succeeded: {stop[1]}")
                    return self.session_id
        except SessionFailed as exc:
            self.store.set_phase(self.session_id, "Failed", type(exc).__name__, str(exc))
            reporter.event("session_failed", message=str(exc))
            raise
        finally:
            self._write_logs()
            reporter.say(f"logs: {reporter.dir}")
            reporter.close()

    def _stop_reason(
        self, round_number: int, metrics: dict[str, Any], session: dict[str, Any]
    ) -> tuple[str, str] | None:
        if metrics["accuracy"] >= self.server.target_accuracy:
            return "TargetAccuracyReached", (
                f"accuracy {metrics['accuracy']:.4f} reached the target {self.server.target_accuracy} "
                f"after {round_number + 1} rounds"
            )
        if round_number + 1 >= self.server.max_rounds:
            return (
                "MaxRoundsReached",
                f"{self.server.max_rounds} rounds done, accuracy {metrics['accuracy']:.4f}",
            )
        if self.server.max_time_s is not None:
            elapsed = (datetime.now(UTC) - session["start_time"]).total_seconds()
            if elapsed >= self.server.max_time_s:
                return "MaxTimeReached", f"{elapsed:.0f}s past max_time_s, accuracy {metrics['accuracy']:.4f}"
        return None

    def _write_logs(self) -> None:
        assert self.reporter is not None
        self.reporter.write_rounds(self.store.rounds(self.session_id))
        self.reporter.write_activations(list(self.ledger.entries(self.session_id)))

    # ------------------------------------------------------------------ managing functions
    def _call_server(self, function: str, round_number: int, params: dict[str, Any]) -> dict[str, Any]:
        """Invoke a managing function and wait, retrying with backoff; every attempt is in the ledger."""
        timeout_s = float(self.fl.functions.settings(function).timeout) + 30
        attempt_box = [self.ledger.attempts(self.session_id, round_number, function, SERVER)]

        def once() -> dict[str, Any]:
            attempt_box[0] += 1
            entry = self._entry(round_number, function, SERVER, attempt_box[0], self.server_provider)
            self.ledger.submit(entry)
            try:
                record = self.server_provider.invoke_sync(function, params, timeout_s)
            except ProviderError as exc:
                self.ledger.settle(entry, NOT_STARTED, error=str(exc))
                raise
            self.ledger.set_activation_id(entry, record.activation_id)
            self.ledger.settle(entry, record.status.value, record, record.error)
            if not record.ok:
                raise ProviderError(f"{function} ({record.activation_id}): {record.error}")
            return record.result or {}

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.server.max_retries + 1),
            wait=tenacity.wait_exponential_jitter(multiplier=self.server.retry_backoff_s, max=30),
            retry=tenacity.retry_if_exception_type(ProviderError),
            before_sleep=lambda state: self._note(
                f"{function} failed ({state.outcome.exception() if state.outcome else '?'}); retrying"
            ),
            reraise=True,
        )
        try:
            return retrying(once)
        except ProviderError as exc:
            raise SessionFailed(f"{function} failed after {attempt_box[0]} attempts: {exc}") from None

    def _initialise(self) -> None:
        result = self._call_server(INIT, 0, {"session": self.session_id})
        assert self.reporter is not None
        self.reporter.event("initialised", **result)
        sizes = result.get("partition_sizes", [])
        self.reporter.say(
            f"initialised: {result.get('num_params')} parameters, partitions of "
            f"{min(sizes, default=0)}..{max(sizes, default=0)} examples, {result.get('test_examples')} test examples"
        )

    # ------------------------------------------------------------------ one round
    def _run_round(self, round_number: int) -> dict[str, Any]:
        assert self.reporter is not None
        candidates = sorted(self.placements)
        selected = self.store.open_round(
            self.session_id,
            round_number,
            select_clients(
                candidates,
                self.server.num_clients_per_round,
                round_number,
                self.server.seed,
                self.server.selection,
            ),
        )
        doc = self.store.round(self.session_id, round_number)
        if doc.get("metrics"):  # aggregated before a resumed keeper got here
            return dict(doc["metrics"])
        watch = Stopwatch()
        if doc["status"] == "open":
            state = self._restore_round(doc)
            self.reporter.event("round_opened", round=round_number, selected=selected)
            self._drive(state, watch)
            included = self.store.close_round(self.session_id, round_number, sorted(state.done))
            self.reporter.event(
                "round_closed", round=round_number, included=included, failed=sorted(state.given_up)
            )
            retries, failed = state.retries, len(state.given_up)
        else:
            included = list(doc["included"])
            retries, failed = 0, 0
        metrics = self._call_server(
            AGGREGATOR, round_number, {"session": self.session_id, "round": round_number, "clients": included}
        )
        extra = {"retries": retries, "failed_clients": failed, "duration_s": watch.elapsed}
        self.store.add_round_metrics(self.session_id, round_number, extra)
        metrics.update(extra)
        self.reporter.event("round_aggregated", **metrics)
        self.reporter.say(
            f"round {round_number + 1}/{self.server.max_rounds}: accuracy {metrics['accuracy']:.4f} "
            f"loss {metrics['loss']:.4f} · {len(metrics.get('accepted', []))}/{len(selected)} updates"
            f" · {retries} retries · {watch.elapsed:.1f}s"
        )
        return metrics

    def _restore_round(self, doc: dict[str, Any]) -> RoundState:
        """Rebuild an open round's state from the store: stored updates and activations still open."""
        round_number, selected = int(doc["round"]), [int(c) for c in doc["selected"]]
        started_at: datetime = doc["started_at"]
        age = (datetime.now(UTC) - started_at).total_seconds()
        state = RoundState(round_number, selected, started=self.clock() - max(age, 0.0))
        state.done = self.store.update_clients(self.session_id, round_number) & set(selected)
        for entry in self.ledger.open_entries(self.session_id, round_number):
            if entry.client in selected and entry.function in (CLIENT, INVOKER):
                state.pending[entry.client] = entry
        for client in selected:
            state.attempts[client] = self.ledger.attempts(
                self.session_id, round_number, self._route(client)[1], client
            )
            if client not in state.done and client not in state.pending:
                state.retry_at[client] = self.clock()
        return state

    def _drive(self, state: RoundState, watch: Stopwatch) -> None:
        """Dispatch, poll and retry until the round may close."""
        assert self.reporter is not None
        quorum = math.ceil(self.server.min_fit_fraction * len(state.selected))
        deadline = state.started + self.server.round_deadline_s
        # Poll fast right after something changed, then back off to poll_interval_s: short
        # activations are seen soon after they end, long ones cost few requests.
        interval, last_seen = MIN_POLL_S, (-1, -1, -1)
        while True:
            now = self.clock()
            for client, due in sorted(state.retry_at.items()):
                if due <= now:
                    del state.retry_at[client]
                    if client not in state.done:
                        self._dispatch(state, client)
            self._poll(state)
            self.reporter.progress(
                state.number,
                len(state.selected),
                len(state.done),
                len(state.given_up),
                state.retries,
                watch.elapsed,
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
                    f"update after {self.server.max_retries} retries each; quorum is {quorum}"
                )
            seen = (len(state.done), len(state.pending), len(state.retry_at))
            interval = MIN_POLL_S if seen != last_seen else min(interval * 1.5, self.server.poll_interval_s)
            last_seen = seen
            time.sleep(interval)

    def _close_open_entries(self, state: RoundState) -> None:
        """Settle what is still open when the round closes: a short last poll, then by the store.

        A record appears just after its action returns, so a finished client's record gets a
        moment to show up before it is booked as lost.
        """
        grace_until = self.clock() + RECORD_GRACE_S
        while state.pending:
            self._poll(state)
            if not any(c in state.done for c in state.pending) or self.clock() >= grace_until:
                break
            time.sleep(min(self.server.poll_interval_s, 0.2))
        for entry in state.pending.values():
            if entry.client in state.done:
                self.ledger.settle(entry, RECORD_LOST, error="update stored, activation record not seen")
            else:
                self.ledger.settle(entry, TIMED_OUT, error="round closed before this activation finished")
        state.pending.clear()

    def _route(self, client: int) -> tuple[Provider, str]:
        """Which provider and function an attempt of ``client`` invokes."""
        placement = self.placements[client]
        provider = self.providers[(placement.platform, placement.cluster)]
        if route_for(provider.capabilities) is Route.DIRECT:
            return provider, CLIENT
        return self.server_provider, INVOKER

    def _dispatch(self, state: RoundState, client: int) -> None:
        attempt = state.attempts.get(client, 0) + 1
        if attempt > self.server.max_retries + 1:
            state.given_up.add(client)
            self._note(f"round {state.number}: client {client} gave no update after {attempt - 1} attempts")
            return
        state.attempts[client] = attempt
        if attempt > 1:
            state.retries += 1
        provider, function = self._route(client)
        params: dict[str, Any] = {
            "session": self.session_id,
            "round": state.number,
            "client": client,
            "attempt": attempt,
        }
        entry = self._entry(state.number, function, client, attempt, provider)
        if function == INVOKER:
            entry.target = self.placements[client].target
            params.update(target=entry.target, timeout_s=self.fl.functions.fl_client.timeout)
        if not self.ledger.submit(entry):  # this attempt number was used by a keeper that died
            state.attempts[client] = self.ledger.attempts(self.session_id, state.number, function, client)
            state.retry_at[client] = self.clock()
            return
        try:
            activation_id = provider.invoke_async(function, params)
        except ProviderError as exc:
            self.ledger.settle(entry, NOT_STARTED, error=str(exc))
            self._schedule_retry(state, client, str(exc))
            return
        self.ledger.set_activation_id(entry, activation_id)
        state.pending[client] = entry
        assert self.reporter is not None
        self.reporter.event(
            "dispatched", round=state.number, client=client, attempt=attempt, function=function,
            cluster=f"{provider.platform}/{provider.cluster}", activation_id=activation_id,
        )  # fmt: skip

    def _poll(self, state: RoundState) -> None:
        """Fetch the records of every open activation, one batch per provider and function.

        Then read which updates are stored, once: an update can be stored before its record is
        visible (or its record may be lost), so the client counts as done from the store; its
        entry stays open until its record comes or the round closes.
        """
        groups: dict[tuple[str, str, str], list[LedgerEntry]] = defaultdict(list)
        records: dict[str, ActivationRecord] = {}
        for client, entry in list(state.pending.items()):
            if entry.activation_id is None:  # submitted by a keeper that died before invoking
                state.pending.pop(client)
                self.ledger.settle(entry, NOT_STARTED, error="keeper stopped before invoking")
                self._schedule_retry(state, client, "never invoked")
                continue
            groups[(entry.platform, entry.cluster, entry.function)].append(entry)
        for (platform, cluster, function), entries in groups.items():
            provider = self.providers[(platform, cluster)]
            since = min(int(e.submitted_at.timestamp() * 1000) for e in entries) - 60_000
            try:
                records.update(
                    provider.fetch(function, [e.activation_id for e in entries if e.activation_id], since)
                )
            except ProviderError as exc:
                self._note(f"polling {platform}/{cluster} failed: {exc}")
        state.done |= self.store.update_clients(self.session_id, state.number) & set(state.selected)
        for entries in groups.values():
            for entry in entries:
                record = records.get(entry.activation_id or "")
                if record is not None and record.status.done:
                    state.pending.pop(entry.client)
                    self._settle(state, entry, record)
                elif self._age_s(entry) > self.server.activation_timeout_s:
                    state.pending.pop(entry.client)
                    if entry.client in state.done:
                        self.ledger.settle(
                            entry, RECORD_LOST, error="update stored, activation record not seen"
                        )
                        continue
                    self.ledger.settle(entry, TIMED_OUT, error=f"no record after {self._age_s(entry):.0f}s")
                    self._schedule_retry(state, entry.client, "timed out")

    def _settle(self, state: RoundState, entry: LedgerEntry, record: ActivationRecord) -> None:
        """Book a finished activation; it counts only if its update is in the store (``state.done``)."""
        if entry.client in state.done:  # a failure here after an update was stored needs no retry
            self.ledger.settle(entry, record.status.value, record, record.error)
            if record.ok:
                assert self.reporter is not None
                self.reporter.event(
                    "update_stored",
                    round=state.number,
                    client=entry.client,
                    activation_id=entry.activation_id,
                )
            return
        error = record.error or "activation succeeded but stored no update"
        self.ledger.settle(
            entry, record.status.value if not record.ok else "application error", record, error
        )
        self._schedule_retry(state, entry.client, error)

    def _schedule_retry(self, state: RoundState, client: int, reason: str) -> None:
        attempt = state.attempts.get(client, 1)
        delay = backoff_s(attempt, self.server.retry_backoff_s)
        state.retry_at[client] = self.clock() + delay
        assert self.reporter is not None
        self.reporter.event(
            "activation_failed",
            round=state.number,
            client=client,
            attempt=attempt,
            reason=reason,
            retry_in_s=delay,
        )
        if not self.reporter.tty:
            self.reporter.say(
                f"  round {state.number}: client {client} attempt {attempt} failed ({reason[:120]}); retry in {delay:.1f}s"
            )

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _age_s(entry: LedgerEntry) -> float:
        return (datetime.now(UTC) - entry.submitted_at).total_seconds()  # the store is tz-aware

    def _entry(
        self, round_number: int, function: str, client: int, attempt: int, provider: Provider
    ) -> LedgerEntry:
        return LedgerEntry(
            session=self.session_id,
            round=round_number,
            function=function,
            client=client,
            attempt=attempt,
            platform=provider.platform,
            cluster=provider.cluster,
        )

    def _note(self, message: str) -> None:
        if self.reporter is not None:
            self.reporter.event("note", message=message)
            self.reporter.say(message)
