"""Hierarchical aggregation (``server_config.topology: hierarchical``) through the real ``fl_server_aggregator``.

Two sessions get the same random updates for three rounds (one client never delivers, one update
is rejected when stored, one holds a NaN so that it is rejected while streaming); one aggregates
flat, the other in a local aggregator per group of clients and a global one that combines their
partials. The weights and the strategy's state must agree to 1e-6, the verdicts exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedkeeper.function.config import parse_config
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.store import weights as wire
from fedkeeper.function.store.db import SessionStore, Store
from fedkeeper.function.strategies.registry import STRATEGIES
from tests.functions.test_sharded_aggregation import CLIENTS, PARAMS, _aggregator, _session

ROUNDS = 3
GROUPS = [[0, 3], [1], [2]]  # round 1: client 0 never delivers; round 2: group 2's one update is rejected
TOPOLOGY = {"kind": "hierarchical", "groups": "explicit", "members": GROUPS}
SAMPLE = Path(__file__).resolve().parents[2] / "config-sample.yaml"


@pytest.fixture
def store(mongo_url: str, mongo_db_name: str) -> Iterator[Store]:
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    yield store
    store.db.client.drop_database(mongo_db_name)


def _store_round(sessions: list[SessionStore], round_number: int, rng: np.random.Generator) -> list[int]:
    """The same updates in every session; which clients the round includes."""
    selected = list(range(CLIENTS))
    delivered = selected[1:] if round_number == 1 else selected  # one client never delivers
    current = sessions[0].weights.get(round_number)
    updates = {}
    for client in delivered:
        update = [w + rng.normal(scale=0.05, size=w.shape).astype(w.dtype) for w in current]
        if round_number == 2 and client == 3:
            update[0][0, 0] = np.nan  # rejected while streaming
        updates[client] = (update, int(rng.integers(20, 60)))
    for session in sessions:
        session.rounds.open(round_number, selected, {})
        for client, (update, count) in updates.items():
            if round_number == 2 and client == 2:
                session.updates.reject(round_number, client, "update norm 99 is past max_update_norm 20")
            else:
                session.updates.put(round_number, client, update, count, 1.0, 0.5)
        session.rounds.close(round_number, delivered)
    return delivered


def _groups(included: list[int]) -> list[dict[str, Any]]:
    return [
        {"group": g, "clients": [c for c in members if c in included], "where": "openwhisk/local"}
        for g, members in enumerate(GROUPS)
        if set(members) & set(included)
    ]


def _assert_close(flat: SessionStore, tree: SessionStore, round_number: int) -> None:
    for got, want in zip(tree.weights.get(round_number + 1), flat.weights.get(round_number + 1), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    flat_state, tree_state = flat.strategy.server(round_number + 1), tree.strategy.server(round_number + 1)
    assert flat_state is not None and tree_state is not None
    assert flat_state.layout() == tree_state.layout()
    for got, want in zip(tree_state.flat(), flat_state.flat(), strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("strategy", list(PARAMS))
def test_hierarchical_aggregation_equals_flat_on_the_same_updates(store: Store, strategy: str) -> None:
    flat_bound, flat = _session(store, f"flat-{strategy}", strategy)
    tree_bound, tree = _session(store, f"tree-{strategy}", strategy, topology=TOPOLOGY)
    assert wire.checksum(flat.weights.get(0)) == wire.checksum(tree.weights.get(0))
    rng = np.random.default_rng(11)
    for round_number in range(ROUNDS):
        included = _store_round([flat, tree], round_number, rng)
        expected = _aggregator(flat_bound, flat, round_number)
        groups = tree.rounds.set_groups(round_number, _groups(included))
        for group in groups:
            reply = _aggregator(tree_bound, tree, round_number, group=group["group"])
            assert reply["group"] == group["group"] and reply["partial_bytes"] > 0, reply
            assert not tree.weights.has(round_number + 1)  # a local aggregator writes only its partial
        got = _aggregator(tree_bound, tree, round_number)

        assert "error" not in expected and "error" not in got, (expected, got)
        assert sorted(got["accepted"]) == sorted(expected["accepted"])
        assert got["rejected"] == expected["rejected"]
        if round_number == 2:
            assert set(got["rejected"]) == {"2", "3"}
        assert got["groups"] == {str(g["group"]): g["clients"] for g in groups}
        assert set(got["partial_bytes_by_group"]) == {str(g["group"]) for g in groups}
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        _assert_close(flat, tree, round_number)
        assert store.db.partial_aggregates.count_documents({"session": tree.id}) == 0  # combined, dropped


def test_a_group_whose_local_aggregator_failed_is_reduced_by_the_global_one(store: Store) -> None:
    flat_bound, flat = _session(store, "flat", "fedavg")
    tree_bound, tree = _session(store, "tree", "fedavg", topology=TOPOLOGY)
    included = _store_round([flat, tree], 0, np.random.default_rng(3))
    tree.rounds.set_groups(0, _groups(included))
    assert "error" not in _aggregator(tree_bound, tree, 0, group=1)  # groups 0 and 2 never ran

    got, expected = _aggregator(tree_bound, tree, 0), _aggregator(flat_bound, flat, 0)
    assert sorted(got["accepted"]) == sorted(expected["accepted"]) == included  # no update lost
    assert set(got["partial_bytes_by_group"]) == {"1"}
    _assert_close(flat, tree, 0)


def test_a_local_aggregator_that_runs_again_keeps_its_first_partial(store: Store) -> None:
    bound, session = _session(store, "again", "fedavg", topology=TOPOLOGY)
    included = _store_round([session], 0, np.random.default_rng(5))
    session.rounds.set_groups(0, _groups(included))
    first = _aggregator(bound, session, 0, group=0)
    assert first["partial_bytes"] > 0
    assert _aggregator(bound, session, 0, group=0)["partial_bytes"] == 0  # stored already
    assert store.db.partial_aggregates.count_documents({"session": session.id}) == 1
    assert _aggregator(bound, session, 0, group=7)["error"] == (
        "ConfigError: group must be one of the round's groups [0, 1, 2], got 7"
    )


def _refusal(**server: Any) -> str:
    data = yaml.safe_load(SAMPLE.read_text())
    data["scenarios"]["federated_learning"]["server_config"].update(server)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("strategy", "params"),
    [
        ("krum", {}),
        ("fedmedian", {}),
        ("fedtrimmedavg", {}),
        ("scaffold", {}),
        ("fednova", {}),
        ("dpfedavg_fixed", {"clipping_norm": 1.0, "noise_multiplier": 0.1}),
    ],
)
def test_a_strategy_that_needs_every_update_refuses_a_hierarchy_naming_itself(
    strategy: str, params: dict[str, float]
) -> None:
    message = _refusal(strategy={"name": strategy, **params}, topology="hierarchical")
    assert f"topology hierarchical: strategy {strategy} needs every update at once" in message
    assert "hierarchy-exact: fedavg, fedavgm, fedadam, fedyogi, fedadagrad, fedprox" in message


def test_hierarchy_exact_strategies_are_the_fedavg_family_without_per_update_steps() -> None:
    exact = {name for name, cls in STRATEGIES.items() if cls.hierarchy_exact}
    assert exact == {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox"}


def test_a_hierarchy_with_async_or_semi_async_mode_or_shards_is_refused_in_one_line() -> None:
    assert "mode async does not support topology hierarchical" in _refusal(
        mode="async", topology="hierarchical"
    )
    assert "topology hierarchical with aggregation_shards 2: use one of them" in _refusal(
        aggregation_shards=2, topology="hierarchical"
    )
    assert "topology hierarchical with mode semi_async: late updates" in _refusal(
        mode="semi_async", topology="hierarchical"
    )


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([[0, 1, 2, 3], [1, 4, 5, 6, 7]], "missing [], repeated or unknown [1]"),
        ([[0, 1, 2, 3, 4, 5], [6]], "missing [7], repeated or unknown []"),
        ([[0, 1, 2, 3, 4, 5, 6, 7, 9]], "missing [], repeated or unknown [9]"),
    ],
)
def test_explicit_groups_must_hold_every_client_once(members: list[list[int]], says: str) -> None:
    data = yaml.safe_load(SAMPLE.read_text())
    fl = data["scenarios"]["federated_learning"]
    assert fl["clients_info"]["total_num_clients"] == 8
    message = _refusal(topology={"kind": "hierarchical", "groups": "explicit", "members": members})
    assert "server_config.topology.members" in message and says in message
