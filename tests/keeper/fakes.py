"""A fake clock and a test double of the provider interface, for the round driver's rules.

:class:`ScriptedProvider` answers ``invoke_async`` and ``fetch`` as a platform would, from a
script of what each client's attempts do (how long they run, whether they fail, whether their
record is lost), on the fake clock. An attempt that succeeds writes its update to the real store
when its time is up, as ``fl_client`` does, and an evaluate activation its evaluation
(:func:`evaluation_of`); ``invoke_sync`` stands in for the managing functions' bookkeeping (no
training), so a whole :class:`~fedkeeper.host.keeper.Keeper` session can run on it. The fabric itself is covered by the end-to-end tests.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedkeeper.function.catalog import AGGREGATOR_FUNCTION, SERVER_INIT_FUNCTION
from fedkeeper.function.catalog import platform as catalog_platform
from fedkeeper.function.config import parse_config
from fedkeeper.function.errors import PlatformUnavailable, ProviderError, Throttled
from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus, Capabilities
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.statuses import Task
from fedkeeper.host.keeper import Keeper
from fedkeeper.host.plan import Plan
from fedkeeper.host.providers.base import FunctionSpec, Provider

WEIGHTS = [np.zeros((2, 2), dtype=np.float32)]


def evaluation_of(client: int) -> tuple[int, float, float]:
    """``(num_examples, loss, accuracy)`` a scripted client's evaluation stores: each client its own."""
    return 10 * (client + 1), 0.1 * (client + 1), 0.5 + 0.05 * client


