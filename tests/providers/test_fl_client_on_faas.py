"""The real ``fl_client`` entry points, served by functions-framework (GCF) and awslambdaric (Lambda).

An inline ClientJob (the shape ``fl_invoker_weights_update`` sends) goes in; the reply's weights
must decode (npz, no pickle) and have the model's shapes.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.function.config import ModelParams, TrainingTestData
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.function.learning.architecture import initial_weights
from fedkeeper.function.store.weights import from_b64, to_b64
from fedkeeper.function.tasks.contract import ClientJob
from fedkeeper.host.packaging import function_dir
from fedkeeper.host.providers.base import FunctionSpec, Provider

pytestmark = pytest.mark.slow


@pytest.fixture(params=["gcf_provider", "lambda_provider"])
def provider(request: pytest.FixtureRequest) -> Provider:
    value: Provider = request.getfixturevalue(request.param)
    return value


def client_job(weights: list[np.ndarray], model: ModelParams, client: int) -> ClientJob:
    return ClientJob(
        session="s-faas",
        round=2,
        client=client,
        attempt=1,
        weights=to_b64(weights),
        model=model.model_dump(mode="json"),
        data={
            "dataset": TrainingTestData(dataset="digits").model_dump(mode="json"),
            "indices": list(range(48)),
        },
    )


def test_fl_client_trains_an_inline_job_and_returns_weights_of_the_model_shapes(
    provider: Provider, unique_name: str
) -> None:
    model = ModelParams(
        model="mlp", input_size=64, hidden_size=16, output_size=10, local_epochs=1, batch_size=16
    )
    weights = initial_weights(model, 64, 10)
    provider.deploy(FunctionSpec(unique_name, function_dir("fl_client"), memory_mb=1024, timeout_s=180))
    try:
        record = provider.invoke_sync(unique_name, dict(client_job(weights, model, client=3)), timeout_s=180)
        assert record.status is ActivationStatus.SUCCESS, record.result
        reply = record.result
        assert reply is not None
        assert (reply["client"], reply["round"], reply["num_examples"]) == (3, 2, 48)
        assert np.isfinite(reply["loss"]) and 0.0 <= reply["accuracy"] <= 1.0
        trained = from_b64(reply["weights"])
        assert [w.shape for w in trained] == [w.shape for w in weights]
        assert [w.dtype for w in trained] == [w.dtype for w in weights]
        assert any(not np.array_equal(a, b) for a, b in zip(trained, weights, strict=True))  # it trained

        # A malformed job is the function's own error, reported as an application error.
        bad = provider.invoke_sync(
            unique_name, {**client_job(weights, model, 3), "weights": "bm90IGFuIG5weg=="}, 60
        )
        assert bad.status is ActivationStatus.APPLICATION_ERROR and bad.error
    finally:
        provider.remove(unique_name)
