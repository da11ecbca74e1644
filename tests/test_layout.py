"""Where code runs is read from the layout, and the layout is enforced.

``fedkeeper/function`` is what runs inside a deployed function (and what both sides share);
``fedkeeper/host`` runs beside the keeper. Host code may import function-side code, never the
reverse, and a function's zip is the function-side package, nothing more and nothing less.
"""

from __future__ import annotations

import ast
import io
import re
import zipfile
from pathlib import Path

import pytest

import fedkeeper
from fedkeeper.host.packaging import FUNCTIONS_ROOT, build_zip, function_dir

PACKAGE = Path(fedkeeper.__file__).resolve().parent
FUNCTION_SIDE = PACKAGE / "function"
HOST_SIDE = PACKAGE / "host"
# A string naming a host module, as importlib.import_module or a "module:Class" table takes it.
_MODULE_STRING = re.compile(r"fedkeeper\.host(\.\w+)*(:\w+)?")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every ``fedkeeper`` module ``source`` imports, anywhere (inside functions too), with relative
    imports resolved; ``from A import b`` counts as ``A`` and ``A.b`` (b may be a submodule).
    Strings that name a host module (lazy ``import_module`` tables) count as imports too."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and _MODULE_STRING.fullmatch(node.value)
        ):
            found.add(node.value.partition(":")[0])
    return {name for name in found if name == "fedkeeper" or name.startswith("fedkeeper.")}


def is_host_side(module: str) -> bool:
    """Host side is ``fedkeeper.host`` and anything in ``fedkeeper`` outside ``fedkeeper.function``
    (``fedkeeper.__main__`` is the CLI)."""
    if module in ("fedkeeper", "fedkeeper.__version__"):
        return False  # the package's own __init__ ships in every zip
    return not (module == "fedkeeper.function" or module.startswith("fedkeeper.function."))


def test_the_walker_sees_every_kind_of_import() -> None:
    source = '''
"""Docstrings may name fedkeeper.host.keeper freely."""
import fedkeeper.host.keeper
from fedkeeper.host import cli
from . import sibling
from ..store import db

def late():
    from fedkeeper.host.edge.token import load_or_create
    return "fedkeeper.host.providers.gcf:GcfProvider"
'''
    found = imported_modules(source, "fedkeeper.function.tasks.example")
    assert {
        "fedkeeper.host.keeper",
        "fedkeeper.host",
        "fedkeeper.host.cli",
        "fedkeeper.function.tasks.sibling",
        "fedkeeper.function.store.db",
        "fedkeeper.host.edge.token",
        "fedkeeper.host.providers.gcf",
    } <= found
    assert not any(is_host_side(m) for m in ("fedkeeper", "fedkeeper.function.store.db"))
    assert all(is_host_side(m) for m in ("fedkeeper.host.cli", "fedkeeper.__main__"))


FUNCTION_MODULES = sorted(FUNCTION_SIDE.rglob("*.py"))


def test_both_sides_exist() -> None:
    assert len(FUNCTION_MODULES) > 20 and (HOST_SIDE / "keeper.py").is_file()
    assert sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py") == ["__init__.py", "__main__.py"]


@pytest.mark.parametrize("path", FUNCTION_MODULES, ids=lambda p: _module_name(p))
def test_function_side_never_imports_host_side(path: Path) -> None:
    module = _module_name(path)
    found = imported_modules(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
    assert not sorted(m for m in found if is_host_side(m)), f"{module} imports host-side code"


def test_the_package_init_stays_function_safe() -> None:
    """``fedkeeper/__init__.py`` ships in every zip, so it must import nothing of the host."""
    init = PACKAGE / "__init__.py"
    assert not imported_modules(init.read_text(encoding="utf-8"), "fedkeeper", is_package=True)


FUNCTIONS = sorted(p.name for p in FUNCTIONS_ROOT.iterdir() if (p / "__main__.py").exists())


def _tree(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
    }


@pytest.mark.parametrize("name", FUNCTIONS)
def test_zip_is_exactly_the_function_side_package(name: str) -> None:
    names = set(zipfile.ZipFile(io.BytesIO(build_zip(function_dir(name)))).namelist())
    entry_points = _tree(function_dir(name))
    package = {"fedkeeper/__init__.py"} | {f"fedkeeper/function/{n}" for n in _tree(FUNCTION_SIDE)}
    assert names == entry_points | package | {"requirements.txt"}
    assert not any(n.startswith("fedkeeper/host/") for n in names)
