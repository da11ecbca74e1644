"""Tenant isolation of workers: what this machine allows, and one worker's confinement (its cell).

A real OpenWhisk runs each action in a container. The fabric gets close with what a root process
has on one Linux machine (see docs/fabric.md, "Tenant isolation"):

- every namespace's workers run as their own unprivileged user (:func:`namespace_uid`), in a
  folder only that user can read; the fabric's state stays root's, mode 0700/0600;
- a PID and mount namespace per worker: ``/proc`` shows only the worker's own processes, when
  the worker ends every process it started ends too, and ``/tmp`` is the worker's own;
- a memory and a pids cgroup per worker (v1 hierarchy, under the fabric's own cgroup): all its
  processes count against ``limits.memory`` and can all be killed.

:meth:`Containment.probe` tries each mechanism once at start and logs why one is off; workers
then run with whatever remains (an unprivileged fabric runs them as its own user, as before).
The confinement itself is applied by ``sandbox.py`` in the worker's process before the runtime
starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("fedkeeper.host.fabric.containment")

SANDBOX = Path(__file__).resolve().with_name("sandbox.py")
RUNTIME = Path(__file__).resolve().with_name("runtime.py")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")
UID_BASE = 200_000  # above the ids distributions hand out (and below 2**31)
UID_SPAN = 1_000_000
PIDS_MAX = 4096  # processes and threads per worker: a fork bomb stops here (TF uses ~100 threads)
_FABRIC_PREFIX = "fedkeeper-fabric-"
_PROBE_TIMEOUT_S = 60.0


def namespace_uid(namespace: str, taken: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """The uid a namespace's workers run as: derived from its name, the next free one on a clash."""
    digest = int.from_bytes(hashlib.sha256(namespace.encode("utf-8")).digest()[:8], "big")
    uid = UID_BASE + digest % UID_SPAN
    while uid in taken:
        uid = UID_BASE + (uid - UID_BASE + 1) % UID_SPAN
    return uid


def own_cgroup(controller: str, proc_cgroup: str = "/proc/self/cgroup") -> Path | None:
    """This process's folder in a cgroup v1 ``controller`` hierarchy, if it is mounted."""
    try:
        lines = Path(proc_cgroup).read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            folder = CGROUP_ROOT / controller / path.lstrip("/")
            return folder if folder.is_dir() else None
    return None


def hidden_homes(paths: list[str]) -> tuple[str, ...]:
    """``--hide DIR:CHILD,...`` specs that make ``paths`` reachable for any user.

    A folder others cannot enter (``/root``, 0700, holding the interpreter under ``.pyenv``) is
    replaced, inside the worker's mount namespace, by one that shows only the children on the way
    to ``paths``. Raises ValueError when a deeper folder is closed as well.
    """
    keep: dict[str, set[str]] = {}
    for raw in paths:
        path = Path(os.path.realpath(raw))
        if not path.exists():
            continue
        parts = path.parts
        closed = [i for i in range(1, len(parts)) if not _enterable(Path(*parts[:i]))]
        if not closed:
            continue
        if len(closed) > 1 or closed[0] + 1 >= len(parts):
            raise ValueError(f"{path} is not reachable for an unprivileged user")
        i = closed[0]
        keep.setdefault(str(Path(*parts[:i])), set()).add(parts[i])
    return tuple(f"{folder}:{','.join(sorted(children))}" for folder, children in sorted(keep.items()))


def under_tmp(paths: list[str]) -> tuple[str, ...]:
    """The real paths among ``paths`` that a private ``/tmp`` would hide."""
    found = (os.path.realpath(p) for p in paths if p and os.path.isabs(p))
    return tuple(sorted({p for p in found if p.startswith("/tmp/") and os.path.isdir(p)}))


def _enterable(folder: Path) -> bool:
    try:
        return bool(folder.stat().st_mode & stat.S_IXOTH)
    except OSError:
        return False


def _interpreter_paths() -> list[str]:
    return [
        sys.executable,
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        str(RUNTIME.parent),
        *(p for p in sys.path if p and os.path.isabs(p)),
    ]


