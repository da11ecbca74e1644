"""The algorithms Flower has no oracle for (SCAFFOLD, FedNova), against their papers' equations, and
what each strategy asks of the round: instructions, seeded noise, bounded buffers, robustness."""

from __future__ import annotations

import gc
import math
import tracemalloc

import numpy as np
import pytest

from fedkeeper.function.strategies import (
    MAX_BUFFER_BYTES,
    BufferFull,
    ClientPool,
    Failure,
    FedMedian,
    FitConfig,
    FitRes,
    InMemoryClientStates,
    RoundContext,
    StrategyState,
    make_strategy,
    select_clients,
)

SHAPES = [(6, 5), (5,), (5, 3), (3,)]
BASE = FitConfig(learning_rate=0.05, local_epochs=2, batch_size=8)


def _model(rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    return [rng.normal(scale=scale, size=s) for s in SHAPES]


def _flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.ravel() for a in arrays])


def test_scaffold_follows_the_papers_option_two_over_three_rounds_with_partial_participation() -> None:
    rng = np.random.default_rng(0)
    total, lr, step = 5, BASE.learning_rate, 0.8
    x = _model(rng)
    state, clients = StrategyState(), InMemoryClientStates()
    # The paper's quantities, as flat vectors: x, c and every c_i start at zero but x.
    ref_x, ref_c, ref_ci = (
        _flat(x),
        np.zeros(_flat(x).size),
        {i: np.zeros(_flat(x).size) for i in range(total)},
    )
    for round_number, chosen in enumerate([[0, 1, 2], [1, 3], [0, 2, 4]]):
        sizes = {i: int(rng.integers(9, 40)) for i in chosen}
        updates = {i: [w + rng.normal(scale=0.1, size=w.shape) for w in x] for i in chosen}
        outcome = make_strategy("scaffold", {"server_learning_rate": step}).aggregate_fit(
            RoundContext(round_number, x, state, clients, num_selected=len(chosen), num_clients=total),
            [FitRes(i, updates[i], sizes[i], BASE) for i in chosen],
            [],
        )
        delta_c = {}
        for i in chosen:
            k = BASE.local_epochs * math.ceil(sizes[i] / BASE.batch_size)
            new_ci = ref_ci[i] - ref_c + (ref_x - _flat(updates[i])) / (k * lr)
            delta_c[i], ref_ci[i] = new_ci - ref_ci[i], new_ci
        ref_x = ref_x + step * np.mean([_flat(updates[i]) - ref_x for i in chosen], axis=0)
        ref_c = ref_c + sum(delta_c.values()) / total
        assert outcome.weights is not None
        np.testing.assert_allclose(_flat(outcome.weights), ref_x, rtol=1e-12)
        np.testing.assert_allclose(_flat(outcome.state.arrays["c"]), ref_c, rtol=1e-10, atol=1e-12)
        clients.advance()
        for i in chosen:
            np.testing.assert_allclose(_flat(clients.get(i) or []), ref_ci[i], rtol=1e-10, atol=1e-12)
        x, state = outcome.weights, outcome.state
    assert clients.get(1) is not None and set(clients.current) == {0, 1, 2, 3, 4}


def test_scaffold_tells_clients_to_correct_by_c_minus_their_own_c_i() -> None:
    rng = np.random.default_rng(1)
    like = [w.astype(np.float32) for w in _model(rng)]
    c, ci = _model(rng), _model(rng)
    scaffold = make_strategy("scaffold")
    pool = ClientPool((0, 1, 2), 2, seed=3)
    (first, second) = scaffold.configure_fit(4, pool, BASE)
    assert first.config.control_variates and second.config == first.config
    correction = scaffold.fit_correction(StrategyState({"c": c}), ci, like)
    assert correction is not None and [a.dtype for a in correction] == [np.float32] * len(like)
    np.testing.assert_allclose(_flat(correction), _flat(c) - _flat(ci), rtol=1e-6)
    zero = scaffold.fit_correction(StrategyState(), None, like)
    assert zero is not None and not np.any(_flat(zero))  # round 0: c = c_i = 0
    assert make_strategy("fedavg").fit_correction(StrategyState(), None, like) is None


