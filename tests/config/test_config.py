"""Config errors are one line naming the file, the field and the bad value; never a traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedkeeper.function.config import load_config, parse_config
from fedkeeper.function.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config-sample.yaml"


def sample() -> dict[str, Any]:
    return yaml.safe_load(SAMPLE.read_text())


def test_sample_config_is_valid() -> None:
    config = load_config(SAMPLE)
    assert config.fl.clients_info.total_num_clients == 8
    assert config.providers.openwhisk["local"].local is True


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["scenarios", "federated_learning", "server_config", "min_fit_fraction"], 1.5, "min_fit_fraction"),
        (
            ["scenarios", "federated_learning", "server_config", "cluster"],
            "nowhere",
            "'nowhere' is not a cluster",
        ),
        (["scenarios", "federated_learning", "clients_info", "ow_clients_count"], 3, "add up to 3"),
        (["scenarios", "federated_learning", "model_params", "optimizer"], "adamw", "optimizer"),
        (
            ["scenarios", "federated_learning", "model_params", "input_size"],
            784,
            "does not match dataset 'digits'",
        ),
        (["scenarios", "federated_learning", "mongo_config", "url"], "postgres://x", "mongodb:// URL"),
        (["scenarios", "federated_learning", "training_test_data", "dataset"], "mnist", "needs path"),
        (["providers", "openwhisk", "local", "base_url"], "ftp://x", "base_url"),
        (["scenarios", "federated_learning", "server_config", "max_rounds"], "ten", "max_rounds"),
        (["scenarios", "federated_learning", "server_config", "colour"], "red", "colour"),
        (
            ["scenarios", "federated_learning", "server_config", "activation_timeout_s"],
            180,
            "server_config.activation_timeout_s 180 must exceed functions.fl_client.timeout 180",
        ),
    ],
)
def test_bad_field_gives_one_line_naming_file_and_field(
    tmp_path: Path, path: list[str], value: Any, expected: str
) -> None:
    data = sample()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(file)
    message = str(info.value)
    assert message.startswith(f"{file}:")
    assert expected in message
    assert "\n" not in message


def _with_invoker_clients(data: dict[str, Any]) -> dict[str, Any]:
    """Move two of the sample's OpenWhisk clients to GCF, so the keeper tracks the invoker too."""
    fl = data["scenarios"]["federated_learning"]
    fl["clients_info"]["ow_clients_count"] -= 2
    fl["clients_info"]["gcf_clients_count"] = 2
    data["providers"]["google"] = {"gcp": {"project": "p"}}
    return data


def test_default_timeouts_let_no_attempt_overlap_the_next() -> None:
    data = _with_invoker_clients(sample())
    fl = data["scenarios"]["federated_learning"]
    del fl["server_config"]["activation_timeout_s"], fl["functions"]
    functions = parse_config(data).fl.functions
    keeper = parse_config(data).fl.server_config.activation_timeout_s
    assert keeper > functions.fl_invoker_weights_update.timeout > functions.fl_client.timeout


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        (
            "server_config",
            "activation_timeout_s",
            240,
            "server_config.activation_timeout_s 240 must exceed functions.fl_invoker_weights_update.timeout "
            "240: the keeper would start a second attempt while the first may still run",
        ),
        (
            "functions",
            "fl_invoker_weights_update",
            {"memory": 512, "timeout": 170},
            "functions.fl_invoker_weights_update.timeout 170 must exceed functions.fl_client.timeout 180: "
            "the invoker waits that long for its client",
        ),
    ],
)
def test_keeper_timeout_must_outlast_the_invoker_when_clients_go_through_it(
    section: str, key: str, value: Any, expected: str
) -> None:
    data = _with_invoker_clients(sample())
    data["scenarios"]["federated_learning"][section][key] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yaml")
    assert str(info.value) == f"c.yaml: scenarios.federated_learning: {expected}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("zip", "compression.codec: Input should be 'none', 'float16', 'int8' or 'topk' (got 'zip')"),
        ({"codec": "int8", "fraction": 0.1}, "compression: fraction applies to codec topk only, not int8"),
        ({"codec": "topk", "fraction": 0}, "compression.fraction: Input should be greater than 0 (got 0)"),
        (
            {"codec": "topk", "fraction": 1.5},
            "compression.fraction: Input should be less than or equal to 1 (got 1.5)",
        ),
    ],
)
def test_bad_compression_is_one_line_naming_the_field(value: Any, expected: str) -> None:
    data = sample()
    data["scenarios"]["federated_learning"]["server_config"]["compression"] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yaml")
    assert str(info.value) == f"c.yaml: scenarios.federated_learning.server_config.{expected}"


