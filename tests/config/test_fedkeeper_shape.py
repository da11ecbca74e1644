"""FedKeeper's original config shape: each key maps onto the native model, is announced, or is refused."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedkeeper.function.compat import fedkeeper_marker, migrate, to_native
from fedkeeper.function.config import GUEST_AUTH, Config, ServerConfig, load_config, parse_config
from fedkeeper.function.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# ../shared beside the checkout (CI), or further up for a checkout in a subfolder
SHARED = next(p / "shared" for p in ROOT.parents if (p / "shared" / "reference").is_dir())
REFERENCE = SHARED / "reference" / "fedkeeper-original-config.yaml"
KEY = GUEST_AUTH.split(":")[1]
FL = ("scenarios", "federated_learning")
OW = ("providers", "openwhisk", "invasic_cluster")


def filled() -> dict[str, Any]:
    """The reference file, placeholders filled the way a user would."""
    text = REFERENCE.read_text()
    for placeholder, value in {
        "<ADD OW_AUTH here>": GUEST_AUTH,
        "<ADD_IP_HERE>": "10.0.0.5",
        "<ADD API HOST of OW>": "10.0.0.5:31001",
        "<ADD_PROJECT_ID_HERE>": "my-project",
        "<ADD_MONGO_IP_HERE>": "10.0.0.6",
        ".obj": ".npy",
    }.items():
        text = text.replace(placeholder, value)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def at(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        data = data[key]
    return data


def load(data: dict[str, Any]) -> tuple[Config, list[str]]:
    notices: list[str] = []
    return parse_config(copy.deepcopy(data), "old.yaml", notices), notices


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(data)
    message = str(caught.value)
    assert "\n" not in message and KEY not in message
    return message


# --------------------------------------------------------------------------- detection
def test_native_documents_are_not_read_as_fedkeeper_and_pass_through_untouched() -> None:
    sample = yaml.safe_load((ROOT / "config-sample.yaml").read_text())
    assert fedkeeper_marker(sample) is None
    notices: list[str] = []
    assert to_native(sample, "config-sample.yaml", notices) is sample and notices == []
    assert load(sample)[1] == []


@pytest.mark.parametrize(
    ("path", "key", "value"),
    [
        ((), "version", 0.1),
        ((*OW, "auth"), "ow_auth", GUEST_AUTH),
        (OW, "prometheus_config", {}),
        ((*FL, "mongo_config"), "db", "x"),
        ((*FL, "model_params"), "lr", "0.1"),
        ((*FL, "functions", "fl_client"), "openwhisk", {"memory": "512"}),
    ],
)
def test_one_old_only_key_makes_a_native_document_read_as_fedkeeper(
    path: tuple[str, ...], key: str, value: Any
) -> None:
    data = yaml.safe_load((ROOT / "config-sample.yaml").read_text())
    data["providers"]["openwhisk"]["invasic_cluster"] = {}
    node = data
    for part in path:
        node = node.setdefault(part, {})
    if key == "ow_auth":
        data["providers"]["openwhisk"]["invasic_cluster"]["auth"] = {}
        node = at(data, *path)
    node[key] = value
    assert fedkeeper_marker(data) is not None
    assert "not a key of FedKeeper's config shape" in error(data)  # native keys are not mixed in


# --------------------------------------------------------------------------- each key
def test_reference_file_maps_key_by_key_onto_the_native_model() -> None:
    config, notices = load(filled())
    ow = config.providers.openwhisk["invasic_cluster"]
    assert (ow.base_url, ow.auth, ow.namespace, ow.local) == (
        "https://10.0.0.5:31001",
        GUEST_AUTH,
        "guest",
        False,
    )
    gcf = config.providers.google["gcf_cluster"]
    assert (gcf.project, gcf.region, gcf.credentials) == ("my-project", "us-central1", None)
    fl = config.fl
    assert fl.server_config.cluster == "invasic_cluster" and fl.server_config.num_clients_per_round == 2
    info = fl.clients_info
    assert (
        info.total_num_clients,
        info.ow_clients_count,
        info.gcf_clients_count,
        info.edge_clients_count,
    ) == (
        2,
        1,
        1,
        0,
    )
    mp = fl.model_params
    assert (mp.model, mp.input_size, mp.hidden_size, mp.output_size, mp.batch_size) == (
        "cnn",
        784,
        500,
        10,
        10,
    )
    assert (mp.learning_rate, mp.optimizer, mp.local_epochs) == (1e-3, "adam", 5)
    assert (fl.mongo_config.url, fl.mongo_config.database) == ("mongodb://10.0.0.6:27017", "flweights")
    data = fl.training_test_data
    assert data.dataset == "arrays"
    assert data.train_images == "https://storage.googleapis.com/mnist_fl/mnist_train_img.npy"
    assert data.test_labels == "https://storage.googleapis.com/mnist_fl/mnist_test_labels.npy"
    client = fl.functions.fl_client
    assert (client.memory, client.concurrency) == (2048, 100)
    # 300000 ms; the GCF client goes through the invoker, which must outlast it within OpenWhisk's 300 s
    assert (client.timeout, fl.functions.fl_invoker_weights_update.timeout) == (270, 300)
    assert [n for n in notices if "fl_client timeout 270 s and fl_invoker_weights_update timeout 300 s" in n]
    assert fl.server_config.activation_timeout_s > 300
    assert notices[0] == "old.yaml: read as FedKeeper's original config shape (it has name)"
    assert all("\n" not in n and KEY not in n for n in notices)


def test_prometheus_config_becomes_the_two_prometheus_urls_on_base_urls_host_unless_a_host_is_given() -> None:
    data = filled()
    config, _ = load(data)
    sources = config.providers.openwhisk["invasic_cluster"].prometheus
    assert sources is not None
    assert (sources.platform_url, sources.node_url) == ("http://10.0.0.5:30325", "http://10.0.0.5:30471")
    at(data, *OW, "prometheus_config").update(host="prom.example.org", port_openwhisk_metrics="")
    sources = load(data)[0].providers.openwhisk["invasic_cluster"].prometheus
    assert sources is not None and (sources.platform_url, sources.node_url) == (
        None,
        "http://prom.example.org:30471",
    )
    at(data, *OW, "prometheus_config").update(port_node_metrics="")
    config, notices = load(data)
    assert config.providers.openwhisk["invasic_cluster"].prometheus is None
    assert [
        n for n in notices if n.endswith("prometheus_config: no port given; no Prometheus server is queried")
    ]


def test_a_prometheus_port_out_of_range_is_refused_naming_the_field() -> None:
    data = filled()
    at(data, *OW, "prometheus_config")["port_node_metrics"] = "70000"
    assert error(data) == (
        "old.yaml: providers.openwhisk.invasic_cluster.prometheus_config.port_node_metrics: "
        "must be a TCP port, 1..65535 (got 70000)"
    )


@pytest.mark.parametrize(
    "noticed",
    [
        "version: ",
        "name: ",
        "invasic_cluster.auth.ow_apigw_access_token: not used",
        "invasic_cluster.prometheus_config: fedkeeper serve queries the Prometheus servers there (platform "
        "metrics at http://10.0.0.5:30325, node metrics at http://10.0.0.5:30471)",
        "invasic_cluster.configurations: ",
        "gcf_cluster.auth: every field is empty",
        "mongo_config.collection: not used",
        "fl_client.openwhisk.func_path: ",
        "fl_client.openwhisk.docker_image: ",
        "fl_client.openwhisk.params_file_path: ",
        "server_config.max_rounds: FedKeeper's shape has no round limit; using fedkeeper's default 10",
        "server_config.min_fit_fraction: FedKeeper's shape has no quorum",
        "server_config.max_retries: FedKeeper's shape has no retries per client; using fedkeeper's default 3",
        "server_config.target_accuracy: ",
        "data_sampling: FedKeeper's shape has no sampling method",
    ],
)
def test_keys_without_effect_and_missing_settings_get_exactly_one_notice(noticed: str) -> None:
    _, notices = load(filled())
    assert len([n for n in notices if noticed in n]) == 1


def test_announced_defaults_are_the_native_defaults() -> None:
    config, _ = load(filled())
    for name in ("max_rounds", "target_accuracy", "min_fit_fraction", "max_retries"):
        assert getattr(config.fl.server_config, name) == ServerConfig.model_fields[name].default


def test_credentials_only_in_base_url_or_only_in_ow_auth_both_work() -> None:
    only_url = filled()
    del at(only_url, *OW, "auth")["ow_auth"]
    only_auth = filled()
    at(only_auth, *OW)["base_url"] = "https://10.0.0.5:31001/api/v1/namespaces/team/actions/"
    for data in (only_url, only_auth):
        ow = load(data)[0].providers.openwhisk["invasic_cluster"]
        assert ow.auth == GUEST_AUTH and ow.base_url == "https://10.0.0.5:31001"
    assert load(only_auth)[0].providers.openwhisk["invasic_cluster"].namespace == "team"


def test_ow_api_host_stands_in_for_a_missing_base_url_and_a_different_one_is_announced() -> None:
    data = filled()
    del at(data, *OW)["base_url"]
    assert load(data)[0].providers.openwhisk["invasic_cluster"].base_url == "https://10.0.0.5:31001"
    other = filled()
    at(other, *OW, "auth")["ow_api_host"] = "172.17.0.1:31001"
    assert [n for n in load(other)[1] if "ow_api_host: differs from base_url's host; not used" in n]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: at(d, *OW, "auth").pop("ow_auth") and at(d, *OW).update(base_url="https://h:1/"), "no credentials"),
        (lambda d: at(d, *OW, "auth").update(ow_auth="other:secretsecret"), "credentials in base_url and auth.ow_auth differ"),
        (lambda d: at(d, *OW).update(base_url=f"https://{GUEST_AUTH}@h:1/api/v2/x"), "path '/api/v2/x' is not /api/v1"),
        (lambda d: at(d, "providers", "google", "gcf_cluster").update(base_url="https://example.org/"), "expected https://REGION-PROJECT.cloudfunctions.net/"),
        (lambda d: at(d, "providers", "google", "gcf_cluster", "auth").update(private_key="k" * 40), "service-account key lacks client_email, token_uri"),
        (lambda d: at(d, *FL, "server_config").update(server_manager_functions=["fl_x"]), "'fl_x' is not a managing function"),
        (lambda d: at(d, *FL, "clients_info").update(client_functions=["my_client"]), "only client function is fl_client"),
        (lambda d: at(d, *FL, "data_sampling").update(input_shape_x=32), "images of 32x28"),
        (lambda d: at(d, *FL, "data_sampling").update(model="resnet"), "'resnet' is not one of mlp, cnn"),
        (lambda d: at(d, *FL, "model_params").update(lr="fast"), "model_params.lr: expected a number (got 'fast')"),
        (lambda d: at(d, *FL, "model_params").update(local_epochs="2.5"), "local_epochs: expected a whole number"),
        (lambda d: at(d, *FL, "model_params").update(optim="rmsprop"), "'rmsprop' is not one of adam, sgd, nadam"),
        (lambda d: at(d, *FL, "functions", "fl_client", "openwhisk").update(memory="lots"), "fl_client.openwhisk.memory: expected a whole number"),
        (lambda d: at(d, *FL, "functions").update(fl_train={}), "functions.fl_train: not a fedkeeper function"),
        (lambda d: at(d, *FL, "training_test_data").pop("test_labels_url"), "test_labels_url: missing"),
        (lambda d: at(d, *FL, "server_config").update(max_rounds=3), "server_config.max_rounds: not a key of FedKeeper's config shape, which this file was read as (it has name)"),
        (lambda d: at(d, *OW).update(base_url="https://<ADD_IP_HERE>:31001/"), "base_url: still holds the placeholder <ADD_IP_HERE>"),
    ],
)  # fmt: skip
def test_what_cannot_work_is_one_line_naming_the_key_and_the_way_out(change: Any, expected: str) -> None:
    data = filled()
    change(data)
    message = error(data)
    assert message.startswith("old.yaml: ") and expected in message


def test_pickled_obj_training_data_is_refused_with_a_conversion_one_liner() -> None:
    data = filled()
    section = at(data, *FL, "training_test_data")
    section.update({key: url.replace(".npy", ".obj") for key, url in section.items()})  # as published
    message = error(data)
    assert message.startswith(
        "old.yaml: scenarios.federated_learning.training_test_data.train_images_url: mnist_train_img.obj is a pickle"
    )
    assert "python -c \"import pickle, numpy as np; np.save('mnist_train_img.npy'" in message


def test_service_account_auth_block_becomes_inline_credentials() -> None:
    data = filled()
    key = {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nabcdefghijkl\n-----END "
           "PRIVATE KEY-----\n", "client_email": "sa@my-project.iam.gserviceaccount.com",
           "token_uri": "https://oauth2.googleapis.com/token"}  # fmt: skip
    at(data, "providers", "google", "gcf_cluster", "auth").update(key)
    config, notices = load(data)
    credentials = config.providers.google["gcf_cluster"].credentials
    assert credentials is not None and json.loads(credentials.get_secret_value()) == key
    assert not [n for n in notices if "gcf_cluster.auth" in n]


def test_numbers_may_be_numbers_too_and_several_platform_blocks_take_the_largest() -> None:
    data = filled()
    at(data, *FL, "clients_info").update(
        ow_clients_count=2, gcf_clients_count=0
    )  # no invoker: timeouts as given
    at(data, *FL, "model_params").update(lr=0.01, local_epochs=2)
    blocks = at(data, *FL, "functions", "fl_client")
    blocks["google"] = {"memory": 1024, "timeout": 400000, "concurrency": 1}
    config, notices = load(data)
    assert (config.fl.model_params.learning_rate, config.fl.model_params.local_epochs) == (0.01, 2)
    client = config.fl.functions.fl_client
    assert (client.memory, client.timeout, client.concurrency) == (2048, 400, 100)
    assert [n for n in notices if "settings differ between platforms" in n]


# --------------------------------------------------------------------------- migrate
def test_migrate_prints_a_native_file_that_loads_to_the_same_config_with_env_placeholders_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = filled()
    at(data, *OW, "auth")["ow_auth"] = "${OW_AUTH}"
    at(data, *OW)["base_url"] = "https://10.0.0.5:31001/api/v1/namespaces/guest/actions/"
    monkeypatch.setenv("OW_AUTH", GUEST_AUTH)
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(data))

    text = migrate(old)
    assert "${OW_AUTH}" in text and KEY not in text and "***" not in text
    assert "node_url: http://10.0.0.5:30471" in text  # prometheus_config, as native URLs
    new = tmp_path / "new.yaml"
    new.write_text(text)
    notices: list[str] = []
    assert load_config(new, notices) == load_config(old) and notices == []


def test_migrate_keeps_a_literal_secret_as_given_rather_than_masking_it(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(filled()))
    text = migrate(old)
    assert f"auth: {GUEST_AUTH}" in text
    assert load_config(old) == parse_config(yaml.safe_load(text))


def test_cli_prints_notices_on_stderr_and_migrate_on_stdout(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(filled()))
    down = subprocess.run(
        [sys.executable, "-m", "fedkeeper", "fabric", "down", "-c", str(old)], capture_output=True, text=True
    )
    assert down.returncode == 0, down.stderr
    lines = down.stderr.splitlines()
    assert lines and all(line.startswith("fedkeeper: notice: ") for line in lines)
    assert any("prometheus_config: fedkeeper serve queries" in line for line in lines)
    migrated = subprocess.run(
        [sys.executable, "-m", "fedkeeper", "config", "migrate", str(old)], capture_output=True, text=True
    )
    assert migrated.returncode == 0 and migrated.stderr == ""
    assert yaml.safe_load(migrated.stdout)["scenarios"]["federated_learning"]["server_config"]["cluster"] == (
        "invasic_cluster"
    )
    native = subprocess.run(
        [sys.executable, "-m", "fedkeeper", "config", "migrate", str(ROOT / "config-sample.yaml")],
        capture_output=True,
        text=True,
    )
    assert native.returncode == 2 and "not in FedKeeper's original shape; nothing to migrate" in native.stderr
