"""``fl_server_aggregator``: aggregate round r's updates into round r+1's global weights.

The session's strategy owns the algorithm (``aggregate_fit``); this handler feeds it from the
store: updates stream one at a time, failures (selected clients without an update, updates
rejected when stored) are passed in, and the strategy's state comes from the store with the
round and goes back with the next one. Writes go marks first, then state, then weights, so an
aggregator that dies at any line is re-run to the same result; re-running for a finished round
returns its metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from itertools import chain
from typing import Any

import numpy as np

from fedkeeper.function.errors import ConfigError, StoreError
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.store.codecs import NONE, Codec
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.store.rounds import folded
from fedkeeper.function.store.shards import ShardResult
from fedkeeper.function.store.statuses import UpdateStatus
from fedkeeper.function.store.updates import UnreadableUpdate
from fedkeeper.function.strategies import (
    Failure,
    FitConfig,
    FitOutcome,
    FitRes,
    NothingToAggregate,
    RoundContext,
    Strategy,
    StrategyState,
    Weights,
)
from fedkeeper.function.strategies.base import cast_like, why_invalid
from fedkeeper.function.strategies.fedbuff import BufferStep, staleness_weight
from fedkeeper.function.strategies.hierarchy import combine, mean_of, reduce_group
from fedkeeper.function.strategies.sharding import array_ranges, join_states, shard_context, shard_results
from fedkeeper.function.tasks.common import SessionSettings, require

NO_UPDATE = "no update before the round closed"


def handle(params: dict[str, Any]) -> dict[str, Any]:
    db = Store.from_bound(params)
    session_id = require(params, "session", str)
    store = db.for_session(session_id)
    round_number = require(params, "round", int)
    clients = [int(c) for c in require(params, "clients", list)]
    doc = store.rounds.get(round_number)
    if doc.get("metrics") is not None:
        return dict(doc["metrics"])

    settings = SessionSettings.load(store)
    if params.get("mode") == "async":
        return _fold_buffer(store, settings, round_number)
    strategy = settings.server.strategy.build()
    shards = settings.server.aggregation_shards
    group = params.get("group")
    if group is not None:
        return _local(store, strategy, settings, round_number, doc, group)
    shard = params.get("shard")
    if shard is not None:
        if isinstance(shard, bool) or not isinstance(shard, int) or not 0 <= shard < shards:
            raise ConfigError(
                f"shard must be an integer in [0, {shards}) (aggregation_shards), got {shard!r}"
            )
        if not store.weights.has(round_number + 1) and not store.shards.has(round_number, shard):
            _aggregate(store, strategy, settings, round_number, clients, doc, shard)
        return {"round": round_number, "shard": shard}
    # An earlier attempt may have died after writing the weights: then only the metrics are missing.
    if not store.weights.has(round_number + 1):
        if shards > 1:
            _assemble(store, round_number, shards)
        elif doc.get("groups"):
            _combine(store, strategy, settings, round_number, clients, doc)
        else:
            _aggregate(store, strategy, settings, round_number, clients, doc)

    marks = store.updates.marks(round_number, clients)
    accepted = [m for m in marks if m.get("status") == UpdateStatus.ACCEPTED]
    rejected = {
        str(m["client"]): m.get("reason", "") for m in marks if m.get("status") == UpdateStatus.REJECTED
    }
    examples = sum(int(m["num_examples"]) for m in accepted)
    train_loss = sum(m["loss"] * m["num_examples"] for m in accepted) / max(examples, 1)
    train_accuracy = sum(m["accuracy"] * m["num_examples"] for m in accepted) / max(examples, 1)

    weights = store.weights.get(round_number + 1)
    dataset = load_dataset(settings.data)

    def central(_: int, arrays: Weights) -> tuple[float, dict[str, float]]:
        loss, accuracy = evaluate(arrays, dataset.x_test, dataset.y_test, settings.model, dataset.num_classes)
        return loss, {"accuracy": accuracy}

    loss, evaluated = strategy.evaluate(round_number, weights, central) or (float("nan"), {})
    next_state = store.strategy.server(round_number + 1)
    metrics = {
        "round": round_number,
        "accuracy": float(evaluated.get("accuracy", float("nan"))),
        "loss": float(loss),
        "train_loss": float(train_loss),
        "train_accuracy": float(train_accuracy),
        "accepted": [int(m["client"]) for m in accepted],
        "rejected": rejected,
        "examples": int(examples),
        # what the round's clients stored, as encoded by the session's codec
        "update_bytes": sum(int(m.get("payload_bytes") or 0) for m in marks),
        "update_bytes_by_client": {str(m["client"]): int(m.get("payload_bytes") or 0) for m in marks},
        # the round's global weights, which every client attempt and the aggregator read
        "weights_bytes": store.weights.payload_bytes(round_number) or 0,
        "strategy": strategy.name,
        **(dict(next_state.metrics) if next_state is not None else {}),
        **_late_metrics(store, round_number, folded(doc)),
    }
    if doc.get("groups"):  # what each local aggregator read and wrote (costs.py prices them)
        metrics["groups"] = {str(g["group"]): [int(c) for c in g["clients"]] for g in doc["groups"]}
        partial_bytes = store.partials.payload_bytes(round_number)
        metrics["partial_bytes_by_group"] = {str(g): size for g, size in partial_bytes.items()}
    store.rounds.finish(round_number, metrics)
    store.partials.delete(round_number)
    return metrics


def _aggregate(
    store: SessionStore,
    strategy: Strategy,
    settings: SessionSettings,
    round_number: int,
    clients: list[int],
    doc: dict[str, Any],
    shard: int | None = None,
) -> None:
    """The round's next weights and state; with ``shard``, only that shard's slice (stored apart)."""
    context, results, failures = _round(store, strategy, settings, round_number, clients, doc)
    if shard is None:
        late = LateUpdates(store, settings, round_number, context.current)
        outcome = _fit(strategy, context, chain(results, late.results(folded(doc))), failures, clients)
        weights = outcome.weights if outcome.weights is not None else context.current
        accepted = list(outcome.accepted)  # the round's own clients: less one entry per late update
        for late_round, client in late.accepted:
            accepted.remove(client)
            store.updates.mark(late_round, client, UpdateStatus.ACCEPTED, "")
        _write(store, round_number, accepted, outcome.rejected, outcome.state, weights)
        return
    sizes = [int(array.size) for array in context.current]
    start, stop = array_ranges(sizes, settings.server.aggregation_shards)[shard]
    sliced = shard_context(context, start, stop)
    outcome = _fit(strategy, sliced, shard_results(results, context.current, start, stop), failures, clients)
    weights = outcome.weights if outcome.weights is not None else sliced.current
    store.shards.put(
        round_number, shard, ShardResult(weights, outcome.state, outcome.accepted, outcome.rejected)
    )


def _local(
    store: SessionStore,
    strategy: Strategy,
    settings: SessionSettings,
    round_number: int,
    doc: dict[str, Any],
    group: Any,
) -> dict[str, Any]:
    """A local aggregator: reduce group ``group``'s updates to its partial in the store."""
    groups = {int(g["group"]): [int(c) for c in g["clients"]] for g in doc.get("groups") or []}
    if isinstance(group, bool) or not isinstance(group, int) or group not in groups:
        raise ConfigError(f"group must be one of the round's groups {sorted(groups)}, got {group!r}")
    stored = 0
    if not store.weights.has(round_number + 1) and not store.partials.has(round_number, group):
        context, results, _ = _round(store, strategy, settings, round_number, groups[group], doc)
        stored = store.partials.put(round_number, group, reduce_group(results, context.current))
    return {"round": round_number, "group": group, "partial_bytes": stored}