@pytest.mark.parametrize(
    ("value", "codec", "fraction"),
    [
        ("int8", "int8", 1.0),
        ("topk", "topk", 0.1),
        ({"codec": "topk"}, "topk", 0.1),
        ({"codec": "topk", "fraction": 0.05}, "topk", 0.05),
    ],
)
def test_compression_is_a_codec_name_or_a_mapping(value: Any, codec: str, fraction: float) -> None:
    data = sample()
    data["scenarios"]["federated_learning"]["server_config"]["compression"] = value
    fl = parse_config(data).fl
    built = fl.server_config.compression.build()
    assert (built.name, built.fraction) == (codec, fraction)
    # one fingerprint per codec however it is spelled, so a resume compares what trains
    spelled = {"codec": codec, "fraction": fraction} if codec == "topk" else codec
    assert fl.fingerprint()["server_config.compression"] == spelled


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("providers:\n  openwhisk: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ column \d+: invalid YAML"):
        load_config(file)


def test_missing_environment_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FK_NO_SUCH_VAR", raising=False)
    data = sample()
    data["providers"]["openwhisk"]["local"]["auth"] = "${FK_NO_SUCH_VAR}"
    with pytest.raises(
        ConfigError, match=r"providers\.openwhisk\.local\.auth: environment variable FK_NO_SUCH_VAR"
    ):
        parse_config(data, "c.yaml")


def test_environment_variables_fill_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FK_AUTH", "u:k")
    data = sample()
    data["providers"]["openwhisk"]["local"]["auth"] = "${FK_AUTH}"
    assert parse_config(data).providers.openwhisk["local"].auth == "u:k"


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        out = []
        for k, v in node.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
        return out
    return []


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True),
    st.text(max_size=20), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)  # fmt: skip


def test_a_key_with_a_newline_is_named_quoted_on_one_line() -> None:
    config = sample()
    config["providers"]["\n"] = {}
    with pytest.raises(ConfigError) as caught:
        parse_config(config, "c.yaml")
    assert str(caught.value) == "c.yaml: providers.'\\n': Extra inputs are not permitted"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_configs_either_load_or_fail_with_one_clean_line(data: st.DataObject) -> None:
    config = sample()
    paths = _paths(config)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = config
        try:
            for key in path[:-1]:
                node = node[key]
            if isinstance(node, dict):
                node[path[-1]] = data.draw(JUNK)
        except (KeyError, TypeError):
            continue
    try:
        parse_config(copy.deepcopy(config), "fuzz.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yaml")
        assert "\n" not in str(exc)


def test_main_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    data = sample()
    data["scenarios"]["federated_learning"]["server_config"]["num_clients_per_round"] = 99
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "-c", str(file), "-s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "num_clients_per_round: 99 is more than total_num_clients 8" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "mongdb://admin:S3cr3t-Pa55word@db.example:27017/fedkeeper",  # a typo in the scheme
        "http://admin:S3cr3t-Pa55word@db.example:27017",
    ],
)
def test_bad_mongo_url_error_line_does_not_show_its_password(tmp_path: Path, url: str) -> None:
    data = sample()
    data["scenarios"]["federated_learning"]["mongo_config"] = {"url": url}
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "-c", str(file), "-s"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "mongo_config" in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "S3cr3t-Pa55word" not in proc.stderr and "Traceback" not in proc.stderr
