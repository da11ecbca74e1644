"""The activation ledger: every invocation the keeper makes, by id, attempt and outcome.

One document per ``(session, round, function, client, attempt)``. The keeper writes an entry
*before* it trusts an activation to exist and settles it once its record arrives, so after a
crash the ledger tells which activations may still be running.

A client's fit and evaluate activations of one round share the function and the numbering of
attempts (an evaluation's attempts follow the fit's), so the key stays unique; ``task`` tells them
apart, and entries from before it was stored are fit.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from fedkeeper.function.invoke.base import ActivationRecord, ActivationStatus
from fedkeeper.function.store.db import SessionStore
from fedkeeper.function.store.mongo import store_errors, translated_errors, utcnow
from fedkeeper.function.store.statuses import Task

DUPLICATE_KEY = 11000  # MongoDB's error code for a second document with a unique index's key
SERVER = -1  # ``client`` value of entries for the managing functions


def aggregation_shard(shard: int) -> int:
    """``client`` value of the entries of aggregation shard ``shard`` (-2, -3, ...)."""
    return SERVER - 1 - shard


LOCAL_AGGREGATORS = -1000  # ``client`` values at or below: local aggregators (topology hierarchical)


def local_aggregator(group: int) -> int:
    """``client`` value of the entries of group ``group``'s local aggregator (-1000, -1001, ...)."""
    return LOCAL_AGGREGATORS - group


def group_of(client: int) -> int | None:
    """The group whose local aggregator a ``client`` value names; None for any other entry."""
    return LOCAL_AGGREGATORS - client if client <= LOCAL_AGGREGATORS else None


class LedgerStatus(StrEnum):
    """An attempt's outcome: the platform's (:class:`ActivationStatus`) or the keeper's own."""

    SUBMITTED = "submitted"  # recorded before it was invoked; no outcome yet
    SUCCESS = ActivationStatus.SUCCESS.value
    APPLICATION_ERROR = ActivationStatus.APPLICATION_ERROR.value
    DEVELOPER_ERROR = ActivationStatus.DEVELOPER_ERROR.value
    INTERNAL_ERROR = ActivationStatus.INTERNAL_ERROR.value
    TIMED_OUT = "timed out"  # the keeper stopped waiting for a record (lost or hung activation)
    NOT_STARTED = "not started"  # the platform refused the invocation
    # The platform, the store or the keeper was down: the attempt was not started, or was lost in
    # the outage. Such attempts do not count against a client's retries.
    UNAVAILABLE = "unavailable"
    RECORD_LOST = "record lost"  # the update is stored but the platform never showed the record

    @classmethod
    def of(cls, record: ActivationRecord) -> LedgerStatus:
        """The ledger's status for a finished record."""
        return cls(record.status.value)


@dataclass
class LedgerEntry:
    session: str
    round: int
    function: str
    client: int
    attempt: int
    platform: str
    cluster: str
    activation_id: str | None = None
    target: str | None = None  # "platform/cluster" of a client reached through the invoker
    target_activation_id: str | None = None  # the client's own execution id on that platform
    status: LedgerStatus = LedgerStatus.SUBMITTED
    error: str | None = None
    submitted_at: datetime = field(default_factory=utcnow)
    start_ms: int | None = None
    end_ms: int | None = None
    duration_ms: int | None = None
    init_ms: int | None = None  # the platform's cold-start initialisation, where it reports one
    task: Task = Task.FIT  # what a client's activation does (managing functions: fit)
    # The document's ``_id``, chosen when it is submitted: every later write finds it by it.
    id: ObjectId | None = field(default=None, compare=False)

    @property
    def key(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "round": self.round,
            "function": self.function,
            "client": self.client,
            "attempt": self.attempt,
        }

    @property
    def settled(self) -> bool:
        return self.status != LedgerStatus.SUBMITTED

    def document(self) -> dict[str, Any]:
        """The entry as the ledger stores it (``id`` as ``_id``)."""
        doc = {name: getattr(self, name) for name in _FIELDS}
        doc["_id"] = doc.pop("id")
        return doc

    @property
    def selector(self) -> dict[str, Any]:
        """The query that finds this entry's document: its ``_id`` once submitted, else its key."""
        return {"_id": self.id} if self.id is not None else self.key


_FIELDS = tuple(f.name for f in fields(LedgerEntry))

# a settlement not yet written: the entry, its status and error, and the fields to set
_Outcome = tuple[LedgerEntry, LedgerStatus, str | None, dict[str, Any]]


