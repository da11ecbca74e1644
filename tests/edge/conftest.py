"""Edge fixtures: each firmware's image is built once per session (make; Zephyr's is cached by a
source hash); QEMU must be installed. ``fleet_config`` runs the default firmware (Zephyr);
``any_fleet_config`` runs a test on every firmware."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedkeeper.host.edge.firmware import DEFAULT_FIRMWARE, FIRMWARES, Firmware, ensure_built
from fedkeeper.host.edge.fleet import FleetConfig

_built: dict[str, Path] = {}


def kernel_for(firmware: Firmware) -> Path:
    """The firmware's image, built on first use in this session."""
    if shutil.which("qemu-system-i386") is None:
        pytest.fail("qemu-system-i386 is not installed (apt-get install qemu-system-x86)")
    if firmware.name not in _built:
        _built[firmware.name] = ensure_built(firmware)
    return _built[firmware.name]


def config_for(firmware: Firmware, run_dir: Path) -> FleetConfig:
    return FleetConfig(
        kernel=kernel_for(firmware),
        run_dir=run_dir,
        firmware=firmware,
        boot_timeout_s=20.0,
        request_timeout_s=20.0,
    )


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    """The default firmware's image."""
    return kernel_for(FIRMWARES[DEFAULT_FIRMWARE])


@pytest.fixture
def fleet_config(tmp_path: Path) -> FleetConfig:
    return config_for(FIRMWARES[DEFAULT_FIRMWARE], tmp_path / "run")


@pytest.fixture(params=sorted(FIRMWARES))
def any_fleet_config(request: pytest.FixtureRequest, tmp_path: Path) -> FleetConfig:
    return config_for(FIRMWARES[request.param], tmp_path / "run")


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 in [0, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, bunch.target, test_size=0.2, random_state=0)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)
