"""The JSON shapes that cross function boundaries.

Direct mode (platforms with ``store_access``): the keeper sends only keys; the client reads the
round's global weights and its partition from the store and writes its update there itself::

    {"session": "s-…", "round": 3, "client": 5, "attempt": 1}

Inline mode (platforms without store access, reached through ``fl_invoker_weights_update``):
the invoker sends a :class:`ClientJob` and receives a :class:`ClientReply`. Weights are base64
``.npz`` (:func:`fedkeeper.function.store.weights.to_b64`), never pickles.

Federated evaluation is the same call with ``"task": "evaluate"``
(:class:`~fedkeeper.function.store.statuses.Task`): direct, the keys; inline, an
:class:`EvaluateJob` answered by an :class:`EvaluateReply`. A call without ``task`` trains, so a
fit call is what it always was.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class DataRef(TypedDict):
    dataset: dict[str, Any]  # fedkeeper.function.config.TrainingTestData as JSON
    indices: list[int]  # the client's rows of the training set


class ClientJob(TypedDict):
    session: str
    round: int
    client: int
    attempt: int
    weights: str  # base64 .npz of the round's global weights
    model: dict[str, Any]  # fedkeeper.function.config.ModelParams as JSON, with the round's instructions
    data: DataRef
    fit: NotRequired[dict[str, Any]]  # fedkeeper.function.strategies.FitConfig (default: from model)
    correction: NotRequired[str]  # base64 .npz added to each gradient (SCAFFOLD's c - c_i)


class EvaluateJob(TypedDict):
    session: str
    round: int  # the round whose new global weights are evaluated
    client: int
    attempt: int
    task: str  # "evaluate"
    weights: str  # base64 .npz of the round's new global weights
    model: dict[str, Any]  # fedkeeper.function.config.ModelParams as JSON
    data: DataRef  # indices: the client's rows of the test set (its held-out data)


class EvaluateReply(TypedDict):
    client: int
    round: int
    num_examples: int
    loss: float
    accuracy: float


class ClientReply(TypedDict):
    client: int
    round: int
    weights: str  # base64 .npz of the locally trained weights
    num_examples: int
    loss: float
    accuracy: float


# The edge gateway's HTTP contract (``POST /v1/clients/{client}/train`` with a ClientJob). It lives
# here, not in fedkeeper.host.edge, because the invoker calls the gateway from inside a function, whose
# zip carries the tasks and providers but not the gateway itself.
EDGE_EXECUTION_HEADER = "X-Edge-Execution-Id"  # the gateway's id of one train call
EDGE_TIMEOUT_HEADER = "X-Edge-Timeout-S"  # how long the caller waits for the guest
EDGE_MAX_REQUEST_BYTES = 8 * 1024 * 1024
EDGE_MAX_JOB_TIMEOUT_S = 900.0
EDGE_STATE_FILE = "gateway.json"  # the gateway daemon's URL, pid and size, in its state folder
EDGE_TOKEN_FILE = "gateway.token"  # the gateway's bearer token (0600), in its state folder
