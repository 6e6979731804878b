"""Task streams for continual learning: Permuted MNIST, heterogeneous sklearn sets, npz files.

A stream is a :class:`TaskStream`: a sequence of :class:`Task` built on demand (one
Permuted-MNIST training set is 55k x 784 float32 = 172 MB, so tasks are not all kept in
memory). Every task carries its own train / validation / test split, its number of
classes and JSON-serialisable metadata (permutation seed, class list, source dataset).

Inputs are flattened to ``float32 [N, D]``; labels are ``int32 [N]`` in ``[0, C)``.

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

import dataclasses
import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from den_jax.data.idx import load_idx_dataset

_log = logging.getLogger(__name__)

MNIST_PERMUTATION_SEED = 1004  # np.random.seed(1004) in the official DEN_run.py
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
SKLEARN_SETS = ("iris", "wine", "breast_cancer", "digits")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a stream.

    Attributes:
      name: unique task name (also the network's head name).
      x_train, y_train: ``float32 [N, D]`` and ``int32 [N]``.
      x_valid, y_valid: held-out part of the training data (may have 0 rows).
      x_test, y_test: test split.
      num_classes: ``C``; labels lie in ``[0, C)``.
      metadata: JSON-serialisable description (seed, classes, source).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    def __post_init__(self):
        for split in ("train", "valid", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 2 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"task {self.name!r}: x_{split} must be [N, D] and y_{split} [N], "
                    f"got {x.shape} and {y.shape}"
                )
            if x.shape[1] != self.x_train.shape[1]:
                raise ValueError(f"task {self.name!r}: x_{split} width differs from x_train")
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"task {self.name!r}: y_{split} must lie in [0, {self.num_classes}), "
                    f"got [{y.min()}, {y.max()}]"
                )


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Static description of a task (no arrays): what a network needs to add its heads."""

    name: str
    input_dim: int
    num_classes: int
    metadata: Mapping[str, Any]


class TaskStream(Sequence):
    """A sequence of tasks built on demand; ``stream[i]`` is a :class:`Task`.

    Args:
      dataset: the dataset's name (for results and checkpoints).
      infos: one :class:`TaskInfo` per task.
      build: ``build(i) -> Task``.
      shared_input_dim: input width shared by all tasks, or ``None`` when they differ
        (then every task needs its own input head).
    """

    def __init__(
        self,
        dataset: str,
        infos: Sequence[TaskInfo],
        build: Callable[[int], Task],
        shared_input_dim: int | None,
        build_test: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self.dataset = dataset
        self.infos = tuple(infos)
        self._build = build
        self.shared_input_dim = shared_input_dim
        self._cache: tuple[int, Task] | None = None
        self._build_test = build_test

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"task index {i} out of range for a stream of {len(self)} tasks")
        i = i % len(self)
        if self._cache is None or self._cache[0] != i:  # keep only the last task built
            self._cache = (i, self._build(i))
        return self._cache[1]

    def test_data(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x_test, y_test)`` of task ``i`` without building its training split."""
        if self._build_test is None or (self._cache is not None and self._cache[0] == i):
            task = self[i]
            return task.x_test, task.y_test
        return self._build_test(i)

    @property
    def names(self) -> list[str]:
        return [info.name for info in self.infos]


# ----------------------------------------------------------------------------- helpers


def _split_valid(x, y, num_valid: int, rng: np.random.Generator | None):
    """Splits ``num_valid`` rows off the front (or random rows when ``rng`` is given)."""
    if not 0 <= num_valid < len(x):
        raise ValueError(f"num_valid must be in [0, {len(x)}), got {num_valid}")
    idx = np.arange(len(x)) if rng is None else rng.permutation(len(x))
    v, t = idx[:num_valid], idx[num_valid:]
    return x[t], y[t], x[v], y[v]


def _as_features(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{what} must have at least 2 dims [N, ...], got shape {x.shape}")
    flat = x.reshape(len(x), -1)
    if flat.dtype == np.uint8:
        return flat.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(flat.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {flat.dtype}")
    return flat.astype(np.float32)


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


def _load_mnist(data_dir: str | None, download: bool):
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


def _permutations(num_tasks: int, dim: int, seed: int, identity_first: bool) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)  # same generator family as the official code
    perms = [rs.permutation(dim) for _ in range(num_tasks)]
    if identity_first:
        perms[0] = np.arange(dim)
    return perms


def _permuted_stream(dataset, base, num_tasks, seed, identity_first, num_valid, extra):
    (x_tr, y_tr), (x_te, y_te) = base
    x_tr, y_tr, x_va, y_va = _split_valid(x_tr, y_tr, num_valid, None)
    perms = _permutations(num_tasks, x_tr.shape[1], seed, identity_first)
    num_classes = int(max(y_tr.max(), y_te.max()) + 1)
    infos = [
        TaskInfo(
            f"perm{i}",
            x_tr.shape[1],
            num_classes,
            {"source": dataset, "permutation_seed": seed, "permutation_index": i, **extra},
        )
        for i in range(num_tasks)
    ]

    def build(i: int) -> Task:
        p = perms[i]
        return Task(
            infos[i].name, x_tr[:, p], y_tr, x_va[:, p], y_va, x_te[:, p], y_te,
            num_classes, infos[i].metadata,
        )  # fmt: skip

    def build_test(i: int):
        return x_te[:, perms[i]], y_te

    return TaskStream(
        dataset, infos, build, shared_input_dim=int(x_tr.shape[1]), build_test=build_test
    )


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
    (x_tr, y_tr), (x_te, y_te) = _load_mnist(data_dir, download)
    x_tr, x_te = _as_features(x_tr, "MNIST train"), _as_features(x_te, "MNIST test")
    if max_train is not None:
        x_tr, y_tr = x_tr[: max_train + num_valid], y_tr[: max_train + num_valid]
    base = ((x_tr, y_tr.astype(np.int32)), (x_te, y_te.astype(np.int32)))
    return _permuted_stream("permuted_mnist", base, num_tasks, seed, identity_first, num_valid, {})


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
    if not os.path.isfile(path):
        raise ValueError(f"npz file {path!r} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:  # not a zip archive, truncated, pickle
        raise ValueError(f"cannot read npz file {path!r}: {err}") from err
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is a single .npy array, not an .npz archive")
    with data:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
        if missing:
            raise ValueError(
                f"npz file {path!r} lacks key(s) {missing}; it must hold x_train, y_train, "
                f"x_test, y_test (found {sorted(data.files)})"
            )
        arrays = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    x_tr, x_te = (
        _as_features(arrays["x_train"], "x_train"),
        _as_features(arrays["x_test"], "x_test"),
    )
    if x_tr.shape[1] != x_te.shape[1]:
        raise ValueError(f"x_train has {x_tr.shape[1]} features but x_test {x_te.shape[1]}")
    ys = {}
    for k, n in (("y_train", len(x_tr)), ("y_test", len(x_te))):
        y = np.asarray(arrays[k])
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{k} must be integer labels of shape ({n},), got {y.dtype} {y.shape}")
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
        num_valid = int(round(num_valid_fraction * len(x_tr)))
        idx = rng.permutation(len(x_tr))
        x_tr, y_tr = x_tr[idx], y_tr[idx]
        base = ((x_tr, y_tr.astype(np.int32)), (x_te, y_te.astype(np.int32)))
        return _permuted_stream(name, base, n, seed, False, num_valid, {"file": path})
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
            a, b, c, d = _split_valid(x_tr[tr], yt, nv, rng)
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
