"""The numpy side of the models: round-0 weights and evaluation equal Keras', without TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.learning.architecture import architecture, initial_weights
from fedkeeper.function.learning.datasets import Dataset, load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.learning.glorot import stateless_uniform
from fedkeeper.function.learning.models import build_model
from fedkeeper.function.learning.training import train_local
from fedkeeper.function.store.weights import checksum

MLP = ModelParams(model="mlp", input_size=64, hidden_size=32, output_size=10, learning_rate=0.01, seed=1)
CNN = ModelParams(model="cnn", input_size=64, output_size=10, learning_rate=0.01, seed=3)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(TrainingTestData(dataset="digits"))


@pytest.mark.parametrize(
    "params",
    [MLP, MLP.model_copy(update={"seed": 2**31 + 5}), CNN, CNN.model_copy(update={"seed": -7})],
    ids=["mlp", "mlp-seed-past-int32", "cnn", "cnn-negative-seed"],
)
def test_numpy_initial_weights_are_keras_initial_weights(params: ModelParams) -> None:
    mine = initial_weights(params, 64, 10)
    keras_weights = build_model(params, 64, 10).get_weights()
    assert [(w.shape, w.dtype) for w in mine] == [(w.shape, w.dtype) for w in keras_weights]
    assert all(np.array_equal(a, b) for a, b in zip(mine, keras_weights, strict=True))


def test_initial_weights_are_the_same_in_a_fresh_process() -> None:
    code = (
        "from fedkeeper.function.config import ModelParams; "
        "from fedkeeper.function.learning.architecture import initial_weights; "
        "from fedkeeper.function.store.weights import checksum; "
        "print(checksum(initial_weights(ModelParams(model='cnn', input_size=64, seed=3), 64, 10)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == checksum(initial_weights(CNN, 64, 10))


def test_stateless_uniform_fills_blocks_of_four_in_counter_order() -> None:
    # A shape that ends mid-block is the prefix of the longer draw, as TensorFlow fills it.
    assert np.array_equal(stateless_uniform((7,), (5, 0)), stateless_uniform((8,), (5, 0))[:7])
    assert not np.array_equal(stateless_uniform((8,), (5, 0)), stateless_uniform((8,), (6, 0)))


@pytest.mark.parametrize("params", [MLP, CNN], ids=["mlp", "cnn"])
def test_numpy_evaluation_equals_keras_evaluation(digits: Dataset, params: ModelParams) -> None:
    start = initial_weights(params, 64, 10)
    trained = train_local(start, digits.x_train[:400], digits.y_train[:400], params, 10).weights
    model = build_model(params, 64, 10)
    for weights in (start, trained):
        model.set_weights(weights)
        keras = model.evaluate(digits.x_test, digits.y_test, verbose=0, return_dict=True)
        loss, accuracy = evaluate(weights, digits.x_test, digits.y_test, params, 10)
        assert accuracy == pytest.approx(keras["accuracy"], abs=1e-7)  # float32 count / n
        assert loss == pytest.approx(keras["loss"], abs=1e-5)


def test_evaluation_refuses_weights_of_another_model(digits: Dataset) -> None:
    from fedkeeper.function.errors import InvalidUpdate

    wrong = initial_weights(MLP.model_copy(update={"hidden_size": 16}), 64, 10)
    with pytest.raises(InvalidUpdate, match=r"array 0: shape \(64, 16\), expected \(64, 32\)"):
        evaluate(wrong, digits.x_test, digits.y_test, MLP, 10)


def test_odd_sizes_pool_like_keras(digits: Dataset) -> None:
    """7x7 images: 'same' convolutions keep 7, valid pooling drops the odd row and column (7 -> 3 -> 1)."""
    params = CNN.model_copy(update={"input_size": 49})
    model = architecture(params, 49, 10)
    assert model.weight_shapes()[4] == (1 * 1 * 64, 512)
    weights = model.initial_weights()
    x = digits.x_test[:50, :49]
    keras_model = build_model(params, 49, 10)
    keras_model.set_weights(weights)
    expected = keras_model.predict(x, verbose=0)
    logits = model.logits(x, weights)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert np.allclose(probabilities, expected, atol=1e-6)
