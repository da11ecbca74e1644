"""The fleet: N ``qemu-system-i386`` guests, each with its serial port on a pair of named pipes.

Every instance is booted with its client's data partition as ``-initrd`` (a multiboot module),
announces itself with HELLO, then serves one request at a time. A guest that dies (crash, kill,
timeout) is relaunched with the same data by a watcher; a request caught in the crash fails with
:class:`GuestUnavailable`, so the caller's retry finds a fresh guest.

QEMU's ``-chardev pipe,path=P`` reads ``P.in`` and writes ``P.out``. The host opens both FIFOs
read-write and non-blocking: it never sees EOF while QEMU restarts, and never blocks on a full
pipe (the event loop waits for it instead). Each launch gets fresh FIFOs, so no stale bytes of
an old guest reach a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedkeeper.host.edge import protocol
from fedkeeper.host.edge.errors import EdgeError, GuestRefused, GuestUnavailable
from fedkeeper.host.edge.firmware import DEFAULT_FIRMWARE, FIRMWARES, Firmware
from fedkeeper.host.edge.protocol import DataStatus, Frame, Metrics, MsgType, Status, TrainParams

log = logging.getLogger("fedkeeper.host.edge")

EXIT_GRACE_S = 2.0  # how long a guest may take to power off after EXIT before it is killed
MAX_BOOT_FAILURES = 5  # consecutive failed relaunches before an instance is left down
READ_CHUNK = 1 << 16
MB = 1 << 20
# RAM a guest needs besides its data: the first MiB (BIOS), the kernel image (1.1-1.3 MB) and the
# smallest receive buffer. Below this much room a guest with data would exit at boot.
RAM_FLOOR_MB = 2


@dataclass(frozen=True)
class FleetConfig:
    """How to launch the guests.

    ``firmware`` is the board the kernel was built for: its QEMU flags, and the defaults of
    ``memory_mb`` and ``cpu`` when they are None. ``accel`` is QEMU's ``-accel`` list: ``tcg``
    runs anywhere; ``kvm:tcg`` uses KVM where ``/dev/kvm`` is usable and falls back to TCG.
    """

    kernel: Path
    run_dir: Path
    firmware: Firmware = FIRMWARES[DEFAULT_FIRMWARE]
    qemu: str = "qemu-system-i386"
    memory_mb: int | None = None
    cpu: str | None = None
    accel: str = "tcg"
    boot_timeout_s: float = 30.0
    request_timeout_s: float = 30.0
    health_interval_s: float = 15.0

    @property
    def memory(self) -> int:
        return self.memory_mb if self.memory_mb is not None else self.firmware.memory_mb

    def check(self) -> None:
        if not self.kernel.is_file():
            raise EdgeError(
                f"edge kernel {self.kernel} does not exist (run make -C emulated_edge {self.firmware.target})"
            )
        if shutil.which(self.qemu) is None:
            raise EdgeError(f"{self.qemu} not found (apt-get install qemu-system-x86)")
        # QEMU's multiboot loader splits -initrd at commas and module arguments at spaces.
        for path in (self.kernel, self.run_dir):
            if any(c in str(path.resolve()) for c in " ,"):
                raise EdgeError(f"edge path {path} may not contain spaces or commas (QEMU -initrd syntax)")


@dataclass(frozen=True, eq=False)
class Partition:
    """A client's data as the guest's ``-initrd`` image, with its digest and CRC."""

    image: bytes
    digest: str
    crc: int
    rows: int

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, num_classes: int) -> Partition:
        image = protocol.pack_partition(x, y, num_classes)
        return cls(image, hashlib.sha256(image).hexdigest(), protocol.partition_crc(image), len(y))


@dataclass(frozen=True)
class TrainResult:
    weights: list[np.ndarray]
    metrics: Metrics


@dataclass(frozen=True)
class Usage:
    """One instance's resource use; ``pss_kb``/``cpu_s`` are ``None`` when it is not running."""

    index: int
    pid: int | None
    alive: bool
    restarts: int
    jobs: int
    pss_kb: int | None
    cpu_s: float | None
    boot_s: float | None


