"""Task streams for continual learning: Permuted MNIST, heterogeneous sklearn sets, npz files.

A stream is a :class:`TaskStream`: a sequence of :class:`Task` built on demand (one
Permuted-MNIST training set is 55k x 784 float32 = 172 MB, so tasks are not all kept in
memory). Every task carries its own train / validation / test split, its number of
classes and JSON-serialisable metadata (permutation seed, class list, source dataset).

Inputs are flattened to ``float32 [N, D]``; labels are ``int32 [N]`` in ``[0, C)``.
Data is checked where it enters (:mod:`den_jax.data.checks`): non-finite inputs, labels
that are not consecutive class ids, test labels training never saw and damaged files are
refused with a ``ValueError`` naming the file or task, the split and the first offending
index. :func:`stream_fingerprint` hashes a stream's content (see
:mod:`den_jax.data.taskstream`).

Streams:
  * :func:`permuted_mnist`: DEN's official setup (Yoon et al. 2018, ``DEN_run.py``):
    every task, the first included, applies its own fixed pixel permutation to the full
    10-class MNIST problem; 55k/5k/10k train/validation/test (the validation set is the
    *first* 5,000 training images, as in TF's ``input_data.read_data_sets``).
  * :func:`sklearn_hetero`: iris, wine, breast cancer and digits from scikit-learn's
    bundled files; different input and output widths per task (per-task heads).
  * :func:`npz_stream`: any ``.npz`` with ``x_train, y_train, x_test, y_test`` split by
    pixel permutations (``permute:N``) or by classes (``classes:0,1/2,3``).
"""

from __future__ import annotations

import logging
import os
import zipfile
import zlib
from collections.abc import Sequence

import numpy as np

from den_jax.data.checks import check_finite, check_labels, check_split_classes
from den_jax.data.idx import load_mnist
from den_jax.data.taskstream import (
    Task,
    TaskInfo,
    TaskStream,
    as_features,
    consecutive_classes,
    permuted_stream,
    split_valid,
    stream_fingerprint,
)

__all__ = [
    "MNIST_PERMUTATION_SEED",
    "SKLEARN_SETS",
    "Task",
    "TaskInfo",
    "TaskStream",
    "make_stream",
    "npz_stream",
    "parse_class_splits",
    "permuted_mnist",
    "sklearn_hetero",
    "stream_fingerprint",
]

_log = logging.getLogger(__name__)

MNIST_PERMUTATION_SEED = 1004  # np.random.seed(1004) in the official DEN_run.py
SKLEARN_SETS = ("iris", "wine", "breast_cancer", "digits")


# ----------------------------------------------------------------------------- streams


def permuted_mnist(
    data_dir: str | None,
    num_tasks: int = 10,
    *,
    seed: int = MNIST_PERMUTATION_SEED,
    num_valid: int = 5000,
    identity_first: bool = False,
    download: bool = False,
    max_train: int | None = None,
) -> TaskStream:
    """Permuted MNIST from the idx files in ``data_dir`` (downloaded there if allowed).

    Args:
      data_dir: directory with the four MNIST idx files.
      num_tasks: number of permutations (tasks).
      seed: ``np.random.RandomState`` seed; task ``i`` uses the ``i``-th permutation drawn.
      num_valid: training images held out for validation (the first ones).
      identity_first: if True task 0 is unpermuted MNIST (default: permuted, as DEN does).
      download: fetch the files from a mirror when they are missing.
      max_train: keep only this many training images (for quick tests).

    Returns:
      A stream of ``num_tasks`` 784-input, 10-class tasks sharing one input width.
    """
    _check_num_tasks(num_tasks)
    (x_tr, y_tr), (x_te, y_te) = load_mnist(data_dir, download)
    x_tr, x_te = as_features(x_tr, "MNIST train"), as_features(x_te, "MNIST test")
    if max_train is not None:
        x_tr, y_tr = x_tr[: max_train + num_valid], y_tr[: max_train + num_valid]
    base = ((x_tr, y_tr.astype(np.int32)), (x_te, y_te.astype(np.int32)))
    return permuted_stream(
        "permuted_mnist", base, num_tasks, seed, identity_first, num_valid, {}, num_classes=10
    )


