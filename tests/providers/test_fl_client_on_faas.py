"""The real ``fl_client`` entry points, served by functions-framework (GCF) and awslambdaric (Lambda).

An inline ClientJob (the shape ``fl_invoker_weights_update`` sends) goes in; the reply's weights
must decode (npz, no pickle) and have the model's shapes. The invoker's evaluate job reaches a GCF
client the same way.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedkeeper.function.catalog import CLIENT_FUNCTION
from fedkeeper.function.config import FederatedLearning, ModelParams, TrainingTestData
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.function.learning.architecture import initial_weights
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.function.learning.evaluation import evaluate
from fedkeeper.function.store.db import Store
from fedkeeper.function.store.weights import from_b64, to_b64
from fedkeeper.function.tasks.common import held_out
from fedkeeper.function.tasks.contract import ClientJob
from fedkeeper.function.tasks.entry import run
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


def test_the_invoker_has_a_gcf_client_evaluate_inline_and_stores_its_evaluation_once(
    gcf_provider: Provider, mongo_url: str, mongo_db_name: str
) -> None:
    scenario = FederatedLearning.model_validate(
        {
            "server_config": {"cluster": "local", "strategy": {"name": "fedavg", "fraction_evaluate": 1.0}},
            "clients_info": {"total_num_clients": 3, "gcf_clients_count": 3},
            "model_params": {"model": "mlp", "hidden_size": 16},
            "data_sampling": {"method": "iid", "seed": 3},
        }
    )
    store = Store(mongo_url, mongo_db_name)
    store.ensure_indexes()
    session = store.for_session("s-eval")
    session.record.create({"scenario": scenario.model_dump(mode="json", exclude={"mongo_config"})})
    bound = {"store": {"url": mongo_url, "database": mongo_db_name}}
    binding = {
        "platform": gcf_provider.platform,
        "cluster": gcf_provider.cluster,
        "settings": gcf_provider.settings.model_dump(mode="json"),
    }
    target = f"{gcf_provider.platform}/{gcf_provider.cluster}"
    call = {"session": "s-eval", "round": 0, "client": 1, "attempt": 2, "task": "evaluate", "target": target}
    gcf_provider.deploy(
        FunctionSpec(CLIENT_FUNCTION, function_dir(CLIENT_FUNCTION), memory_mb=1024, timeout_s=180)
    )
    try:
        assert "error" not in run("fl_server_init", {"session": "s-eval"}, bound)
        session.weights.put(1, [w + 0.01 for w in session.weights.get(0)])
        reply = run("fl_invoker_weights_update", call, {**bound, "targets": {target: binding}})
        assert "error" not in reply, reply
        assert reply["stored"] is True and reply["task"] == "evaluate" and reply["target_activation"]
        dataset = load_dataset(scenario.training_test_data)
        rows = held_out(scenario.training_test_data, scenario.data_sampling, 3)[1]
        loss, accuracy = evaluate(
            session.weights.get(1), dataset.x_test[rows], dataset.y_test[rows], scenario.model_params, 10
        )
        (stored,) = session.evaluations.results(0, [1])
        assert stored["num_examples"] == len(rows) and stored["activation_id"] == reply["target_activation"]
        assert stored["loss"] == pytest.approx(loss) and stored["accuracy"] == pytest.approx(accuracy)
        again = run(
            "fl_invoker_weights_update", {**call, "attempt": 3}, {**bound, "targets": {target: binding}}
        )
        assert again["stored"] is False and "target_activation" not in again  # answered from the store
    finally:
        gcf_provider.remove(CLIENT_FUNCTION)
        store.db.client.drop_database(mongo_db_name)
