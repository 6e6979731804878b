"""MNIST-format files: the IDX reader (plain or gzipped) and the MNIST download.

The library never assumes where the files live: callers pass the directory. A damaged
file (bad gzip stream, truncated, wrong header) is a ``ValueError`` naming the file and
what was expected; labels outside ``[0, 10)`` in the MNIST label files are refused.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.request
import zlib
from collections.abc import Sequence

import numpy as np

from den_jax.data.checks import check_labels

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "download_mnist",
    "load_idx_dataset",
    "load_mnist",
    "read_idx",
]

_log = logging.getLogger(__name__)

MNIST_FILES = {  # name -> md5 (as published in torchvision/datasets/mnist.py)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (``.gz`` or uncompressed) into a NumPy array.

    Args:
      path: path to the file.

    Returns:
      An array with the shape and dtype the file's header declares.

    Raises:
      ValueError: naming ``path`` when it is not a readable IDX file.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path}: cannot decompress ({type(err).__name__}: {err}); expected a gzip file "
            "holding an IDX array (the file is damaged or truncated: download it again)"
        ) from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: bad magic number {data[:4]!r}")
    code, ndim = data[2], data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header")
    if code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x}")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes), file holds {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(data_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"no {stem}[.gz] in {data_dir!r}; expected the standard MNIST-format idx files "
        f"({', '.join(f for pair in _FILES.values() for f in pair)})"
    )


def load_idx_dataset(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads an MNIST-format split from ``data_dir``.

    Args:
      data_dir: directory holding the four standard idx files (gzipped or not).
      split: ``"train"`` or ``"test"``.

    Returns:
      ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]`` in ``[0, 10)``.

    Raises:
      FileNotFoundError: when a file is missing; ValueError when one is damaged, the
        counts differ or a label lies outside ``[0, 10)``.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    images_stem, labels_stem = _FILES[split]
    images = read_idx(_find(data_dir, images_stem))
    labels_path = _find(data_dir, labels_stem)
    labels = read_idx(labels_path)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_path}: expected integer labels [N], got {labels.dtype} "
                         f"{labels.shape}")  # fmt: skip
    labels = labels.astype(np.int64)
    check_labels(labels, 10, what=f"MNIST {split} labels ({labels_path})")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{data_dir}: {images.shape[0]} {split} images but {labels.shape[0]} labels"
        )
    return images, labels


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(data_dir: str, mirrors: Sequence[str] = MNIST_MIRRORS) -> None:
    """Downloads the four MNIST idx ``.gz`` files into ``data_dir`` (md5-checked).

    Raises:
      ValueError: if no mirror is reachable or a file's checksum is wrong.
    """
    os.makedirs(data_dir, exist_ok=True)
    for name, md5 in MNIST_FILES.items():
        path = os.path.join(data_dir, name)
        if os.path.exists(path) and _md5(path) == md5:
            continue
        errors = []
        for mirror in mirrors:
            try:
                _log.info("downloading %s%s", mirror, name)
                urllib.request.urlretrieve(mirror + name, path + ".part")
            except OSError as err:
                errors.append(f"{mirror}: {err}")
                continue
            if _md5(path + ".part") != md5:
                errors.append(f"{mirror}: md5 mismatch")
                os.remove(path + ".part")
                continue
            os.replace(path + ".part", path)
            break
        else:
            raise ValueError(f"could not download MNIST file {name}: " + "; ".join(errors))


def load_mnist(data_dir: str | None, download: bool = False):
    """``((x_train, y_train), (x_test, y_test))`` from ``data_dir`` (downloaded if allowed).

    Raises:
      ValueError: when ``data_dir`` is None, or the files are missing and ``download`` is
        False, or a file is damaged.
    """
    if data_dir is None:
        raise ValueError("permuted_mnist needs data_dir: a directory with the MNIST idx files")
    try:
        return load_idx_dataset(data_dir, "train"), load_idx_dataset(data_dir, "test")
    except FileNotFoundError as err:
        if not download:
            raise ValueError(
                f"MNIST idx files not found in data dir {data_dir!r} ({err}); pass a directory "
                "holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, or allow download"
            ) from err
    download_mnist(data_dir)
    return load_idx_dataset(data_dir, "train"), load_idx_dataset(data_dir, "test")