def pss_kb(pid: int) -> int | None:
    """Proportional set size of a process (shared pages split among their users)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


class Instance:
    """One emulated device: its QEMU process, its pipes, its data, and its request queue."""

    def __init__(self, index: int, config: FleetConfig) -> None:
        self.index = index
        self.config = config
        self.base = config.run_dir / f"edge{index}"
        self.proc: asyncio.subprocess.Process | None = None
        self.status: Status | None = None
        self.partition: Partition | None = None
        self.restarts = 0
        self.jobs = 0
        self.boot_s: float | None = None
        self.lock = asyncio.Lock()  # one job at a time
        self._boot_lock = asyncio.Lock()
        self._closing = False
        self._failures = 0
        self._fd_in = self._fd_out = -1
        self._decoder = protocol.FrameDecoder()
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._hello: asyncio.Future[Status] | None = None
        self._seq = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ state
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.status is not None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    def usage(self) -> Usage:
        pid = self.pid
        return Usage(
            self.index,
            pid,
            self.alive,
            self.restarts,
            self.jobs,
            pss_kb(pid) if pid else None,
            cpu_seconds(pid) if pid else None,
            self.boot_s,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ launch
    def _command(self) -> list[str]:
        c = self.config
        cmd = [
            c.qemu,
            "-m", str(c.memory),
            "-cpu", c.cpu or c.firmware.cpu,
            *c.firmware.board_args,
            "-nodefaults", "-monitor", "none", "-no-reboot", "-nographic",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", str(c.kernel),
            "-append", f"id={self.index}",
            "-chardev", f"pipe,id=s0,path={self.base}",
            "-serial", "chardev:s0",
        ]  # fmt: skip
        for accel in c.accel.split(":"):
            cmd += ["-accel", accel]
        if self.partition is not None:
            cmd += ["-initrd", str(self.base.with_suffix(".part"))]
        # The guest must not outlive the host process, even if that is killed with SIGKILL.
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "KILL", *cmd] if setpriv else cmd

    def _open_pipes(self) -> None:
        for suffix in (".in", ".out"):
            path = self.base.with_name(self.base.name + suffix)
            path.unlink(missing_ok=True)
            os.mkfifo(path, 0o600)
        self._fd_in = os.open(f"{self.base}.in", os.O_RDWR | os.O_NONBLOCK)
        self._fd_out = os.open(f"{self.base}.out", os.O_RDWR | os.O_NONBLOCK)
        self._decoder = protocol.FrameDecoder()
        asyncio.get_running_loop().add_reader(self._fd_out, self._on_readable)

    def _close_pipes(self) -> None:
        if self._fd_out >= 0:
            asyncio.get_running_loop().remove_reader(self._fd_out)
        for fd in (self._fd_in, self._fd_out):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd_in = self._fd_out = -1
        for suffix in (".in", ".out"):
            self.base.with_name(self.base.name + suffix).unlink(missing_ok=True)

    async def boot(self, partition: Partition | None = None) -> Status:
        """(Re)launch the guest, with ``partition`` as its data if given, and wait for its HELLO."""
        async with self._boot_lock:
            return await self._boot(partition if partition is not None else self.partition)

    async def _boot(self, partition: Partition | None) -> Status:
        await self._terminate()
        if self._closing:
            raise GuestUnavailable(f"edge instance {self.index} is shutting down")
        self.partition = partition
        if partition is not None:
            self.base.with_suffix(".part").write_bytes(partition.image)
        self._open_pipes()
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        started = time.perf_counter()
        with open(f"{self.base}.log", "ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *self._command(), stdin=asyncio.subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        self.proc = proc
        self._spawn(self._watch(proc))
        try:
            async with asyncio.timeout(self.config.boot_timeout_s):
                status = await self._hello
        except (TimeoutError, GuestUnavailable) as exc:
            await self._terminate()
            noise = self._decoder.take_noise().strip()[-200:]
            raise GuestUnavailable(
                f"edge instance {self.index} sent no HELLO within {self.config.boot_timeout_s:g} s"
                f" ({exc or 'timeout'}); console: {noise!r}"
            ) from None
        self.boot_s = time.perf_counter() - started
        try:
            self._check_status(status, partition)
        except EdgeError:
            await self._terminate()
            raise
        self.status = status
        log.info("edge%d: up in %.2f s (pid %d, %s)", self.index, self.boot_s, proc.pid, status.board)
        return status

    def _check_status(self, status: Status, partition: Partition | None) -> None:
        if status.version != protocol.VERSION:
            raise EdgeError(
                f"edge instance {self.index} speaks protocol {status.version}, not {protocol.VERSION}"
            )
        if status.board != self.config.firmware.board:
            raise EdgeError(
                f"edge instance {self.index} runs a {status.board!r} image, not {self.config.firmware.board!r} "
                f"({self.config.kernel} is not a {self.config.firmware.name} image)"
            )
        if partition is not None and (
            status.data_status is not DataStatus.OK or status.data_crc != partition.crc
        ):
            raise EdgeError(
                f"edge instance {self.index} did not load its partition: {status.data_status.name}, "
                f"crc {status.data_crc:#x} (expected {partition.crc:#x})"
            )

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the QEMU process to end; fail what was waiting on it; relaunch after a crash."""
        code = await proc.wait()
        if proc is not self.proc:
            return  # replaced on purpose (new data, shutdown)
        self.status = None
        text = self._decoder.take_noise().strip()
        reason = f"edge instance {self.index} (pid {proc.pid}) exited with status {code}" + (
            f": {text[-200:]!r}" if text else ""
        )
        self._fail_pending(GuestUnavailable(reason))
        if self._closing:
            return
        log.warning("%s; restarting it", reason)
        self._spawn(self._recover(proc))

    async def _recover(self, dead: asyncio.subprocess.Process) -> None:
        async with self._boot_lock:
            if self.proc is not dead:
                return  # already relaunched by a job's ensure()
            while not self._closing:
                self.restarts += 1
                try:
                    await self._boot(self.partition)
                    self._failures = 0
                    return
                except EdgeError as exc:
                    self._failures += 1
                    log.error("edge%d: restart %d failed: %s", self.index, self._failures, exc)
                    if self._failures >= MAX_BOOT_FAILURES:
                        return
                    await asyncio.sleep(min(30.0, 0.5 * 2**self._failures))

    def _fail_pending(self, exc: Exception) -> None:
        for future in [*self._pending.values(), self._hello]:
            if future is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: a boot that was not awaited must not warn
        self._pending.clear()

    async def _terminate(self) -> None:
        """Stop the current process (if any) without triggering a relaunch."""
        proc, self.proc, self.status = self.proc, None, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self._fail_pending(GuestUnavailable(f"edge instance {self.index} was stopped"))
        self._close_pipes()

    async def kill(self) -> None:
        """SIGKILL the guest as a crash would; the watcher relaunches it."""
        self.status = None  # not alive from now on, though the process may take a moment to go
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)

    async def shutdown(self) -> None:
        """Power the guest off (EXIT, then SIGKILL after a grace period) and remove its files."""
        self._closing = True
        proc = self.proc
        if proc is not None and proc.returncode is None and self._fd_in >= 0:
            with contextlib.suppress(OSError):
                os.write(
                    self._fd_in,
                    protocol.encode(Frame(MsgType.EXIT, self._next_seq(), protocol.exit_payload(0))),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), EXIT_GRACE_S)
        await self._terminate()
        for task in list(self._tasks):
            task.cancel()
        self.base.with_suffix(".part").unlink(missing_ok=True)

    # ------------------------------------------------------------------ I/O
    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd_out, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("edge%d: reading the serial pipe failed: %s", self.index, exc)
            return
        for frame in self._decoder.feed(data):
            self._dispatch(frame)

    def _dispatch(self, frame: Frame) -> None:
        if frame.type == MsgType.HELLO:
            if self._hello is not None and not self._hello.done():
                try:
                    self._hello.set_result(Status.from_bytes(frame.payload))
                except protocol.ProtocolError as exc:
                    self._hello.set_exception(GuestUnavailable(f"bad HELLO: {exc}"))
            return
        future = self._pending.pop(frame.seq, None)
        if future is not None and not future.done():
            future.set_result(frame)
        else:
            log.warning("edge%d: unexpected frame type %#x seq %d", self.index, frame.type, frame.seq)

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF + 1  # 1..65535; 0 is the boot HELLO
        return self._seq

    async def _write(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        fd = self._fd_in
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)

    async def request(self, mtype: MsgType, payload: bytes = b"", timeout_s: float | None = None) -> Frame:
        """Send one request and wait for its reply (matched by sequence number).

        Raises :class:`GuestUnavailable` if the guest dies or times out (it is then restarted) and
        :class:`GuestRefused` if it answers with an ERROR frame.
        """
        if not self.alive:
            raise GuestUnavailable(f"edge instance {self.index} is not running")
        timeout_s = self.config.request_timeout_s if timeout_s is None else timeout_s
        seq = self._next_seq()
        reply: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[seq] = reply
        writer = asyncio.ensure_future(self._write(protocol.encode(Frame(mtype, seq, payload))))

        def written(task: asyncio.Future[None]) -> None:
            if not task.cancelled() and task.exception() is not None and not reply.done():
                reply.set_exception(
                    GuestUnavailable(f"edge instance {self.index}: write failed: {task.exception()}")
                )

        writer.add_done_callback(written)
        try:
            async with asyncio.timeout(timeout_s):
                frame = await reply
        except TimeoutError:
            log.warning("edge%d: no reply to %s within %.1f s; killing it", self.index, mtype.name, timeout_s)
            await self.kill()
            raise GuestUnavailable(
                f"edge instance {self.index} did not answer {mtype.name} within {timeout_s:g} s; restarting it",
                timeout=True,
            ) from None
        finally:
            self._pending.pop(seq, None)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await writer
        if frame.type == MsgType.ERROR:
            code, message = protocol.parse_error(frame.payload)
            raise GuestRefused(code, f"edge instance {self.index}: {message}")
        return frame

    # ------------------------------------------------------------------ jobs
    async def ping(self, timeout_s: float = 10.0) -> Status:
        return Status.from_bytes((await self.request(MsgType.PING, b"", timeout_s)).payload)

    async def ensure(self, partition: Partition | None) -> None:
        """Make the guest run with ``partition``: reboot it if it has other data or is down."""
        async with self._boot_lock:
            same = partition is None or (
                self.partition is not None and self.partition.digest == partition.digest
            )
            if not (self.alive and same):
                if partition is not None:
                    self._check_fits(partition)
                self._failures = 0
                await self._boot(partition if partition is not None else self.partition)

    def _check_fits(self, partition: Partition) -> None:
        """Refuse (as the guest would) data that cannot fit beside the kernel in the guest's RAM."""
        room = (self.config.memory - RAM_FLOOR_MB) * MB
        if len(partition.image) > room:
            raise GuestRefused(
                protocol.ErrorCode.MEMORY,
                f"the data partition is {len(partition.image) / MB:.1f} MB; edge instance {self.index} has "
                f"-m {self.config.memory} and room for {max(room, 0) / MB:.1f} MB (raise memory_mb)",
            )

    async def train(
        self, partition: Partition, weights: Sequence[np.ndarray], params: TrainParams, timeout_s: float
    ) -> TrainResult:
        """LOAD_WEIGHTS, TRAIN, GET_WEIGHTS on this guest, rebooting it first if its data differs."""
        async with self.lock:
            deadline = time.monotonic() + timeout_s

            def left() -> float:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GuestUnavailable(
                        f"edge instance {self.index}: job deadline of {timeout_s:g} s passed", timeout=True
                    )
                return remaining

            await self.ensure(partition)
            blob = protocol.pack_weights(weights)
            assert self.status is not None
            if len(blob) > self.status.max_payload:
                raise GuestRefused(
                    protocol.ErrorCode.MEMORY,
                    f"weights are {len(blob)} bytes; edge instance {self.index} accepts at most "
                    f"{self.status.max_payload} (give the guests more memory)",
                )
            await self.request(MsgType.LOAD_WEIGHTS, blob, left())
            trained = await self.request(MsgType.TRAIN, params.to_bytes(), left())
            metrics = Metrics.from_bytes(trained.payload)
            new = protocol.unpack_weights((await self.request(MsgType.GET_WEIGHTS, b"", left())).payload)
            self.jobs += 1
            return TrainResult(new, metrics)


