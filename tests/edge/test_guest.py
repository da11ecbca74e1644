"""The guest firmware under real QEMU: its trainer against the numpy reference, its protocol errors."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedkeeper.host.edge import protocol
from fedkeeper.host.edge.errors import GuestRefused
from fedkeeper.host.edge.fleet import Fleet, FleetConfig, Partition
from fedkeeper.host.edge.protocol import DataStatus, ErrorCode, Frame, MsgType, Optimizer, TrainParams

from . import reference

TOLERANCE = 1e-4


def _train_in_guest(
    config: FleetConfig, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, params: TrainParams
) -> tuple[list[np.ndarray], protocol.Metrics]:
    async def go() -> tuple[list[np.ndarray], protocol.Metrics]:
        fleet = Fleet(config, 1)
        await fleet.start()
        try:
            result = await fleet[0].train(Partition.from_arrays(x, y, 10), weights, params, 60)
        finally:
            await fleet.stop()
        return result.weights, result.metrics

    return asyncio.run(go())


def _assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=TOLERANCE, rtol=0, err_msg=f"array {i}")


def test_one_sgd_batch_in_the_guest_matches_numpy(any_fleet_config: FleetConfig, digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    x, y = x_train[:32], y_train[:32]
    start = reference.glorot([64, 64, 10], seed=1)
    params = TrainParams(epochs=1, batch_size=32, learning_rate=0.1, optimizer=Optimizer.SGD, shuffle=False)
    weights, metrics = _train_in_guest(any_fleet_config, start, x, y, params)
    want = reference.train(start, x, y, epochs=1, batch_size=32, lr=0.1, shuffle=False)
    _assert_close(weights, want.weights)
    assert max(np.abs(w - s).max() for w, s in zip(weights, start, strict=True)) > 1e-3  # it did train
    assert metrics.steps == 1 and metrics.num_examples == 32
    assert metrics.loss == pytest.approx(want.loss, abs=TOLERANCE)
    assert metrics.accuracy == pytest.approx(want.accuracy)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "nadam"])
def test_shuffled_epochs_with_each_optimizer_match_numpy(
    any_fleet_config: FleetConfig, digits: tuple, optimizer: str
) -> None:
    x_train, y_train, _, _ = digits
    x, y = x_train[:100], y_train[:100]
    start = reference.glorot([64, 32, 10], seed=2)
    lr = 0.05 if optimizer == "sgd" else 0.01
    params = TrainParams(
        epochs=2,
        batch_size=16,
        learning_rate=lr,
        optimizer=Optimizer[optimizer.upper()],
        seed=1234,
        shuffle=True,
    )
    weights, metrics = _train_in_guest(any_fleet_config, start, x, y, params)
    want = reference.train(start, x, y, epochs=2, batch_size=16, lr=lr, optimizer=optimizer, seed=1234)
    _assert_close(weights, want.weights)
    assert metrics.steps == want.steps == 2 * 7  # the last, partial batch of each epoch counts
    assert metrics.loss == pytest.approx(want.loss, abs=TOLERANCE)
    assert metrics.accuracy == pytest.approx(want.accuracy)


def test_a_deeper_dense_stack_trains_like_numpy(any_fleet_config: FleetConfig, digits: tuple) -> None:
    x_train, y_train, _, _ = digits
    x, y = x_train[:48], y_train[:48]
    start = reference.glorot([64, 40, 24, 10], seed=3)
    params = TrainParams(epochs=1, batch_size=24, learning_rate=0.01, optimizer=Optimizer.ADAM, shuffle=False)
    weights, _ = _train_in_guest(any_fleet_config, start, x, y, params)
    _assert_close(
        weights,
        reference.train(
            start, x, y, epochs=1, batch_size=24, lr=0.01, optimizer="adam", shuffle=False
        ).weights,
    )


def test_guest_matches_keras_for_a_full_batch(any_fleet_config: FleetConfig, digits: tuple) -> None:
    """The same weights trained one step by Keras (TensorFlow) and by the guest agree."""
    from fedkeeper.function.config import ModelParams
    from fedkeeper.function.learning.models import build_model

    x_train, y_train, _, _ = digits
    x, y = x_train[:64], y_train[:64]
    model_params = ModelParams(hidden_size=32, optimizer="adam", learning_rate=0.01, batch_size=64)
    model = build_model(model_params, 64, 10)
    start = [np.asarray(w, dtype=np.float32) for w in model.get_weights()]
    model.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    params = TrainParams(epochs=1, batch_size=64, learning_rate=0.01, optimizer=Optimizer.ADAM, shuffle=False)
    weights, _ = _train_in_guest(any_fleet_config, start, x, y, params)
    _assert_close(weights, model.get_weights())


def test_guest_reports_its_partition_and_refuses_bad_requests(
    any_fleet_config: FleetConfig, digits: tuple
) -> None:
    x_train, y_train, _, _ = digits
    partition = Partition.from_arrays(x_train[:50], y_train[:50], 10)

    async def go() -> None:
        fleet = Fleet(any_fleet_config, 1)
        await fleet.start()
        guest = fleet[0]
        try:
            assert guest.status is not None and guest.status.data_status is DataStatus.MISSING
            await guest.ensure(partition)
            status = await guest.ping()
            assert (status.data_status, status.n, status.features, status.classes) == (
                DataStatus.OK,
                50,
                64,
                10,
            )
            assert status.data_crc == partition.crc and status.board == any_fleet_config.firmware.board
            with pytest.raises(GuestRefused, match="no model loaded") as refused:
                await guest.request(MsgType.TRAIN, TrainParams(1, 8, 0.1).to_bytes())
            assert refused.value.code == ErrorCode.NO_MODEL
            with pytest.raises(GuestRefused, match="malformed weights") as refused:
                await guest.request(MsgType.LOAD_WEIGHTS, b"\x02\x00\x00\x00garbage")
            assert refused.value.code == ErrorCode.PAYLOAD
            wrong = reference.glorot([32, 8, 10], seed=0)  # 32 inputs, the data has 64 features
            await guest.request(MsgType.LOAD_WEIGHTS, protocol.pack_weights(wrong))
            with pytest.raises(GuestRefused, match="do not match") as refused:
                await guest.request(MsgType.TRAIN, TrainParams(1, 8, 0.1).to_bytes())
            assert refused.value.code == ErrorCode.SHAPE
            # A frame that fails its checksum is answered with ERROR(CRC) and the guest carries on.
            raw = bytearray(protocol.encode(Frame(MsgType.PING, 4242)))
            raw[-1] ^= 0xFF
            reply: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
            guest._pending[4242] = reply  # catch the ERROR frame that answers the broken one
            await guest._write(bytes(raw))
            frame = await asyncio.wait_for(reply, 10)
            assert frame.type == MsgType.ERROR
            assert protocol.parse_error(frame.payload) == (ErrorCode.CRC, "frame checksum mismatch")
            assert (await guest.ping()).device_id == 0
        finally:
            await fleet.stop()

    asyncio.run(go())