def _combine(
    store: SessionStore,
    strategy: Strategy,
    settings: SessionSettings,
    round_number: int,
    clients: list[int],
    doc: dict[str, Any],
) -> None:
    """The global aggregator: the groups' partials into the round's weights and state.

    A group whose local aggregator stored nothing (it failed for good) is reduced here from its
    clients' updates, so no update is lost with it.
    """
    context, _, failures = _round(store, strategy, settings, round_number, clients, doc)
    partials = []
    for group in doc["groups"]:
        number, members = int(group["group"]), [int(c) for c in group["clients"]]
        if store.partials.has(round_number, number):
            partials.append(store.partials.get(round_number, number))
        else:
            print(f"group {number}: no partial stored; reducing its updates here", file=sys.stderr)
            _, results, _ = _round(store, strategy, settings, round_number, members, doc)
            partials.append(reduce_group(results, context.current))
    total = combine(partials, context.current)
    if not total.accepted:
        raise StoreError(f"round {round_number}: no valid update among clients {clients}")
    failures += [Failure(c, reason, rejected=True) for c, reason in total.rejected.items()]
    weights, state = strategy.step_from_mean(context, mean_of(total), failures)
    _write(
        store, round_number, total.accepted, total.rejected, state,
        weights if weights is not None else context.current,
    )  # fmt: skip