@dataclass
class Cell:
    """One worker's confinement: its user, folder and cgroups. ``argv`` wraps the runtime command."""

    name: str
    uid: int | None
    cgroups: dict[str, Path]  # controller -> folder
    pid_namespace: bool
    hide: tuple[str, ...]  # only applied inside the worker's own mount namespace
    folder: Path
    keep_tmp: tuple[str, ...] = ()  # folders under /tmp the interpreter needs in a private /tmp

    @property
    def memory_cgroup(self) -> Path | None:
        return self.cgroups.get("memory")

    def argv(self, command: list[str], parent_pid: int) -> list[str]:
        out = [sys.executable, "-I", "-S", str(SANDBOX), "--parent-pid", str(parent_pid)]
        for folder in self.cgroups.values():
            out += ["--cgroup", str(folder)]
        if self.pid_namespace:
            out.append("--pid-namespace")
            for keep in (*self.keep_tmp, *under_tmp([str(self.folder)])):
                out += ["--private-tmp", keep]
        if self.uid is not None:
            if self.pid_namespace:
                for spec in self.hide:
                    out += ["--hide", spec]
            out += ["--uid", str(self.uid), "--gid", str(self.uid)]
        return [*out, "--", *command]

    def memory_bytes(self) -> int | None:
        """Resident memory of every process in the cell (None without a memory cgroup)."""
        folder = self.memory_cgroup
        if folder is None:
            return None
        try:
            for line in (folder / "memory.stat").read_text(encoding="ascii").splitlines():
                key, _, value = line.partition(" ")
                if key == "total_rss":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def oom_killed(self) -> bool:
        """True once the kernel killed a process of the cell for passing its memory limit."""
        folder = self.memory_cgroup
        if folder is None:
            return False
        try:
            for line in (folder / "memory.oom_control").read_text(encoding="ascii").splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def kill(self) -> None:
        """SIGKILL every process in the cell's cgroups (whatever session or group it made)."""
        for folder in self.cgroups.values():
            _kill_members(folder)

    def remove(self, timeout: float = 5.0) -> None:
        """Delete the cgroups (once their processes are gone) and the folder."""
        deadline = time.monotonic() + timeout
        for folder in self.cgroups.values():
            while folder.exists():
                _kill_members(folder)
                try:
                    folder.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        log.warning("cannot remove cgroup %s: processes remain", folder)
                        break
                    time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)


