"""Aggregation in shards: each of M activations aggregates one contiguous range of the arrays.

A :attr:`~fedkeeper.function.strategies.base.Strategy.shard_exact` strategy computes every array
of the next weights and state from the same array of its inputs, so running it on a range of
arrays gives exactly that range of the unsharded result. What must not differ between shards is
which updates count: every shard checks each whole update, as the unsharded aggregation does,
before it folds in its range, so all shards accept and reject the same updates for the same
reasons.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace

from fedkeeper.function.strategies.base import RoundContext, why_invalid
from fedkeeper.function.strategies.records import Failure, FitRes, Weights
from fedkeeper.function.strategies.state import StrategyState


def array_ranges(sizes: Sequence[int], shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` ranges of the arrays, balanced by size.

    Shard ``k`` ends at the first array whose cumulative size reaches ``(k + 1) / shards`` of the
    total; with more shards than arrays some ranges are empty.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    total = sum(sizes)
    bounds = [0]
    seen = 0
    index = 0
    for k in range(1, shards):
        while index < len(sizes) and seen * shards < total * k:
            seen += sizes[index]
            index += 1
        bounds.append(index)
    bounds.append(len(sizes))
    return list(itertools.pairwise(bounds))


def shard_context(context: RoundContext, start: int, stop: int) -> RoundContext:
    """The round as the shard of arrays ``[start, stop)`` sees it (state arrays sliced alike)."""
    state = StrategyState(
        {name: list(arrays[start:stop]) for name, arrays in context.state.arrays.items()},
        context.state.metrics,
    )
    return replace(context, current=list(context.current[start:stop]), state=state)


def shard_results(
    results: Iterable[FitRes | Failure], reference: Weights, start: int, stop: int
) -> Iterator[FitRes | Failure]:
    """Each update checked whole against ``reference``, then cut to arrays ``[start, stop)``."""
    for item in results:
        if isinstance(item, Failure):
            yield item
            continue
        reason = why_invalid(item, reference)
        if reason is not None:
            yield Failure(item.client, reason, rejected=True)
            continue
        yield replace(item, weights=list(item.weights[start:stop]))


def join_states(states: Sequence[StrategyState]) -> StrategyState:
    """The shards' state slices, in shard order, as one state (the first shard's metrics)."""
    names = list(states[0].arrays)
    joined = {name: [array for state in states for array in state.arrays[name]] for name in names}
    return StrategyState(joined, states[0].metrics)
