"""Image datasets for class-incremental learning (DER): loading, subsampling, a stream object.

* :func:`load_data` reads CIFAR-100, MNIST or Fashion-MNIST from a directory (or makes the
  synthetic smoke-test data) as uint8 NHWC arrays with their normalisation constants;
* :func:`subsample` keeps a fixed number of images per class;
* :class:`StreamData` is what a DER step trains on: train/test images, labels remapped to
  positions in the class order, normalisation, and the classes of every step. Build it
  from uint8 images with :meth:`StreamData.from_uint8` or from float images that are
  already normalised (a tfds or torchvision pipeline) with :meth:`StreamData.from_float`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from den_jax.data import checks, splits

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "StreamData",
    "load_data",
    "subsample",
    "synthetic_data",
]

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
DATASETS = ("cifar100", "fashion_mnist", "mnist", "synthetic")

Split = tuple[np.ndarray, np.ndarray]


def synthetic_data(num_classes: int, per_class: int, size: int, channels: int, seed: int):
    """Class colours + noise, uint8 ``[N, size, size, channels]`` (for smoke tests only).

    Each class is a flat random colour (robust to crops and flips) plus pixel noise.

    Returns:
      ``((x_train, y_train), (x_test, y_test))`` with ``per_class`` training and
      ``max(per_class // 3, 4)`` test images per class.
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(30, 226, (num_classes, 1, 1, channels))

    def make(n):
        y = np.repeat(np.arange(num_classes), n)
        x = templates[y] + rng.normal(0, 40, (len(y), size, size, channels))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    return make(per_class), make(max(per_class // 3, 4))


def load_data(
    dataset: str,
    data_dir: str | None = None,
    *,
    download: bool = False,
    num_classes: int = 6,
    synthetic_per_class: int = 24,
):
    """Reads a dataset as uint8 NHWC arrays.

    Args:
      dataset: one of :data:`DATASETS`.
      data_dir: directory of ``cifar-100-python.tar.gz`` or of the four idx files (not
        needed for ``"synthetic"``).
      download: fetch CIFAR-100 into ``data_dir`` first.
      num_classes, synthetic_per_class: size of the synthetic data (8x8 RGB, seed 0).

    Returns:
      ``((x_train, y_train), (x_test, y_test), mean, std)``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if dataset == "synthetic":
        tr, te = synthetic_data(num_classes, synthetic_per_class, 8, 3, 0)
        return tr, te, SYNTHETIC_MEAN, SYNTHETIC_STD
    if not data_dir:
        raise ValueError(f"dataset {dataset!r} needs a data directory (--data-dir)")
    if not os.path.isdir(data_dir) and not download:
        raise ValueError(f"data directory {data_dir!r} is not a directory")
    if dataset == "cifar100":
        from den_jax.data import cifar100

        if download:
            cifar100.download_cifar100(data_dir)
        tr, te = cifar100.load_cifar100(data_dir, "train"), cifar100.load_cifar100(data_dir, "test")
        return tr, te, CIFAR100_MEAN, CIFAR100_STD
    from den_jax.data.idx import load_idx_dataset

    tr, te = load_idx_dataset(data_dir, "train"), load_idx_dataset(data_dir, "test")
    tr, te = (tr[0][..., None], tr[1]), (te[0][..., None], te[1])
    if dataset == "mnist":
        return tr, te, MNIST_MEAN, MNIST_STD
    return tr, te, FASHION_MNIST_MEAN, FASHION_MNIST_STD


def subsample(x: np.ndarray, y: np.ndarray, per_class: int | None, seed: int) -> Split:
    """Keeps a random ``per_class`` images of every class (all when None), in input order."""
    if not per_class:
        return x, y
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    )
    keep.sort()
    return x[keep], y[keep]


def _check_split(split: Split, what: str, *, float_images: bool) -> Split:
    try:
        x, y = split
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a pair (images, labels): {err}") from err
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"{what} images must be [N, H, W, C], got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"{what} labels must be [N] with N={len(x)}, got shape {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{what} is empty")
    if float_images:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{what} images must be float (already normalised), got {x.dtype}")
        x = x.astype(np.float32)
        checks.check_finite(x, what=f"{what} images")
    elif x.dtype != np.uint8:
        raise ValueError(
            f"{what} images must be uint8, got {x.dtype} (use StreamData.from_float for "
            "normalised float images)"
        )
    return x, y


class StreamData(NamedTuple):
    """The data of a class-incremental run.

    Attributes:
      x_train, x_test: images ``[N, H, W, C]``: uint8 (normalised on the device with
        ``mean``/``std``) or float32 already normalised (``mean`` 0, ``std`` 1).
      y_train, y_test: int32 labels, remapped to positions in ``class_order``, so the
        classes of step t are ``[bounds[t-1], bounds[t])``.
      mean, std: per-channel normalisation constants.
      class_order: int64 ``[num_classes]`` original class ids in stream order.
      sizes: classes per step.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_order: np.ndarray
    sizes: tuple[int, ...]

    @property
    def bounds(self) -> list[int]:
        """Cumulative class counts ``[n_0, n_0 + n_1, ...]``."""
        return splits.boundaries(list(self.sizes))

    @property
    def num_classes(self) -> int:
        return int(sum(self.sizes))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def normalised(self) -> bool:
        """True for float images that are already normalised."""
        return self.x_train.dtype != np.uint8

    @property
    def augment_options(self) -> dict:
        """Options of ``den_jax.der.augment.augment`` for these images.

        uint8: the full training transform. Float (normalised): random crop with zero
        padding (0 = the mean colour) and flip, no brightness jitter (it works in [0, 1]).
        """
        return {"brightness": 0.0} if self.normalised else {}

    @classmethod
    def from_uint8(
        cls,
        train: Split,
        test: Split,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        init_classes: int,
        increment: int,
        order_seed: int | None = splits.PYCIL_SEED,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        seed: int = 0,
    ) -> StreamData:
        """Stream from uint8 images and original labels.

        Args:
          train, test: ``(images uint8 [N, H, W, C], labels int [N])``, labels in
            ``[0, num_classes)``.
          mean, std: per-channel constants, one per channel.
          num_classes, init_classes, increment: classes of the stream and of its steps.
          order_seed: class-order seed (PyCIL 1993); None or -1 keeps the natural order.
          train_per_class, test_per_class, seed: optional per-class subsampling.
        """
        tr = _check_split(train, "train split", float_images=False)
        te = _check_split(test, "test split", float_images=False)
        channels = tr[0].shape[-1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)} and {len(std)}")
        sub = (train_per_class, test_per_class, seed)
        return cls._build(
            tr, te, tuple(mean), tuple(std), num_classes, init_classes, increment, order_seed, *sub
        )

    @classmethod
    def from_float(
        cls,
        train: Split,
        test: Split,
        *,
        num_classes: int,
        init_classes: int,
        increment: int,
        order_seed: int | None = splits.PYCIL_SEED,
        train_per_class: int | None = None,
        test_per_class: int | None = None,
        seed: int = 0,
    ) -> StreamData:
        """Stream from float images that are already normalised (e.g. a tfds pipeline).

        The images are cast to float32 and used as they are (``mean`` 0, ``std`` 1); the
        training augmentation keeps crop and flip and drops brightness jitter (see
        :attr:`augment_options`). Arguments as in :meth:`from_uint8`.
        """
        tr = _check_split(train, "train split", float_images=True)
        te = _check_split(test, "test split", float_images=True)
        c = tr[0].shape[-1]
        sub = (train_per_class, test_per_class, seed)
        return cls._build(
            tr, te, (0.0,) * c, (1.0,) * c, num_classes, init_classes, increment, order_seed, *sub
        )

    @classmethod
    def _build(cls, tr, te, mean, std, num_classes, init, inc, order_seed, tr_pc, te_pc, seed):
        if tr[0].shape[1:] != te[0].shape[1:]:
            raise ValueError(
                f"train images are {tr[0].shape[1:]} but test images {te[0].shape[1:]}"
            )
        checks.check_labels(tr[1], num_classes, what="train split labels")
        checks.check_labels(te[1], num_classes, what="test split labels")
        checks.check_split_classes(tr[1], te[1], what="class-incremental image stream")
        xtr, ytr = subsample(*tr, tr_pc, seed)
        xte, yte = subsample(*te, te_pc, seed)
        natural = order_seed is None or order_seed < 0
        order = splits.class_order(num_classes, None if natural else order_seed)
        sizes = splits.step_sizes(num_classes, init, inc)
        return cls(
            x_train=xtr,
            y_train=splits.remap_labels(ytr, order),
            x_test=xte,
            y_test=splits.remap_labels(yte, order),
            mean=mean,
            std=std,
            class_order=order,
            sizes=tuple(sizes),
        )
