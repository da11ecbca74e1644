"""The token that changes state: from the environment or the config, never shown, never short."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from fedkeeper.function.config import ServeConfig
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.redaction import redact
from fedkeeper.host.serve.access import TOKEN_ENV, Access, Verdict

from .conftest import serve_config, write_config

TOKEN = "access-test-token-0123456789"


def test_the_environment_token_wins_over_the_configs() -> None:
    access = Access.from_config(ServeConfig(token=SecretStr("config-token-0123456789")), {TOKEN_ENV: TOKEN})
    assert access.check(f"Bearer {TOKEN}") is Verdict.ALLOWED
    assert access.check("Bearer config-token-0123456789") is Verdict.REFUSED


def test_only_the_exact_bearer_token_is_allowed() -> None:
    access = Access.from_config(ServeConfig(token=SecretStr(TOKEN)), {})
    assert access.check(f"Bearer {TOKEN}") is Verdict.ALLOWED
    assert access.check(f"bearer {TOKEN}") is Verdict.ALLOWED  # the scheme is case-insensitive
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
        assert access.check(header) is Verdict.REFUSED, header


def test_without_a_token_nothing_is_allowed() -> None:
    assert Access.from_config(ServeConfig(), {}).check(f"Bearer {TOKEN}") is Verdict.NO_TOKEN_SET


def test_the_token_is_masked_wherever_the_redactor_runs_and_hidden_from_repr() -> None:
    access = Access.from_config(ServeConfig(), {TOKEN_ENV: TOKEN})
    assert TOKEN not in repr(access)
    assert redact(f"request with {TOKEN}") == "request with ***"


def test_a_short_token_is_refused_naming_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=f"^{TOKEN_ENV}: the API token must be at least 16 characters"):
        Access.from_config(ServeConfig(), {TOKEN_ENV: "short"})


def test_serve_with_a_short_config_token_stops_with_one_line_and_status_2(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.yaml", serve_config("mongodb://127.0.0.1:9", "x", serve={"token": "tiny-token"})
    )
    job = subprocess.run(
        [sys.executable, "-m", "fedkeeper", "serve", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 2
    assert job.stderr.splitlines() == [
        "fedkeeper: serve.token: the API token must be at least 16 characters without surrounding spaces "
        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(24))'`)"
    ]
    assert "tiny-token" not in job.stdout + job.stderr