def sklearn_hetero(
    names: Sequence[str] = SKLEARN_SETS,
    *,
    test_fraction: float = 0.3,
    valid_fraction: float = 0.15,
    seed: int = 0,
) -> TaskStream:
    """Tasks of different input and output widths from scikit-learn's bundled datasets.

    Features are standardised with the training split's mean and standard deviation. The
    splits are stratified and fixed by ``seed``.

    Args:
      names: datasets in task order, from ``("iris", "wine", "breast_cancer", "digits")``
        (inputs 4, 13, 30, 64; classes 3, 3, 2, 10).
      test_fraction: share of each dataset used for testing.
      valid_fraction: share of the remaining training data held out for validation.
      seed: split seed.
    """
    bad = [n for n in names if n not in SKLEARN_SETS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(
            f"sklearn_hetero tasks must be distinct names from {list(SKLEARN_SETS)}, got "
            f"{list(names)}"
        )
    from sklearn import datasets as skd  # lazy: scikit-learn only needed for this stream
    from sklearn.model_selection import train_test_split

    loaders = {
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
        "digits": skd.load_digits,
    }
    tasks = []
    for name in names:
        x, y = loaders[name](return_X_y=True)
        x, y = x.astype(np.float64), y.astype(np.int32)
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=test_fraction, random_state=seed, stratify=y
        )
        x_tr, x_va, y_tr, y_va = train_test_split(
            x_tr, y_tr, test_size=valid_fraction, random_state=seed, stratify=y_tr
        )
        mean, std = x_tr.mean(0), x_tr.std(0)
        std = np.where(std > 0, std, 1.0)

        def f(a, mean=mean, std=std):
            return ((a - mean) / std).astype(np.float32)

        meta = {"source": f"sklearn.datasets.load_{name}", "split_seed": seed}
        tasks.append(
            Task(name, f(x_tr), y_tr, f(x_va), y_va, f(x_te), y_te, int(y.max() + 1), meta)
        )
    infos = [TaskInfo(t.name, t.input_dim, t.num_classes, t.metadata) for t in tasks]
    return TaskStream("sklearn_hetero", infos, lambda i: tasks[i], shared_input_dim=None)


def _check_num_tasks(n) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of tasks must be a positive integer, got {n!r}")


def parse_class_splits(spec: str) -> list[list[int]]:
    """Parses ``"0,1/2,3/..."`` into ``[[0, 1], [2, 3], ...]`` (disjoint, >= 2 classes each)."""
    groups = []
    for part in spec.split("/"):
        try:
            classes = [int(c) for c in part.split(",")]
        except ValueError as err:
            raise ValueError(
                f"bad class split {spec!r}: expected groups of integers like 0,1/2,3"
            ) from err
        if len(classes) < 2 or len(set(classes)) != len(classes) or min(classes) < 0:
            raise ValueError(
                f"bad class split {spec!r}: group {part!r} needs >= 2 distinct non-negative classes"
            )
        groups.append(classes)
    flat = [c for g in groups for c in g]
    if len(set(flat)) != len(flat):
        raise ValueError(f"bad class split {spec!r}: a class appears in more than one task")
    return groups


_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The four arrays of an npz file; any damage is a ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f"npz file {path!r} does not exist")
    expected = "expected an .npz archive (np.savez) with x_train, y_train, x_test, y_test"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read npz file {path!r} ({err}); {expected}") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is a single .npy array, not an .npz archive; {expected}")
    with data:
        missing = [k for k in _NPZ_KEYS if k not in data]
        if missing:
            raise ValueError(
                f"npz file {path!r} lacks key(s) {missing}; it must hold x_train, y_train, "
                f"x_test, y_test (found {sorted(data.files)})"
            )
        try:  # members are decompressed here: damage inside the archive shows up now
            return {k: data[k] for k in _NPZ_KEYS}
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
            raise ValueError(
                f"cannot read npz file {path!r}: a member is damaged ({err}); {expected}"
            ) from err