class Fleet:
    """Guests under one event loop, each a device with an id that a restart keeps.

    Devices ``0..instances-1`` boot at :meth:`start`; :meth:`add` boots one more with the next id
    and :meth:`remove` powers one off, each bumping ``generation``. Ids are never reused, so a
    device that crashed and was restarted is still the same device, and a new one is new.

    Parameters
    ----------
    config
        How to launch each guest.
    instances
        How many guests to start with.
    boot_concurrency
        How many guests boot at once (booting is CPU-bound: more than a few per core only queues).
    """

    def __init__(self, config: FleetConfig, instances: int, boot_concurrency: int | None = None) -> None:
        if instances < 1:
            raise EdgeError(f"an edge fleet needs at least one instance (got {instances})")
        self.config = config
        self._devices = {i: Instance(i, config) for i in range(instances)}
        self._next_id = instances
        self.generation = 0  # bumped by every add and remove, never by a restart
        self.boot_concurrency = boot_concurrency or max(2, 2 * (os.cpu_count() or 1))
        self._health: asyncio.Task[None] | None = None

    @property
    def instances(self) -> list[Instance]:
        """The current devices, by id."""
        return list(self._devices.values())

    @property
    def devices(self) -> list[int]:
        """The current devices' ids."""
        return list(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    def __getitem__(self, device: int) -> Instance:
        return self._devices[device]

    def __contains__(self, device: object) -> bool:
        return device in self._devices

    async def start(self) -> None:
        """Boot every guest (without data) and wait for all HELLOs; stop them all if one fails."""
        self.config.check()
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        gate = asyncio.Semaphore(self.boot_concurrency)

        async def boot(instance: Instance) -> None:
            async with gate:
                await instance.boot()

        results = await asyncio.gather(*(boot(i) for i in self.instances), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop()
            raise failed[0]
        self._health = asyncio.ensure_future(self._health_loop())

    async def add(self) -> Instance:
        """Boot a new device with the next id; it joins the fleet once it said hello."""
        instance = Instance(self._next_id, self.config)
        self._next_id += 1
        try:
            await instance.boot()
        except BaseException:
            await instance.shutdown()
            raise
        self._devices[instance.index] = instance
        self.generation += 1
        log.info(
            "edge%d: added (fleet generation %d, %d devices)", instance.index, self.generation, len(self)
        )
        return instance

    async def remove(self, device: int) -> None:
        """Power device ``device`` off and drop it: a departure (its job in flight fails, and is retried)."""
        if device not in self._devices:
            raise EdgeError(f"edge device {device} is not in the fleet (devices: {self.devices})")
        if len(self._devices) == 1:
            raise EdgeError(f"edge device {device} is the fleet's last one; stop the gateway instead")
        instance = self._devices.pop(device)
        self.generation += 1
        log.info("edge%d: removed (fleet generation %d, %d devices)", device, self.generation, len(self))
        await instance.shutdown()

    async def stop(self) -> None:
        """Power every guest off; no QEMU process or FIFO is left behind."""
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        await asyncio.gather(*(i.shutdown() for i in self.instances))

    async def check_health(self) -> None:
        """Ping every idle guest; one that does not answer is killed, and so restarted."""

        async def check(instance: Instance) -> None:
            if instance.lock.locked() or not instance.alive:
                return
            with contextlib.suppress(GuestUnavailable, GuestRefused, protocol.ProtocolError):
                await instance.ping()

        await asyncio.gather(*(check(i) for i in self.instances))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_health()

    def usage(self) -> list[Usage]:
        return [i.usage() for i in self.instances]
