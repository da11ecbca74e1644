"""Deploying the client runtime to a host: a venv with the function-side package, and its data; idempotent.

On the host, under its ``root`` (default ``~/.fedkeeper-client``)::

    app/<digest>/      the function zip (fedkeeper/function + requirements.txt), unpacked
    venv/              a venv whose site-packages point at app/<digest> (a .pth file)
    data/<digest>-<name>   the scenario's data files (jobs name them, the invoke client maps them here)

The digest is the zip's SHA-256: a deploy whose digest, marker file and venv are all in place
does nothing. The venv gets its packages one of two ways (the host's ``venv`` in the registry):
``pip`` installs ``requirements.txt`` from the package index on the host (a real Raspberry Pi picks
its own aarch64 wheels), ``system`` reuses the packages of the interpreter the venv is made from
(``--system-site-packages``, plus that interpreter's own site-packages when it is itself a venv),
which is how the tests' hosts avoid downloading TensorFlow again. Either way the runtime then
reports what it can import (:func:`fedkeeper.function.tasks.stdio.inventory`), and that is the
host's recorded dependency state.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from fedkeeper.function.catalog import CLIENT_FUNCTION
from fedkeeper.function.config import TrainingTestData
from fedkeeper.function.errors import ConfigError, ProviderError
from fedkeeper.function.invoke import ssh
from fedkeeper.function.invoke.hosts import runner_command
from fedkeeper.function.learning.datasets import ARRAY_SOURCES
from fedkeeper.function.tasks.stdio import REQUIRED
from fedkeeper.host.hosts.access import login_host, makedirs
from fedkeeper.host.hosts.keys import InstallationKey
from fedkeeper.host.hosts.registry import Host, HostRegistry
from fedkeeper.host.packaging import build_zip, function_dir

# venv + pip install of TensorFlow on a Raspberry Pi takes minutes.
STEP_TIMEOUT_S = 1800.0
MARKER = ".complete"
_PTH = "fedkeeper-runtime.pth"


@dataclass(frozen=True)
class Bundle:
    """The runtime every host gets: the client function's zip and its digest."""

    data: bytes
    digest: str

    @classmethod
    def build(cls) -> Bundle:
        data = build_zip(function_dir(CLIENT_FUNCTION))
        return cls(data, hashlib.sha256(data).hexdigest()[:16])


@dataclass(frozen=True)
class Outcome:
    fl_id: str
    changed: bool
    deps: dict[str, Any]


class _Remote:
    """One host's login, its SFTP session and absolute paths."""

    def __init__(self, host: Host, client: paramiko.SSHClient) -> None:
        self.host = host
        self.where = f"{host.fl_id} ({host.endpoint.where})"
        self.client = client
        self.sftp = client.open_sftp()
        makedirs(self.sftp, posixpath.join(host.root, "app"))
        self.root = self.sftp.normalize(host.root)
        self.venv_python = posixpath.join(self.root, "venv", "bin", "python")

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def run(self, argv: list[str], what: str) -> str:
        output = ssh.run(self.client, self.where, argv, timeout_s=STEP_TIMEOUT_S)
        if output.exit_status != 0:
            raise ProviderError(
                f"host {self.where}: {what} failed (exit {output.exit_status}): {output.stderr_tail}"
            )
        return output.stdout.decode(errors="replace").strip()

    def write(self, path: str, data: bytes) -> None:
        self.sftp.putfo(io.BytesIO(data), path)


def data_files(spec: TrainingTestData) -> dict[str, str]:
    """The scenario's local data files, each with the name of its copy under a host's root
    (``data/<digest>-<name>``); URLs are left to the host, which downloads and caches them."""
    staged: dict[str, str] = {}
    for field in ("path", *ARRAY_SOURCES):
        source = getattr(spec, field)
        if not source or source.startswith(("http://", "https://")):
            continue
        try:
            digest = hashlib.sha256(Path(source).expanduser().read_bytes()).hexdigest()[:16]
        except OSError as exc:
            raise ConfigError(f"training_test_data.{field}: {source}: cannot read ({exc.strerror})") from None
        staged[source] = f"data/{digest}-{Path(source).name}"
    return staged


