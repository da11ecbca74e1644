"""The keeper: drives a session's rounds over the fabric.

Each round: select clients, invoke them asynchronously and record every activation in the
ledger, poll the records in batches, re-invoke failures with bounded backed-off retries, close
on completion or on quorum + deadline, aggregate, then advance the session in MongoDB *before*
the next round starts. All state is in the store, so :meth:`Keeper.resume` can continue after
the keeper process dies at any line.

An unreachable platform or store is an outage, not a failure: the keeper waits for it (see
:mod:`fedkeeper.host.outages`) without spending anyone's retries, and after a store outage it carries
on from the store exactly as a resumed keeper would.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fedkeeper.function.backoff import retry_policy
from fedkeeper.function.catalog import (
    AGGREGATOR_FUNCTION,
    CLIENT_FUNCTION,
    INVOKER_FUNCTION,
    SERVER_INIT_FUNCTION,
)
from fedkeeper.function.config import Config, fingerprint_difference, fingerprint_json, training_fingerprint
from fedkeeper.function.errors import (
    STORE,
    FedkeeperError,
    PlatformUnavailable,
    ProviderError,
    StoreUnavailable,
    Unavailable,
)
from fedkeeper.function.invoke.base import ActivationRecord
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.retention import prune
from fedkeeper.function.store.statuses import Phase, RoundStatus
from fedkeeper.function.strategies import ClientPool, FitConfig
from fedkeeper.host.ledger import SERVER, Ledger, LedgerEntry, LedgerStatus
from fedkeeper.host.outages import Outage, Outages, OutageTooLong
from fedkeeper.host.plan import Key, Plan
from fedkeeper.host.providers.base import Provider
from fedkeeper.host.reporting import Reporter, Stopwatch

INIT, CLIENT, INVOKER, AGGREGATOR = (
    SERVER_INIT_FUNCTION,
    CLIENT_FUNCTION,
    INVOKER_FUNCTION,
    AGGREGATOR_FUNCTION,
)
RECORD_GRACE_S = 3.0
MIN_POLL_S = 0.05


class SessionFailed(FedkeeperError):
    """The session cannot go on (quorum impossible, managing function failing past its retries)."""


def new_session_id() -> str:
    return f"s-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass
class RoundState:
    """The keeper's view of one open round (rebuilt from the store on resume)."""

    number: int
    selected: list[int]
    started: float
    done: set[int] = field(default_factory=set)
    pending: dict[int, LedgerEntry] = field(default_factory=dict)
    retry_at: dict[int, float] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)  # the last attempt number (ledger key)
    charged: dict[int, int] = field(default_factory=dict)  # attempts that count against max_retries
    given_up: set[int] = field(default_factory=set)
    retries: int = 0