def _assemble(store: SessionStore, round_number: int, shards: int) -> None:
    """Join the shards' slices into the round's weights and state; the shards must agree on the updates."""
    parts = [store.shards.get(round_number, shard) for shard in range(shards)]
    first = parts[0]
    for shard, part in enumerate(parts[1:], start=1):
        if part.accepted != first.accepted or part.rejected != first.rejected:
            raise StoreError(f"round {round_number}: shard {shard} judged the updates unlike shard 0")
    weights = [array for part in parts for array in part.weights]
    state = join_states([part.state for part in parts])
    _write(store, round_number, first.accepted, first.rejected, state, weights)
    store.shards.delete(round_number)


def _round(
    store: SessionStore,
    strategy: Strategy,
    settings: SessionSettings,
    round_number: int,
    clients: list[int],
    doc: dict[str, Any],
) -> tuple[RoundContext, Iterator[FitRes | Failure], list[Failure]]:
    """The round as the strategy sees it: its context, its stored updates (a stream) and its failures."""
    current = store.weights.get(round_number)
    state = store.strategy.server(round_number)
    if state is None:
        if strategy.stateful and round_number > 0:
            raise StoreError(f"session {store.id}: no {strategy.name} state stored for round {round_number}")
        state = StrategyState()
    selected = [int(c) for c in doc.get("selected", clients)]
    marks = {int(m["client"]): m for m in store.updates.marks(round_number, clients)}
    # Updates rejected when they were stored (or by an earlier attempt of this aggregation).
    rejected = {
        c: str(m.get("reason") or "rejected")
        for c, m in marks.items()
        if m.get("status") == UpdateStatus.REJECTED
    }
    failures = [Failure(c, NO_UPDATE) for c in selected if c not in marks]
    failures += [Failure(c, reason, rejected=True) for c, reason in sorted(rejected.items())]
    usable = [c for c in clients if c in marks and c not in rejected]
    base = FitConfig.from_model(settings.model)
    instructions = {int(c): FitConfig.from_json(f) for c, f in (doc.get("fit") or {}).items()}
    context = RoundContext(
        round_number=round_number,
        current=current,
        state=state,
        clients=store.strategy.clients(round_number),
        num_selected=len(selected),
        num_clients=settings.total_clients,
        seed=settings.server.seed,
    )
    codec = settings.server.compression.build()
    results = fit_results(store, round_number, usable, instructions, base, codec=codec, reference=current)
    return context, results, failures


