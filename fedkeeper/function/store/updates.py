"""Clients' updates: at most one per ``(session, round, client)``, however often a client runs.

An update is stored with the session's codec (``store/codecs.py``): its document records the codec
(``codec``) and the payload's size (``payload_bytes``). Top-k's residual (what the client has not
sent yet) is written in the same document (``residual``), so a retried or revived client can never
lose a residual or feed one back twice; a client's older residuals are dropped once a newer one is
stored, and retention never prunes them (a client's latest residual may be many rounds old).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymongo import ASCENDING, DESCENDING, ReturnDocument

from fedkeeper.function.errors import InvalidUpdate
from fedkeeper.function.store import codecs
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import ClientAnswers, store_errors, utcnow
from fedkeeper.function.store.statuses import UpdateStatus

# An async update no buffer holds yet (rejected ones are never claimed).
_UNCLAIMED: dict[str, Any] = {
    "consumed_by": None,
    "version": {"$exists": True},
    "status": UpdateStatus.RECEIVED,
}
# semi_async: a late client's update of a sync round that no round took yet.
_UNCOUNTED: dict[str, Any] = {
    "consumed_by": {"$exists": False},
    "version": {"$exists": False},
    "status": UpdateStatus.RECEIVED,
}


@dataclass(frozen=True)
class StoredUpdate:
    client: int
    num_examples: int
    weights: wire.Weights
    loss: float
    accuracy: float


@dataclass(frozen=True)
class UnreadableUpdate:
    """A stored update that cannot be decoded or fails its checksum."""

    client: int
    reason: str


@store_errors
class Updates(ClientAnswers):
    """The ``updates`` collection, unique on ``(session, round, client)``."""

    collection = "updates"

    def put(
        self,
        round_number: int,
        client: int,
        weights: Sequence[np.ndarray],
        num_examples: int,
        loss: float,
        accuracy: float,
        activation_id: str | None = None,
        attempt: int | None = None,
        *,
        codec: codecs.Codec = codecs.NONE,
        reference: Sequence[np.ndarray] | None = None,
        version: int | None = None,
    ) -> bool:
        """Store a client's update, encoded with ``codec`` against ``reference`` (the round's global
        weights); ``False`` (and nothing written) when one is already there.

        In async mode ``round_number`` is the activation's dispatch number and ``version`` the model
        version it trained on (``reference``); the update waits, unclaimed, for a buffer (:meth:`claim`).

        Raises :class:`InvalidUpdate` when the update does not fit the codec.
        """
        if num_examples <= 0:
            raise InvalidUpdate(f"client {client}: num_examples must be positive, got {num_examples}")
        if self.has(round_number, client):
            return False
        if codec.on_delta and reference is None:
            raise ValueError(f"codec {codec.name} encodes against the round's weights: pass reference")
        residual = self.residual(round_number, client, weights) if codec.feedback else None
        encoded = codecs.compress(weights, reference or [], codec, residual)
        key = {"session": self.session_id, "round": round_number, "client": client}
        ref = self._blobs.put(
            wire.encode(encoded.arrays), session=self.session_id, round=round_number, client=client
        )
        kept = None
        if encoded.residual is not None:
            kept = self._blobs.put(wire.encode(encoded.residual), **key, residual=True)
        stored = self._insert_once(
            {
                **key,
                "blob": ref,
                "checksum": wire.checksum(encoded.arrays),
                "codec": codec.tag(),
                "payload_bytes": int(ref["size"]),
                "residual": kept,
                "residual_checksum": None if encoded.residual is None else wire.checksum(encoded.residual),
                "num_examples": int(num_examples),
                "loss": float(loss),
                "accuracy": float(accuracy),
                "activation_id": activation_id,
                "attempt": attempt,
                "status": UpdateStatus.RECEIVED,
                "created_at": utcnow(),
                **({} if version is None else {"version": int(version), "consumed_by": None}),
            },
            ref,
            kept,
        )
        if not stored:
            return False
        if kept is not None:
            self._drop_residuals(client, before=round_number)
        return True

    def residual(self, round_number: int, client: int, like: Sequence[np.ndarray]) -> wire.Weights | None:
        """What ``client``'s latest update before ``round_number`` left unsent (None: nothing yet).

        Raises :class:`InvalidUpdate` when it no longer fits the model (``like``) or fails its checksum.
        """
        doc = self._col.find_one(
            {
                "session": self.session_id,
                "client": client,
                "round": {"$lt": round_number},
                "residual": {"$ne": None},
            },
            {"residual": 1, "residual_checksum": 1, "round": 1},
            sort=[("round", DESCENDING)],
        )
        if doc is None:
            return None
        arrays = wire.decode(self._blobs.get(doc["residual"]))
        if wire.checksum(arrays) != doc["residual_checksum"]:
            raise InvalidUpdate(f"client {client}: residual of round {doc['round']} fails its checksum")
        try:
            wire.validate_like(arrays, [np.asarray(a) for a in like])
        except InvalidUpdate as exc:
            raise InvalidUpdate(f"client {client}: residual of round {doc['round']}: {exc}") from None
        return arrays

    def _drop_residuals(self, client: int, before: int) -> None:
        """Delete ``client``'s residuals older than round ``before`` (the newest one supersedes them)."""
        old = {
            "session": self.session_id,
            "client": client,
            "round": {"$lt": before},
            "residual": {"$ne": None},
        }
        for doc in self._col.find(old, {"residual": 1}):
            self._blobs.delete(doc["residual"])
            self._col.update_one({"_id": doc["_id"]}, {"$set": {"residual": None}})

    def reject(
        self,
        round_number: int,
        client: int,
        reason: str,
        activation_id: str | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Record that the client answered with an update that failed its checks (no weights kept).

        It counts as the client's answer (a retry would send the same), and the aggregator reports
        it among the round's rejected updates. ``False`` when an update was already there.
        """
        return self._insert_once(
            {
                "session": self.session_id,
                "round": round_number,
                "client": client,
                "blob": None,
                "num_examples": 0,
                "loss": float("nan"),
                "accuracy": float("nan"),
                "activation_id": activation_id,
                "attempt": attempt,
                "status": UpdateStatus.REJECTED,
                "reason": reason,
                "created_at": utcnow(),
            }
        )

    def stream(
        self,
        round_number: int,
        clients: Sequence[int],
        *,
        codec: codecs.Codec = codecs.NONE,
        reference: Sequence[np.ndarray] | None = None,
    ) -> Iterator[StoredUpdate | UnreadableUpdate]:
        """Updates one at a time, decoded with the session's ``codec`` against ``reference`` (the
        round's global weights); a corrupt or malformed one yields why."""
        if codec.on_delta and reference is None:
            raise ValueError(f"codec {codec.name} decodes against the round's weights: pass reference")
        cursor = self._col.find(
            {"session": self.session_id, "round": round_number, "client": {"$in": list(clients)}},
            batch_size=1,
        ).sort("client", ASCENDING)
        for doc in cursor:
            if doc.get("blob") is None:  # rejected when it was written
                yield UnreadableUpdate(int(doc["client"]), str(doc.get("reason") or "no weights stored"))
                continue
            try:
                codecs.check_tag(doc.get("codec"), codec)
                payload = wire.decode(self._blobs.get(doc["blob"]))
                if wire.checksum(payload) != doc["checksum"]:
                    raise InvalidUpdate(f"client {doc['client']}: update fails its checksum")
                weights = codecs.decompress(payload, reference or [], codec)
            except InvalidUpdate as exc:
                yield UnreadableUpdate(int(doc["client"]), str(exc))
                continue
            yield StoredUpdate(
                int(doc["client"]), int(doc["num_examples"]), weights, doc["loss"], doc["accuracy"]
            )

    def marks(self, round_number: int, clients: Sequence[int]) -> list[dict[str, Any]]:
        """Each update's bookkeeping (status, examples, local metrics), without its weights."""
        cursor = self._col.find(
            {"session": self.session_id, "round": round_number, "client": {"$in": list(clients)}},
            {"blob": 0, "residual": 0},
        ).sort("client", ASCENDING)
        return list(cursor)

    # ------------------------------------------------------------------ async mode's buffers
    def delivered(self, dispatches: Sequence[int]) -> dict[tuple[int, int], UpdateStatus]:
        """``(dispatch, client)`` of the stored updates (or rejections) among ``dispatches``, and
        their status."""
        query = {"session": self.session_id, "round": {"$in": [int(d) for d in dispatches]}}
        cursor = self._col.find(query, {"round": 1, "client": 1, "status": 1})
        return {(int(d["round"]), int(d["client"])): UpdateStatus(d["status"]) for d in cursor}

    def unclaimed(self) -> int:
        """Async updates stored and not yet in any version's buffer."""
        return self._col.count_documents(_UNCLAIMED | {"session": self.session_id})

    def claim(self, version: int, buffer_size: int) -> list[dict[str, Any]]:
        """Fill version ``version``'s buffer up to ``buffer_size`` updates, oldest first; its marks.

        Each claim is one atomic ``find_one_and_update`` on an unclaimed update, so an update is in
        exactly one buffer however many keepers (or resumed ones) claim; what was claimed for
        ``version`` before a keeper died stays claimed for it.
        """
        claimed = self.claimed(version)
        while len(claimed) < buffer_size:
            doc = self._col.find_one_and_update(
                _UNCLAIMED | {"session": self.session_id},
                {"$set": {"consumed_by": int(version)}},
                projection={"blob": 0, "residual": 0},
                sort=[("created_at", ASCENDING), ("round", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                break
            claimed.append(doc)
        return claimed

    def claimed(self, version: int) -> list[dict[str, Any]]:
        """The marks of the updates in version ``version``'s buffer, by the version they trained on."""
        cursor = self._col.find(
            {"session": self.session_id, "consumed_by": int(version)}, {"blob": 0, "residual": 0}
        ).sort([("version", ASCENDING), ("round", ASCENDING)])
        return list(cursor)

    def stream_claimed(
        self, version: int, *, codec: codecs.Codec = codecs.NONE, reference_of: Any = None
    ) -> Iterator[tuple[dict[str, Any], StoredUpdate | UnreadableUpdate]]:
        """Version ``version``'s buffer one update at a time, each decoded against the weights it
        trained on (``reference_of(version)``), with its mark."""
        for mark in self.claimed(version):
            reference = reference_of(int(mark["version"])) if codec.on_delta else None
            for item in self.stream(
                int(mark["round"]), [int(mark["client"])], codec=codec, reference=reference
            ):
                yield mark, item

    # ------------------------------------------------------------------ semi_async's late updates
    def claim_late(self, round_number: int, late: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """Take for round ``round_number`` the stored updates of ``late`` clients (``(round,
        client)``, of earlier rounds) that no round took yet; the marks of every one it holds.

        Each claim is one atomic ``find_one_and_update`` setting ``consumed_by``, so a late update
        is taken by one round only, however many keepers (or resumed ones) claim.
        """
        by_round: dict[int, list[int]] = {}
        for number, client in late:
            if number < round_number:
                by_round.setdefault(int(number), []).append(int(client))
        if by_round:
            query = _UNCOUNTED | {
                "session": self.session_id,
                "$or": [{"round": r, "client": {"$in": cs}} for r, cs in by_round.items()],
            }
            while self._col.find_one_and_update(
                query, {"$set": {"consumed_by": int(round_number)}}, projection={"_id": 1}
            ):
                pass
        cursor = self._col.find(
            {"session": self.session_id, "consumed_by": int(round_number), "version": {"$exists": False}},
            {"blob": 0, "residual": 0},
        ).sort([("round", ASCENDING), ("client", ASCENDING)])
        return list(cursor)

    def mark(self, round_number: int, client: int, status: UpdateStatus, reason: str) -> None:
        self._col.update_one(
            {"session": self.session_id, "round": round_number, "client": client},
            {"$set": {"status": UpdateStatus(status), "reason": reason}},
        )
