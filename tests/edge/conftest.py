"""Edge fixtures: the guest kernel is built once per session with make; QEMU must be installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fedkeeper.host.edge.firmware import ensure_built
from fedkeeper.host.edge.fleet import FleetConfig


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    if shutil.which("qemu-system-i386") is None:
        pytest.fail("qemu-system-i386 is not installed (apt-get install qemu-system-x86)")
    return ensure_built()


@pytest.fixture
def fleet_config(guest_kernel: Path, tmp_path: Path) -> FleetConfig:
    return FleetConfig(
        kernel=guest_kernel, run_dir=tmp_path / "run", boot_timeout_s=20.0, request_timeout_s=20.0
    )


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 in [0, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, bunch.target, test_size=0.2, random_state=0)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)