class FakeClock:
    """Monotonic time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@dataclass(frozen=True)
class Attempt:
    """What one attempt does: runs ``duration_s``, then succeeds (storing an update) or fails."""

    duration_s: float = 1.0
    ok: bool = True
    lost_record: bool = False  # the update is stored, the platform never shows the record
    init_ms: int | None = None  # a cold start's initialisation
    rejected: bool = False  # the update it stores fails its checks (stored as a rejection)


@dataclass
class _Running:
    session: SessionStore
    round: int
    client: int
    attempt: int
    started: float
    script: Attempt
    task: Task = Task.FIT
    finished: bool = False
    version: int | None = None  # async mode: the model version it trains on


@dataclass
class ScriptedProvider(Provider):
    """A platform whose activations follow ``script[client][attempt - 1]`` (the last entry repeats).

    Evaluate activations follow ``evaluate_script[client]`` by the client's evaluate calls so far
    (their attempt numbers follow the fit's). ``down_until``: invokes and fetches raise
    :class:`PlatformUnavailable` before this clock time.
    ``concurrency``: an invoke while this many activations run raises :class:`Throttled` (429).
    """

    platform: ClassVar[str] = "openwhisk"
    capabilities: ClassVar[Capabilities] = catalog_platform("openwhisk").capabilities

    clock: FakeClock
    store: Store
    script: Mapping[int, list[Attempt]] = field(default_factory=dict)
    evaluate_script: Mapping[int, list[Attempt]] = field(default_factory=dict)
    down_until: float = 0.0
    pending_once: set[str] = field(
        default_factory=set
    )  # managing functions ("fl_server_aggregator shard 1" for a shard) whose next call outlives its wait
    managing: list[str] = field(default_factory=list)  # the managing calls, in order
    failing: set[str] = field(default_factory=set)  # managing calls that always fail ("... group 1")
    concurrency: int | None = None
    throttled: int = 0  # invokes refused for the concurrency limit
    invoked: list[tuple[int, int]] = field(default_factory=list)  # (client, attempt), in order
    evaluated: list[tuple[int, int]] = field(default_factory=list)  # evaluate calls: (client, attempt)
    calls: list[tuple[str, int]] = field(default_factory=list)  # ("invoke", client), ("fetch", ids), in order
    running: dict[str, _Running] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        super().__init__("local", None)

    # ------------------------------------------------------------------ the provider interface
    def invoke_async(self, name: str, params: Mapping[str, Any]) -> str:
        self.calls.append(("invoke", int(params["client"])))
        self._answer()
        if self.concurrency is not None:
            self.finish_due()
            if sum(not r.finished for r in self.running.values()) >= self.concurrency:
                self.throttled += 1
                raise Throttled("openwhisk/local", "HTTP 429: too many concurrent requests (scripted)")
        client, attempt = int(params["client"]), int(params["attempt"])
        task = Task(params.get("task", Task.FIT.value))
        if task is Task.EVALUATE:
            steps = self.evaluate_script.get(client, [Attempt()])
            step = steps[min(sum(c == client for c, _ in self.evaluated), len(steps) - 1)]
            self.evaluated.append((client, attempt))
        else:
            steps = self.script.get(client, [Attempt()])
            # async dispatches are all attempt 1: they follow the script by the client's calls so far
            nth = attempt if params.get("version") is None else 1 + sum(c == client for c, _ in self.invoked)
            step = steps[min(nth, len(steps)) - 1]
            self.invoked.append((client, attempt))
        activation_id = f"a{next(self._ids)}"
        self.running[activation_id] = _Running(
            self.store.for_session(str(params["session"])),
            int(params["round"]),
            client,
            attempt,
            self.clock(),
            step,
            task,
            version=None if params.get("version") is None else int(params["version"]),
        )
        return activation_id

    def fetch(self, name: str, activation_ids: Collection[str], since_ms: int) -> dict[str, ActivationRecord]:
        self.calls.append(("fetch", len(activation_ids)))
        self._answer()
        self.finish_due()
        records = {}
        for activation_id in activation_ids:
            run = self.running.get(activation_id)
            if run is None or not run.finished or run.script.lost_record:
                continue
            start_ms = int(run.started * 1000)
            status = ActivationStatus.SUCCESS if run.script.ok else ActivationStatus.APPLICATION_ERROR
            records[activation_id] = ActivationRecord(
                activation_id,
                status,
                result={"ok": True} if run.script.ok else {"error": "ValueError: scripted failure"},
                start_ms=start_ms,
                end_ms=start_ms + int(run.script.duration_s * 1000),
                init_ms=run.script.init_ms,
            )
        return records

    def invoke_sync(self, name: str, params: Mapping[str, Any], timeout_s: float) -> ActivationRecord:
        """The managing functions, as far as the keeper sees them: init marks the session
        initialised; the aggregator finishes the round with a fixed accuracy."""
        self._answer()
        call = name
        for part in ("shard", "group"):
            call += f" {part} {params[part]}" if part in params else ""
        self.managing.append(call)
        if call in self.pending_once:
            self.pending_once.discard(call)
            return ActivationRecord(f"a{next(self._ids)}", ActivationStatus.PENDING)
        now_ms = int(self.clock() * 1000)
        if call in self.failing:
            error = {"error": "ValueError: scripted failure"}
            return ActivationRecord(
                f"a{next(self._ids)}", ActivationStatus.APPLICATION_ERROR, error, now_ms, now_ms
            )
        session = self.store.for_session(str(params["session"]))
        if name == AGGREGATOR_FUNCTION and "shard" in params:  # a shard stores its slice, no more
            result: dict[str, Any] = {"round": int(params["round"]), "shard": int(params["shard"])}
        elif name == AGGREGATOR_FUNCTION and "group" in params:  # a local aggregator: its partial only
            result = {"round": int(params["round"]), "group": int(params["group"])}
        elif name == SERVER_INIT_FUNCTION:
            session.weights.put(0, WEIGHTS)
            session.record.mark_initialised()
            result = {}
        elif name == AGGREGATOR_FUNCTION and params.get("mode") == "async":
            version = int(params["round"])  # the buffer as claimed; the model stays WEIGHTS
            marks = session.updates.claimed(version)
            buffer = [f"{m['client']}/{m['round']}" for m in marks]
            stale = [version - int(m["version"]) for m in marks]
            session.weights.put(version + 1, WEIGHTS)
            result = {
                "round": version, "accuracy": 0.5, "loss": 1.0, "accepted": buffer,
                "staleness_mean": sum(stale) / len(stale), "staleness_max": max(stale),
            }  # fmt: skip
            session.rounds.finish(version, result)
        elif name == AGGREGATOR_FUNCTION:
            round_number, included = int(params["round"]), [int(c) for c in params["clients"]]
            result = {"round": round_number, "accuracy": 0.5, "loss": 1.0, "accepted": included}
            session.rounds.finish(round_number, result)
        else:
            raise ProviderError(f"{name} is invoked asynchronously")
        return ActivationRecord(f"a{next(self._ids)}", ActivationStatus.SUCCESS, result, now_ms, now_ms)

    def deploy(self, spec: FunctionSpec) -> None:
        raise ProviderError("nothing is deployed to a scripted provider")

    def remove(self, name: str) -> bool:
        return False

    # ------------------------------------------------------------------ the script
    def finish_due(self) -> None:
        """Finish every activation whose time is up; a successful one stores its update (evaluation)."""
        for activation_id, run in self.running.items():
            if run.finished or self.clock() < run.started + run.script.duration_s:
                continue
            run.finished = True
            if run.script.ok and run.task is Task.EVALUATE:
                examples, loss, accuracy = evaluation_of(run.client)
                run.session.evaluations.put(
                    run.round, run.client, examples, loss, accuracy, activation_id, run.attempt
                )
            elif run.script.ok and run.script.rejected:
                run.session.updates.reject(run.round, run.client, "update norm 99 is past max_update_norm 20")
            elif run.script.ok:
                run.session.updates.put(
                    run.round,
                    run.client,
                    WEIGHTS,
                    10,
                    0.5,
                    0.5,
                    activation_id,
                    run.attempt,
                    version=run.version,
                )

    def _answer(self) -> None:
        if self.clock() < self.down_until:
            raise PlatformUnavailable("openwhisk/local", "connection refused (scripted outage)")


def scripted_keeper(
    store: Store,
    logs_dir: Path,
    durations_s: list[float],
    server: Mapping[str, Any],
    functions: Mapping[str, Any] | None = None,
) -> Keeper:
    """A keeper on the fake clock of one local OpenWhisk cluster whose client ``c`` always runs
    ``durations_s[c]``; ``server`` and ``functions`` add to its ``server_config`` and ``functions``."""
    clients = len(durations_s)
    config = parse_config(
        {
            "logs_dir": str(logs_dir),
            "providers": {"openwhisk": {"local": {"local": True}}},
            "scenarios": {
                "federated_learning": {
                    "server_config": {"cluster": "local", "activation_timeout_s": 60, **server},
                    "clients_info": {"total_num_clients": clients, "ow_clients_count": clients},
                    "functions": {"fl_client": {"timeout": 50}, **(functions or {})},
                }
            },
        }
    )
    clock, plan = FakeClock(), Plan.build(config)
    script = {c: [Attempt(duration_s=d)] for c, d in enumerate(durations_s)}
    provider = ScriptedProvider(clock, store, script)
    return Keeper(config, plan, store, {plan.server: provider}, clock, clock.sleep)
