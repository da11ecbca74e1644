"""Actions: the OpenWhisk action entity, its validation, and its store on disk.

An action is kept as two files under ``<state-dir>/actions/<namespace>/``: ``<name>.json``
(everything but the code) and ``<name>@<version>.code``. Both are written atomically (temp
file, then rename), code first, so a crash never leaves a definition pointing at missing code
and a fabric restarted on the same state directory serves the same actions.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedkeeper.host.fabric.limits import ActionLimits, FabricLimits, LimitError

# OpenWhisk's entity name rule (EntityName.REGEX), at most 256 characters.
_NAME = re.compile(r"^(?:\w|\w[\w@ .-]*[\w@.-]+)$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/\r\n]*={0,2}\s*$")
_ZIP_MAGIC = b"PK\x03\x04"
PYTHON_KINDS = re.compile(r"^python:(?:3|default|3\.\d+)$")
BLACKBOX = "blackbox"


class ActionError(ValueError):
    """A PUT body that OpenWhisk would refuse with 400 (the message follows its wording)."""


def valid_name(name: str) -> bool:
    return len(name) <= 256 and bool(_NAME.match(name))


def is_zip_base64(code: str) -> bool:
    """True when ``code`` is base64 of a zip archive (OpenWhisk detects binary code this way)."""
    text = code.strip()
    if not text or len(text) % 4 or not _BASE64.match(text):
        return False
    try:
        head = base64.b64decode(text[:8], validate=False)
    except (binascii.Error, ValueError):
        return False
    return head.startswith(_ZIP_MAGIC)


def key_value_list(data: Any, what: str) -> list[dict[str, Any]]:
    """Validate OpenWhisk's ``[{"key":..., "value":...}]`` lists (parameters, annotations)."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ActionError(f"{what} must be an array of key/value objects")
    out: list[dict[str, Any]] = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or "value" not in item:
            raise ActionError(f"{what} must be an array of key/value objects (got {json.dumps(item)[:80]})")
        out.append({"key": item["key"], "value": item["value"]})
    return out


@dataclass(frozen=True)
class Exec:
    """How an action runs: ``kind`` (python:3, blackbox), its code, entry point and image."""

    kind: str
    code: str | None
    binary: bool
    main: str = "main"
    image: str | None = None

    @classmethod
    def parse(cls, data: Any) -> Exec:
        if not isinstance(data, dict):
            raise ActionError("exec must be a JSON object")
        kind = data.get("kind")
        if not isinstance(kind, str):
            raise ActionError("exec.kind must be a string")
        image = data.get("image")
        code = data.get("code")
        main = data.get("main") or "main"
        if not isinstance(main, str):
            raise ActionError("exec.main must be a string")
        if kind == BLACKBOX:
            if not isinstance(image, str) or not image:
                raise ActionError("exec.image must be a non-empty string for 'blackbox' actions")
            if code is not None and not isinstance(code, str):
                raise ActionError("exec.code must be a string")
        elif PYTHON_KINDS.match(kind):
            if not isinstance(code, str):
                raise ActionError(f"exec.code must be a string defined in 'exec' for '{kind}' actions")
            image = None
        else:
            raise ActionError(
                f"kind '{kind}' is not supported by this fabric (python:3, python:3.x, blackbox)"
            )
        binary = bool(data.get("binary")) or (isinstance(code, str) and is_zip_base64(code))
        if binary and isinstance(code, str):
            try:
                base64.b64decode(code, validate=False)
            except (binascii.Error, ValueError):
                raise ActionError("exec.code is marked binary but is not valid base64") from None
        return cls(kind=kind, code=code, binary=binary, main=main, image=image)

    def to_json(self, *, code: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "binary": self.binary, "main": self.main}
        if self.image is not None:
            out["image"] = self.image
        if code and self.code is not None:
            out["code"] = self.code
        return out


@dataclass(frozen=True)
class Action:
    """One action as the controller stores and serves it."""

    namespace: str
    name: str
    version: str
    exec: Exec
    parameters: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    limits: ActionLimits
    updated: int = field(default_factory=lambda: int(time.time() * 1000))

    def annotation(self, key: str, default: Any = None) -> Any:
        for item in self.annotations:
            if item["key"] == key:
                return item["value"]
        return default

    @property
    def bound(self) -> dict[str, Any]:
        return {p["key"]: p["value"] for p in self.parameters}

    @property
    def web_exported(self) -> bool:
        return self.annotation("web-export") in (True, "true", "yes")

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"

    def merge_params(self, invocation: dict[str, Any]) -> dict[str, Any]:
        """Bound parameters under the invocation's; with annotation ``final`` the bound ones win."""
        if self.annotation("final") is True:
            return {**invocation, **self.bound}
        return {**self.bound, **invocation}

    def to_json(self, *, code: bool = True) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "version": self.version,
            "exec": self.exec.to_json(code=code),
            "parameters": self.parameters,
            "annotations": self.annotations,
            "limits": self.limits.to_json(),
            "publish": False,
            "updated": self.updated,
        }

    def summary(self) -> dict[str, Any]:
        """The list form: no parameters, no code."""
        out = self.to_json(code=False)
        out.pop("parameters")
        out["exec"] = {"binary": self.exec.binary}
        return out


