"""FedAvg and the streaming gate: exact against numpy, strict about bad updates, O(model) memory."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

from fedkeeper.function.strategies import (
    Failure,
    FedAvg,
    FitConfig,
    FitRes,
    NothingToAggregate,
    RoundContext,
    make_strategy,
)

SHAPES = [(7, 5), (5,), (5, 3), (3,)]
FIT = FitConfig(learning_rate=0.1, local_epochs=1, batch_size=8)


def _random_model(rng: np.random.Generator, dtype: type = np.float32) -> list[np.ndarray]:
    return [rng.normal(size=shape).astype(dtype) for shape in SHAPES]


def _res(client: int, weights: object, count: object) -> FitRes:
    return FitRes(client, weights, count, FIT)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(5))
def test_fedavg_equals_numpy_weighted_average_on_random_updates(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) for d in rng.integers(1, 40, size=rng.integers(1, 4))) for _ in range(5)]
    num_clients = int(rng.integers(2, 12))
    updates = [[rng.normal(scale=3, size=s).astype(np.float32) for s in shapes] for _ in range(num_clients)]
    counts = [int(c) for c in rng.integers(1, 5000, size=num_clients)]

    outcome = make_strategy("fedavg").aggregate_fit(
        RoundContext(0, [np.zeros(s, np.float32) for s in shapes]),
        [_res(i, u, c) for i, (u, c) in enumerate(zip(updates, counts, strict=True))],
        [],
    )

    assert outcome.weights is not None and outcome.accepted == list(range(num_clients))
    for layer, got in enumerate(outcome.weights):
        stacked = np.stack([u[layer].astype(np.float64) for u in updates])
        expected = np.average(stacked, axis=0, weights=counts)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_fedavg_keeps_float64_reference_dtype() -> None:
    rng = np.random.default_rng(1)
    a, b = _random_model(rng, np.float64), _random_model(rng, np.float64)
    outcome = FedAvg().aggregate_fit(
        RoundContext(0, _random_model(rng, np.float64)), [_res(0, a, 1), _res(1, b, 3)], []
    )
    assert outcome.weights is not None
    assert [r.dtype for r in outcome.weights] == [np.float64] * len(SHAPES)
    np.testing.assert_allclose(outcome.weights[0], (a[0] + 3 * b[0]) / 4, rtol=1e-12)


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
def test_bad_update_is_rejected_with_its_reason_and_leaves_the_aggregate_unchanged(case: str) -> None:
    rng = np.random.default_rng(2)
    reference, honest = _random_model(rng), _random_model(rng)
    update, count = _bad_updates(rng)[case]
    outcome = FedAvg().aggregate_fit(
        RoundContext(0, reference), [_res(0, honest, 20), _res(1, update, count)], []
    )
    assert outcome.accepted == [0] and list(outcome.rejected) == [1] and outcome.rejected[1]
    assert outcome.weights is not None
    assert all(np.array_equal(a, b) for a, b in zip(outcome.weights, honest, strict=True))


def test_a_round_without_accepted_update_raises_and_counts_failures() -> None:
    reference = _random_model(np.random.default_rng(3))
    with pytest.raises(NothingToAggregate, match="2 failed or rejected"):
        FedAvg().aggregate_fit(RoundContext(4, reference), [_res(0, [], 5)], [Failure(1, "no update")])


def test_failures_streamed_among_results_are_reported_as_rejections() -> None:
    rng = np.random.default_rng(4)
    reference, honest = _random_model(rng), _random_model(rng)
    unreadable = Failure(3, "update fails its checksum", rejected=True)
    outcome = FedAvg().aggregate_fit(RoundContext(0, reference), [unreadable, _res(0, honest, 2)], [])
    assert outcome.rejected == {3: "update fails its checksum"} and outcome.accepted == [0]


def test_memory_stays_o_model_over_fifty_updates() -> None:
    """Peak traced memory while 50 updates stream through stays a few models' worth, never 50."""
    shapes = [(256, 256), (256,)] * 8  # many equal layers, so one layer's temporaries are small
    model_bytes = sum(int(np.prod(s)) for s in shapes) * 4  # float32
    rng = np.random.default_rng(6)

    def stream() -> object:
        for i in range(50):  # each update arrives, is folded in, and is dropped
            yield _res(i, [rng.random(s, dtype=np.float32) for s in shapes], i + 1)

    gc.collect()
    tracemalloc.start()
    try:
        FedAvg().aggregate_fit(RoundContext(0, [np.zeros(s, np.float32) for s in shapes]), stream(), [])  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # reference (1 model) + float64 sums (2) + the float64 mean (2) + one incoming update (1) +
    # the cast result (1); holding all updates would be 50.
    assert peak < 8 * model_bytes, f"peak {peak} bytes for a {model_bytes}-byte model"
    assert peak > 2 * model_bytes  # the sums themselves are traced, so the measurement is real
