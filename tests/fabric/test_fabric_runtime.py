"""The runtime proxy on its own: OpenWhisk's /init and /run protocol, sentinels, isolation."""

from __future__ import annotations

import ast
import base64
import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from fedkeeper.host.fabric.logs import SENTINEL
from fedkeeper.host.fabric.worker import RUNTIME, TOKEN_ENV, TOKEN_HEADER

ACTION = """
import os
def main(params):
    print("ran", params["n"])
    return {"n": params["n"], "id": os.environ["__OW_ACTIVATION_ID"], "deadline": os.environ["__OW_DEADLINE"],
            "env": os.environ.get("FROM_INIT")}
"""


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        [sys.executable, str(RUNTIME), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # where the action's code is unpacked
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith("runtime listening on "), line
    yield process, f"http://127.0.0.1:{line.rsplit(' ', 1)[1]}"
    process.kill()
    process.wait(10)


def test_runtime_imports_nothing_from_fedkeeper() -> None:
    tree = ast.parse(RUNTIME.read_text())
    modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    modules += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [m for m in modules if m.split(".")[0] == "fedkeeper"]


def test_runtime_speaks_init_and_run_and_frames_logs(runtime: tuple[subprocess.Popen[str], str]) -> None:
    process, url = runtime
    init = {
        "value": {"name": "a", "main": "main", "code": ACTION, "binary": False, "env": {"FROM_INIT": "yes"}}
    }
    assert requests.post(f"{url}/init", json=init, timeout=10).status_code == 200
    again = requests.post(f"{url}/init", json=init, timeout=10)
    assert again.status_code == 403 and "error" in again.json()
    deadline = str(int(time.time() * 1000) + 60000)
    run = {"value": {"n": 7}, "activation_id": "a" * 32, "deadline": deadline, "namespace": "guest"}
    response = requests.post(f"{url}/run", json=run, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"n": 7, "id": "a" * 32, "deadline": deadline, "env": "yes"}
    process.kill()
    out, err = process.communicate(timeout=10)
    assert out.splitlines() == ["ran 7", SENTINEL]
    assert err.splitlines()[-1] == SENTINEL


def test_runtime_refuses_a_zip_without_main_module(runtime: tuple[subprocess.Popen[str], str]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("other.py", "x = 1\n")
    init = {"value": {"main": "main", "code": base64.b64encode(buffer.getvalue()).decode(), "binary": True}}
    response = requests.post(f"{runtime[1]}/init", json=init, timeout=10)
    assert response.status_code == 502
    assert response.json() == {"error": "Zip file does not include __main__.py"}


def test_runtime_started_with_a_token_refuses_callers_without_it(tmp_path: Path) -> None:
    env = {**os.environ, TOKEN_ENV: "the-fabric-secret", "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, str(RUNTIME), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = f"http://127.0.0.1:{process.stdout.readline().strip().rsplit(' ', 1)[1]}"
        init = {"value": {"code": ACTION}}
        assert requests.post(f"{url}/init", json=init, timeout=10).status_code == 403
        bad = {TOKEN_HEADER: "guess"}
        assert (
            requests.post(f"{url}/run", json={"value": {"n": 1}}, headers=bad, timeout=10).status_code == 403
        )
        good = {TOKEN_HEADER: "the-fabric-secret"}
        assert requests.post(f"{url}/init", json=init, headers=good, timeout=10).status_code == 200
    finally:
        process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
