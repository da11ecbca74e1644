"""Where the guest kernel lives, and building it with ``make`` when it is missing or stale."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from fedkeeper.host.edge.errors import EdgeError

KERNEL_ENV = "FEDKEEPER_EDGE_KERNEL"
# The firmware sources sit beside the package in the repository: emulated_edge/{Makefile,guest/}.
SOURCE_DIR = Path(__file__).resolve().parents[3] / "emulated_edge"


def kernel_path() -> Path:
    """``$FEDKEEPER_EDGE_KERNEL`` or ``emulated_edge/build/guest.elf``."""
    override = os.environ.get(KERNEL_ENV)
    return Path(override) if override else SOURCE_DIR / "build" / "guest.elf"


def ensure_built(source_dir: Path = SOURCE_DIR) -> Path:
    """Build the guest (``make`` rebuilds only what changed) and return the kernel's path.

    A kernel named by ``$FEDKEEPER_EDGE_KERNEL`` is used as is. Concurrent callers serialise on a
    lock file, so parallel test sessions do not race on the object files.
    """
    if os.environ.get(KERNEL_ENV):
        kernel = kernel_path()
        if not kernel.is_file():
            raise EdgeError(f"{KERNEL_ENV}: {kernel} is not a file")
        return kernel
    if not (source_dir / "Makefile").is_file():
        raise EdgeError(
            f"edge firmware sources not found in {source_dir} (set {KERNEL_ENV} to a built guest.elf)"
        )
    if shutil.which("make") is None:
        raise EdgeError("building the edge firmware needs 'make' and gcc (apt-get install build-essential)")
    build = source_dir / "build"
    build.mkdir(exist_ok=True)
    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["make", "-s", "-C", str(source_dir)], capture_output=True, text=True, check=False, timeout=300
        )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise EdgeError(f"building the edge firmware failed: {' | '.join(tail)}")
    return build / "guest.elf"
