"""The states a session, a round and an update go through, and what a client activation does, as
stored (values are MongoDB's)."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """A session's phase (Kubernetes style); only ``SUCCEEDED`` is final."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def completed(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class RoundStatus(StrEnum):
    """``OPEN`` (selection written) -> ``CLOSED`` (included set frozen) -> ``AGGREGATED``."""

    OPEN = "open"
    CLOSED = "closed"
    AGGREGATED = "aggregated"


class UpdateStatus(StrEnum):
    """``RECEIVED`` when written; the aggregator marks it ``ACCEPTED`` or ``REJECTED``."""

    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"  # failed its checks when written or when aggregated; no weights count


class Task(StrEnum):
    """What an activation of ``fl_client`` does: train (``FIT``) or evaluate the new global
    weights on its held-out data (``EVALUATE``, federated evaluation)."""

    FIT = "fit"
    EVALUATE = "evaluate"


class Reconfiguration(StrEnum):
    """The conditions of a membership change (``host/reconfiguration.py``): made, then reverted or kept."""

    CHANGED = "Reconfigured"
    REVERTED = "ReconfigurationReverted"
    KEPT = "ReconfigurationKept"