def npz_stream(
    path: str,
    tasks: str,
    *,
    num_valid_fraction: float = 0.1,
    seed: int = 0,
) -> TaskStream:
    """Tasks from an ``.npz`` file with ``x_train, y_train, x_test, y_test``.

    Args:
      path: the ``.npz`` file. ``x_*`` are ``[N, ...]`` (flattened; uint8 scaled to
        [0, 1]); ``y_*`` are integer labels ``[N]``.
      tasks: ``"permute:N"`` (N pixel permutations of the whole problem; seed ``seed``) or
        ``"classes:0,1/2,3/..."`` (one task per class group; labels renumbered ``0..k-1``
        in the listed order).
      num_valid_fraction: share of each task's training data held out (random rows).
      seed: permutation and validation-split seed.
    """
    arrays = _read_npz(path)
    x_tr, x_te = (
        as_features(arrays["x_train"], f"npz file {path!r} x_train"),
        as_features(arrays["x_test"], f"npz file {path!r} x_test"),
    )
    if x_tr.shape[1] != x_te.shape[1]:
        raise ValueError(
            f"npz file {path!r}: x_train has {x_tr.shape[1]} features but x_test {x_te.shape[1]}"
        )
    check_finite(x_tr, what=f"npz file {path!r} x_train (flattened)")
    check_finite(x_te, what=f"npz file {path!r} x_test (flattened)")
    ys = {}
    for k, n in (("y_train", len(x_tr)), ("y_test", len(x_te))):
        y = np.asarray(arrays[k])
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"npz file {path!r}: {k} must be integer labels of shape ({n},), got "
                f"{y.dtype} {y.shape}"
            )
        check_labels(y, max(int(y.max()) + 1, 1) if y.size else 1, what=f"npz file {path!r} {k}")
        ys[k] = y.astype(np.int64)
    y_tr, y_te = ys["y_train"], ys["y_test"]
    rng = np.random.default_rng(seed)
    name = f"npz:{os.path.basename(path)}"
    if tasks.startswith("permute:"):
        try:
            n = int(tasks.split(":", 1)[1])
        except ValueError as err:
            raise ValueError(
                f"bad --tasks {tasks!r}: expected permute:N with an integer N"
            ) from err
        _check_num_tasks(n)
        num_classes = consecutive_classes(y_tr, f"npz file {path!r} y_train")  # file's rows
        check_labels(y_te, num_classes, what=f"npz file {path!r} y_test")
        check_split_classes(y_tr, y_te, what=f"npz file {path!r}")
        num_valid = int(round(num_valid_fraction * len(x_tr)))
        idx = rng.permutation(len(x_tr))
        x_tr, y_tr = x_tr[idx], y_tr[idx]
        base = ((x_tr, y_tr.astype(np.int32)), (x_te, y_te.astype(np.int32)))
        return permuted_stream(
            name, base, n, seed, False, num_valid, {"file": path}, num_classes=num_classes
        )
    if tasks.startswith("classes:"):
        groups = parse_class_splits(tasks.split(":", 1)[1])
        present = set(np.unique(y_tr).tolist())
        absent = [c for g in groups for c in g if c not in present]
        if absent:
            raise ValueError(f"classes {absent} do not occur in y_train of {path!r}")
        built = []
        for i, classes in enumerate(groups):
            remap = {c: k for k, c in enumerate(classes)}
            tr, te = np.isin(y_tr, classes), np.isin(y_te, classes)
            yt = np.array([remap[c] for c in y_tr[tr]], np.int32)
            ye = np.array([remap[c] for c in y_te[te]], np.int32)
            nv = int(round(num_valid_fraction * int(tr.sum())))
            a, b, c, d = split_valid(x_tr[tr], yt, nv, rng)
            meta = {"source": name, "file": path, "classes": classes}
            built.append(Task(f"classes{i}", a, b, c, d, x_te[te], ye, len(classes), meta))
        infos = [TaskInfo(t.name, t.input_dim, t.num_classes, t.metadata) for t in built]
        return TaskStream(name, infos, lambda i: built[i], shared_input_dim=x_tr.shape[1])
    raise ValueError(
        f"bad --tasks {tasks!r} for an npz dataset: expected permute:N or classes:0,1/2,3/..."
    )


def make_stream(
    dataset: str,
    tasks: str | None,
    *,
    data_dir: str | None = None,
    download: bool = False,
    seed: int | None = None,
    max_train: int | None = None,
) -> TaskStream:
    """Builds a stream from command-line strings (``--dataset``, ``--tasks``).

    Args:
      dataset: ``"permuted_mnist"``, ``"sklearn_hetero"`` or ``"npz:PATH"``.
      tasks: ``permuted_mnist``: a count (default 10); ``sklearn_hetero``: a count (first N
        of iris, wine, breast_cancer, digits) or comma-separated names (default all four);
        ``npz``: ``permute:N`` or ``classes:0,1/2,3/...`` (required).
      data_dir: MNIST idx directory (permuted_mnist only).
      download: allow downloading MNIST into ``data_dir``.
      seed: permutation / split seed (default: 1004 for MNIST, 0 otherwise).
      max_train: cap on training images (permuted_mnist only; for quick runs).
    """
    if dataset == "permuted_mnist":
        n = _parse_count(tasks, 10, dataset)
        return permuted_mnist(
            data_dir, n, seed=MNIST_PERMUTATION_SEED if seed is None else seed,
            download=download, max_train=max_train,
        )  # fmt: skip
    if dataset == "sklearn_hetero":
        if tasks is None:
            names = list(SKLEARN_SETS)
        elif tasks.strip().isdigit():
            n = _parse_count(tasks, 4, dataset)
            if n > len(SKLEARN_SETS):
                raise ValueError(f"sklearn_hetero has {len(SKLEARN_SETS)} tasks, asked for {n}")
            names = list(SKLEARN_SETS[:n])
        else:
            names = [s.strip() for s in tasks.split(",")]
        return sklearn_hetero(names, seed=0 if seed is None else seed)
    if dataset.startswith("npz:"):
        if tasks is None:
            raise ValueError("an npz dataset needs --tasks permute:N or classes:0,1/2,3/...")
        return npz_stream(dataset[4:], tasks, seed=0 if seed is None else seed)
    raise ValueError(
        f"unknown dataset {dataset!r}; expected permuted_mnist, sklearn_hetero or npz:PATH"
    )


def _parse_count(tasks: str | None, default: int, dataset: str) -> int:
    if tasks is None:
        return default
    try:
        n = int(tasks)
    except ValueError as err:
        raise ValueError(
            f"bad --tasks {tasks!r} for {dataset}: expected a positive integer"
        ) from err
    _check_num_tasks(n)
    return n
