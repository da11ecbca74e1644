"""The Zephyr image and its build: cached by source hash, one clear error without the Zephyr tree,
and SSE registers used only where an interrupt cannot clobber the trainer's state."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedkeeper.host.edge.firmware import FIRMWARES, KERNEL_ENV, SOURCE_DIR, ensure_built

BUILD = SOURCE_DIR / "build"
# The client's objects (emulated_edge/guest) run in the main thread only.
CLIENT_OBJECTS = {"client.c.obj", "proto.c.obj", "mlp.c.obj", "lib.c.obj"}
# Zephyr functions that GCC compiled with SSE moves (struct zeroing, printf of doubles) and that
# run at boot, in the main thread's own calls, or on the fatal-error path, never in an ISR.
MAIN_THREAD_ONLY = {"__csSet", "z_sched_init", "z_setup_new_thread", "k_heap_init", "z_cbvprintf_impl"}


@pytest.fixture(scope="module")
def zephyr_image() -> Iterator[Path]:
    """The image built from this tree (not one named by $FEDKEEPER_EDGE_KERNEL)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(KERNEL_ENV, raising=False)
        yield ensure_built(FIRMWARES["zephyr"])


def test_an_unchanged_tree_is_not_rebuilt(zephyr_image: Path) -> None:
    before = zephyr_image.stat().st_mtime_ns
    assert ensure_built(FIRMWARES["zephyr"]) == zephyr_image
    assert zephyr_image.stat().st_mtime_ns == before
    assert (BUILD / "zephyr.elf.key").read_text().strip()


def test_a_missing_zephyr_tree_is_one_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "ZEPHYR_TARBALL": str(tmp_path / "absent.tar.gz")}
    result = subprocess.run(
        [str(SOURCE_DIR / "zephyr" / "build.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "zephyr build: the Zephyr tree is missing: expected ../shared/zephyr/zephyr-*-qemu_x86.tar.gz beside "
        f"the repository ({SOURCE_DIR.parents[1]}/shared/zephyr/), or set ZEPHYR_TARBALL"
    ]


def _functions_using_sse(image: Path) -> set[str]:
    listing = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(image)], capture_output=True, text=True, check=True
    ).stdout
    found, function = set(), ""
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            function = header.group(1)
        elif re.search(r"%xmm|fxsave|fxrstor|mxcsr", line):
            found.add(function)
    return found


def _client_functions() -> set[str]:
    listing = subprocess.run(
        ["nm", "-A", "--defined-only", str(BUILD / "zephyr-app" / "app" / "libapp.a")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set()
    for line in listing.splitlines():  # "libapp.a:client.c.obj:00000000 T client_main"
        _, member, symbol = line.rsplit(":", 2)
        if member in CLIENT_OBJECTS:
            names.add(symbol.split()[-1])
    return names


def test_sse_registers_are_used_only_by_the_client_and_main_thread_code(zephyr_image: Path) -> None:
    """Zephyr's interrupt entry saves no SSE state, so no code an ISR can run may touch it: the UART
    ISR, the driver, semaphores and the scheduler must be free of SSE instructions."""
    client = _client_functions()
    assert {"mlp_train", "crc32", "k_exp"} <= client
    users = _functions_using_sse(zephyr_image)
    assert "mlp_train" in users  # the trainer does use SSE: the scan sees it
    assert users - client - MAIN_THREAD_ONLY == set()
