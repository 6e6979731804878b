"""The class-incremental MNIST stream of the DER protocol benchmark, in plain NumPy.

Used by both sides of ``benchmarks.der_protocol --stream mnist5``: the JAX run reads the
files :func:`prepare_padded_idx` writes (through ``experiments.cifar100_der --dataset
mnist --data-dir``), and the PyTorch reference (``benchmarks.der_torch_protocol``) builds
its stream from the same files with :func:`load_stream`, which selects exactly what
``den_jax.data.images.StreamData.from_uint8`` selects:

* class order ``np.random.RandomState(order_seed).permutation(num_classes)`` (PyCIL's;
  ``order_seed < 0`` keeps the natural order);
* ``per_class`` images of every class, ``default_rng(seed).permutation`` of the class's
  indices (classes in ``np.unique`` order), kept in input order;
* labels remapped to positions in the class order.

Nothing here imports JAX or PyTorch, so neither side pays for the other's import.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from typing import NamedTuple

import numpy as np

from den_jax.data import splits
from den_jax.data.images import subsample
from den_jax.data.splits import remap_labels, step_sizes

__all__ = [
    "FILES",
    "MNIST_MEAN",
    "MNIST_STD",
    "Stream",
    "class_order",
    "fingerprint",
    "load_idx_split",
    "load_stream",
    "pad_images",
    "prepare_padded_idx",
    "read_idx",
    "remap_labels",
    "step_sizes",
    "subsample",
    "write_idx",
]

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)  # as den_jax.data.images
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MARKER = "PADDED_IDX.json"


class Stream(NamedTuple):
    """A class-incremental image stream.

    Attributes:
      x_train, x_test: uint8 ``[N, H, W, C]``.
      y_train, y_test: int64 labels, positions in ``class_order``.
      class_order: original class ids in stream order.
      sizes: classes per step.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_order: np.ndarray
    sizes: tuple[int, ...]

    @property
    def bounds(self) -> list[int]:
        """Cumulative class counts ``[n_0, n_0 + n_1, ...]``."""
        return [int(b) for b in np.cumsum(self.sizes)]


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (gzipped when it ends in ``.gz``) into a NumPy array.

    Raises:
      ValueError: naming ``path`` when the header or the size is wrong.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (header {data[:4]!r})")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise ValueError(f"{path}: header declares shape {shape}, file holds {len(body)} bytes")
    return np.frombuffer(body, np.uint8).reshape(shape).copy()  # writable (torch.from_numpy)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as an uncompressed IDX file."""
    a = np.ascontiguousarray(array, np.uint8)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, a.ndim]) + struct.pack(">" + "I" * a.ndim, *a.shape))
        f.write(a.tobytes())


def _find(data_dir: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no {stem}[.gz] in {data_dir!r} (expected MNIST-format idx files)")


def load_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, H, W, 1], labels int64 [N])`` of ``split`` ("train"/"test")."""
    images, labels = (read_idx(_find(data_dir, stem)) for stem in FILES[split])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{data_dir} {split}: images {images.shape} and labels {labels.shape} do not match "
            "(expected [N, H, W] and [N])"
        )
    return images[..., None], labels.astype(np.int64)


def pad_images(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads ``[N, H, W, ...]`` images to ``size`` x ``size`` (centred, extra row/col last)."""
    n, h, w = x.shape[:3]
    if h > size or w > size:
        raise ValueError(f"images are {h}x{w}, larger than the padded size {size}")
    top, left = (size - h) // 2, (size - w) // 2
    pads = [(0, 0), (top, size - h - top), (left, size - w - left)] + [(0, 0)] * (x.ndim - 3)
    return np.pad(x, pads)


def prepare_padded_idx(src: str, dst: str, size: int = 32) -> str:
    """Writes the four MNIST idx files of ``src`` with images zero-padded to ``size``.

    Reused when ``dst`` holds a marker written from the same source files and size.

    Returns:
      ``dst``.
    """
    stat = {}
    for stems in FILES.values():
        for stem in stems:
            p = _find(src, stem)
            stat[os.path.basename(p)] = os.path.getsize(p)
    spec = {"source": os.path.abspath(src), "files": stat, "size": int(size)}
    marker = os.path.join(dst, _MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                return dst
    os.makedirs(dst, exist_ok=True)
    for split, (img_stem, lab_stem) in FILES.items():
        x, y = load_idx_split(src, split)
        write_idx(os.path.join(dst, img_stem), pad_images(x[..., 0], size))
        write_idx(os.path.join(dst, lab_stem), y.astype(np.uint8))
    with open(marker, "w") as f:
        json.dump(spec, f)
    return dst


def class_order(num_classes: int, seed: int) -> np.ndarray:
    """PyCIL's ``np.random.seed(seed); np.random.permutation(n)``; natural order if seed < 0."""
    return splits.class_order(num_classes, None if seed < 0 else seed)


def load_stream(
    data_dir: str,
    *,
    init_classes: int,
    increment: int,
    order_seed: int = 1993,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 1993,
) -> Stream:
    """The stream ``experiments.cifar100_der --dataset mnist --data-dir data_dir`` trains on.

    Args:
      data_dir: the four MNIST-format idx files.
      init_classes, increment: classes of the first and of every later step.
      order_seed: class-order seed (``--order-seed``).
      train_per_class, test_per_class: per-class subsampling (None: all).
      seed: the run's seed (``--seed``; den_jax subsamples with it).
    """
    (xtr, ytr), (xte, yte) = load_idx_split(data_dir, "train"), load_idx_split(data_dir, "test")
    num_classes = int(max(ytr.max(), yte.max())) + 1
    order = class_order(num_classes, order_seed)
    xtr, ytr = subsample(xtr, ytr, train_per_class, seed)
    xte, yte = subsample(xte, yte, test_per_class, seed)
    return Stream(
        x_train=xtr,
        y_train=remap_labels(ytr, order),
        x_test=xte,
        y_test=remap_labels(yte, order),
        class_order=order,
        sizes=tuple(step_sizes(num_classes, init_classes, increment)),
    )


def fingerprint(x: np.ndarray, y: np.ndarray, order: np.ndarray) -> str:
    """sha256 of training images, labels (as int64) and class order: equal streams, equal hash."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x, np.uint8), np.asarray(y, np.int64), np.asarray(order)):
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()
