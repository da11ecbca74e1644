"""Build the deployable zip of one function: its entry points plus the function-side package.

One archive serves every platform: ``__main__.py`` (OpenWhisk python action), ``main.py``
(GCF, entry point ``handler``) and ``lambda_function.py`` (Lambda, ``lambda_function.handler``)
sit at its root beside ``fedkeeper/__init__.py``, the ``fedkeeper/function`` folder copied whole,
and a ``requirements.txt``. Nothing is picked or left out by name: what runs in a function is
what lives in ``fedkeeper/function`` (``tests/test_layout.py`` keeps host code out of it).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import fedkeeper

PACKAGE_ROOT = Path(fedkeeper.__file__).resolve().parent
FUNCTION_SIDE = PACKAGE_ROOT / "function"  # the function-side package, shipped whole
REPO_ROOT = PACKAGE_ROOT.parent
FUNCTIONS_ROOT = REPO_ROOT / "functions"
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # reproducible archives: same source -> same bytes -> same hash

REQUIREMENTS = """\
numpy
pymongo
requests
tensorflow-cpu
scikit-learn
paramiko
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


def function_side_files() -> list[Path]:
    """What every zip carries besides its entry points: ``fedkeeper/__init__.py`` (the package
    above) and every file of ``fedkeeper/function``."""
    return [PACKAGE_ROOT / "__init__.py", *_files(FUNCTION_SIDE)]


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
            for path in function_side_files():
                _add(archive, path.relative_to(REPO_ROOT).as_posix(), path.read_bytes())
        if "requirements.txt" not in names:
            _add(archive, "requirements.txt", REQUIREMENTS.encode())
    return buffer.getvalue()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
