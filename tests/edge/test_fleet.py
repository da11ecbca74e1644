"""A fleet of real QEMU guests: boot, health, crash recovery, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import psutil
import pytest

from fedkeeper.host.edge.errors import EdgeError, GuestUnavailable
from fedkeeper.host.edge.firmware import FIRMWARES
from fedkeeper.host.edge.fleet import Fleet, FleetConfig, Partition
from fedkeeper.host.edge.protocol import DataStatus, Optimizer, TrainParams

from . import reference
from .conftest import kernel_for


def _qemu_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "qemu" in p.name()]


def test_four_guests_say_hello_report_memory_and_stop_cleanly(any_fleet_config: FleetConfig) -> None:
    fleet_config = any_fleet_config

    async def go() -> list[int]:
        fleet = Fleet(fleet_config, 4)
        await fleet.start()
        try:
            statuses = [i.status for i in fleet.instances]
            assert [s.device_id for s in statuses if s] == [0, 1, 2, 3]
            assert all(s is not None and s.data_status is DataStatus.MISSING for s in statuses)
            assert all(s is not None and s.board == fleet_config.firmware.board for s in statuses)
            pongs = await asyncio.gather(*(i.ping() for i in fleet.instances))
            assert [p.device_id for p in pongs] == [0, 1, 2, 3]
            usage = fleet.usage()
            assert all(u.alive and u.pid and u.restarts == 0 for u in usage)
            # A 15 MB guest plus QEMU itself: tens of MB, not hundreds.
            assert all(u.pss_kb is not None and 4_000 < u.pss_kb < 200_000 for u in usage)
            assert all(u.cpu_s is not None and u.cpu_s > 0 for u in usage)
            assert len(list(fleet_config.run_dir.glob("*.in"))) == 4
            return [u.pid for u in usage if u.pid]
        finally:
            await fleet.stop()

    pids = asyncio.run(go())
    assert not [
        p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not list(fleet_config.run_dir.glob("edge*.in")) and not list(
        fleet_config.run_dir.glob("edge*.out")
    )
    assert not _qemu_children()


def test_killed_guest_fails_its_job_restarts_with_its_data_and_the_retry_completes(
    fleet_config: FleetConfig, digits: tuple
) -> None:
    x_train, y_train, _, _ = digits
    partition = Partition.from_arrays(x_train[:600], y_train[:600], 10)
    start = reference.glorot([64, 128, 10], seed=0)
    long_job = TrainParams(epochs=40, batch_size=16, learning_rate=0.01, optimizer=Optimizer.ADAM)
    short_job = TrainParams(epochs=1, batch_size=32, learning_rate=0.01, optimizer=Optimizer.ADAM)

    async def go() -> None:
        fleet = Fleet(fleet_config, 4)
        await fleet.start()
        try:
            victim = fleet[2]
            job = asyncio.ensure_future(victim.train(partition, start, long_job, 120))
            while victim.partition is None or not victim.alive or not victim._pending:
                await asyncio.sleep(0.05)  # wait until the guest is busy with this job
            await asyncio.sleep(0.3)
            pid = victim.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(GuestUnavailable, match="exited"):
                await job
            async with asyncio.timeout(30):
                while not victim.alive:
                    await asyncio.sleep(0.05)
            assert victim.restarts == 1 and victim.pid != pid
            assert victim.partition is partition  # relaunched with its data: no reboot needed
            result = await victim.train(partition, start, short_job, 60)
            assert result.metrics.num_examples == 600
            assert victim.status is not None and victim.status.data_crc == partition.crc
            assert all(i.restarts == 0 for i in fleet.instances if i is not victim)
        finally:
            await fleet.stop()

    asyncio.run(go())
    assert not _qemu_children()


def test_a_guest_that_stops_answering_is_killed_and_restarted(
    fleet_config: FleetConfig, digits: tuple
) -> None:
    x_train, y_train, _, _ = digits
    partition = Partition.from_arrays(x_train[:600], y_train[:600], 10)
    start = reference.glorot([64, 128, 10], seed=0)

    async def go() -> None:
        fleet = Fleet(fleet_config, 1)
        await fleet.start()
        try:
            guest = fleet[0]
            await guest.ensure(partition)  # booted with its data: the deadline covers only the job
            with pytest.raises(GuestUnavailable, match="did not answer TRAIN") as failed:
                await guest.train(partition, start, TrainParams(60, 8, 0.01, Optimizer.ADAM), timeout_s=5.0)
            assert failed.value.timeout
            async with asyncio.timeout(30):
                while not (guest.alive and guest.restarts == 1):
                    await asyncio.sleep(0.05)
        finally:
            await fleet.stop()

    asyncio.run(go())


def test_new_data_reboots_the_guest_with_the_new_partition(fleet_config: FleetConfig, digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    first, second = (Partition.from_arrays(x_train[a:b], y_train[a:b], 10) for a, b in [(0, 40), (40, 100)])
    start = reference.glorot([64, 16, 10], seed=0)
    params = TrainParams(1, 16, 0.1)

    async def go() -> None:
        fleet = Fleet(fleet_config, 1)
        await fleet.start()
        try:
            guest = fleet[0]
            assert (await guest.train(first, start, params, 30)).metrics.num_examples == 40
            pid = guest.pid
            assert (await guest.train(first, start, params, 30)).metrics.num_examples == 40
            assert guest.pid == pid  # same data: no reboot
            assert (await guest.train(second, start, params, 30)).metrics.num_examples == 60
            assert guest.pid != pid and guest.restarts == 0  # a reboot on purpose is no restart
        finally:
            await fleet.stop()

    asyncio.run(go())


def test_missing_kernel_is_one_clear_error(tmp_path: Path) -> None:
    config = FleetConfig(kernel=tmp_path / "nope.elf", run_dir=tmp_path / "run")
    with pytest.raises(EdgeError, match=r"nope\.elf does not exist"):
        asyncio.run(Fleet(config, 1).start())


def test_an_image_of_another_board_is_refused_at_boot(tmp_path: Path) -> None:
    baremetal = FIRMWARES["baremetal"]
    config = FleetConfig(kernel=kernel_for(baremetal), run_dir=tmp_path / "run", firmware=FIRMWARES["zephyr"])
    with pytest.raises(EdgeError, match=r"runs a 'x86-multiboot' image, not 'zephyr-qemu_x86'"):
        asyncio.run(Fleet(config, 1).start())
    assert not _qemu_children()


def test_weights_are_float32_keras_shapes_after_training(fleet_config: FleetConfig, digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    partition = Partition.from_arrays(x_train[:64], y_train[:64], 10)
    start = reference.glorot([64, 16, 10], seed=0)

    async def go() -> list[np.ndarray]:
        fleet = Fleet(fleet_config, 1)
        await fleet.start()
        try:
            return (await fleet[0].train(partition, start, TrainParams(1, 64, 0.1), 30)).weights
        finally:
            await fleet.stop()

    weights = asyncio.run(go())
    assert [(w.shape, w.dtype) for w in weights] == [(a.shape, np.dtype(np.float32)) for a in start]
