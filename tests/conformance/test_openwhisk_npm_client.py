"""The independent npm ``openwhisk`` client drives the fabric (tests/conformance/openwhisk_client.js)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from fedkeeper.function.config import GUEST_AUTH
from fedkeeper.host.fabric.process import FabricProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCRIPT = HERE / "openwhisk_client.js"
CLIENT = REPO / "node_modules" / "openwhisk"

ACTION = """
def main(params):
    print("running conformance", sorted(params))
    if "fail" in params:
        return {"error": params["fail"]}
    return {"params": params}
"""


def _require_client() -> str:
    """``node``, or skip locally / fail under CI when the client is not installed."""
    node = shutil.which("node")
    if CLIENT.is_dir() and node:
        return node
    reason = "run `npm install` at the repository root (needs node and node_modules/openwhisk)"
    if os.environ.get("CI"):
        pytest.fail(f"the npm openwhisk client is missing under CI: {reason}")
    pytest.skip(reason)


def test_npm_openwhisk_client_creates_invokes_reads_and_deletes(tmp_path: Path) -> None:
    node = _require_client()
    archive = tmp_path / "action.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("__main__.py", ACTION)
    archive.write_bytes(buffer.getvalue())
    with FabricProcess(limits={"blocking_wait_s": 30}) as fabric:
        result = subprocess.run(
            [node, str(SCRIPT), fabric.url, GUEST_AUTH, str(archive)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["created"] == "0.0.1"
    assert summary["status"] == "success"
    assert summary["applicationError"] == 502
    assert summary["afterDelete"] == 404
    assert len(summary["activationId"]) == 32
