"""A stratified train/test split, the same rows as scikit-learn's, without importing scikit-learn.

``stratified_split(y, f, seed)`` returns the index arrays of
``sklearn.model_selection.train_test_split(..., test_size=f, random_state=seed, stratify=y)``
(its ``StratifiedShuffleSplit``, step for step on the same ``RandomState``). Importing
scikit-learn's model selection costs a cold function about 1.5 CPU-seconds, more than the rest
of the aggregator's work; ``tests/learning/test_datasets.py`` checks the rows against scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np


class SplitError(ValueError):
    """The labels cannot be split with every class on both sides."""


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of each class to draw: floor of the proportional share, leftovers by largest remainder
    (ties broken at random); scikit-learn's ``utils.extmath._approximate_mode``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices, each class in both in proportion to its size."""
    if not 0 <= seed < 2**32:
        raise SplitError(f"seed must lie in [0, 2**32), got {seed}")
    n_samples = len(labels)
    n_test = math.ceil(test_fraction * n_samples)
    n_train = n_samples - n_test
    classes, y_indices, class_counts = np.unique(labels, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise SplitError(f"label {classes[class_counts.argmin()]} has a single example; each needs two")
    if min(n_train, n_test) < len(classes):
        raise SplitError(
            f"{n_train} training and {n_test} test examples cannot hold each of {len(classes)} classes"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)