def bump(version: str) -> str:
    """OpenWhisk's semantic version bump on update: 0.0.1 -> 0.0.2."""
    parts = version.split(".")
    try:
        major, minor, patch = (int(p) for p in parts)
    except ValueError:
        return "0.0.1"
    return f"{major}.{minor}.{patch + 1}"


def build_action(
    namespace: str, name: str, body: Any, limits: FabricLimits, existing: Action | None
) -> Action:
    """The action a PUT body describes; an update keeps what the body leaves out."""
    if not isinstance(body, dict):
        raise ActionError("the action must be a JSON object")
    if "exec" in body and body["exec"] is not None:
        exec_ = Exec.parse(body["exec"])
    elif existing is not None:
        exec_ = existing.exec
    else:
        raise ActionError("exec undefined: an action needs 'exec' with 'kind' and 'code'")
    try:
        action_limits = ActionLimits.parse(body.get("limits"), limits, existing.limits if existing else None)
    except LimitError as exc:
        raise ActionError(str(exc)) from None
    parameters = (
        key_value_list(body.get("parameters"), "parameters")
        if body.get("parameters") is not None or existing is None
        else existing.parameters
    )
    annotations = (
        key_value_list(body.get("annotations"), "annotations")
        if body.get("annotations") is not None or existing is None
        else existing.annotations
    )
    if not any(a["key"] == "exec" for a in annotations):
        annotations = [*annotations, {"key": "exec", "value": exec_.kind.split(":")[0]}]
    return Action(
        namespace=namespace,
        name=name,
        version=bump(existing.version) if existing else "0.0.1",
        exec=exec_,
        parameters=parameters,
        annotations=annotations,
        limits=action_limits,
    )


# --------------------------------------------------------------------------- storage
def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ActionStore:
    """Actions by namespace and name, persisted under ``root`` (``None``: memory only)."""

    def __init__(self, root: Path | None, limits: FabricLimits) -> None:
        self.root = root
        self.limits = limits
        self._actions: dict[tuple[str, str], Action] = {}

    def _dir(self, namespace: str) -> Path:
        assert self.root is not None
        return self.root / "actions" / quote(namespace, safe="")

    def load(self) -> int:
        """Read every stored action; returns how many. Unreadable files are skipped with a note."""
        if self.root is None:
            return 0
        base = self.root / "actions"
        if not base.is_dir():
            return 0
        for meta_path in sorted(base.glob("*/*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                code_file = meta_path.parent / meta.pop("code_file")
                exec_json = meta["exec"]
                code = code_file.read_text(encoding="utf-8") if code_file.exists() else None
                action = Action(
                    namespace=meta["namespace"],
                    name=meta["name"],
                    version=meta["version"],
                    exec=Exec(
                        kind=exec_json["kind"],
                        code=code,
                        binary=exec_json["binary"],
                        main=exec_json.get("main", "main"),
                        image=exec_json.get("image"),
                    ),
                    parameters=meta["parameters"],
                    annotations=meta["annotations"],
                    limits=ActionLimits(**meta["limits"]),
                    updated=meta["updated"],
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                print(f"fabric: skipping unreadable action file {meta_path}: {exc}", flush=True)
                continue
            self._actions[(action.namespace, action.name)] = action
        return len(self._actions)

    def get(self, namespace: str, name: str) -> Action | None:
        return self._actions.get((namespace, name))

    def list(self, namespace: str) -> list[Action]:
        found = [a for (ns, _), a in self._actions.items() if ns == namespace]
        return sorted(found, key=lambda a: a.updated, reverse=True)

    def put(self, action: Action) -> Action:
        """Store ``action`` (on disk first, so memory never holds what a restart would lose)."""
        previous = self._actions.get((action.namespace, action.name))
        if previous is not None and action.updated <= previous.updated:
            action = replace(action, updated=previous.updated + 1)
        if self.root is not None:
            folder = self._dir(action.namespace)
            stem = quote(action.name, safe="")
            code_name = f"{stem}@{action.version}.code"
            _atomic_write(folder / code_name, (action.exec.code or "").encode("utf-8"))
            meta = action.to_json(code=False)
            meta["limits"] = action.limits.to_json()
            meta["code_file"] = code_name
            _atomic_write(folder / f"{stem}.json", json.dumps(meta).encode("utf-8"))
            for old in folder.glob(f"{glob_escape(stem)}@*.code"):
                if old.name != code_name:
                    old.unlink(missing_ok=True)
        self._actions[(action.namespace, action.name)] = action
        return action

    def delete(self, namespace: str, name: str) -> Action | None:
        action = self._actions.pop((namespace, name), None)
        if action is not None and self.root is not None:
            folder = self._dir(namespace)
            stem = quote(name, safe="")
            (folder / f"{stem}.json").unlink(missing_ok=True)
            for old in folder.glob(f"{glob_escape(stem)}@*.code"):
                old.unlink(missing_ok=True)
        return action


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
