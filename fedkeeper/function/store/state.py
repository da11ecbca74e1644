"""A session's strategy state in MongoDB, with the round it belongs to.

``strategy_state`` holds one document per ``(session, client, round)``: ``client`` is
:data:`SERVER` for the server's state (optimizer moments, SCAFFOLD's ``c``) that round ``round``
starts from, or a client id for that client's own state (SCAFFOLD's ``c_i``) as of ``round``.
Arrays are a ``.npz`` blob with a checksum, like weights. Every write is first-wins on its key and
is made before the next round's weights, so a revived aggregator that finds the weights finds the
state too, and one that died before them writes the same state again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo import DESCENDING

from fedkeeper.function.errors import StoreError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.mongo import SessionBound, store_errors, utcnow
from fedkeeper.function.strategies.records import Weights
from fedkeeper.function.strategies.state import ClientStates, StrategyState

SERVER = -1  # the ``client`` of the server's state


@store_errors
class StrategyStates(SessionBound):
    """The ``strategy_state`` collection, unique on ``(session, client, round)``."""

    collection = "strategy_state"

    def server(self, round_number: int) -> StrategyState | None:
        """The state round ``round_number`` starts from; None when none was stored."""
        doc = self._col.find_one({"session": self.session_id, "client": SERVER, "round": round_number})
        if doc is None:
            return None
        return StrategyState.from_flat(
            [(str(name), int(n)) for name, n in doc["layout"]], self._arrays(doc), doc.get("metrics") or {}
        )

    def put_server(self, round_number: int, state: StrategyState) -> bool:
        """Store the state round ``round_number`` starts from; ``False`` when it was already there."""
        return self._put(SERVER, round_number, state.flat(), state.layout(), state.metrics)

    def client(self, client: int, round_number: int) -> Weights | None:
        """``client``'s latest state written for a round at or before ``round_number``."""
        doc = self._col.find_one(
            {"session": self.session_id, "client": client, "round": {"$lte": round_number}},
            sort=[("round", DESCENDING)],
        )
        return None if doc is None else self._arrays(doc)

    def put_client(self, client: int, round_number: int, arrays: Weights) -> bool:
        return self._put(client, round_number, arrays, [("client", len(arrays))], {})

    def clients(self, round_number: int) -> ClientStates:
        """Client states as round ``round_number`` reads them; what it writes is for the next round."""
        return _RoundClientStates(self, round_number)

    def _put(
        self,
        client: int,
        round_number: int,
        arrays: Weights,
        layout: list[tuple[str, int]],
        metrics: Mapping[str, Any],
    ) -> bool:
        key = {"session": self.session_id, "client": client, "round": round_number}
        if self._col.find_one(key, {"_id": 1}) is not None:
            return False
        ref = self._blobs.put(wire.encode(arrays), **key)
        return self._insert_once(
            {
                **key,
                "blob": ref,
                "checksum": wire.checksum(arrays),
                "layout": [[name, count] for name, count in layout],
                "metrics": dict(metrics),
                "created_at": utcnow(),
            },
            ref,
        )

    def _arrays(self, doc: dict[str, Any]) -> Weights:
        arrays = wire.decode(self._blobs.get(doc["blob"]))
        if wire.checksum(arrays) != doc["checksum"]:
            raise StoreError(
                f"session {self.session_id}: strategy state of client {doc['client']} for round "
                f"{doc['round']} fails its checksum"
            )
        return arrays


class _RoundClientStates(ClientStates):
    def __init__(self, states: StrategyStates, round_number: int) -> None:
        self._states = states
        self._round = round_number

    def get(self, client: int) -> Weights | None:
        return self._states.client(client, self._round)

    def put(self, client: int, arrays: Weights) -> None:
        self._states.put_client(client, self._round + 1, arrays)
