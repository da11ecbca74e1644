"""``fedkeeper config migrate OLD.yaml``: FedKeeper's config file in fedkeeper's native shape.

Values are written as the old file gives them: a ``${VAR}`` stays a placeholder, a literal secret
stays literal (never masked, which would make the output invalid). The old file is first loaded
exactly as ``main.py`` would load it, so the output is only printed for a file that works.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from fedkeeper.function.compat.convert import to_native
from fedkeeper.function.compat.shape import fedkeeper_marker
from fedkeeper.function.config import parse_config, read_yaml
from fedkeeper.function.errors import ConfigError


def migrate(path: str | Path) -> str:
    """The native YAML equivalent of FedKeeper's config file ``path``, notices as leading comments."""
    source = str(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict) or fedkeeper_marker(raw) is None:
        raise ConfigError(f"{source}: not in FedKeeper's original shape; nothing to migrate")
    parse_config(
        copy.deepcopy(raw), source
    )  # one-line error, as main.py would give, for a file that cannot work
    notices: list[str] = []
    native = to_native(copy.deepcopy(raw), source, notices)
    lines = [f"# fedkeeper config, migrated by `fedkeeper config migrate` from {source}.", "# Notes:"]
    lines += [f"#   {notice}" for notice in notices]
    return "\n".join(lines) + "\n" + yaml.safe_dump(native, sort_keys=False, width=1 << 16)
