"""One platform catalog and one function catalog; capabilities checked once, with reasons."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import fedkeeper
from fedkeeper.function.catalog import FUNCTIONS, MANAGING_NEEDS, PLATFORMS, TRAINING_FUNCTIONS, Role
from fedkeeper.function.config import ClientsInfo, FunctionsConfig, Providers, parse_config
from fedkeeper.function.errors import ConfigError, ProviderError
from fedkeeper.function.invoke.base import Capabilities, Needs, unsupported
from fedkeeper.function.invoke.registry import client_class
from fedkeeper.function.tasks.entry import HANDLERS
from fedkeeper.host.cli import cli
from fedkeeper.host.packaging import FUNCTIONS_ROOT
from fedkeeper.host.providers.base import FunctionSpec
from fedkeeper.host.providers.registry import provider_class

PACKAGE = Path(fedkeeper.__file__).resolve().parent


def _config(server: str = "local") -> dict:
    return {
        "providers": {"openwhisk": {"local": {"local": True}}, "google": {"gcf": {"project": "p"}}},
        "scenarios": {
            "federated_learning": {
                "server_config": {"cluster": server, "num_clients_per_round": 2},
                "clients_info": {"total_num_clients": 3, "ow_clients_count": 2, "gcf_clients_count": 1},
            }
        },
    }


@pytest.mark.parametrize("platform", PLATFORMS, ids=lambda p: p.name)
def test_every_platform_has_config_model_client_provider_cli_flag_and_count_key(platform) -> None:
    assert Providers.model_fields[platform.name].annotation == dict[str, platform.settings]
    assert platform.count_key in ClientsInfo.model_fields
    client = client_class(platform.name)
    provider = provider_class(platform.name)
    assert issubclass(provider, client)
    assert client.platform == provider.platform == platform.name
    assert client.capabilities is platform.capabilities
    help_text = CliRunner().invoke(cli, ["check", "--help"]).output
    for flag in platform.flags:
        assert re.search(rf"{re.escape(flag)}\b", help_text), flag


def test_catalog_names_and_count_keys_are_unique() -> None:
    for values in (
        [p.name for p in PLATFORMS],
        [p.count_key for p in PLATFORMS],
        [p.flags for p in PLATFORMS],
    ):
        assert len(set(values)) == len(values)


def test_every_capabilities_flag_is_read_outside_its_declaration() -> None:
    """A declared capability nobody asks about is noise: each field is read somewhere in the package."""
    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for p in PACKAGE.rglob("*.py")
        if p.name not in {"catalog.py"} and "invoke/base.py" not in p.as_posix()
    )
    base = (PACKAGE / "function" / "invoke" / "base.py").read_text(encoding="utf-8")
    for name in Capabilities.__dataclass_fields__:
        if name == "max_result_bytes":  # a limit the platforms enforce; read by tests/providers
            continue
        assert re.search(rf"\.{name}\b", sources + base.split("def unsupported", 1)[1]), name


# Where a platform's name may be written: the catalog, its own invoke and provider modules, and
# compat/, which reads FedKeeper's original file format (whose section names are fixed).
_ALLOWED = {
    "function/catalog.py",
    *(f"function/invoke/{p.module}.py" for p in PLATFORMS),
    *(f"host/providers/{p.module}.py" for p in PLATFORMS),
}


def test_no_platform_name_literal_appears_outside_the_catalog_and_the_provider_modules() -> None:
    names = [p.name for p in PLATFORMS] + [p.count_key for p in PLATFORMS]
    literal = re.compile(r"""["']({})["']""".format("|".join(map(re.escape, names))))
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in _ALLOWED or relative.startswith("function/compat/"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if literal.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "platform names outside the catalog:\n" + "\n".join(found)


def test_no_function_name_literal_appears_outside_the_catalog() -> None:
    names = {f.name for f in FUNCTIONS}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "function/catalog.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        found += [
            f"{relative}:{node.lineno}: {node.value}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
        ]
    assert not found, "function names outside the catalog:\n" + "\n".join(found)


def test_no_if_chain_on_platform_names() -> None:
    # platform == "...", provider.platform != '...' (sys.platform is the OS, not ours)
    chain = re.compile(r"""(?<!sys\.)\bplatform(\.name)?\s*[!=]=\s*["']""")
    found = [
        f"{p.relative_to(PACKAGE)}:{n}"
        for p in PACKAGE.rglob("*.py")
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if chain.search(line)
    ]
    assert not found


def test_function_catalog_gives_handlers_settings_and_entry_points() -> None:
    assert {f.name: f.handler for f in FUNCTIONS} == HANDLERS
    defaults = FunctionsConfig()
    for function in TRAINING_FUNCTIONS:
        assert defaults.settings(function.name) == function.defaults
    # The kept shims: each catalog function has exactly the three platforms' entry points, naming it.
    for function in FUNCTIONS:
        folder = FUNCTIONS_ROOT / function.name
        assert sorted(p.name for p in folder.glob("*.py")) == ["__main__.py", "lambda_function.py", "main.py"]
        for shim in folder.glob("*.py"):
            assert f'"{function.name}"' in shim.read_text(encoding="utf-8"), shim
    assert [f.role for f in FUNCTIONS].count(Role.CLIENT) == 1


def test_unsupported_returns_one_reason_per_unmet_need() -> None:
    caps = Capabilities(
        async_invoke=False, store_access=False, max_request_bytes=10, max_result_bytes=10,
        max_duration_s=60, memory_mb=(128, 512),
    )  # fmt: skip
    needs = Needs(async_invoke=True, store_access=True, duration_s=61, memory_mb=64, request_bytes=11)
    assert unsupported(caps, needs) == [
        "no async invoke",
        "no store access",
        "timeout 61 s is outside 1..60 s",
        "memory 64 MB is outside 128..512 MB",
        "request of 11 bytes is past the 10 byte limit",
    ]
    assert unsupported(caps, Needs(duration_s=60, memory_mb=512, request_bytes=10)) == []


def test_a_provider_refuses_a_spec_outside_its_limits_with_every_reason() -> None:
    gcf = next(p for p in PLATFORMS if p.capabilities.memory_mb)
    provider = provider_class(gcf.name).__new__(provider_class(gcf.name))
    provider.cluster = "x"
    spec = FunctionSpec("f", Path("f"), memory_mb=1, timeout_s=gcf.capabilities.max_duration_s + 1)
    with pytest.raises(ProviderError, match=r"function f: timeout .* is outside .*; memory 1 MB is outside"):
        provider.refuse_unsupported(spec)


def test_managing_functions_go_to_the_capable_cluster_named_by_server_config() -> None:
    assert parse_config(_config()).server_platform == next(
        p.name for p in PLATFORMS if not unsupported(p.capabilities, MANAGING_NEEDS)
    )


def test_a_server_cluster_that_cannot_run_the_managing_functions_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(server="gcf"), "c.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert "'gcf' cannot run the managing functions (google/gcf: no async invoke;" in message
    assert "clusters that can: openwhisk/local" in message


def test_fedkeeper_check_names_what_each_cluster_lacks_and_where_its_clients_go(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config()))
    result = CliRunner().invoke(cli, ["check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("openwhisk/local: async invoke, store access; runs the managing functions")
    assert lines[0].endswith("; 2 client(s) run fl_client directly")
    assert (
        lines[1]
        == "google/gcf: no async invoke -> 1 client(s) go through fl_invoker_weights_update on openwhisk/local"
    )


def test_fedkeeper_check_says_which_clusters_clients_are_left_out_of_federated_evaluation(
    tmp_path: Path,
) -> None:
    data = _config()
    data["providers"]["edge"] = {"fleet": {}}
    data["scenarios"]["federated_learning"]["clients_info"] = {
        "total_num_clients": 3,
        "ow_clients_count": 2,
        "edge_clients_count": 1,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    (edge,) = [line for line in result.output.splitlines() if line.startswith("edge/fleet")]
    assert edge.endswith(
        "; left out of federated evaluation (fixed trainer: trains only, no federated evaluation)"
    )
    assert "federated evaluation" not in result.output.replace(edge, "")


def test_fedkeeper_check_fails_on_a_function_outside_its_cluster_limits(tmp_path: Path) -> None:
    data = _config()
    data["scenarios"]["federated_learning"]["functions"] = {"fl_client": {"memory": 64}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["check", "-c", str(path)])
    assert result.exit_code != 0
    assert "google/gcf: fl_client cannot be deployed: memory 64 MB is outside 128..32768 MB" in result.output