def test_fednova_normalizes_by_local_steps_and_is_fedavg_when_steps_are_equal() -> None:
    rng = np.random.default_rng(2)
    x = _model(rng)
    sizes = [12, 40, 95]  # 2, 5 and 12 batches of 8: different numbers of local steps
    updates = [[w + rng.normal(scale=0.1, size=w.shape) for w in x] for _ in sizes]
    results = [FitRes(i, u, n, BASE) for i, (u, n) in enumerate(zip(updates, sizes, strict=True))]
    outcome = make_strategy("fednova").aggregate_fit(RoundContext(0, x), results, [])
    p = np.array(sizes) / sum(sizes)
    tau = np.array([BASE.local_steps(n) for n in sizes])
    d = sum(p[i] * (_flat(x) - _flat(updates[i])) / tau[i] for i in range(len(sizes)))
    assert outcome.weights is not None
    np.testing.assert_allclose(_flat(outcome.weights), _flat(x) - float(p @ tau) * d, rtol=1e-12)
    assert outcome.state.metrics["tau_eff"] == pytest.approx(float(p @ tau))

    same = [FitRes(i, u, 16, BASE) for i, u in enumerate(updates)]
    nova = make_strategy("fednova").aggregate_fit(RoundContext(0, x), same, []).weights
    avg = make_strategy("fedavg").aggregate_fit(RoundContext(0, x), same, []).weights
    assert nova is not None and avg is not None
    np.testing.assert_allclose(_flat(nova), _flat(avg), rtol=1e-12)


def _dp_round(
    round_number: int, failures: list[Failure], seed: int = 5
) -> tuple[list[np.ndarray] | None, StrategyState]:
    rng = np.random.default_rng(3)
    x = _model(rng)
    results = [FitRes(i, _model(rng), 20, BASE) for i in range(3)]
    outcome = make_strategy("dpfedavg_fixed", {"clipping_norm": 0.5, "noise_multiplier": 1.0}).aggregate_fit(
        RoundContext(round_number, x, num_selected=3, seed=seed), results, failures
    )
    return outcome.weights, outcome.state


def test_dp_noise_is_the_same_for_the_same_seed_and_round_and_differs_otherwise() -> None:
    first, state = _dp_round(1, [])
    again, _ = _dp_round(1, [])
    other_round, _ = _dp_round(2, [])
    other_seed, _ = _dp_round(1, [], seed=6)
    assert first is not None and again is not None and other_round is not None and other_seed is not None
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other_round[0]) and not np.array_equal(first[0], other_seed[0])
    assert state.metrics == {"dp_clipped": 3, "dp_noise_std": pytest.approx(0.5 / 3)}


def test_dp_keeps_the_weights_when_a_selected_client_failed_as_flower_does() -> None:
    weights, state = _dp_round(0, [Failure(3, "no update before the round closed")])
    assert weights is None and "1 selected clients failed" in state.metrics["dp_skipped"]


def test_dp_clips_an_update_to_the_clipping_norm() -> None:
    x = [np.zeros(4), np.zeros(2)]
    far = [np.full(4, 3.0), np.full(2, 4.0)]  # norm sqrt(36 + 32)
    outcome = make_strategy("dpfedavg_fixed", {"clipping_norm": 2.0, "noise_multiplier": 0.0}).aggregate_fit(
        RoundContext(0, x, num_selected=1), [FitRes(0, far, 5, BASE)], []
    )
    assert outcome.weights is not None
    assert np.linalg.norm(_flat(outcome.weights)) == pytest.approx(2.0)
    np.testing.assert_allclose(_flat(outcome.weights), _flat(far) * 2.0 / np.linalg.norm(_flat(far)))


@pytest.mark.parametrize(
    ("name", "params"),
    [("fedmedian", {}), ("fedtrimmedavg", {"beta": 0.2}), ("krum", {"num_malicious_clients": 1})],
)
def test_robust_strategies_ignore_one_far_update(name: str, params: dict[str, object]) -> None:
    rng = np.random.default_rng(4)
    x = _model(rng)
    honest = [[w + rng.normal(scale=0.01, size=w.shape) for w in x] for _ in range(5)]
    attacker = [w + 1e3 for w in x]
    results = [FitRes(i, u, 10, BASE) for i, u in enumerate([*honest, attacker])]
    robust = make_strategy(name, params).aggregate_fit(RoundContext(0, x), results, []).weights
    average = make_strategy("fedavg").aggregate_fit(RoundContext(0, x), results, []).weights
    assert robust is not None and average is not None
    assert np.max(np.abs(_flat(robust) - _flat(x))) < 0.1 < np.max(np.abs(_flat(average) - _flat(x)))


def test_krum_reports_the_clients_it_kept() -> None:
    rng = np.random.default_rng(5)
    x = _model(rng)
    updates = [[w + rng.normal(scale=0.01 if i < 4 else 5.0, size=w.shape) for w in x] for i in range(6)]
    results = [FitRes(10 + i, u, 10 + i, BASE) for i, u in enumerate(updates)]
    outcome = make_strategy("krum", {"num_malicious_clients": 2, "num_clients_to_keep": 3}).aggregate_fit(
        RoundContext(0, x), results, []
    )
    kept = outcome.state.metrics["krum_selected"]
    assert len(kept) == 3 and set(kept) <= {10, 11, 12, 13}


