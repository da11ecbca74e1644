"""Build the deployable zip of one function: its entry points plus the shared core.

One archive serves every platform: ``__main__.py`` (OpenWhisk python action), ``main.py``
(GCF, entry point ``handler``) and ``lambda_function.py`` (Lambda, ``lambda_function.handler``)
sit at its root beside a copy of the ``fedkeeper`` package and a ``requirements.txt``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import fedkeeper

CORE_ROOT = Path(fedkeeper.__file__).resolve().parent
REPO_ROOT = CORE_ROOT.parent
FUNCTIONS_ROOT = REPO_ROOT / "functions"

# Parts of the package that run only on the keeper's host. Until the providers are split into
# deploy APIs (host) and invoke clients (function side), the invoker's zip still needs them.
_EXCLUDED_CORE = {
    "__main__.py",
    "host/childproc.py",
    "host/cli.py",
    "host/deployment.py",
    "host/edge",
    "host/fabric",
    "host/keeper.py",
    "host/ledger.py",
    "host/outages.py",
    "host/placement.py",
    "host/reporting.py",
    "host/services.py",
    "host/store",
}
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # reproducible archives: same source -> same bytes -> same hash

REQUIREMENTS = """\
numpy
pymongo
requests
tensorflow-cpu
scikit-learn
"""


def function_dir(name: str) -> Path:
    path = FUNCTIONS_ROOT / name
    if not path.is_dir():
        raise FileNotFoundError(f"no function folder {path}")
    return path


def _add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    )


def build_zip(source: Path, *, include_core: bool = True) -> bytes:
    """Return the zip archive for the function folder ``source``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        names: set[str] = set()
        for path in _files(source):
            arcname = path.relative_to(source).as_posix()
            names.add(arcname)
            _add(archive, arcname, path.read_bytes())
        if include_core:
            for path in _files(CORE_ROOT):
                relative = path.relative_to(CORE_ROOT)
                if relative.as_posix() in _EXCLUDED_CORE or "/".join(relative.parts[:2]) in _EXCLUDED_CORE:
                    continue
                _add(archive, f"fedkeeper/{relative.as_posix()}", path.read_bytes())
        if "requirements.txt" not in names:
            _add(archive, "requirements.txt", REQUIREMENTS.encode())
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
