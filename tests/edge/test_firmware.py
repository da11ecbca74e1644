"""Choosing the firmware: config, gateway flags and the QEMU command line (no guest boots here)."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fedkeeper.function.config import EdgeCluster
from fedkeeper.host.edge.__main__ import options_from_args
from fedkeeper.host.edge.errors import EdgeError, GuestRefused
from fedkeeper.host.edge.firmware import DEFAULT_FIRMWARE, FIRMWARES, firmware
from fedkeeper.host.edge.fleet import FleetConfig, Instance, Partition
from fedkeeper.host.edge.protocol import ErrorCode


def test_the_config_offers_exactly_the_catalog_s_firmwares() -> None:
    hint = typing.get_type_hints(EdgeCluster)["firmware"]
    assert set(typing.get_args(hint)) == set(FIRMWARES)
    assert EdgeCluster().firmware == DEFAULT_FIRMWARE == "zephyr"
    with pytest.raises(ValidationError, match="firmware"):
        EdgeCluster.model_validate({"firmware": "linux"})


def test_an_unknown_firmware_is_one_clear_error() -> None:
    with pytest.raises(EdgeError, match=r"^unknown edge firmware 'linux' \(one of: zephyr, baremetal\)$"):
        firmware("linux")


@pytest.mark.parametrize("name", sorted(FIRMWARES))
def test_each_firmware_boots_with_its_board_s_flags(name: str, tmp_path: Path) -> None:
    kernel = tmp_path / "image.elf"
    kernel.write_bytes(b"")
    options = options_from_args(
        ["--firmware", name, "--kernel", str(kernel), "--state-dir", str(tmp_path / "state")]
    )
    config = options.fleet
    assert config.firmware is FIRMWARES[name] and config.memory == FIRMWARES[name].memory_mb
    command = Instance(3, config)._command()
    qemu = command[command.index("qemu-system-i386") :]
    assert qemu[qemu.index("-cpu") + 1] == FIRMWARES[name].cpu
    assert qemu[qemu.index("-m") + 1] == str(FIRMWARES[name].memory_mb)
    assert qemu[qemu.index("-kernel") + 1] == str(kernel.resolve())
    assert qemu[qemu.index("-append") + 1] == "id=3"
    joined = " ".join(qemu)
    assert " ".join(FIRMWARES[name].board_args) in joined


def test_memory_and_cpu_flags_override_the_board_s(tmp_path: Path) -> None:
    kernel = tmp_path / "image.elf"
    kernel.write_bytes(b"")
    args = ["--kernel", str(kernel), "--state-dir", str(tmp_path), "--memory-mb", "6", "--cpu", "pentium3"]
    config: FleetConfig = options_from_args(args).fleet
    command = Instance(0, config)._command()
    assert config.firmware.name == DEFAULT_FIRMWARE
    assert command[command.index("-m") + 1] == "6" and command[command.index("-cpu") + 1] == "pentium3"
    with pytest.raises(ValueError, match="--memory-mb must be at least 2"):
        options_from_args([*args[:4], "--memory-mb", "1"])


def test_data_that_cannot_fit_beside_the_kernel_is_refused_before_a_boot(tmp_path: Path) -> None:
    kernel = tmp_path / "image.elf"
    kernel.write_bytes(b"")
    config = FleetConfig(kernel=kernel, run_dir=tmp_path, firmware=FIRMWARES["zephyr"], memory_mb=4)
    rows = np.zeros((700, 784), dtype=np.float32)  # 2.2 MB: more than -m 4 leaves beside the kernel
    partition = Partition.from_arrays(rows, np.zeros(700, dtype=np.int64), 10)
    with pytest.raises(GuestRefused, match=r"partition is 2\.1 MB; .* -m 4 and room for 2\.0 MB") as refused:
        asyncio.run(Instance(0, config).ensure(partition))
    assert refused.value.code == ErrorCode.MEMORY
