"""The JSON shapes that cross function boundaries.

Direct mode (platforms with ``store_access``): the keeper sends only keys; the client reads the
round's global weights and its partition from the store and writes its update there itself::

    {"session": "s-…", "round": 3, "client": 5, "attempt": 1}

Inline mode (platforms without store access, reached through ``fl_invoker_weights_update``):
the invoker sends a :class:`ClientJob` and receives a :class:`ClientReply`. Weights are base64
``.npz`` (:func:`fedkeeper.store.weights.to_b64`), never pickles.
"""

from __future__ import annotations

from typing import Any, TypedDict


class DataRef(TypedDict):
    dataset: dict[str, Any]  # fedkeeper.config.TrainingTestData as JSON
    indices: list[int]  # the client's rows of the training set


class ClientJob(TypedDict):
    session: str
    round: int
    client: int
    attempt: int
    weights: str  # base64 .npz of the round's global weights
    model: dict[str, Any]  # fedkeeper.config.ModelParams as JSON
    data: DataRef


class ClientReply(TypedDict):
    client: int
    round: int
    weights: str  # base64 .npz of the locally trained weights
    num_examples: int
    loss: float
    accuracy: float
