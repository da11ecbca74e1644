"""Each function's zip is self-contained: everything it imports is inside it."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from fedkeeper.host.packaging import FUNCTIONS_ROOT, build_zip, function_dir

FUNCTIONS = sorted(p.name for p in FUNCTIONS_ROOT.iterdir() if (p / "__main__.py").exists())

# Runs inside the unpacked zip with the project's own copy of fedkeeper made unreachable, as on a
# platform where only the zip exists (an editable install would otherwise fill in missing modules).
PROBE = """
import importlib, importlib.util, pkgutil, sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if p and p.rstrip("/") != sys.argv[2]]
sys.path.insert(0, sys.argv[1])
import fedkeeper
assert fedkeeper.__file__.startswith(sys.argv[1]), fedkeeper.__file__
for entry in ("__main__", "main", "lambda_function"):
    spec = importlib.util.spec_from_file_location(f"entry_{entry}", f"{sys.argv[1]}/{entry}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
for module in pkgutil.walk_packages(fedkeeper.__path__, "fedkeeper."):
    importlib.import_module(module.name)
from fedkeeper.function.invoke.registry import client_class
for platform in ("openwhisk", "google", "aws", "edge"):
    client_class(platform)
print("ok")
"""


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_zip_imports_everything_it_needs_from_itself(name: str, tmp_path: Path) -> None:
    archive = zipfile.ZipFile(io.BytesIO(build_zip(function_dir(name))))
    archive.extractall(tmp_path)
    assert {"__main__.py", "main.py", "lambda_function.py", "requirements.txt"} <= set(archive.namelist())
    repo = str(FUNCTIONS_ROOT.parent)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), repo],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_zip_is_reproducible() -> None:
    assert build_zip(function_dir("fl_client")) == build_zip(function_dir("fl_client"))