def test_buffered_strategies_hold_k_updates_and_no_more_than_their_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shapes = [(256, 256), (256,)] * 4
    model_bytes = sum(int(np.prod(s)) for s in shapes) * 4
    rng = np.random.default_rng(6)
    k = 8
    updates = [[rng.random(s, dtype=np.float32) for s in shapes] for _ in range(k)]
    reference = [np.zeros(s, np.float32) for s in shapes]
    gc.collect()
    tracemalloc.start()
    try:
        FedMedian().aggregate_fit(
            RoundContext(0, reference), (FitRes(i, u, 1, BASE) for i, u in enumerate(updates)), []
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The k updates already exist and are kept, not copied: the median adds one layer's stack and
    # its partitioned copy (2 x k x layer) and the result; a copy of the buffer would be k models.
    layer_bytes = 256 * 256 * 4
    assert peak < 2 * k * layer_bytes + 2 * model_bytes < k * model_bytes, f"peak {peak} bytes"

    monkeypatch.setattr(FedMedian, "max_buffer_bytes", 3 * model_bytes)
    with pytest.raises(
        BufferFull,
        match=r"fedmedian holds every update of a round: 4 updates of 1.0 MiB pass its 3 MiB bound",
    ):
        FedMedian().aggregate_fit(
            RoundContext(0, reference), [FitRes(i, u, 1, BASE) for i, u in enumerate(updates)], []
        )
    assert MAX_BUFFER_BYTES >= 256 * 2**20


def test_configure_fit_samples_the_pool_and_sends_each_strategys_instructions() -> None:
    pool = ClientPool(tuple(range(10, 20)), 4, "random", seed=9)
    plain = make_strategy("fedavg").configure_fit(3, pool, BASE)
    assert [ins.client for ins in plain] == select_clients(range(10, 20), 4, 3, 9, "random")
    assert {ins.config for ins in plain} == {BASE}
    adam = make_strategy("fedadam", {"eta_l": 0.3}).configure_fit(3, pool, BASE)
    assert {ins.config.learning_rate for ins in adam} == {0.3}
    assert {ins.config.learning_rate for ins in make_strategy("fedadam").configure_fit(3, pool, BASE)} == {
        0.05
    }
    prox = make_strategy("fedprox", {"proximal_mu": 0.01}).configure_fit(3, pool, BASE)
    assert {(ins.config.proximal_mu, ins.config.learning_rate) for ins in prox} == {(0.01, 0.05)}
    assert make_strategy("fedavg").configure_evaluate(3, pool) == []  # off unless asked
    everyone = make_strategy("fedavg", {"fraction_evaluate": 1.0}).configure_evaluate(3, pool)
    assert [ins.client for ins in everyone] == list(range(10, 20))


def test_configure_evaluate_draws_a_seeded_sample_of_its_own_capped_at_the_pool() -> None:
    pool = ClientPool(tuple(range(10, 20)), 4, "random", seed=9)
    half = make_strategy("fedavg", {"fraction_evaluate": 0.5})
    chosen = [ins.client for ins in half.configure_evaluate(3, pool)]
    assert len(chosen) == 5 and set(chosen) <= set(pool.ids) and chosen == sorted(chosen)
    assert [
        ins.client for ins in half.configure_evaluate(3, pool)
    ] == chosen  # the same inputs, the same draw
    assert any(
        [ins.client for ins in half.configure_evaluate(r, pool)] != chosen for r in range(4, 10)
    )  # each round draws anew
    few = ClientPool((3,), 1, "random", seed=9)
    assert [ins.client for ins in half.configure_evaluate(0, few)] == [3]  # min_evaluate_clients 2, one can
    assert half.configure_evaluate(0, ClientPool((), 1)) == []


def test_fit_instructions_round_trip_as_json_and_refuse_bad_fields() -> None:
    config = FitConfig(
        learning_rate=0.1, local_epochs=3, batch_size=16, proximal_mu=0.5, control_variates=True
    )
    assert FitConfig.from_json(config.to_json()) == config
    assert config.local_steps(33) == 9
    for bad, message in [
        ({**config.to_json(), "learning_rate": 0}, "learning_rate must be > 0"),
        ({**config.to_json(), "local_epochs": 1.5}, "local_epochs must be a positive integer"),
        ({**config.to_json(), "proximal_mu": float("nan")}, "proximal_mu must be a finite number"),
        ({**config.to_json(), "momentum": 0.9}, "unknown field"),
        ({"learning_rate": 0.1}, "missing field"),
        ([], "must be an object"),
    ]:
        with pytest.raises(ValueError, match=message):
            FitConfig.from_json(bad)
