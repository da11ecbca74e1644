"""FedAvg: exact against numpy, strict about bad updates, and streaming in memory."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from fedkeeper.function.errors import ConfigError, InvalidUpdate
from fedkeeper.function.strategies import FedAvg, NothingToAggregate, make_strategy

SHAPES = [(7, 5), (5,), (5, 3), (3,)]


def _random_model(rng: np.random.Generator, dtype: type = np.float32) -> list[np.ndarray]:
    return [rng.normal(size=shape).astype(dtype) for shape in SHAPES]


def _state(strategy: FedAvg) -> tuple[list[np.ndarray], int, int, int]:
    return [s.copy() for s in strategy._sums], strategy.accepted, strategy.total_examples, strategy.rejected


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_equals_numpy_weighted_average_on_random_updates(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in rng.integers(1, 40, size=rng.integers(1, 4))) for _ in range(5)]
    num_clients = int(rng.integers(2, 12))
    updates = [[rng.normal(scale=3, size=s).astype(np.float32) for s in shapes] for _ in range(num_clients)]
    counts = [int(c) for c in rng.integers(1, 5000, size=num_clients)]

    strategy = make_strategy("fedavg")
    strategy.begin([np.zeros(s, np.float32) for s in shapes])
    for update, count in zip(updates, counts, strict=True):
        strategy.accumulate(update, count)
    result = strategy.finish()

    for layer, got in enumerate(result):
        stacked = np.stack([u[layer].astype(np.float64) for u in updates])
        expected = np.average(stacked, axis=0, weights=counts)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert strategy.accepted == num_clients
    assert strategy.total_examples == sum(counts)


def test_fedavg_keeps_float64_reference_dtype() -> None:
    rng = np.random.default_rng(1)
    strategy = FedAvg()
    strategy.begin(_random_model(rng, np.float64))
    a, b = _random_model(rng, np.float64), _random_model(rng, np.float64)
    strategy.accumulate(a, 1)
    strategy.accumulate(b, 3)
    result = strategy.finish()
    assert [r.dtype for r in result] == [np.float64] * len(SHAPES)
    np.testing.assert_allclose(result[0], (a[0] + 3 * b[0]) / 4, rtol=1e-12)


def _bad_updates(rng: np.random.Generator) -> dict[str, tuple[object, object]]:
    good = _random_model(rng)
    nan = [a.copy() for a in good]
    nan[2][0, 0] = np.nan
    inf = [a.copy() for a in good]
    inf[1][3] = -np.inf
    return {
        "too few arrays": (good[:3], 10),
        "wrong shape": ([good[0].T, *good[1:]], 10),
        "wrong dtype": ([good[0].astype(np.float64), *good[1:]], 10),
        "integer dtype": ([a.astype(np.int32) for a in good], 10),
        "nan": (nan, 10),
        "inf": (inf, 10),
        "zero examples": (good, 0),
        "negative examples": (good, -5),
        "float examples": (good, 2.5),
        "bool examples": (good, True),
        "not arrays": ([a.tolist() for a in good], 10),
        "not a list": (None, 10),
    }


@pytest.mark.parametrize("case", list(_bad_updates(np.random.default_rng(0))))
def test_bad_update_is_rejected_counted_and_leaves_aggregate_unchanged(case: str) -> None:
    rng = np.random.default_rng(2)
    strategy = FedAvg()
    strategy.begin(_random_model(rng))
    strategy.accumulate(_random_model(rng), 20)
    before = _state(strategy)
    update, count = _bad_updates(rng)[case]

    with pytest.raises(InvalidUpdate):
        strategy.accumulate(update, count)  # type: ignore[arg-type]

    sums, accepted, total, rejected = _state(strategy)
    assert all(np.array_equal(a, b) for a, b in zip(sums, before[0], strict=True))
    assert (accepted, total, rejected) == (before[1], before[2], before[3] + 1)


def test_finish_without_accepted_update_raises_and_names_rejections() -> None:
    strategy = FedAvg()
    strategy.begin(_random_model(np.random.default_rng(3)))
    with pytest.raises(InvalidUpdate):
        strategy.accumulate([], 5)
    with pytest.raises(NothingToAggregate, match="1 rejected"):
        strategy.finish()


def test_accumulate_before_begin_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="begin"):
        FedAvg().accumulate(_random_model(np.random.default_rng(4)), 1)


def test_begin_starts_a_fresh_round() -> None:
    rng = np.random.default_rng(5)
    strategy = FedAvg()
    strategy.begin(_random_model(rng))
    strategy.accumulate(_random_model(rng), 100)
    strategy.begin(_random_model(rng))
    only = _random_model(rng)
    strategy.accumulate(only, 7)
    assert (strategy.accepted, strategy.total_examples) == (1, 7)
    assert all(np.array_equal(a, b) for a, b in zip(strategy.finish(), only, strict=True))


def test_unknown_strategy_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'fedprox'; known: fedavg"):
        make_strategy("fedprox")


def test_memory_stays_o_model_over_fifty_updates() -> None:
    """Peak traced memory while 50 updates stream through stays a few models' worth, never 50."""
    shapes = [(256, 256), (256,)] * 8  # many equal layers, so one layer's temporaries are small
    model_bytes = sum(int(np.prod(s)) for s in shapes) * 4  # float32
    rng = np.random.default_rng(6)
    strategy = FedAvg()
    gc.collect()
    tracemalloc.start()
    try:
        strategy.begin([np.zeros(s, np.float32) for s in shapes])
        for i in range(50):
            update = [rng.random(s, dtype=np.float32) for s in shapes]  # arrives, is folded in, is dropped
            strategy.accumulate(update, i + 1)
            del update
        strategy.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # reference (1 model) + float64 sums (2) + one incoming update (1) + a layer's temporaries;
    # holding all updates would be 50.
    assert peak < 5 * model_bytes, f"peak {peak} bytes for a {model_bytes}-byte model"
    assert peak > 2 * model_bytes  # the sums themselves are traced, so the measurement is real
