"""FedKeeper's own config file, placeholders filled in, deploys, trains and removes with main.py."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedkeeper.function.config import GUEST_AUTH, TrainingTestData
from fedkeeper.function.learning.datasets import load_dataset
from fedkeeper.host.fabric.process import FabricProcess

from .test_cli import ROOT, run

# ../shared beside the checkout (CI), or further up for a checkout in a subfolder
SHARED = next(p / "shared" for p in ROOT.parents if (p / "shared" / "reference").is_dir())
REFERENCE = SHARED / "reference" / "fedkeeper-original-config.yaml"
TRAIN, TEST = 600, 200


@pytest.fixture(scope="module")
def mnist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """600 train / 200 test 28x28 uint8 images cut from mnist5k, as .npy files on a local HTTP server."""
    root = tmp_path_factory.mktemp("www")
    data = load_dataset(TrainingTestData(dataset="mnist5k"))
    images = {part: np.rint(x * 255).astype(np.uint8).reshape(-1, 28, 28) for part, x in
              (("train", data.x_train[:TRAIN]), ("test", data.x_test[:TEST]))}  # fmt: skip
    labels = {"train": data.y_train[:TRAIN], "test": data.y_test[:TEST]}
    for part in ("train", "test"):
        np.save(root / f"mnist_{part}_img.npy", images[part])
        np.save(root / f"mnist_{part}_labels.npy", labels[part])
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = re.search(r"port (\d+)", server.stdout.readline())
        assert port, "http.server did not say its port"
        yield f"http://127.0.0.1:{port.group(1)}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def reference_config(tmp_path: Path, fabric_url: str, mongo_url: str, data_url: str) -> Path:
    """The reference file with its placeholders filled for the local fabric and the test store.

    Three values change beyond the placeholders: the fabric speaks http on its own port; the one GCF
    client moves to OpenWhisk, because no Google project is reachable from a test machine; the model is
    the mlp, because the cnn's 6.6 MB weights (3 documents a round) fill the in-memory test store's
    256 MB cache by round 6 (measured: WT_CACHE_FULL), while its rounds took only 8-20 s.
    """
    host = fabric_url.removeprefix("http://")
    text = REFERENCE.read_text()
    for placeholder, value in {
        "https://<ADD OW_AUTH here>@<ADD_IP_HERE>:31001": f"http://{GUEST_AUTH}@{host}",
        "<ADD OW_AUTH here>": GUEST_AUTH,
        "<ADD API HOST of OW>": host,
        "<ADD_PROJECT_ID_HERE>": "fedkeeper-e2e",
        "<ADD_MONGO_IP_HERE>:27017": mongo_url.removeprefix("mongodb://"),
        "https://storage.googleapis.com/mnist_fl/": f"{data_url}/",
        ".obj": ".npy",
        "ow_clients_count: 1": "ow_clients_count: 2",
        "gcf_clients_count: 1": "gcf_clients_count: 0",
        'model: "cnn"': 'model: "mlp"',
    }.items():
        assert placeholder in text, placeholder
        text = text.replace(placeholder, value)
    path = tmp_path / "config-sample.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_fedkeeper_reference_config_deploys_trains_and_removes_with_main_py(
    tmp_path: Path, fabric: FabricProcess, mongo_url: str, mnist_server: str
) -> None:
    config = reference_config(tmp_path, fabric.url, mongo_url, mnist_server)
    deployed = run(tmp_path, str(ROOT / "main.py"), "-c", str(config), "-d")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "deployed fl_client x2 to openwhisk/invasic_cluster" in deployed.stdout
    notices = [ln for ln in deployed.stderr.splitlines() if ln.startswith("fedkeeper: notice: ")]
    assert any("prometheus_config: fedkeeper serve queries the Prometheus servers" in n for n in notices)
    assert any("max_rounds" in n and "default 10" in n for n in notices)

    trained = run(tmp_path, str(ROOT / "main.py"), "-c", str(config), "-s", timeout=1800)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    accuracies = [float(a) for a in re.findall(r"round \d+/10: accuracy ([0-9.]+)", trained.stdout)]
    assert len(accuracies) == 10 and "succeeded" in trained.stdout
    assert max(accuracies) > 0.5  # learned from the served arrays (chance is 0.1)

    removed = run(tmp_path, str(ROOT / "main.py"), "-c", str(config), "-r")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "removed: fl_client on openwhisk/invasic_cluster" in removed.stdout
    key = GUEST_AUTH.split(":")[1]
    for job in (deployed, trained, removed):
        assert key not in job.stdout + job.stderr