class LateUpdates:
    """semi_async: the late updates a round folds in, as the strategy streams them.

    A late update of round ``r`` trained on ``w_r``; folded into round ``r'`` it is rebased onto
    ``w_r'`` (``w_r' + (w - w_r)``: its own step, taken from the current model) and its examples
    count ``s(r' - r)`` times (``server_config.staleness``). One is read at a time, with its
    round's weights: memory O(model). Unreadable or invalid ones are marked rejected on their own
    keys and never reach the strategy, so its verdicts stay about the round's own clients.
    """

    def __init__(
        self, store: SessionStore, settings: SessionSettings, round_number: int, current: Weights
    ) -> None:
        self.store = store
        self.settings = settings
        self.round_number = round_number
        self.current = current
        self.accepted: list[tuple[int, int]] = []

    def results(self, late: Sequence[tuple[int, int]]) -> Iterator[FitRes]:
        store, server = self.store, self.settings.server
        codec, base = server.compression.build(), FitConfig.from_model(self.settings.model)
        for late_round, client in late:
            staleness = self.round_number - late_round
            if not store.weights.has(late_round):
                reason = f"its round's weights are pruned ({staleness} rounds late, keep_updates {server.keep_updates})"
                self._reject(late_round, client, reason)
                continue
            trained_on = store.weights.get(late_round)
            marks = store.updates.marks(late_round, [client])
            if not marks or marks[0].get("status") == UpdateStatus.REJECTED:
                continue  # rejected by an earlier attempt of this aggregation
            told = store.rounds.instructions(late_round, client)
            instructions = {client: FitConfig.from_json(told)} if told else {}
            for item in fit_results(
                store, late_round, [client], instructions, base, codec=codec, reference=trained_on
            ):
                if isinstance(item, Failure):
                    self._reject(late_round, client, item.reason)
                    continue
                rebased = [
                    np.asarray(c, dtype=np.float64) + (np.asarray(w, dtype=np.float64) - b)
                    for c, w, b in zip(self.current, item.weights, trained_on, strict=True)
                ]
                weight = staleness_weight(server.staleness, staleness)
                result = replace(item, weights=cast_like(rebased, self.current), weight=weight)
                invalid = why_invalid(result, self.current)
                if invalid is not None:
                    self._reject(late_round, client, invalid)
                    continue
                self.accepted.append((late_round, client))
                yield result

    def _reject(self, late_round: int, client: int, reason: str) -> None:
        print(f"rejected late update of client {client} (round {late_round}): {reason}", file=sys.stderr)
        self.store.updates.mark(late_round, client, UpdateStatus.REJECTED, reason)


