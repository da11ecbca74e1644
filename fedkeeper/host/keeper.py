"""The keeper: a session's lifecycle (start, resume, stop rules) over the fabric.

Each round: the session's members are re-planned if they changed (:mod:`fedkeeper.host.reconfiguration`),
the configured selection policy picks clients among them, the :class:`~fedkeeper.host.rounds.RoundDriver`
invokes, polls, retries and closes the round, the aggregator makes the next global weights, the
clients' history is folded in, the strategy's federated evaluation (if it chooses any client) runs
through the same driver, and the session advances in MongoDB *before* the next round starts.
All state is in the store, so :meth:`Keeper.resume` can continue after the keeper process dies at
any line.

An unreachable platform or store is an outage, not a failure: the keeper waits for it (see
:mod:`fedkeeper.host.outages`) without spending anyone's retries, and after a store outage it carries
on from the store exactly as a resumed keeper would.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fedkeeper.function.backoff import retry_policy
from fedkeeper.function.catalog import AGGREGATOR_FUNCTION, SERVER_INIT_FUNCTION
from fedkeeper.function.config import Config, fingerprint_difference, fingerprint_json, training_fingerprint
from fedkeeper.function.errors import STORE, PlatformUnavailable, ProviderError, StoreUnavailable, Unavailable
from fedkeeper.function.invoke.edge import EdgeClient
from fedkeeper.function.prices import CURRENCY
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.retention import prune
from fedkeeper.function.store.statuses import Phase, Task
from fedkeeper.function.strategies import (
    ClientPool,
    EvaluateRes,
    Failure,
    FitConfig,
    MinCost,
    SelectionPolicy,
    Strategy,
    make_selection,
)
from fedkeeper.host.async_rounds import AsyncDriver
from fedkeeper.host.costs import rates_after, round_cost
from fedkeeper.host.history import ClientHistory, History, fold
from fedkeeper.host.ledger import (
    SERVER,
    Ledger,
    LedgerEntry,
    LedgerStatus,
    aggregation_shard,
    local_aggregator,
)
from fedkeeper.host.outages import Outages, OutageTooLong, OutageWatch
from fedkeeper.host.plan import Key, Plan
from fedkeeper.host.providers.base import Provider
from fedkeeper.host.reconfiguration import Reconfigurer
from fedkeeper.host.reporting import Reporter, Stopwatch
from fedkeeper.host.rounds import MIN_POLL_S, ClosedRound, DriverContext, RoundDriver, SessionFailed

__all__ = ["Keeper", "SessionFailed", "new_session_id"]

NO_EVALUATION = "no evaluation before the evaluation closed"
LATE_EVALUATION = "evaluation still running when the evaluation closed"
LATE = "late_folded"  # semi_async: the late updates a round folded in (rounds.csv)
# activations.csv and accuracy.png cost time in proportion to the whole session (every attempt so
# far, a matplotlib figure): rewritten at most this often while it runs, and at its end.
LOGS_REFRESH_S = 60.0


def new_session_id() -> str:
    return f"s-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


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
    clock, sleep
        Injected for tests; ``time.monotonic`` and ``time.sleep`` otherwise.
    """

    def __init__(
        self,
        config: Config,
        plan: Plan,
        store: Store,
        providers: Mapping[Key, Provider],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.fl = config.fl
        self.server = self.fl.server_config
        self.plan = plan
        self.store = store
        self.providers = providers
        self.clock = clock
        self.sleep = sleep
        self.server_provider = providers[plan.server]
        self.session_id = ""
        self._session: SessionStore | None = None
        self._ledger: Ledger | None = None
        self._watch: OutageWatch | None = None
        self._history: ClientHistory | None = None
        # objective min_cost_to_target picks the clients itself (config.py refuses a selection with it)
        policy = MinCost.name if self.server.objective == "min_cost_to_target" else self.server.selection
        self.selection: SelectionPolicy = make_selection(
            policy, self.server.seed, self.server.round_deadline_s, self.server.rotation_rounds
        )
        # One policy for server_config.retry_backoff_s: client retries, managing-function
        # retries and outage probes.
        self.retry = retry_policy(self.server.retry_backoff_s)
        self.outages = Outages(self.server.outage_tolerance_s, self.retry, clock)
        self.budget_since: datetime | None = None  # client attempts before this do not count
        self.store_down = False  # the keeper's own queries cannot reach MongoDB (each would hang 10 s)
        self._logs_refreshed = clock()  # when activations.csv and accuracy.png were last written

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

    @property
    def watch(self) -> OutageWatch:
        """The session's outages, and its reporter (``watch.reporter``)."""
        assert self._watch is not None, "no session: start() or resume() first"
        return self._watch

    @property
    def reporter(self) -> Reporter:
        return self.watch.reporter

    def _bind(self, session_id: str) -> SessionStore:
        self.session_id = session_id
        self._session = self.store.for_session(session_id)
        self._ledger = Ledger(self._session)
        self._history = ClientHistory(self._session)
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
        reporter = Reporter(self.config.logs_dir, self.session_id)
        # Platforms that host only clients: past the tolerance their outage gives up their clients
        # for the round (which may still close on quorum) instead of stopping the session.
        self._watch = OutageWatch(
            self.outages, reporter, self.session_id, self.plan.client_only(), self.sleep
        )
        reporter.event("session_resumed" if resumed else "session_started", session=self.session_id)
        reporter.say(
            f"session {self.session_id}: {'resuming' if resumed else 'starting'} — "
            f"{len(self.plan.placements)} clients{self._standby()}, {self._pace()}, "
            f"up to {self.server.max_rounds} {'versions' if self.server.mode == 'async' else 'rounds'}, "
            f"target accuracy {self.server.target_accuracy}"
        )
        for line in self.plan.topology_lines() if self.plan.groups else []:
            reporter.say(line)
        if self.server.strategy.build().fraction_evaluate > 0:
            for where, why in self.plan.cannot_evaluate().items():
                reporter.say(f"federated evaluation leaves out the clients on {where}: {why}")
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
                self._write_logs(final=True)
            reporter.say(f"logs: {reporter.dir}")
            reporter.close()

    def _standby(self) -> str:
        standby = self.server.standby_clients
        return f" ({standby} on standby for `fedkeeper clients add`)" if standby else ""

    def _pace(self) -> str:
        """How clients are driven, for the start line."""
        if self.server.mode == "async":
            return (
                f"async: {self.server.in_flight_limit} in flight, a version every "
                f"{self.server.buffer_size} updates"
            )
        late = ", late updates folded into the next round" if self.server.mode == "semi_async" else ""
        return f"{self.server.num_clients_per_round} per round{late}"

    def _driver_context(self) -> DriverContext:
        return DriverContext(
            self.server, self.plan, self.session, self.ledger, self.providers, self.watch, self.retry,
            self.clock, self.sleep,
        )  # fmt: skip

    def _train(self) -> str:
        """Initialise if needed, then run rounds from the store's state to a stop rule."""
        record = self.session.record
        if not record.initialised():
            self._initialise()
        record.set_phase(Phase.RUNNING, "RoundsStarted")
        if self.server.mode == "async":
            return self._train_async()
        driver = RoundDriver(self._driver_context(), self.budget_since)
        hosting = {p.key for p in self.plan.placements}
        fleets = {
            f"{platform}/{cluster}": provider
            for (platform, cluster), provider in self.providers.items()
            if isinstance(provider, EdgeClient) and (platform, cluster) in hosting
        }
        reconfigurer = Reconfigurer(self.server, self.plan, self.session, self.ledger, self.reporter, fleets)
        while True:
            session = record.get()
            round_number = int(session["round"])
            members = reconfigurer.at_boundary(round_number)
            metrics = self._run_round(driver, round_number, members)
            record.advance_round(round_number + 1)
            self._write_logs()
            stop = self._stop_reason(round_number, metrics, session)
            if stop:
                driver.stop()
                record.set_phase(Phase.SUCCEEDED, stop[0], stop[1])
                self.reporter.event("session_succeeded", reason=stop[0], message=stop[1])
                self.reporter.say(f"session {self.session_id} succeeded: {stop[1]}")
                return self.session_id

    def _train_async(self) -> str:
        """Async mode (FedBuff): stream activations; every full buffer is the next model version.

        A version's buffer is claimed in the store before the aggregator folds it, so a keeper that
        dies between the two finds the same buffer when it resumes, and an update is in one only.
        """
        record = self.session.record
        driver = AsyncDriver(self._driver_context())
        driver.restore()
        watch = Stopwatch()
        while True:
            session = record.get()
            version = int(session["round"])
            buffer = self.session.updates.claim(version, self.server.buffer_size)
            if len(buffer) < self.server.buffer_size:
                driver.pump(version, hold_at=self.server.buffer_size)
                self.sleep(self.server.poll_interval_s if driver.in_flight else MIN_POLL_S)
                continue
            metrics = self._aggregate_version(version, buffer, driver, watch)
            watch = Stopwatch()
            record.advance_round(version + 1)
            self._write_logs()
            stop = self._stop_reason(version, metrics, session)
            if stop:
                driver.stop()
                record.set_phase(Phase.SUCCEEDED, stop[0], stop[1])
                self.reporter.event("session_succeeded", reason=stop[0], message=stop[1])
                self.reporter.say(f"session {self.session_id} succeeded: {stop[1]}")
                return self.session_id

    def _aggregate_version(
        self, version: int, buffer: list[dict[str, Any]], driver: AsyncDriver, watch: Stopwatch
    ) -> dict[str, Any]:
        """The aggregator folds version ``version``'s claimed buffer into the next version."""
        rounds = self.session.rounds
        clients = sorted({int(m["client"]) for m in buffer})
        rounds.open(version, clients)
        if rounds.get(version).get("metrics") is None:
            metrics = self._aggregate_while_pumping(
                version,
                {"session": self.session_id, "round": version, "clients": clients, "mode": "async"},
                driver,
            )
            counts = driver.take_counts()
            extra = {
                "in_flight": driver.in_flight,
                "retries": counts.retries,
                "failed_clients": counts.failed,
                "cold_starts": counts.cold_starts,
                "duration_s": watch.elapsed,
            }
            rounds.add_metrics(version, extra)
            metrics.update(extra)
        else:  # aggregated before a resumed keeper got here
            metrics = dict(rounds.get(version)["metrics"])
        self.reporter.event("round_aggregated", **metrics)
        self.reporter.say(
            f"version {version + 1}/{self.server.max_rounds}: accuracy {metrics['accuracy']:.4f} "
            f"loss {metrics['loss']:.4f} · {len(buffer)} updates, staleness mean "
            f"{float(metrics.get('staleness_mean', 0.0)):.1f} max {metrics.get('staleness_max', 0)} · "
            f"{metrics.get('in_flight', 0)} in flight · {float(metrics.get('duration_s', 0.0)):.1f}s"
        )
        return metrics

    def _aggregate_while_pumping(
        self, version: int, params: dict[str, Any], driver: AsyncDriver
    ) -> dict[str, Any]:
        """The aggregator call for ``version``, made in a worker thread while this one keeps the
        stream going: a client that finishes meanwhile trains again at once on ``version`` (the
        newest model there is until the call ends), as FedBuff's server never blocks its clients,
        unless the next buffer is already full in the store (see :meth:`AsyncDriver.pump`).

        The call is :meth:`_call_server`'s, with its retries, outage waits and ledger entries;
        what it shares with the stream (ledger, outages, reporter, providers) is safe to use from
        both threads. An error on either side is raised once the call has ended, so no aggregator
        call outlives the loop that made it (a resumed or store-recovered keeper finds its
        outcome in the store).
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedbuff-aggregator") as pool:
            call = pool.submit(self._call_server, AGGREGATOR_FUNCTION, version, params)
            while not call.done():
                driver.pump(version, hold_at=self.server.buffer_size)
                wait([call], timeout=self.server.poll_interval_s if driver.in_flight else MIN_POLL_S)
            # (leaving the block on an error from pump() waits for the call first)
        return call.result()

    # ------------------------------------------------------------------ outages
    def _wait_for_store(self, error: StoreUnavailable) -> None:
        """Probe MongoDB with backoff until it answers; raises OutageTooLong past the tolerance."""
        self.store_down = True
        outage = self.outages.failed(error)
        while True:
            self.watch.wait(outage)
            try:
                self.store.ping()
            except StoreUnavailable as again:
                outage = self.outages.failed(again)
                continue
            self.store_down = False
            self.watch.back(error.what)
            return

    def _stop_reason(
        self, round_number: int, metrics: dict[str, Any], session: dict[str, Any]
    ) -> tuple[str, str] | None:
        if metrics["accuracy"] >= self.server.target_accuracy:
            return "TargetAccuracyReached", (
                f"accuracy {metrics['accuracy']:.4f} reached the target {self.server.target_accuracy} "
                f"after {round_number + 1} rounds"
            )
        spent, budget = float(metrics.get("cumulative_cost", 0.0)), self.server.max_cost
        if budget is not None and spent >= budget:
            return "BudgetExhausted", (
                f"cost {spent:.6f} {CURRENCY} reached max_cost {budget} after {round_number + 1} rounds, "
                f"accuracy {metrics['accuracy']:.4f}"
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

    def _write_logs(self, final: bool = False) -> None:
        """rounds.csv after every round; activations.csv and accuracy.png at most every
        :data:`LOGS_REFRESH_S` and once ``final`` (the session's end)."""
        refresh = final or self.clock() - self._logs_refreshed >= LOGS_REFRESH_S
        self.reporter.write_rounds(self.session.rounds.all(), plot=refresh)
        if refresh:
            self.reporter.write_activations(list(self.ledger.entries()))
            self._logs_refreshed = self.clock()

    # ------------------------------------------------------------------ managing functions
    def _call_server(
        self,
        function: str,
        round_number: int,
        params: dict[str, Any],
        client: int = SERVER,
        provider: Provider | None = None,
    ) -> dict[str, Any]:
        """Invoke a managing function (on the server cluster unless ``provider``) and wait, retrying
        failures with backoff and waiting out outages (which cost no retry); every attempt is in
        the ledger, under ``client``."""
        timeout_s = float(self.plan.limits[function].timeout) + 30
        provider = provider or self.server_provider
        attempt = self.ledger.attempts(round_number, function, client)
        failures = 0
        while True:
            attempt += 1
            entry = self.ledger.new_entry(
                round_number, function, client, attempt, provider.platform, provider.cluster
            )
            self.ledger.submit(entry)
            try:
                record = provider.invoke_sync(function, params, timeout_s)
            except PlatformUnavailable as exc:
                self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, error=str(exc))
                self.watch.wait(self.outages.failed(exc))
                continue
            except ProviderError as exc:
                self.ledger.settle(entry, LedgerStatus.NOT_STARTED, error=str(exc))
                error = str(exc)
            else:
                self.watch.back(provider.where)
                self.ledger.set_activation_id(entry, record.activation_id)
                outage = Unavailable.in_result(record.result, provider.where) if not record.ok else None
                if outage is not None:  # the function could not reach the store: wait for it
                    self.ledger.settle(entry, LedgerStatus.UNAVAILABLE, record, record.error)
                    self.watch.wait(self.outages.failed(outage))
                    continue
                if not record.status.done:  # still running when the wait ran out: its writes are
                    # keyed, so a retry that overlaps it cannot count anything twice
                    error = f"{function} ({record.activation_id}): no outcome after {timeout_s:.0f}s"
                    self.ledger.settle(entry, LedgerStatus.TIMED_OUT, error=error)
                else:
                    self.ledger.settle(entry, LedgerStatus.of(record), record, record.error)
                    if record.ok:
                        self.watch.back(STORE)
                        return record.result or {}
                    error = f"{function} ({record.activation_id}): {record.error}"
            failures += 1
            if failures > self.server.max_retries:
                raise SessionFailed(f"{function} failed after {failures} attempts: {error}")
            delay = self.retry.delay(failures)
            self._note(f"{function} failed ({error}); retrying in {delay:.1f}s")
            self.sleep(delay)

    def _initialise(self) -> None:
        result = self._call_server(SERVER_INIT_FUNCTION, 0, {"session": self.session_id})
        self.reporter.event("initialised", **result)
        sizes = result.get("partition_sizes", [])
        self.reporter.say(
            f"initialised: {result.get('num_params')} parameters, partitions of "
            f"{min(sizes, default=0)}..{max(sizes, default=0)} examples, {result.get('test_examples')} test examples"
        )

    # ------------------------------------------------------------------ one round
    def _run_round(self, driver: RoundDriver, round_number: int, members: tuple[int, ...]) -> dict[str, Any]:
        """Select (once) among ``members``, drive the round to its close, fold it into the clients'
        history, aggregate, evaluate."""
        assert self._history is not None
        rounds = self.session.rounds
        history = self._history.read() if self.selection.uses_history else History()
        pool = ClientPool(
            members,
            min(self.server.num_clients_per_round, len(members)),
            self._priced(self.selection, round_number),
            self.server.seed,
            history.clients,
        )
        # The strategy picks the clients through the selection policy and tells each what to do;
        # the round keeps both for them (a resumed keeper gets the stored ones back).
        strategy = self.server.strategy.build()
        fit = strategy.configure_fit(round_number, pool, FitConfig.from_model(self.fl.model_params))
        rounds.open(
            round_number,
            [ins.client for ins in fit],
            {ins.client: ins.config.to_json() for ins in fit},
        )
        watch = Stopwatch()
        closed = driver.run(round_number)
        doc = rounds.get(round_number)
        resumed = bool(doc.get("metrics"))  # aggregated before a resumed keeper got here
        if self.server.mode == "semi_async" and not resumed and "folded" not in doc:
            self._fold_late(round_number)
        metrics = dict(doc["metrics"]) if resumed else self._aggregate(round_number, closed, watch, driver)
        if "federated_loss" not in metrics:
            metrics.update(self._evaluate(driver, strategy, round_number, members))
        # One read of the round's ledger (the aggregator's and the evaluations' attempts included)
        # serves the clients' history (training attempts only) and the round's cost.
        entries = self.ledger.round_entries(round_number)
        if self.selection.uses_history and history.folded < round_number:
            fits = [e for e in entries if e.task is Task.FIT]
            self._history.write(fold(history, closed, fits, self.server.round_deadline_s))
        metrics = self._account(round_number, metrics, entries)
        if resumed:
            return metrics
        self.reporter.event("round_aggregated", **metrics)
        self.reporter.say(
            f"round {round_number + 1}/{self.server.max_rounds}: accuracy {metrics['accuracy']:.4f} "
            f"loss {metrics['loss']:.4f} · {len(metrics.get('accepted', []))}/{len(closed.selected)} updates"
            f"{f' + {metrics[LATE]} late' if metrics.get(LATE) else ''}"
            f" · {closed.retries} retries · {watch.elapsed:.1f}s"
            f" · cost {metrics['cost']:.6f} (total {metrics['cumulative_cost']:.6f}) {CURRENCY}"
        )
        return metrics

    def _priced(self, policy: SelectionPolicy, round_number: int) -> SelectionPolicy:
        """``policy`` with each client's rate, if it reads them: the prices, and the bytes the
        previous round moved per client (none before the first)."""
        if not isinstance(policy, MinCost):
            return policy
        last = (self.session.rounds.get(round_number - 1).get("metrics") or {}) if round_number else {}
        return replace(policy, rates=rates_after(self.plan, self.server.prices_of, last))

    def _fold_late(self, round_number: int) -> None:
        """semi_async: claim the late updates stored so far for this round, and freeze the set its
        aggregator folds in (claims are atomic and the set is written once, so a late update is
        counted by one round only, across resumes)."""
        rounds = self.session.rounds
        marks = self.session.updates.claim_late(round_number, rounds.late_clients(round_number))
        late = rounds.fold(round_number, [(int(m["round"]), int(m["client"])) for m in marks])
        if late:
            taken = ", ".join(f"client {c} of round {r}" for r, c in late)
            self._note(f"round {round_number}: folding in late updates: {taken}")

    def _aggregate(
        self, round_number: int, closed: ClosedRound, watch: Stopwatch, driver: RoundDriver
    ) -> dict[str, Any]:
        """The aggregator's metrics of the closed round, with the keeper's own; then old payloads go."""
        params = {"session": self.session_id, "round": round_number, "clients": list(closed.included)}
        self._aggregate_shards(round_number, params)
        self._aggregate_groups(round_number, closed, params)
        metrics = self._call_server(AGGREGATOR_FUNCTION, round_number, params)
        extra = {"retries": closed.retries, "failed_clients": len(closed.failed), "duration_s": watch.elapsed}
        if driver.late is not None:  # semi_async: late activations still running
            extra["in_flight"] = len(driver.late)
        self.session.rounds.add_metrics(round_number, extra)
        pruned = prune(self.session, round_number, self.server.keep_updates)
        if pruned.updates or pruned.weights:
            self.reporter.event("pruned", round=round_number, updates=pruned.updates, weights=pruned.weights)
        return {**metrics, **extra}

    def _account(
        self, round_number: int, metrics: dict[str, Any], entries: list[LedgerEntry]
    ) -> dict[str, Any]:
        """Price the aggregated round once (its ledger entries and bytes) and bring the session's
        total up to date; the figures join the round's metrics."""
        rounds = self.session.rounds
        if "cost" not in metrics:
            cost = round_cost(
                entries,
                metrics,
                self.server.prices_of,
                lambda function: self.plan.limits[function].memory,
            )
            metrics.update(cost.to_doc())
            rounds.add_metrics(round_number, cost.to_doc())
        # The sum over every priced round, so a keeper resumed between these writes repeats none.
        total = rounds.metric_sum("cost")
        rounds.add_metrics(round_number, {"cumulative_cost": total})
        self.session.record.set_cost(total, float(metrics["cost"]), CURRENCY)
        metrics["cumulative_cost"] = total
        return metrics

    def _evaluate(
        self, driver: RoundDriver, strategy: Strategy, round_number: int, members: tuple[int, ...]
    ) -> dict[str, Any]:
        """Federated evaluation of the round's new weights, as Flower runs it after ``aggregate_fit``.

        The strategy's ``configure_evaluate`` picks among the clients that can evaluate (once: the
        round keeps the choice), the driver runs their evaluate activations, and ``aggregate_evaluate``
        gets the stored evaluations (one per client, however often it ran) and the failures. The
        round's metrics get ``federated_loss``/``federated_accuracy`` (None without results);
        nothing when the strategy evaluates no client (``fraction_evaluate`` 0).
        """
        rounds = self.session.rounds
        if "evaluate" not in rounds.get(round_number):
            evaluators = tuple(c for c in self.plan.evaluators() if c in members)
            pool = ClientPool(evaluators, len(evaluators), seed=self.server.seed)
            chosen = strategy.configure_evaluate(round_number, pool)
            if not chosen:
                return {}
            rounds.open_evaluate(round_number, [ins.client for ins in chosen])
        watch = Stopwatch()
        closed = driver.evaluate(round_number)
        results = [
            EvaluateRes(int(d["client"]), int(d["num_examples"]), float(d["loss"]), float(d["accuracy"]))
            for d in self.session.evaluations.results(round_number, closed.included)
        ]
        failures = [Failure(c, NO_EVALUATION) for c in closed.failed]
        failures += [Failure(c, LATE_EVALUATION) for c in closed.late]
        loss, aggregated = strategy.aggregate_evaluate(round_number, results, failures)
        metrics = {
            "federated_loss": loss,
            "federated_accuracy": aggregated.get("accuracy"),
            "evaluated_clients": len(results),
            "failed_evaluations": len(failures),
        }
        rounds.add_metrics(round_number, metrics)
        self.reporter.event("round_evaluated", round=round_number, **metrics)
        summary = (
            f"federated accuracy {metrics['federated_accuracy']:.4f} loss {loss:.4f}" if loss is not None
            else "no federated evaluation result"
        )  # fmt: skip
        self.reporter.say(
            f"round {round_number + 1}/{self.server.max_rounds}: {summary} · "
            f"{len(results)}/{len(closed.selected)} evaluations · {closed.retries} retries · {watch.elapsed:.1f}s"
        )
        return metrics

    def _aggregate_shards(self, round_number: int, params: dict[str, Any]) -> None:
        """With ``aggregation_shards: M > 1``, M aggregator activations at once, one per range of
        arrays, each retried on its own; the aggregator called after them joins their results."""
        shards = self.server.aggregation_shards
        if shards == 1:
            return
        with ThreadPoolExecutor(max_workers=shards, thread_name_prefix="aggregation-shard") as pool:
            calls = [
                pool.submit(
                    self._call_server,
                    AGGREGATOR_FUNCTION,
                    round_number,
                    {**params, "shard": shard},
                    aggregation_shard(shard),
                )
                for shard in range(shards)
            ]
            for call in calls:
                call.result()

    def _aggregate_groups(self, round_number: int, closed: ClosedRound, params: dict[str, Any]) -> None:
        """With ``topology: hierarchical``, a local aggregator per group with included clients, at
        once, each on its group's cluster and retried on its own; the round keeps the groups.

        One that fails past its retries is noted and left: the global aggregator reduces its
        group's updates itself, so none is lost.
        """
        included = set(closed.included)
        groups = [
            {"group": g.index, "clients": [c for c in g.clients if c in included], "where": g.where}
            for g in self.plan.groups
            if included & set(g.clients)
        ]
        if not groups:
            return
        stored = self.session.rounds.set_groups(round_number, groups)
        hosts = {g.index: self.providers[g.host] for g in self.plan.groups}

        def local(group: int) -> None:
            try:
                self._call_server(
                    AGGREGATOR_FUNCTION, round_number, {**params, "group": group},
                    local_aggregator(group), hosts[group],
                )  # fmt: skip
            except SessionFailed as exc:
                self._note(f"round {round_number}: local aggregator of group {group} gave up ({exc}); "
                           "the global aggregator reduces its updates")  # fmt: skip

        with ThreadPoolExecutor(max_workers=len(stored), thread_name_prefix="local-aggregator") as pool:
            for call in [pool.submit(local, int(g["group"])) for g in stored]:
                call.result()

    def _note(self, message: str) -> None:
        self.reporter.event("note", message=message)
        self.reporter.say(message)