def _stage(remote: _Remote, data: Mapping[str, str]) -> list[str]:
    """Copy the data files the host lacks (a name carries its digest, so a present one is current)."""
    copied = []
    for source, name in sorted(data.items()):
        target = posixpath.join(remote.root, name)
        if remote.exists(target):
            continue
        makedirs(remote.sftp, posixpath.dirname(target))
        partial = f"{target}.part"
        remote.sftp.put(str(Path(source).expanduser()), partial)
        remote.sftp.posix_rename(partial, target)
        copied.append(name)
    return copied


def up_to_date(host: Host, bundle: Bundle, remote: _Remote) -> bool:
    app = posixpath.join(remote.root, "app", bundle.digest)
    return (
        host.deps.get("runtime") == bundle.digest
        and remote.exists(posixpath.join(app, MARKER))
        and remote.exists(remote.venv_python)
    )


def deploy(
    host: Host,
    key: InstallationKey,
    bundle: Bundle,
    registry: HostRegistry,
    data: Mapping[str, str] | None = None,
) -> Outcome:
    """Install ``bundle`` and stage ``data`` (from :func:`data_files`) on ``host`` where they are
    not there already; record the host's dependency state."""
    with login_host(host, key) as client:
        remote = _Remote(host, client)
        with remote.sftp:
            copied = _stage(remote, data or {})
            current = up_to_date(host, bundle, remote)
            if current and not copied and set((data or {}).values()) <= set(host.deps.get("data", [])):
                return Outcome(host.fl_id, False, host.deps)
            deps = dict(host.deps) if current else _install(remote, bundle)
    deps["data"] = sorted((data or {}).values())
    registry.record_deploy(host.fl_id, deps)
    return Outcome(host.fl_id, True, deps)


def _install(remote: _Remote, bundle: Bundle) -> dict[str, Any]:
    host = remote.host
    app = posixpath.join(remote.root, "app", bundle.digest)
    if not remote.exists(posixpath.join(app, MARKER)):
        archive = f"{app}.zip"
        remote.write(archive, bundle.data)
        remote.run([host.python, "-m", "zipfile", "-e", archive, app], "unpacking the runtime")
        remote.sftp.remove(archive)
    venv = posixpath.dirname(posixpath.dirname(remote.venv_python))
    system = host.venv == "system"
    if not remote.exists(remote.venv_python):
        flags = ["--system-site-packages", "--without-pip"] if system else []
        remote.run([host.python, "-m", "venv", *flags, venv], "creating the venv")
    purelib = remote.run(
        [remote.venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        "locating the venv's site-packages",
    )
    paths = [app]
    if system:
        inherited = remote.run(
            [host.python, "-c", "import json, site; print(json.dumps(site.getsitepackages()))"],
            "listing the interpreter's site-packages",
        )
        paths += json.loads(inherited)
    remote.write(posixpath.join(purelib, _PTH), "".join(f"{p}\n" for p in paths).encode())
    if not system:
        requirements = posixpath.join(app, "requirements.txt")
        remote.run([remote.venv_python, "-m", "pip", "install", "-q", "-r", requirements], "pip install")
    reply = ssh.call(
        remote.client,
        remote.where,
        runner_command(host.root),
        {"op": "inventory"},
        timeout_s=STEP_TIMEOUT_S,
        reply_limit=1024 * 1024,
    )
    missing = [name for name in REQUIRED if not (reply.get("packages") or {}).get(name)]
    if "error" in reply or missing:
        raise ProviderError(
            f"host {remote.where}: the runtime cannot run clients: "
            f"{reply.get('error') or 'missing ' + ', '.join(missing)}"
        )
    remote.write(posixpath.join(app, MARKER), bundle.digest.encode())
    return {"runtime": bundle.digest, "venv": venv, "mode": host.venv, **reply}
