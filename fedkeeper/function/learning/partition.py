"""Split a training set among clients: IID, label shards (FedAvg paper), or Dirichlet label skew.

Every partitioner returns one sorted int64 index array per client; the arrays are disjoint, cover
the whole training set, are never empty, and depend only on the labels and the sampling seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedkeeper.function.config import DataSampling

# Dirichlet sampling redraws until every client has this many examples (or n // clients if smaller).
DIRICHLET_MIN_SIZE = 10
DIRICHLET_MAX_TRIES = 1000


def partition(labels: np.ndarray, num_clients: int, sampling: DataSampling) -> list[np.ndarray]:
    """Index arrays into ``labels``, one per client, as ``sampling.method`` prescribes."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if len(labels) < num_clients:
        raise ValueError(
            f"cannot give {num_clients} clients at least one example each from {len(labels)} examples"
        )
    rng = np.random.default_rng(sampling.seed % 2**64)
    parts = _PARTITIONERS[sampling.method](labels, num_clients, sampling, rng)
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


def _iid(
    labels: np.ndarray, num_clients: int, sampling: DataSampling, rng: np.random.Generator
) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(labels)), num_clients))


def _shards(
    labels: np.ndarray, num_clients: int, sampling: DataSampling, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into ``num_clients * shards_per_client`` shards, deal them out at random."""
    num_shards = num_clients * sampling.shards_per_client
    if len(labels) < num_shards:
        raise ValueError(
            f"shards: {num_clients} clients x {sampling.shards_per_client} shards_per_client = {num_shards} "
            f"shards, but only {len(labels)} examples"
        )
    # Shuffle first so the order inside one label is random, then a stable sort groups the labels.
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, sampling.shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owners]


def _dirichlet(
    labels: np.ndarray, num_clients: int, sampling: DataSampling, rng: np.random.Generator
) -> list[np.ndarray]:
    """Per class, share its examples among clients in Dirichlet(alpha) proportions.

    Small alpha gives each client few classes. Draws repeat until every client has at least
    ``min(DIRICHLET_MIN_SIZE, n // num_clients)`` examples, as in NIID-Bench.
    """
    n = len(labels)
    min_size = max(1, min(DIRICHLET_MIN_SIZE, n // num_clients))
    classes = np.unique(labels)
    for _ in range(DIRICHLET_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_clients, sampling.alpha))
            # Clients already past an even share get no more, which keeps sizes from running away.
            open_clients = sizes < n / num_clients  # never all False: this class is not placed yet
            shares = shares * open_clients
            if shares.sum() <= 0:  # tiny alpha can underflow every open client's share to 0
                shares = open_clients.astype(np.float64)
            cuts = (np.cumsum(shares / shares.sum()) * len(members)).astype(np.int64)[:-1]
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
                sizes[client] += len(chunk)
        if sizes.min() >= min_size:
            return [np.concatenate(p) for p in parts]
    raise ValueError(
        f"dirichlet: no draw in {DIRICHLET_MAX_TRIES} tries gave each of {num_clients} clients at least "
        f"{min_size} of {n} examples with alpha {sampling.alpha}; use a larger alpha or fewer clients"
    )


_PARTITIONERS: dict[str, Callable[[np.ndarray, int, DataSampling, np.random.Generator], list[np.ndarray]]] = {
    "iid": _iid,
    "shards": _shards,
    "dirichlet": _dirichlet,
}
