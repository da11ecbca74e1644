"""Partitioners: disjoint, complete, non-empty, deterministic, and label-skewed when asked."""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.function.config import DataSampling
from fedkeeper.function.learning.partition import partition

LABELS = np.repeat(np.arange(10), 120)[np.random.default_rng(0).permutation(1200)]


def _check_valid(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)) == n  # disjoint and complete


def _classes_per_client(parts: list[np.ndarray]) -> list[int]:
    return [len(np.unique(LABELS[p])) for p in parts]


@pytest.mark.parametrize(
    "sampling",
    [
        DataSampling(method="iid", seed=4),
        DataSampling(method="shards", shards_per_client=2, seed=4),
        DataSampling(method="dirichlet", alpha=0.1, seed=4),
        DataSampling(method="dirichlet", alpha=100.0, seed=4),
    ],
    ids=["iid", "shards", "dirichlet-0.1", "dirichlet-100"],
)
def test_partition_is_disjoint_complete_nonempty_and_deterministic(sampling: DataSampling) -> None:
    parts = partition(LABELS, 8, sampling)
    _check_valid(parts, len(LABELS), 8)
    again = partition(LABELS, 8, sampling)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 8, sampling.model_copy(update={"seed": 5}))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_gives_every_client_nearly_every_class_and_equal_sizes() -> None:
    parts = partition(LABELS, 8, DataSampling(method="iid"))
    assert min(_classes_per_client(parts)) >= 9
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_shards_give_each_client_at_most_shards_per_client_labels_plus_boundaries() -> None:
    parts = partition(LABELS, 10, DataSampling(method="shards", shards_per_client=2, seed=1))
    _check_valid(parts, len(LABELS), 10)
    # 20 shards of 60 examples over 10 labels of 120: each shard holds exactly one label.
    assert max(_classes_per_client(parts)) <= 2
    assert all(len(p) == 120 for p in parts)


def test_small_alpha_dirichlet_is_label_skewed_and_large_alpha_is_not() -> None:
    skewed = partition(LABELS, 10, DataSampling(method="dirichlet", alpha=0.05, seed=2))
    even = partition(LABELS, 10, DataSampling(method="dirichlet", alpha=1000.0, seed=2))

    def top_label_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts]))

    assert top_label_share(skewed) > 0.5
    assert top_label_share(even) < 0.2


def test_dirichlet_respects_minimum_client_size() -> None:
    parts = partition(LABELS, 20, DataSampling(method="dirichlet", alpha=0.05, seed=9))
    _check_valid(parts, len(LABELS), 20)
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize(
    ("labels", "clients", "sampling", "message"),
    [
        (np.arange(3), 5, DataSampling(), "5 clients at least one example each from 3"),
        (np.arange(10), 4, DataSampling(method="shards", shards_per_client=3), "12 shards, but only 10"),
        (np.arange(10), 0, DataSampling(), "at least 1"),
        (np.zeros((4, 2)), 2, DataSampling(), "one-dimensional"),
    ],
)
def test_impossible_partition_raises_clear_error(
    labels: np.ndarray, clients: int, sampling: DataSampling, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        partition(labels, clients, sampling)


def test_dirichlet_gives_up_with_advice_when_clients_cannot_all_be_filled() -> None:
    # 2 examples per client at best, minimum size 2 -> every draw must be perfectly even: impossible-ish.
    labels = np.zeros(40, dtype=np.int64)
    with pytest.raises(ValueError, match="larger alpha or fewer clients"):
        partition(labels, 20, DataSampling(method="dirichlet", alpha=0.01, seed=0))
