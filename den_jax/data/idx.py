"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzipped).

The library never assumes where the files live: callers pass the directory.
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

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
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: bad magic number {data[:4]!r}")
    code, ndim = data[2], data[3]
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
      ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    images_stem, labels_stem = _FILES[split]
    images = read_idx(_find(data_dir, images_stem))
    labels = read_idx(_find(data_dir, labels_stem)).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{data_dir}: {images.shape[0]} {split} images but {labels.shape[0]} labels"
        )
    return images, labels
