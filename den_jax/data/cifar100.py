"""CIFAR-100 without TensorFlow.

Three sources, all returning ``(uint8 [N, 32, 32, 3], int64 [N] fine labels)``:

* :func:`load_cifar100` reads the official ``cifar-100-python.tar.gz`` (or its
  extracted ``cifar-100-python/`` folder) from a user-given directory;
* :func:`download_cifar100` fetches that archive (needs network; MD5 checked);
* :func:`load_tfds` reads an already prepared tensorflow-datasets directory
  (array_record) with ``tfds.data_source``, which needs no TensorFlow. The
  stock ``cifar100`` builder needs TensorFlow to *prepare*, hence the NumPy
  reader as the default path. tfds is imported lazily.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import tarfile
import urllib.request
import zlib
from typing import IO, Any

import numpy as np

__all__ = [
    "ARCHIVE",
    "MD5",
    "URL",
    "download_cifar100",
    "load_cifar100",
    "load_tfds",
]

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
_SPLITS = ("train", "test")

_log = logging.getLogger(__name__)


# What a damaged file raises while it is opened, decompressed or unpickled.
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    tarfile.TarError,
    gzip.BadGzipFile,
    zlib.error,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    OverflowError,
    ValueError,
)
_EXPECTED = "a CIFAR-100 python pickle (a dict with 'data' uint8 [N, 3072] and 'fine_labels' [N])"


def _decode(blob: Any, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and fine labels of one unpickled split; ``ValueError`` naming ``source``."""
    if not isinstance(blob, dict):
        raise ValueError(f"{source}: expected {_EXPECTED}, got a {type(blob).__name__}")
    found = {k.decode() if isinstance(k, bytes) else str(k): v for k, v in blob.items()}
    missing = [k for k in ("data", "fine_labels") if k not in found]
    if missing:
        raise ValueError(
            f"{source}: expected {_EXPECTED}; key(s) {missing} missing (has {sorted(found)[:8]})"
        )
    data = np.asarray(found["data"])
    labels = np.asarray(found["fine_labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise ValueError(
            f"{source}: expected 'data' uint8 [N, 3072], got {data.dtype} {list(data.shape)}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{source}: expected integer 'fine_labels' [{len(data)}] (one per image), got "
            f"{labels.dtype} {list(labels.shape)}"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _read_pickle(f: IO[bytes], source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        blob = pickle.load(f, encoding="bytes")
    except _READ_ERRORS as e:
        raise ValueError(
            f"cannot read {source}: expected {_EXPECTED} ({type(e).__name__}: {e}); the file "
            "is damaged or not CIFAR-100: delete it and download it again"
        ) from e
    return _decode(blob, source)


def load_cifar100(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a CIFAR-100 split from the official python-pickle release.

    Args:
      data_dir: directory holding ``cifar-100-python.tar.gz`` or the extracted
        ``cifar-100-python/`` folder (with ``train`` and ``test`` files).
      split: ``"train"`` (50,000 images) or ``"test"`` (10,000).

    Returns:
      ``(images uint8 [N, 32, 32, 3], fine labels int64 [N])``.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    folder = os.path.join(data_dir, "cifar-100-python", split)
    if os.path.exists(folder):
        with open(folder, "rb") as f:
            return _read_pickle(f, folder)
    archive = os.path.join(data_dir, ARCHIVE)
    if os.path.exists(archive):
        name = f"cifar-100-python/{split}"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                try:
                    member = tar.extractfile(name)
                except KeyError:
                    member = None
                if member is None:
                    raise ValueError(f"{archive}: expected a member {name!r}, none found")
                return _read_pickle(member, f"{archive} (member {name})")
        except _READ_ERRORS as e:
            if isinstance(e, ValueError) and archive in str(e):
                raise  # already names the archive

            raise ValueError(
                f"cannot read {archive}: expected a gzip-compressed tar archive holding {name} "
                f"({type(e).__name__}: {e}); delete it and download it again"
            ) from e
    raise ValueError(
        f"no CIFAR-100 in {data_dir!r}: expected {ARCHIVE} or cifar-100-python/{split} "
        f"(get the archive from {URL}, or pass --download when online)"
    )


def download_cifar100(data_dir: str) -> str:
    """Downloads the official archive into ``data_dir`` (MD5-checked); returns its path."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, ARCHIVE)
    if not os.path.exists(path):
        _log.info("downloading %s to %s", URL, path)
        tmp = path + ".part"
        urllib.request.urlretrieve(URL, tmp)
        os.replace(tmp, path)
    with open(path, "rb") as f:
        digest = hashlib.md5(f.read()).hexdigest()
    if digest != MD5:
        raise ValueError(f"{path}: MD5 {digest} != expected {MD5}; delete it and retry")
    return path


def load_tfds(name: str, split: str, data_dir: str | None = None):
    """Reads a prepared tfds dataset (array_record) without TensorFlow.

    Args:
      name: tfds name, e.g. ``"cifar100"``.
      split: ``"train"`` or ``"test"``.
      data_dir: tfds data directory (None = tfds default).

    Returns:
      ``(images uint8 [N, H, W, C], labels int64 [N])``.
    """
    import tensorflow_datasets as tfds  # lazy: heavy import, never needed otherwise

    source = tfds.data_source(name, split=split, data_dir=data_dir)
    n = len(source)
    if n == 0:
        raise ValueError(f"tfds {name}/{split} in {data_dir!r} is empty")
    images = np.stack([np.asarray(source[i]["image"], np.uint8) for i in range(n)])
    labels = np.asarray([int(source[i]["label"]) for i in range(n)], np.int64)
    return images, labels
