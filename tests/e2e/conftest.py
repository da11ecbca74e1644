"""End-to-end fixtures: a real fabric, a real MongoDB wire-protocol server, a training config."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.fabric.process import FabricProcess

# Two cores: keep TensorFlow workers few; idle ones are evicted when another action needs room.
E2E_LIMITS: dict[str, Any] = {"max_workers": 6, "idle_timeout_s": 300, "blocking_wait_s": 60}


def training_config(fabric_url: str, mongo_url: str, logs_dir: Path, **server: Any) -> dict[str, Any]:
    """4 clients, 3 rounds, digits, mlp: the smallest run that still shows learning."""
    return {
        "logs_dir": str(logs_dir),
        "providers": {"openwhisk": {"local": {"base_url": fabric_url, "auth": GUEST_AUTH}}},
        "scenarios": {
            "federated_learning": {
                "server_config": {
                    "cluster": "local",
                    "max_rounds": 3,
                    "target_accuracy": 1.0,
                    "num_clients_per_round": 4,
                    "min_fit_fraction": 1.0,
                    "round_deadline_s": 600,
                    "activation_timeout_s": 180,  # past every client-path function's timeout
                    "max_retries": 3,
                    "retry_backoff_s": 0.2,
                    "poll_interval_s": 0.2,
                    "seed": 7,
                    **server,
                },
                "clients_info": {"total_num_clients": 4, "ow_clients_count": 4},
                "data_sampling": {"method": "iid", "seed": 7},
                "mongo_config": {"url": mongo_url, "database": f"fk_e2e_{uuid.uuid4().hex[:8]}"},
                "training_test_data": {"dataset": "digits"},
                "model_params": {
                    "model": "mlp",
                    "input_size": 64,
                    "hidden_size": 32,
                    "learning_rate": 0.01,
                    "local_epochs": 1,
                    "batch_size": 32,
                },
                # Limits keep >= 30% headroom over the peaks measured across the e2e suite
                # (tensorflow-cpu 2.21, mnist5k cnn the largest): client 877 MB, init 762 MB,
                # invoker 128 MB, aggregator 988 MB (README, "Memory limits in tests").
                "functions": {
                    "fl_client": {"memory": 1280, "timeout": 120},
                    "fl_server_init": {"memory": 1280, "timeout": 120},
                    "fl_invoker_weights_update": {"memory": 256, "timeout": 150},
                    "fl_server_aggregator": {"memory": 1536, "timeout": 120},
                },
            }
        },
    }


@pytest.fixture(scope="module")
def fabric() -> Iterator[FabricProcess]:
    with FabricProcess(limits=E2E_LIMITS) as process:
        yield process


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every end-to-end test trains models: ``-m "not slow"`` leaves them out for a quick local run."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)