def _kill_members(folder: Path) -> None:
    try:
        pids = (folder / "cgroup.procs").read_text(encoding="ascii").split()
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Containment:
    """What isolates workers on this machine; ``notes`` say why a mechanism is off."""

    cgroups: dict[str, Path] = field(default_factory=dict)  # controller -> the fabric's folder
    pid_namespace: bool = False
    drop_user: bool = False
    hide: tuple[str, ...] = ()
    keep_tmp: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    _uids: dict[str, int] = field(default_factory=dict)
    _workdir: Path | None = None

    @property
    def workdir(self) -> Path:
        """The fabric's parent of worker folders; a later fabric reclaims it if this one is killed."""
        if self._workdir is None:
            tmp = Path(tempfile.gettempdir())
            _remove_stale(tmp, shutil.rmtree)
            self._workdir = tmp / f"{_FABRIC_PREFIX}{os.getpid()}"
            self._workdir.mkdir(exist_ok=True)
            self._workdir.chmod(0o711)  # workers pass through to their own folder (mkdir obeys the umask)
        return self._workdir

    @classmethod
    def probe(cls) -> Containment:
        """Try each mechanism once (about a second: one sandboxed interpreter start)."""
        found = cls()
        found.workdir  # noqa: B018  (created now, so a dead fabric's folders are reclaimed at start)
        if os.geteuid() != 0:
            found.notes.append(
                "the fabric is not root: workers run as its own user, without cgroups or namespaces"
            )
            return found
        for controller in CONTROLLERS:
            found._make_cgroup(controller)
        try:
            found.hide = hidden_homes(_interpreter_paths())
            hide_error = ""
        except ValueError as exc:
            hide_error = str(exc)
        found.keep_tmp = under_tmp(_interpreter_paths())
        # Hiding needs the worker's own mount namespace: without one, only an open interpreter works.
        attempts = [(True, True), (True, False), (False, not found.hide)]
        for namespaces, drop in attempts:
            if drop and hide_error:
                found.notes.append(f"workers run as root: {hide_error}")
                continue
            error = _try_sandbox(namespaces, drop, found.hide, found.keep_tmp)
            if error is None:
                found.pid_namespace, found.drop_user = namespaces, drop
                break
            what = (
                "PID namespaces" if namespaces and not drop else "unprivileged users" if drop else "sandbox"
            )
            found.notes.append(f"no {what} for workers: {error}")
        if not found.drop_user:
            found.notes.append("workers run as root: tenants are not isolated from each other")
        return found

    def _make_cgroup(self, controller: str) -> None:
        base = own_cgroup(controller)
        if base is None:
            self.notes.append(
                f"no {controller} cgroup (v1) is mounted: workers are not in a {controller} cgroup"
            )
            return
        _remove_stale(base, _remove_tree_of_cgroups)
        folder = base / f"{_FABRIC_PREFIX}{os.getpid()}"
        try:
            folder.mkdir(exist_ok=True)
        except OSError as exc:
            self.notes.append(f"cannot create a {controller} cgroup under {base}: {exc.strerror or exc}")
            return
        self.cgroups[controller] = folder

    def describe(self) -> str:
        parts = [
            f"cgroups: {', '.join(sorted(self.cgroups)) or 'none'}",
            f"PID namespace: {'yes' if self.pid_namespace else 'no'}",
            f"own user per namespace: {'yes' if self.drop_user else 'no'}",
        ]
        return "; ".join(parts)

    def uid(self, namespace: str) -> int:
        if namespace not in self._uids:
            self._uids[namespace] = namespace_uid(namespace, set(self._uids.values()))
        return self._uids[namespace]

    def cell(self, name: str, namespace: str, memory_mb: int) -> Cell:
        """A fresh confinement for one worker of ``namespace``: folder, cgroups, user."""
        uid = self.uid(namespace) if self.drop_user else None
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        if uid is not None:
            os.chown(folder, uid, uid)  # 0700 from mkdtemp: only that user (and root) may enter
        groups: dict[str, Path] = {}
        for controller, parent in self.cgroups.items():
            group = parent / name
            try:
                group.mkdir(exist_ok=True)
                if controller == "memory":
                    (group / "memory.limit_in_bytes").write_text(
                        str(memory_mb * 1024 * 1024), encoding="ascii"
                    )
                elif controller == "pids":
                    (group / "pids.max").write_text(str(PIDS_MAX), encoding="ascii")
            except OSError as exc:
                log.warning("worker %s runs without its %s cgroup: %s", name, controller, exc)
                with contextlib.suppress(OSError):
                    group.rmdir()
                continue
            groups[controller] = group
        return Cell(name, uid, groups, self.pid_namespace, self.hide, folder, self.keep_tmp)

    def close(self) -> None:
        """Remove the fabric's cgroup and worker folders (their workers are gone by now)."""
        for folder in self.cgroups.values():
            _remove_tree_of_cgroups(folder)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _try_sandbox(
    namespaces: bool, drop: bool, hide: tuple[str, ...], keep_tmp: tuple[str, ...]
) -> str | None:
    """None when a sandboxed interpreter can import the runtime's dependencies, else why not."""
    cell = Cell("probe", UID_BASE - 1 if drop else None, {}, namespaces, hide, Path("/"), keep_tmp)
    check = f"import aiohttp; open({str(RUNTIME)!r}).close()"
    command = cell.argv([sys.executable, "-c", check], os.getpid())
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


def _remove_stale(base: Path, remove: Callable[[Path], object]) -> None:
    """Folders of fabrics that died without cleaning up (their pid is gone)."""
    for folder in base.glob(f"{_FABRIC_PREFIX}*"):
        try:
            pid = int(folder.name[len(_FABRIC_PREFIX) :])
            os.kill(pid, 0)
        except ProcessLookupError:
            remove(folder)
        except (ValueError, PermissionError):
            continue


def _remove_tree_of_cgroups(folder: Path) -> None:
    for child in sorted((p for p in folder.iterdir() if p.is_dir()), reverse=True) if folder.is_dir() else []:
        _kill_members(child)
        with contextlib.suppress(OSError):
            child.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
