"""Real Debian OpenSSH servers as remote hosts, each in a network namespace this test makes.

A host is an ``sshd`` in its own namespace, reached over a veth pair whose two addresses lie in
198.18.0.0/15 (the range set aside for network tests). ``ip netns exec`` bind-mounts the files of
``/etc/netns/<name>/`` over ``/etc``, so each host has a user database of its own: user ``pi``
(uid 0, so the runtime can be written anywhere in the test's temp folder) with a password and a
home folder of its own. Every sshd is stopped by pid, every process left in a namespace is killed
by pid, and the veth pair, the namespace and its ``/etc/netns`` folder are removed by name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
USER = "pi"
_SUBNETS = 2 * 256 * 64  # /30 subnets in 198.18.0.0/15


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _subnet(index: int) -> tuple[str, str]:
    """The keeper-side and host-side addresses of /30 subnet ``index`` of 198.18.0.0/15."""
    index %= _SUBNETS
    second, rest = 18 + index // (256 * 64), index % (256 * 64)
    third, fourth = rest // 64, (rest % 64) * 4
    return f"198.{second}.{third}.{fourth + 1}", f"198.{second}.{third}.{fourth + 2}"


@dataclass
class SshdHost:
    """One host: its namespace, link, address, login and sshd."""

    netns: str
    veth: str
    address: str
    folder: Path
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    process: subprocess.Popen[bytes] | None = None
    user: str = USER
    port: int = 22

    @property
    def home(self) -> Path:
        return self.folder / "home"

    @property
    def host_key(self) -> Path:
        return self.folder / "ssh_host_ed25519_key"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def fingerprint(self) -> str:
        """The host key's fingerprint as the host's owner reads it (``ssh-keygen -lf``)."""
        out = subprocess.run(
            ["ssh-keygen", "-lf", f"{self.host_key}.pub"], capture_output=True, text=True, check=True
        ).stdout
        return out.split()[1]

    def authorized_keys(self) -> list[str]:
        path = self.home / ".ssh" / "authorized_keys"
        return path.read_text().splitlines() if path.exists() else []

    # ------------------------------------------------------------------ lifecycle
    def create(self, subnet: int) -> None:
        keeper_side, self.address = _subnet(subnet)
        _ip("netns", "add", self.netns)
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", f"{self.veth}h")
        _ip("link", "set", f"{self.veth}h", "netns", self.netns)
        _ip("addr", "add", f"{keeper_side}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        _ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", f"{self.veth}h")
        _ip("-n", self.netns, "link", "set", f"{self.veth}h", "up")
        _ip("-n", self.netns, "link", "set", "lo", "up")
        self.home.mkdir(parents=True)
        self._user_database()
        self.new_host_key()
        (self.folder / "sshd_config").write_text(
            "\n".join(
                [
                    f"ListenAddress {self.address}",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    "PidFile none",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "PermitRootLogin yes",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder

    def _user_database(self) -> None:
        etc = Path("/etc/netns") / self.netns
        etc.mkdir(parents=True)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=self.password,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        passwd = Path("/etc/passwd").read_text()
        shadow = Path("/etc/shadow").read_text()
        (etc / "passwd").write_text(
            f"{passwd.rstrip()}\n{USER}:x:0:0:fedkeeper test host:{self.home}:/bin/sh\n"
        )
        (etc / "shadow").write_text(f"{shadow.rstrip()}\n{USER}:{hashed}:20000:0:99999:7:::\n")
        os.chmod(etc / "shadow", 0o600)

    def new_host_key(self) -> None:
        """A fresh host key (the host was reinstalled); restart to serve it."""
        for path in (self.host_key, Path(f"{self.host_key}.pub")):
            path.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, SSHD, "-D", "-e", "-f", str(self.folder / "sshd_config")],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd in {self.netns} exited: {self.log.read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), 0.5) as s:
                s.settimeout(2)
                if s.recv(64).startswith(b"SSH-2.0"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"sshd in {self.netns} did not answer on {self.address}:{self.port}")

    def stop(self) -> None:
        """Stop the sshd by pid, then every process still in the namespace (its sessions) by pid."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        listed = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False
        )
        for pid in listed.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def link(self, up: bool) -> None:
        """Bring the host's link up or down (the keeper's end of the veth pair)."""
        _ip("link", "set", self.veth, "up" if up else "down")

    def destroy(self) -> None:
        self.stop()
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", self.veth)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", self.netns)
        shutil.rmtree(Path("/etc/netns") / self.netns, ignore_errors=True)


class SshdFleet:
    """Hosts made on demand; :meth:`close` removes every one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts: list[SshdHost] = []
        self.tag = f"{os.getpid() % 100000:05d}"

    def host(self) -> SshdHost:
        index = len(self.hosts)
        host = SshdHost(
            netns=f"fk-{self.tag}-{index}",
            veth=f"fk{self.tag}{index:x}",
            address="",
            folder=self.root / f"host{index}",
        )
        self.hosts.append(host)  # before create: a half-made host is removed too
        host.create(os.getpid() * 16 + index)
        host.start()
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.destroy()
        self.hosts.clear()


def start_host(fleet: SshdFleet) -> SshdHost:
    """A new host; a machine that cannot make one fails the test (in CI too), never skips it."""
    try:
        return fleet.host()
    except (RuntimeError, OSError) as exc:
        pytest.fail(
            "cannot start an sshd host in a network namespace (needs root, iproute2 and openssh-server, "
            f"which scripts/setup.sh installs): {exc}"
        )


def add_args(host: SshdHost, fl_id: str, *more: str) -> list[str]:
    """``hosts add`` for a test host: its venv reuses this interpreter's packages (no download)."""
    return [
        "add", host.address, "--user", host.user, "--fl-id", fl_id,
        "--python", sys.executable, "--venv", "system",
        "--host-key-fingerprint", host.fingerprint(), *more,
    ]  # fmt: skip
