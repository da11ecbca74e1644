"""Keras models and the local training core: layout, determinism, warm == cold, learning happens."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.errors import ConfigError, InvalidUpdate
from fedkeeper.function.learning.architecture import initial_weights
from fedkeeper.function.learning.datasets import Dataset, load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.learning.models import build_model, cached_model, clear_model_cache
from fedkeeper.function.learning.training import train_local

MLP = ModelParams(model="mlp", input_size=64, hidden_size=32, output_size=10, learning_rate=0.01, seed=1)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(TrainingTestData(dataset="digits"))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_mlp_weights_are_float32_kernel_bias_pairs_in_keras_order() -> None:
    weights = initial_weights(MLP, 64, 10)
    assert [w.shape for w in weights] == [(64, 32), (32,), (32, 10), (10,)]
    assert all(w.dtype == np.float32 for w in weights)
    assert not np.any(weights[1]) and not np.any(weights[3])  # biases start at zero


def test_initial_weights_depend_only_on_params() -> None:
    first = initial_weights(MLP, 64, 10)
    clear_model_cache()
    assert _same(first, initial_weights(MLP, 64, 10))
    assert not _same(first, initial_weights(MLP.model_copy(update={"seed": 2}), 64, 10))


def test_numpy_forward_pass_over_the_layout_reproduces_evaluate(digits: Dataset) -> None:
    """The layout is what an outside trainer (the edge guest's C code) computes with."""
    w1, b1, w2, b2 = train_local(
        initial_weights(MLP, 64, 10), digits.x_train, digits.y_train, MLP, 10
    ).weights
    hidden = np.maximum(digits.x_test @ w1 + b1, 0)
    logits = hidden @ w2 + b2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    loss, accuracy = evaluate([w1, b1, w2, b2], digits.x_test, digits.y_test, MLP, 10)
    assert accuracy == pytest.approx(float(np.mean(probs.argmax(axis=1) == digits.y_test)), abs=1e-6)
    expected_loss = -np.mean(np.log(probs[np.arange(len(probs)), digits.y_test]))
    assert loss == pytest.approx(float(expected_loss), rel=1e-4)


def test_mlp_training_on_digits_raises_test_accuracy(digits: Dataset) -> None:
    params = MLP.model_copy(update={"local_epochs": 3})
    start = initial_weights(params, 64, 10)
    _, before = evaluate(start, digits.x_test, digits.y_test, params, 10)
    result = train_local(start, digits.x_train, digits.y_train, params, 10)
    _, after = evaluate(result.weights, digits.x_test, digits.y_test, params, 10)
    assert before < 0.3 < 0.85 < after
    assert result.num_examples == len(digits.x_train)
    assert 0.8 < result.accuracy <= 1.0 and 0.0 < result.loss < 1.0


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "nadam"])
def test_warm_cached_model_gives_exactly_the_cold_result(digits: Dataset, optimizer: str) -> None:
    params = MLP.model_copy(update={"optimizer": optimizer, "local_epochs": 2})
    start = initial_weights(params, 64, 10)
    x, y = digits.x_train[:400], digits.y_train[:400]
    clear_model_cache()
    cold = train_local(start, x, y, params, 10)
    # The warm worker has since trained on other data, which moved its optimizer state.
    train_local(cold.weights, digits.x_train[400:], digits.y_train[400:], params, 10)
    warm = train_local(start, x, y, params, 10)
    assert _same(cold.weights, warm.weights)
    assert (cold.loss, cold.accuracy) == (warm.loss, warm.accuracy)
    assert not _same(cold.weights, start)


def test_an_epoch_through_the_train_function_is_fit_bit_for_bit(digits: Dataset) -> None:
    params = MLP.model_copy(update={"batch_size": 16})
    x, y = digits.x_train[:100], digits.y_train[:100]  # 6 full batches and one of 4
    fitted = build_model(params, 64, 10)
    history = fitted.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    clear_model_cache()
    entry = cached_model(params, 64, 10)
    entry.load(initial_weights(params, 64, 10))
    loss, accuracy = entry.train_epoch(x, y, 16)
    assert _same(entry.model.get_weights(), fitted.get_weights())
    assert (loss, accuracy) == (history["loss"][0], history["accuracy"][0])


def test_shuffle_seed_changes_the_result(digits: Dataset) -> None:
    start = initial_weights(MLP, 64, 10)
    x, y = digits.x_train[:300], digits.y_train[:300]
    assert not _same(
        train_local(start, x, y, MLP, 10, seed=1).weights, train_local(start, x, y, MLP, 10, seed=2).weights
    )


def test_cnn_layout_and_one_training_step_on_square_images(digits: Dataset) -> None:
    params = ModelParams(model="cnn", input_size=64, output_size=10, seed=0)
    start = initial_weights(params, 64, 10)
    assert [w.shape for w in start] == [
        (5, 5, 1, 32), (32,), (5, 5, 32, 64), (64,), (2 * 2 * 64, 512), (512,), (512, 10), (10,)
    ]  # fmt: skip
    result = train_local(start, digits.x_train[:128], digits.y_train[:128], params, 10)
    assert np.isfinite(result.loss) and not _same(result.weights, start)


def test_cnn_refuses_non_square_inputs() -> None:
    with pytest.raises(ConfigError, match="cnn needs square images, but 60 features"):
        build_model(ModelParams(model="cnn", input_size=60), 60, 10)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (ModelParams(input_size=784), "model_params.input_size: 784, but the data set has 64 features"),
        (ModelParams(output_size=5), "model_params.output_size: 5, but the data set has 10 classes"),
    ],
)
def test_model_params_must_match_the_data_set(params: ModelParams, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        initial_weights(params, 64, 10)


def test_train_local_refuses_weights_of_another_model(digits: Dataset) -> None:
    wrong = initial_weights(MLP.model_copy(update={"hidden_size": 16}), 64, 10)
    with pytest.raises(InvalidUpdate, match=r"array 0: shape \(64, 16\), expected \(64, 32\)"):
        train_local(wrong, digits.x_train, digits.y_train, MLP, 10)


def test_processes_that_do_not_train_never_import_tensorflow() -> None:
    code = (
        "import sys, fedkeeper.function.learning.datasets, fedkeeper.function.learning.partition, fedkeeper.function.learning.training, "
        "fedkeeper.function.strategies; print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
