"""The edge firmwares (one client, two boards), where their images live, and building them.

Both firmwares run the same client (``emulated_edge/guest``): ``zephyr`` is a Zephyr RTOS
application for the ``qemu_x86`` board, ``baremetal`` a freestanding multiboot kernel. A
:class:`Firmware` says how to build the image and how QEMU boots it; the fleet needs nothing else.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from fedkeeper.host.edge.errors import EdgeError

KERNEL_ENV = "FEDKEEPER_EDGE_KERNEL"
# The firmware sources sit beside the package in the repository: emulated_edge/{Makefile,guest,...}.
SOURCE_DIR = Path(__file__).resolve().parents[3] / "emulated_edge"
BUILD_TIMEOUT_S = 900.0  # a cold Zephyr build on two busy cores


@dataclass(frozen=True)
class Firmware:
    """One board the edge client runs on.

    Attributes
    ----------
    name
        ``providers.edge.<cluster>.firmware`` and ``--firmware``.
    target
        The ``make -C emulated_edge`` target that builds the image.
    image
        The image's file name in ``emulated_edge/build``.
    cpu
        QEMU's ``-cpu`` for the board.
    board_args
        The board's other QEMU flags (machine, firmware tables).
    memory_mb
        The default ``-m`` (``memory_mb`` in the config overrides it).
    board
        What the guest names in its HELLO; the fleet refuses an image built for another board.
    """

    name: str
    target: str
    image: str
    cpu: str
    board_args: tuple[str, ...]
    memory_mb: int
    board: str


FIRMWARES: dict[str, Firmware] = {
    f.name: f
    for f in (
        # qemu_x86's own flags: Zephyr runs with paging (PAE, NX) and without ACPI tables. -m 6 is the
        # least that runs the largest built-in job (mnist5k: 1000 rows, a 3 MB partition, 784-64-10 mlp).
        Firmware(
            "zephyr",
            "zephyr",
            "zephyr.elf",
            "qemu32,+nx,+pae",
            ("-machine", "q35", "-no-acpi"),
            6,
            "zephyr-qemu_x86",
        ),
        # qemu32 has SSE2; the guest checks CPUID at boot. -m 15: this board's long-standing default.
        Firmware("baremetal", "baremetal", "guest.elf", "qemu32", ("-machine", "q35"), 15, "x86-multiboot"),
    )
}
DEFAULT_FIRMWARE = "zephyr"


def firmware(name: str) -> Firmware:
    """The firmware called ``name``; one clear error for an unknown one."""
    try:
        return FIRMWARES[name]
    except KeyError:
        raise EdgeError(f"unknown edge firmware {name!r} (one of: {', '.join(FIRMWARES)})") from None


def ensure_built(which: Firmware | str = DEFAULT_FIRMWARE, source_dir: Path = SOURCE_DIR) -> Path:
    """Build the firmware's image when its sources changed and return its path.

    A kernel named by ``$FEDKEEPER_EDGE_KERNEL`` is used as is. Concurrent callers serialise on a
    lock file, so parallel test sessions do not race on the build tree.
    """
    fw = firmware(which) if isinstance(which, str) else which
    override = os.environ.get(KERNEL_ENV)
    if override:
        kernel = Path(override)
        if not kernel.is_file():
            raise EdgeError(f"{KERNEL_ENV}: {kernel} is not a file")
        return kernel
    if not (source_dir / "Makefile").is_file():
        raise EdgeError(
            f"edge firmware sources not found in {source_dir} (set {KERNEL_ENV} to a built {fw.image})"
        )
    if shutil.which("make") is None:
        raise EdgeError("building the edge firmware needs 'make' (run scripts/setup.sh)")
    build = source_dir / "build"
    build.mkdir(exist_ok=True)
    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["make", "-s", "-C", str(source_dir), fw.target],
            capture_output=True,
            text=True,
            check=False,
            timeout=BUILD_TIMEOUT_S,
        )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        tail = [line for line in lines if not line.startswith("make")][-3:] or lines[-3:]
        raise EdgeError(f"building the {fw.name} edge firmware failed: {' | '.join(tail)}")
    return build / fw.image