def _late_metrics(store: SessionStore, round_number: int, late: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """rounds.csv's figures of the late updates a round folded: how many, their staleness."""
    if not late:
        return {}
    status = {
        (late_round, int(m["client"])): m.get("status")
        for late_round in sorted({r for r, _ in late})
        for m in store.updates.marks(late_round, [c for r, c in late if r == late_round])
    }
    staleness = [round_number - r for r, c in late if status.get((r, c)) == UpdateStatus.ACCEPTED]
    return {
        "late_folded": len(staleness),
        "staleness_mean": sum(staleness) / max(len(staleness), 1),
        "staleness_max": max(staleness, default=0),
    }


def _fit(
    strategy: Strategy,
    context: RoundContext,
    results: Iterator[FitRes | Failure],
    failures: list[Failure],
    clients: list[int],
) -> FitOutcome:
    try:
        return strategy.aggregate_fit(context, results, failures)
    except NothingToAggregate as exc:
        raise StoreError(
            f"round {context.round_number}: no valid update among clients {clients} ({exc})"
        ) from None


def _write(
    store: SessionStore,
    round_number: int,
    accepted: list[int],
    rejected: dict[int, str],
    state: StrategyState,
    weights: Weights,
) -> None:
    """Marks first, then state, then weights: an aggregator that dies at any line is re-run to the same result."""
    for client, reason in rejected.items():
        print(f"rejected update of client {client}: {reason}", file=sys.stderr)
        store.updates.mark(round_number, client, UpdateStatus.REJECTED, reason)
    for client in accepted:
        store.updates.mark(round_number, client, UpdateStatus.ACCEPTED, "")
    store.strategy.put_server(round_number + 1, state)
    store.weights.put(round_number + 1, weights)


def fit_results(
    store: SessionStore,
    round_number: int,
    clients: list[int],
    instructions: dict[int, FitConfig],
    base: FitConfig,
    *,
    codec: Codec = NONE,
    reference: Weights | None = None,
) -> Iterator[FitRes | Failure]:
    """The round's stored updates of ``clients``, one at a time and decoded by the session's
    ``codec`` against ``reference`` (the round's weights), as the strategy reads them."""
    for item in store.updates.stream(round_number, clients, codec=codec, reference=reference):
        if isinstance(item, UnreadableUpdate):
            yield Failure(item.client, item.reason, rejected=True)
            continue
        yield FitRes(
            item.client,
            item.weights,
            item.num_examples,
            instructions.get(item.client, base),
            loss=item.loss,
            accuracy=item.accuracy,
        )


def _fold_buffer(store: SessionStore, settings: SessionSettings, version: int) -> dict[str, Any]:
    """Async mode: version ``version``'s claimed buffer into version ``version + 1`` (FedBuff).

    Streams the buffer one update at a time, each against the weights of the version it trained
    on (read once per version: the buffer comes sorted by it). Re-run after dying at any line it
    makes the same version: the claims are fixed, and stored weights are not written again.
    """
    server = settings.server
    marks = store.updates.claimed(version)
    if not marks:
        raise StoreError(f"version {version}: no update was claimed for its buffer")
    rejected: dict[str, str] = {}
    if not store.weights.has(version + 1):
        current = store.weights.get(version)
        bases: dict[int, Weights] = {version: current}

        def base_of(trained_on: int) -> Weights:
            if trained_on not in bases:
                bases.clear()  # sorted by version: one older model held at a time
                bases.update({version: current, trained_on: store.weights.get(trained_on)})
            return bases[trained_on]

        step = BufferStep(current, server.staleness, server.server_learning_rate)
        codec = server.compression.build()
        for mark, item in store.updates.stream_claimed(version, codec=codec, reference_of=base_of):
            if isinstance(item, UnreadableUpdate):
                rejected[_dispatch_key(mark)] = item.reason
                store.updates.mark(int(mark["round"]), item.client, UpdateStatus.REJECTED, item.reason)
                continue
            trained_on = int(mark["version"])
            step.add(item.weights, base_of(trained_on), item.num_examples, version - trained_on)
        if not step.examples:
            raise StoreError(f"version {version}: no readable update in its buffer ({rejected})")
        store.weights.put(version + 1, step.apply())
    # a re-run after the weights were written finds the unreadable ones by their marks
    rejected |= {
        _dispatch_key(m): str(m.get("reason")) for m in marks if m.get("status") == UpdateStatus.REJECTED
    }
    usable = [m for m in marks if _dispatch_key(m) not in rejected]
    staleness = [version - int(m["version"]) for m in usable]
    examples = sum(int(m["num_examples"]) for m in usable)
    weights = store.weights.get(version + 1)
    dataset = load_dataset(settings.data)
    loss, accuracy = evaluate(weights, dataset.x_test, dataset.y_test, settings.model, dataset.num_classes)
    metrics = {
        "round": version,
        "accuracy": float(accuracy),
        "loss": float(loss),
        "train_loss": sum(m["loss"] * m["num_examples"] for m in usable) / max(examples, 1),
        "train_accuracy": sum(m["accuracy"] * m["num_examples"] for m in usable) / max(examples, 1),
        "accepted": [int(m["client"]) for m in usable],
        "rejected": rejected,
        "examples": int(examples),
        "update_bytes": sum(int(m.get("payload_bytes") or 0) for m in marks),
        "strategy": "fedbuff",
        "staleness_mean": sum(staleness) / max(len(staleness), 1),
        "staleness_max": max(staleness, default=0),
    }
    store.rounds.finish(version, metrics)
    return metrics


def _dispatch_key(mark: dict[str, Any]) -> str:
    """``client/dispatch``: one client may have several updates in a buffer."""
    return f"{int(mark['client'])}/{int(mark['round'])}"
