"""Start one worker inside its confinement, then exec the runtime (run as a script, never imported).

``python sandbox.py [--cgroup DIR]... [--pid-namespace] [--uid N --gid N] [--hide DIR:CHILD,...]...
[--private-tmp KEEP]... [--parent-pid PID] -- COMMAND...``

What ``fedkeeper.host.fabric.containment`` decided this machine allows, applied in this order:

1. ``--pid-namespace``: new PID and mount namespaces. This process stays outside and waits; its
   child is the namespace's init (PID 1), which reaps orphans and exits with the worker. When the
   init dies, the kernel kills every process left in the namespace, however it forked or
   ``setsid``-ed, and ``/proc`` (mounted afresh) shows only the namespace's processes.
2. ``--cgroup DIR``: join each cgroup (memory, pids), so every descendant is counted and killable.
3. ``--hide DIR:CHILD,...``: in the private mount namespace, a tmpfs over ``DIR`` that shows only
   its ``CHILD`` entries (bound back in): the interpreter under an unreadable home stays reachable
   while the rest of that home disappears.
4. ``--private-tmp KEEP``: in the private mount namespace, fresh tmpfs over ``/tmp`` and
   ``/dev/shm`` (charged to the worker's memory cgroup), with only the ``KEEP`` folders (the
   worker's own, the interpreter's if it lives under ``/tmp``) bound back at their paths: what
   another tenant's action leaves in ``/tmp``, even world-readable, is out of sight.
5. ``--uid/--gid``: drop to the namespace's unprivileged user, with no supplementary groups.

Each process in the chain dies with its parent (``PR_SET_PDEATHSIG``), so a SIGKILLed fabric
leaves nothing behind. Imports nothing from fedkeeper, like ``runtime.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    _check(
        _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {target}",
    )


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _join(cgroups: list[str]) -> None:
    for folder in cgroups:
        with open(os.path.join(folder, "cgroup.procs"), "w", encoding="ascii") as handle:
            handle.write("0")  # "0": the writing process


def _hide(specs: list[str]) -> None:
    """Replace each DIR by a tmpfs holding only the listed children, bound back from the originals."""
    for spec in specs:
        folder, _, children = spec.partition(":")
        keep = [c for c in children.split(",") if c]
        handles = {c: os.open(os.path.join(folder, c), os.O_PATH | os.O_DIRECTORY) for c in keep}
        _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
        for child, fd in handles.items():
            target = os.path.join(folder, child)
            os.mkdir(target, 0o755)
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            os.close(fd)


def _private_tmp(keep: list[str]) -> None:
    """Fresh ``/tmp`` and ``/dev/shm``, with the ``keep`` folders bound back at their own paths."""
    outermost = [p for p in sorted(set(keep)) if not any(p.startswith(k + "/") for k in keep if k != p)]
    handles = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in outermost}
    for folder in ("/tmp", "/dev/shm"):
        if os.path.isdir(folder):
            _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    previous = os.umask(0o022)  # the way down must be open to the worker's user, whatever the fabric's umask
    for path, fd in handles.items():
        os.makedirs(path, 0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    os.umask(previous)


def _drop(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(f"still uid {os.geteuid()} after setuid({uid})")


def _exit_like(status: int) -> None:
    """Leave with a child's wait status (a signal death as 128 + signal, like a shell)."""
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def _wait_for(child: int, parent: int) -> None:
    """Wait for ``child``; kill it if our own parent goes (the fallback to PR_SET_PDEATHSIG)."""
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            _exit_like(status)
        if parent > 1 and os.getppid() != parent:
            os.kill(child, signal.SIGKILL)
        time.sleep(0.2)


def _init(child: int) -> None:
    """PID 1 of the namespace: reap everything; leave (killing the namespace) when ``child`` ends."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        except InterruptedError:
            continue
        if pid == child:
            _exit_like(status)


def _confine(args: argparse.Namespace) -> None:
    """Steps 2-4, in the process that then becomes (or forks) the worker."""
    _join(args.cgroup)
    if args.hide:
        _hide(args.hide)
    if args.private_tmp:
        _private_tmp(args.private_tmp)
    if args.uid is not None:
        _drop(args.uid, args.gid if args.gid is not None else args.uid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("--pid-namespace", action="store_true")
    parser.add_argument("--hide", action="append", default=[])
    parser.add_argument("--private-tmp", action="append", default=[])
    parser.add_argument("--uid", type=int, default=None)
    parser.add_argument("--gid", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    if (args.hide or args.private_tmp) and not args.pid_namespace:
        parser.error("--hide and --private-tmp need --pid-namespace (the mounts must stay inside the worker)")
    try:
        _die_with_parent()
        if args.pid_namespace:
            _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")
            init = os.fork()
            if init:
                _wait_for(init, args.parent_pid)
            _mount(None, "/", None, MS_REC | MS_PRIVATE)
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            _confine(args)
            # After _confine: a change of user clears the parent-death signal. The namespace (and
            # everything in it) dies with this init, and this init with the process the fabric holds.
            _die_with_parent()
            worker = os.fork()
            if worker:
                _init(worker)
        else:
            _confine(args)
        os.execv(command[0], command)
    except OSError as exc:
        # The fabric reports this line as the worker's start failure.
        print(f"sandbox: cannot confine the worker: {exc}", flush=True)
        os._exit(126)


if __name__ == "__main__":
    main()