@store_errors
class Ledger:
    """One session's activation ledger, in the ``activations`` collection."""

    def __init__(self, session: SessionStore) -> None:
        self._col = session.store.collection("activations")
        # A batch is its thread's: async mode's aggregator call settles its own entries from a
        # worker thread while the keeper's thread polls the stream (see Keeper._train_async).
        self._batch = threading.local()
        self._session = session
        self.url = session.store.url  # named in the error when MongoDB is down

    @property
    def _queue(self) -> list[_Outcome] | None:
        """This thread's settlements held back by :meth:`batched`; None outside one."""
        queue: list[_Outcome] | None = getattr(self._batch, "queue", None)
        return queue

    @_queue.setter
    def _queue(self, queue: list[_Outcome] | None) -> None:
        self._batch.queue = queue

    @property
    def _active(self) -> int:
        """The change of the session's "active" counter this thread's batch holds back."""
        active: int = getattr(self._batch, "active", 0)
        return active

    @_active.setter
    def _active(self, delta: int) -> None:
        self._batch.active = delta

    def new_entry(
        self,
        round_number: int,
        function: str,
        client: int,
        attempt: int,
        platform: str,
        cluster: str,
        task: Task = Task.FIT,
    ) -> LedgerEntry:
        """An attempt of this session, not yet submitted."""
        return LedgerEntry(
            self._session.id, round_number, function, client, attempt, platform, cluster, task=task
        )

    def submit(self, entry: LedgerEntry) -> bool:
        """Record a new attempt; ``False`` when that attempt is already recorded."""
        return bool(self.submit_all([entry]))

    def submit_all(self, entries: list[LedgerEntry]) -> list[LedgerEntry]:
        """Record new attempts in one write; returns those recorded, in order (an attempt already
        recorded, by a keeper that died, is left out)."""
        if not entries:
            return []
        for entry in entries:
            entry.id = ObjectId()
        try:
            self._col.insert_many([e.document() for e in entries], ordered=False)
            taken: set[int] = set()
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            taken = {int(e["index"]) for e in errors}
        recorded = []
        for i, entry in enumerate(entries):
            if i in taken:
                entry.id = None
            else:
                recorded.append(entry)
        self._count_active(sum(e.status == LedgerStatus.SUBMITTED for e in recorded))
        return recorded

    def withdraw(self, entry: LedgerEntry) -> None:
        """Take back a submitted attempt the platform provably never started (refused for its
        concurrency limit, or never invoked): it is no attempt, and its number is used again."""
        self.withdraw_all([entry])

    def withdraw_all(self, entries: list[LedgerEntry]) -> None:
        """:meth:`withdraw` of several attempts, in one write."""
        ids = [e.id for e in entries if e.id is not None]
        if not ids:
            return
        result = self._col.delete_many({"_id": {"$in": ids}, "status": LedgerStatus.SUBMITTED})
        if result.deleted_count:
            self._count_active(-result.deleted_count)

    def set_activation_id(self, entry: LedgerEntry, activation_id: str) -> None:
        """Record the platform's id of a submitted attempt once the platform has accepted it."""
        entry.activation_id = activation_id
        self._col.update_one(entry.selector, {"$set": {"activation_id": activation_id}})

    def set_activation_ids(self, entries: list[LedgerEntry]) -> None:
        """Record the platform's ids (each ``entry.activation_id``) of several accepted attempts,
        in one write."""
        writes = [UpdateOne(e.selector, {"$set": {"activation_id": e.activation_id}}) for e in entries]
        if writes:
            self._col.bulk_write(writes, ordered=False)

    def settle(
        self,
        entry: LedgerEntry,
        status: LedgerStatus,
        record: ActivationRecord | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome of a submitted attempt (only the first outcome counts)."""
        status = LedgerStatus(status)
        update: dict[str, Any] = {"status": status, "error": error}
        if record is not None:
            target_id = (record.result or {}).get("target_activation")
            if target_id:
                update["target_activation_id"] = entry.target_activation_id = str(target_id)
            update.update(
                start_ms=record.start_ms,
                end_ms=record.end_ms,
                duration_ms=(record.end_ms - record.start_ms)
                if record.start_ms is not None and record.end_ms is not None
                else None,
                init_ms=record.init_ms,
            )
        if self._queue is not None:
            self._queue.append((entry, status, error, update))
        else:
            self._write_outcomes([(entry, status, error, update)])

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Within, :meth:`settle` queues its writes and the session's counters are held back;
        they go out at the end as one bulk write per outcome kind and one counter update: a poll
        that settles a thousand records costs a few round trips, not 2,000. Entries themselves
        (:meth:`submit_all`, :meth:`set_activation_ids`) are written at once: a crash must find
        them."""
        if self._queue is not None:  # within an outer batch: it writes them
            yield
            return
        self._queue = []
        try:
            yield
        finally:
            queue, self._queue = self._queue, None
            with translated_errors(self.url):
                self._write_outcomes(queue)

    def _count_active(self, delta: int) -> None:
        if not delta:
            return
        if self._queue is not None:
            self._active += delta
        else:
            self._session.record.count(active=delta)

    def _write_outcomes(self, outcomes: list[_Outcome]) -> None:
        modified = {True: 0, False: 0}  # succeeded, failed
        for ok in modified:
            group = [o for o in outcomes if (o[1] == LedgerStatus.SUCCESS) == ok]
            if not group:
                continue
            writes = [
                UpdateOne({**entry.selector, "status": LedgerStatus.SUBMITTED}, {"$set": update})
                for entry, _, _, update in group
            ]
            modified[ok] = self._col.bulk_write(writes, ordered=False).modified_count
            if modified[ok] == len(group):  # else another keeper settled some first: which, unknown
                for entry, status, error, _ in group:
                    entry.status, entry.error = status, error
        active, self._active = self._active - modified[True] - modified[False], 0
        if active or modified[True] or modified[False]:
            self._session.record.count(active=active, succeeded=modified[True], failed=modified[False])

    def open_entries(self, round_number: int, task: Task = Task.FIT) -> list[LedgerEntry]:
        """Attempts of the round's ``task`` still waiting for a record."""
        query = {"session": self._session.id, "round": round_number, "status": LedgerStatus.SUBMITTED}
        return [_entry(doc) for doc in self._col.find({**query, **_task(task)})]

    def open_client_entries(self) -> list[LedgerEntry]:
        """Async mode: every client activation still waiting for a record, whatever its dispatch."""
        query = {"session": self._session.id, "client": {"$gte": 0}, "status": LedgerStatus.SUBMITTED}
        return [_entry(doc) for doc in self._col.find({**query, **_task(Task.FIT)})]

    def last_client_round(self) -> int:
        """The highest round (async mode: dispatch) number of a client activation; -1 before any."""
        doc = self._col.find_one(
            {"session": self._session.id, "client": {"$gte": 0}}, {"round": 1}, sort=[("round", DESCENDING)]
        )
        return -1 if doc is None else int(doc["round"])

    def round_entries(self, round_number: int) -> list[LedgerEntry]:
        """Every attempt of the round, in one query."""
        return [_entry(doc) for doc in self._col.find({"session": self._session.id, "round": round_number})]

    def attempts(self, round_number: int, function: str, client: int) -> int:
        """The last attempt number used (fit and evaluate attempts are numbered together)."""
        return self._col.count_documents(
            {"session": self._session.id, "round": round_number, "function": function, "client": client}
        )

    def budgets(
        self, round_number: int, functions: Collection[str], since: datetime | None, task: Task = Task.FIT
    ) -> dict[tuple[str, int], tuple[int, int]]:
        """``(function, client)`` -> (:meth:`attempts`, attempts of ``task`` that count against the
        retry budget: not lost to an outage, made after ``since``) of the round's ``functions``,
        from one query (a round of a thousand clients is one round trip, not 2,000)."""
        if since is not None:  # MongoDB keeps milliseconds; compare as a query would
            since = since.replace(microsecond=since.microsecond // 1000 * 1000)
        query = {"session": self._session.id, "round": round_number, "function": {"$in": list(functions)}}
        counts: dict[tuple[str, int], tuple[int, int]] = {}
        fields = {"function": 1, "client": 1, "status": 1, "submitted_at": 1, "task": 1}
        for doc in self._col.find(query, fields):
            attempts, charged = counts.get((doc["function"], doc["client"]), (0, 0))
            of_task = (doc.get("task") == Task.EVALUATE) == (task is Task.EVALUATE)  # as _task() selects
            counted = (
                of_task
                and doc["status"] != LedgerStatus.UNAVAILABLE
                and (since is None or doc["submitted_at"] >= since)
            )
            counts[(doc["function"], doc["client"])] = (attempts + 1, charged + int(counted))
        return counts

    def entries(self) -> Iterator[LedgerEntry]:
        cursor = self._col.find({"session": self._session.id}).sort(
            [("round", ASCENDING), ("submitted_at", ASCENDING)]
        )
        for doc in cursor:
            yield _entry(doc)


def _task(task: Task) -> dict[str, Any]:
    """The query of ``task``'s entries (fit: also those stored before ``task`` was)."""
    return {"task": task.value} if task is not Task.FIT else {"task": {"$ne": Task.EVALUATE.value}}


def _entry(doc: dict[str, Any]) -> LedgerEntry:
    entry = LedgerEntry(**{k: v for k, v in doc.items() if k in _FIELDS and k != "id"}, id=doc.get("_id"))
    entry.status = LedgerStatus(entry.status)
    entry.task = Task(entry.task)
    return entry
