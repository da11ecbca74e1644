"""Hierarchical aggregation: groups of updates reduced to partial sums, then combined.

A :attr:`~fedkeeper.function.strategies.base.Strategy.hierarchy_exact` strategy reads the round's
updates only through their example-weighted mean. A local aggregator checks each update of its
group with the same gate as :meth:`Strategy.aggregate_fit` (:func:`why_invalid`) and folds the
valid ones into a float64 :class:`Partial`; the global aggregator adds the partials up, divides
once and hands the mean to :meth:`Strategy.step_from_mean`. The sums are those of the flat
aggregation in another order, so the result equals it to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fedkeeper.function.strategies.base import why_invalid
from fedkeeper.function.strategies.records import Failure, FitRes, Weights
from fedkeeper.function.strategies.streaming import WeightedSum


@dataclass(frozen=True, eq=False)
class Partial:
    """One group's reduction: ``sums`` of ``num_examples * update`` (float64), and who counted."""

    sums: list[np.ndarray]
    examples: float
    accepted: list[int]
    rejected: dict[int, str]


def reduce_group(results: Iterable[FitRes | Failure], reference: Weights) -> Partial:
    """The partial of one group's ``results``: valid updates summed, the others rejected with why."""
    total = WeightedSum(reference)
    accepted: list[int] = []
    rejected: dict[int, str] = {}
    for item in results:
        if isinstance(item, Failure):
            if item.rejected:
                rejected[item.client] = item.reason
            continue
        reason = why_invalid(item, reference)
        if reason is not None:
            rejected[item.client] = reason
            continue
        total.add(item.weights, item.num_examples)
        accepted.append(item.client)
    return Partial(total.sums, total.total, accepted, rejected)


def combine(partials: Sequence[Partial], like: Weights) -> Partial:
    """The round's partials added up (group order): one partial of every group's updates."""
    sums = [np.zeros(np.shape(array), dtype=np.float64) for array in like]
    examples = 0.0
    accepted: list[int] = []
    rejected: dict[int, str] = {}
    for part in partials:
        for total, array in zip(sums, part.sums, strict=True):
            total += array
        examples += part.examples
        accepted += part.accepted
        rejected |= part.rejected
    return Partial(sums, examples, accepted, rejected)


def mean_of(partial: Partial) -> list[np.ndarray]:
    """The example-weighted mean of a partial's updates (float64; its sums divided in place)."""
    for total in partial.sums:
        total /= partial.examples
    return partial.sums