class Keeper:
    """Runs sessions of one configuration.

    Parameters
    ----------
    config
        The validated configuration (its ``federated_learning`` scenario is used).
    plan
        Where each client runs and how it is reached, the server cluster, the functions' limits.
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
        plan: Plan,
        store: Store,
        providers: Mapping[Key, Provider],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.fl = config.fl
        self.server = self.fl.server_config
        self.plan = plan
        self.store = store
        self.providers = providers
        self.clock = clock
        self.server_provider = providers[plan.server]
        self.reporter: Reporter | None = None
        self.session_id = ""
        self._session: SessionStore | None = None
        self._ledger: Ledger | None = None
        # One policy for server_config.retry_backoff_s: client retries, managing-function
        # retries and outage probes.
        self.retry = retry_policy(self.server.retry_backoff_s)
        self.outages = Outages(self.server.outage_tolerance_s, self.retry, clock)
        # Platforms that host only clients: past the tolerance their outage gives up their clients
        # for the round (which may still close on quorum) instead of stopping the session.
        self.client_only = plan.client_only()
        self.budget_since: datetime | None = None  # client attempts before this do not count
        self.store_down = False  # the keeper's own queries cannot reach MongoDB (each would hang 10 s)

    # ------------------------------------------------------------------ session lifecycle
    @property
    def session(self) -> SessionStore:
        """The store, bound to the session being run."""
        assert self._session is not None, "no session: start() or resume() first"
        return self._session

    @property
    def ledger(self) -> Ledger:
        assert self._ledger is not None, "no session: start() or resume() first"
        return self._ledger

    def _bind(self, session_id: str) -> SessionStore:
        self.session_id = session_id
        self._session = self.store.for_session(session_id)
        self._ledger = Ledger(self._session)
        return self._session

    def start(self) -> str:
        """Create a session, initialise it, and train it to a stop rule. Returns its id."""
        scenario = self.fl.model_dump(mode="json", exclude={"mongo_config", "functions"})
        self._bind(new_session_id()).record.create(
            {
                "training_fingerprint": fingerprint_json(self.fl.fingerprint()),
                "scenario": scenario,
                "clients": [p.as_doc() for p in self.plan.placements],
            }
        )
        return self._run()

    def resume(self, session_id: str) -> str:
        """Continue a session whose keeper stopped, died or failed; only a ``Succeeded`` one is final.

        The configuration may differ in credentials, URLs, paths, timeouts, retries and outage
        tolerance, not in what changes the training (:data:`fedkeeper.function.config.TRAINING_FIELDS`).
        """
        record = self.store.for_session(session_id).record
        session = record.get()
        if session["phase"] == Phase.SUCCEEDED:
            raise SessionFailed(f"session {session_id} already finished (Succeeded)")
        # Sessions from before fingerprints were stored: derive it from the scenario they keep.
        stored = (
            json.loads(session["training_fingerprint"])
            if "training_fingerprint" in session
            else training_fingerprint(session.get("scenario") or {})
        )
        differs = fingerprint_difference(stored, json.loads(fingerprint_json(self.fl.fingerprint())))
        if differs:
            raise SessionFailed(
                f"session {session_id} cannot resume with this config: {differs} "
                "(only credentials, URLs, paths, timeouts, retries and outage tolerance may change)"
            )
        self._bind(session_id)
        if session["phase"] == Phase.FAILED:  # the cause is fixed: clients get their retries back
            self.budget_since = record.restart_budgets()
        else:
            self.budget_since = session.get("budget_since")
        return self._run(resumed=True)

    def _run(self, resumed: bool = False) -> str:
        self.reporter = Reporter(self.config.logs_dir, self.session_id)
        reporter = self.reporter
        reporter.event("session_resumed" if resumed else "session_started", session=self.session_id)
        reporter.say(
            f"session {self.session_id}: {'resuming' if resumed else 'starting'} — "
            f"{len(self.plan.placements)} clients, {self.server.num_clients_per_round} per round, "
            f"up to {self.server.max_rounds} rounds, target accuracy {self.server.target_accuracy}"
        )
        try:
            while True:
                try:
                    return self._train()
                except StoreUnavailable as exc:
                    # Everything is in the store: once it is back, go on as a resumed keeper would.
                    self._wait_for_store(exc)
        except (SessionFailed, OutageTooLong) as exc:
            reason = exc.reason if isinstance(exc, OutageTooLong) else type(exc).__name__
            reporter.event("session_failed", reason=reason, message=str(exc))
            if not self.store_down:  # else the phase stays Running, which resume continues all the same
                self.session.record.set_phase(Phase.FAILED, reason, str(exc))
            raise
        finally:
            if self.store_down:
                reporter.say("logs: rounds.csv and activations.csv not refreshed (the store is down)")
            else:
                self._write_logs()
            reporter.say(f"logs: {reporter.dir}")
            reporter.close()

    def _train(self) -> str:
        """Initialise if needed, then run rounds from the store's state to a stop rule."""
        assert self.reporter is not None
        record = self.session.record
        if not record.initialised():
            self._initialise()
        record.set_phase(Phase.RUNNING, "RoundsStarted")
        while True:
            session = record.get()
            round_number = int(session["round"])
            metrics = self._run_round(round_number)
            record.advance_round(round_number + 1)
            self._write_logs()
            stop = self._stop_reason(round_number, metrics, session)
            if stop:
                record.set_phase(Phase.SUCCEEDED, stop[0], stop[1])
                self.reporter.event("session_succeeded", reason=stop[0], message=stop[1])
                self.reporter.say(f"session {self.session_id} succeeded: {stop[1]}")
                return self.session_id

    # ------------------------------------------------------------------ outages
    def _wait_for_store(self, error: StoreUnavailable) -> None:
        """Probe MongoDB with backoff until it answers; raises OutageTooLong past the tolerance."""
        self.store_down = True
        outage = self.outages.failed(error)
        while True:
            self._wait(outage)
            try:
                self.store.ping()
            except StoreUnavailable as again:
                outage = self.outages.failed(again)
                continue
            self.store_down = False
            self._back(error.what)
            return

    def _wait(self, outage: Outage) -> None:
        """Say what the keeper waits for, then sleep until the next probe (or fail past the tolerance)."""
        self._waiting(outage)
        time.sleep(max(0.0, outage.next_probe - self.clock()))

    def _waiting(self, outage: Outage) -> None:
        self.outages.check(self.session_id, spare=self.client_only)
        assert self.reporter is not None
        line = self.outages.waiting(outage)
        self.reporter.event(
            "waiting", what=outage.what, reason=outage.kind, down_s=round(self.clock() - outage.since, 1),
            error=outage.error[:300],
        )  # fmt: skip
        self.reporter.say(line)

    def _back(self, *whats: str | None) -> None:
        """Note that each of ``whats`` answered (an outage of it is over)."""
        for what in whats:
            down_s = self.outages.recovered(what) if what else None
            if down_s is not None and self.reporter is not None:
                self.reporter.event("outage_over", what=what, down_s=round(down_s, 1))
                self.reporter.say(f"{what} is back after {down_s:.0f} s")

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
        self.reporter.write_rounds(self.session.rounds.all())
        self.reporter.write_activations(list(self.ledger.entries()))

    # ------------------------------------------------------------------ managing functions
    def _call_server(self, function: str, round_number: int, params: dict[str, Any]) -> dict[str, Any]:
        """Invoke a managing function and wait, retrying failures with backoff and waiting out
        outages (which cost no retry); every attempt is in the ledger."""
        timeout_s = float(self.plan.limits[function].timeout) + 30
        provider = self.server_provider
        attempt = self.ledger.attempts(round_number, function, SERVER)
        failures = 0
        while True:
            attempt += 1
            entry = self._entry(round_number, function, SERVER, attempt, provider)
            self.ledger.submit(entry)
            try:
                record = provider.invoke_sync(function, params, timeout_s)
            except PlatformUnavailable as exc:
                self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=str(exc))
                self._wait(self.outages.failed(exc))
                continue
            except ProviderError as exc:
                self.ledger.settle(entry, LedgerStatus.NOT_STARTED, error=str(exc))
                error = str(exc)
            else:
                self._back(provider.where)
                self.ledger.set_activation_id(entry, record.activation_id)
                outage = Unavailable.in_result(record.result, provider.where) if not record.ok else None
                if outage is not None:  # the function could not reach the store: wait for it
                    self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, record, record.error)
                    self._wait(self.outages.failed(outage))
                    continue
                self.ledger.settle(entry, LedgerStatus.of(record), record, record.error)
                if record.ok:
                    self._back(STORE)
                    return record.result or {}
                error = f"{function} ({record.activation_id}): {record.error}"
            failures += 1
            if failures > self.server.max_retries:
                raise SessionFailed(f"{function} failed after {failures} attempts: {error}")
            delay = self.retry.delay(failures)
            self._note(f"{function} failed ({error}); retrying in {delay:.1f}s")
            time.sleep(delay)

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
        pool = ClientPool(
            tuple(p.client for p in self.plan.placements),
            self.server.num_clients_per_round,
            self.server.selection,
            self.server.seed,
        )
        # The strategy picks the clients and tells each what to do; the round keeps it for them.
        fit = self.server.strategy.build().configure_fit(
            round_number, pool, FitConfig.from_model(self.fl.model_params)
        )
        rounds = self.session.rounds
        selected = rounds.open(
            round_number,
            [ins.client for ins in fit],
            {ins.client: ins.config.to_json() for ins in fit},
        )
        doc = rounds.get(round_number)
        if doc.get("metrics"):  # aggregated before a resumed keeper got here
            return dict(doc["metrics"])
        watch = Stopwatch()
        if doc["status"] == RoundStatus.OPEN:
            state = self._restore_round(doc)
            self.reporter.event("round_opened", round=round_number, selected=selected)
            self._drive(state, watch)
            included = rounds.close(round_number, sorted(state.done))
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
        rounds.add_metrics(round_number, extra)
        pruned = prune(self.session, round_number, self.server.keep_updates)
        if pruned.updates or pruned.weights:
            self.reporter.event("pruned", round=round_number, updates=pruned.updates, weights=pruned.weights)
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
        state.done = self.session.updates.clients(round_number) & set(selected)
        for entry in self.ledger.open_entries(round_number):
            if entry.client in selected and entry.function in (CLIENT, INVOKER):
                state.pending[entry.client] = entry
        for client in selected:
            function = self.plan.invoked(client)[1]
            state.attempts[client] = self.ledger.attempts(round_number, function, client)
            state.charged[client] = self.ledger.charged_attempts(
                round_number, function, client, self.budget_since
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
            self.outages.check(self.session_id, spare=self.client_only)
            now = self.clock()
            for client, due in sorted(state.retry_at.items()):
                if due <= now:
                    # The client's own platform: a target down behind the invoker is waited for too.
                    provider = self._client_provider(client)
                    if not self._reachable(provider):  # one probe at a time while it is down
                        state.retry_at[client] = self.outages.next_probe(provider.where)
                        continue
                    del state.retry_at[client]
                    if client not in state.done:
                        self._dispatch(state, client)
            self._give_up_on_outages(state, quorum)
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
                    f"update after {self.server.max_retries} retries each; quorum is {quorum}; "
                    f"once the cause is fixed: fedkeeper resume {self.session_id}"
                )
            seen = (len(state.done), len(state.pending), len(state.retry_at))
            interval = MIN_POLL_S if seen != last_seen else min(interval * 1.5, self.server.poll_interval_s)
            last_seen = seen
            time.sleep(interval)

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
            answered = provider.probe(CLIENT)
        except PlatformUnavailable as exc:
            self._waiting(self.outages.failed(exc))
            return False
        except ProviderError:
            answered = True  # it answered; the attempt will say what is wrong
        if answered:
            self._back(where)
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
                raise self.outages.stop(outage, self.session_id)

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
                self.ledger.settle(
                    entry, LedgerStatus.RECORD_LOST, error="update stored, activation record not seen"
                )
            else:
                self.ledger.settle(
                    entry, LedgerStatus.TIMED_OUT, error="round closed before this activation finished"
                )
        state.pending.clear()

    def _client_provider(self, client: int) -> Provider:
        """The platform ``client`` runs on (behind the invoker or not)."""
        return self.providers[self.plan.placements[client].key]

    def _dispatch(self, state: RoundState, client: int) -> None:
        charged = state.charged.get(client, 0)
        if charged > self.server.max_retries:
            state.given_up.add(client)
            self._note(f"round {state.number}: client {client} gave no update after {charged} attempts")
            return
        attempt = state.attempts.get(client, 0) + 1
        state.attempts[client] = attempt
        state.charged[client] = charged + 1  # refunded if an outage stops or loses this attempt
        if charged > 0:
            state.retries += 1
        key, function = self.plan.invoked(client)
        provider = self.providers[key]
        params: dict[str, Any] = {
            "session": self.session_id,
            "round": state.number,
            "client": client,
            "attempt": attempt,
        }
        entry = self._entry(state.number, function, client, attempt, provider)
        if function == INVOKER:
            entry.target = self.plan.placements[client].target
            params.update(target=entry.target, timeout_s=self.plan.limits[CLIENT].timeout)
        if not self.ledger.submit(entry):  # this attempt number was used by a keeper that died
            state.attempts[client] = self.ledger.attempts(state.number, function, client)
            state.charged[client] = charged
            state.retry_at[client] = self.clock()
            return
        try:
            activation_id = provider.invoke_async(function, params)
        except PlatformUnavailable as exc:
            self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=str(exc))
            self._outage_retry(state, client, exc)
            return
        except ProviderError as exc:
            self.ledger.settle(entry, LedgerStatus.NOT_STARTED, error=str(exc))
            self._schedule_retry(state, client, str(exc))
            return
        self._back(provider.where)
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
            if (
                entry.activation_id is None
            ):  # submitted by a keeper that died (or lost the store) before invoking
                state.pending.pop(client)
                self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error="keeper stopped before invoking")
                self._refund(state, client)  # not the client's failure
                self._schedule_retry(state, client, "never invoked")
                continue
            groups[(entry.platform, entry.cluster, entry.function)].append(entry)
        for (platform, cluster, function), entries in groups.items():
            provider = self.providers[(platform, cluster)]
            if not self.outages.may_probe(provider.where):
                continue
            since = min(int(e.submitted_at.timestamp() * 1000) for e in entries) - 60_000
            try:
                records.update(
                    provider.fetch(function, [e.activation_id for e in entries if e.activation_id], since)
                )
            except PlatformUnavailable as exc:
                self._waiting(self.outages.failed(exc))
                continue
            except ProviderError as exc:
                self._note(f"polling {platform}/{cluster} failed: {exc}")
                continue
            self._back(provider.where)
        state.done |= self.session.updates.clients(state.number) & set(state.selected)
        for entries in groups.values():
            for entry in entries:
                record = records.get(entry.activation_id or "")
                where = f"{entry.platform}/{entry.cluster}"
                if record is not None and record.status.done:
                    state.pending.pop(entry.client)
                    self._settle(state, entry, record)
                elif self.outages.is_down(where):
                    continue  # its record may come once the platform is back: no time-out meanwhile
                elif self._age_s(entry) > self.server.activation_timeout_s:
                    state.pending.pop(entry.client)
                    if entry.client in state.done:
                        self.ledger.settle(
                            entry, LedgerStatus.RECORD_LOST, error="update stored, activation record not seen"
                        )
                        continue
                    if self.outages.overlapped(where, entry.submitted_at):  # lost in the outage
                        error = f"no record after {self._age_s(entry):.0f}s; {where} was down meanwhile"
                        self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=error)
                        self._refund(state, entry.client)
                        state.retry_at[entry.client] = self.clock()
                        continue
                    self.ledger.settle(
                        entry, LedgerStatus.TIMED_OUT, error=f"no record after {self._age_s(entry):.0f}s"
                    )
                    self._schedule_retry(state, entry.client, "timed out")

    def _settle(self, state: RoundState, entry: LedgerEntry, record: ActivationRecord) -> None:
        """Book a finished activation; it counts only if its update is in the store (``state.done``)."""
        if entry.client in state.done:  # a failure here after an update was stored needs no retry
            self.ledger.settle(entry, LedgerStatus.of(record), record, record.error)
            if record.ok:
                self._back(entry.target, STORE)
                assert self.reporter is not None
                self.reporter.event(
                    "update_stored",
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
        error = record.error or "activation succeeded but stored no update"
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
        self._waiting(outage)

    def _schedule_retry(self, state: RoundState, client: int, reason: str) -> None:
        attempt = state.attempts.get(client, 1)
        delay = self.retry.delay(max(state.charged.get(client, 1), 1))
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
