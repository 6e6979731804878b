"""Tasks, task streams and a content fingerprint of a stream.

A :class:`Task` holds one task's train / validation / test split and checks it on
construction: inputs ``float [N, D]`` and finite, labels integers in ``[0, C)``, a test
split whose classes the training split has (:mod:`den_jax.data.checks`). A
:class:`TaskStream` builds tasks on demand (one Permuted-MNIST training set is 172 MB).

:func:`stream_fingerprint` (also :meth:`TaskStream.fingerprint`) is a sha256 over the
stream's dataset name, every task's name, class count and the names, dtypes, shapes and
bytes of every split's arrays: two streams with the same fingerprint train and evaluate
on the same data. A lazy stream may give the builder a cheaper ``content`` function that
feeds what defines it (Permuted MNIST: the base arrays and the permutations) instead of
every built task. Task metadata (seeds, file paths) is not part of the fingerprint, so a
data file moved to another path keeps its fingerprint and a file replaced under the same
path does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from den_jax.data.checks import check_finite, check_labels, check_split_classes

__all__ = [
    "SPLITS",
    "Task",
    "TaskInfo",
    "TaskStream",
    "as_features",
    "consecutive_classes",
    "hash_arrays",
    "permuted_stream",
    "split_valid",
    "stream_fingerprint",
]

SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a stream (checked on construction).

    Attributes:
      name: unique task name (also the network's head name).
      x_train, y_train: ``float32 [N, D]`` and ``int32 [N]``.
      x_valid, y_valid: held-out part of the training data (may have 0 rows).
      x_test, y_test: test split (at least two classes, all seen in training).
      num_classes: ``C``; labels lie in ``[0, C)``.
      metadata: JSON-serialisable description (seed, classes, source).

    Raises:
      ValueError: naming the task, the split and the first offending index when an
        input is non-finite, a label is not an integer in ``[0, C)``, shapes disagree or
        the test split holds classes the training split lacks.
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
        for split in SPLITS:
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            what = f"task {self.name!r} {split} split"
            if x.ndim != 2 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"{what}: x_{split} must be [N, D] and y_{split} [N], "
                    f"got {x.shape} and {y.shape}"
                )
            if x.shape[1] != self.x_train.shape[1]:
                raise ValueError(f"{what}: x_{split} width differs from x_train")
            check_finite(x, what=f"{what} x")
            check_labels(y, self.num_classes, what=f"{what} labels")
        if len(self.y_train) == 0:
            raise ValueError(f"task {self.name!r} train split is empty")
        check_split_classes(self.y_train, self.y_test, what=f"task {self.name!r}")

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"x_train": ..., "y_train": ..., ..., "y_test": ...}``."""
        return {f"{v}_{s}": getattr(self, f"{v}_{s}") for s in SPLITS for v in ("x", "y")}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Static description of a task (no arrays): what a network needs to add its heads."""

    name: str
    input_dim: int
    num_classes: int
    metadata: Mapping[str, Any]


def hash_arrays(h: Any, arrays: Mapping[str, Any]) -> None:
    """Feeds ``name, dtype, shape, bytes`` of every array (in key order) into hash ``h``."""
    for key in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[key]))
        h.update(f"{key}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())


class TaskStream(Sequence):
    """A sequence of tasks built on demand; ``stream[i]`` is a :class:`Task`.

    Args:
      dataset: the dataset's name (for results and checkpoints).
      infos: one :class:`TaskInfo` per task.
      build: ``build(i) -> Task``.
      shared_input_dim: input width shared by all tasks, or ``None`` when they differ
        (then every task needs its own input head).
      build_test: optional ``build_test(i) -> (x_test, y_test)`` without the training split.
      content: optional ``content(h)`` feeding everything that defines the tasks' arrays
        into the hash ``h`` (see :func:`stream_fingerprint`); default: every built task.
    """

    def __init__(
        self,
        dataset: str,
        infos: Sequence[TaskInfo],
        build: Callable[[int], Task],
        shared_input_dim: int | None,
        build_test: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
        content: Callable[[Any], None] | None = None,
    ):
        self.dataset = dataset
        self.infos = tuple(infos)
        self._build = build
        self.shared_input_dim = shared_input_dim
        self._cache: tuple[int, Task] | None = None
        self._build_test = build_test
        self._content = content

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

    def fingerprint(self) -> str:
        """sha256 hex digest of the stream's content (see :func:`stream_fingerprint`)."""
        h = hashlib.sha256(f"den_jax stream v1|{self.dataset}|{self.shared_input_dim}|".encode())
        for info in self.infos:
            h.update(f"task|{info.name}|{info.input_dim}|{info.num_classes}|".encode())
        if self._content is not None:
            self._content(h)
        else:
            for i in range(len(self)):
                hash_arrays(h, self._build(i).arrays())
        return h.hexdigest()


def stream_fingerprint(stream: TaskStream | Sequence[Task]) -> str:
    """A sha256 hex digest of a stream's data: equal fingerprints, equal tasks.

    Covers the dataset name, every task's name, input width and class count, and the
    dtype, shape and bytes of every split (train, valid, test). Metadata is left out.
    Costs one pass over the data (Permuted MNIST: the base arrays and the permutations,
    under a second).

    Args:
      stream: a :class:`TaskStream` or a sequence of :class:`Task`.

    Returns:
      64 hex characters.
    """
    if isinstance(stream, TaskStream):
        return stream.fingerprint()
    tasks = list(stream)
    if not all(isinstance(t, Task) for t in tasks):
        raise ValueError("stream_fingerprint expects a TaskStream or a sequence of Task")
    infos = [TaskInfo(t.name, t.input_dim, t.num_classes, t.metadata) for t in tasks]
    return TaskStream("tasks", infos, lambda i: tasks[i], None).fingerprint()


# ----------------------------------------------------------------------------- builders


def split_valid(x: np.ndarray, y: np.ndarray, num_valid: int, rng: np.random.Generator | None):
    """Splits ``num_valid`` rows off the front (or random rows when ``rng`` is given).

    Returns:
      ``(x_train, y_train, x_valid, y_valid)``.
    """
    if not 0 <= num_valid < len(x):
        raise ValueError(f"num_valid must be in [0, {len(x)}), got {num_valid}")
    idx = np.arange(len(x)) if rng is None else rng.permutation(len(x))
    v, t = idx[:num_valid], idx[num_valid:]
    return x[t], y[t], x[v], y[v]


def as_features(x: np.ndarray, what: str) -> np.ndarray:
    """``x [N, ...]`` flattened to ``float32 [N, D]`` (uint8 scaled to [0, 1]).

    Raises:
      ValueError: naming ``what`` when ``x`` has fewer than 2 dims or is not numeric.
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{what} must have at least 2 dims [N, ...], got shape {x.shape}")
    flat = x.reshape(len(x), -1)
    if flat.dtype == np.uint8:
        return flat.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(flat.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {flat.dtype}")
    return flat.astype(np.float32)


def _permutations(num_tasks: int, dim: int, seed: int, identity_first: bool) -> list[np.ndarray]:
    rs = np.random.RandomState(seed)  # same generator family as the official code
    perms = [rs.permutation(dim) for _ in range(num_tasks)]
    if identity_first:
        perms[0] = np.arange(dim)
    return perms


def consecutive_classes(y_train: np.ndarray, what: str) -> int:
    """``C`` for labels that must be the consecutive class ids ``0..C-1`` (all present).

    A stray label (a 99 among 0..9) or a missing class is refused rather than turned into
    a 100-class head.

    Raises:
      ValueError: naming ``what``, the classes that never occur and the first index of the
        largest label; or as :func:`~den_jax.data.checks.check_labels`.
    """
    check_labels(y_train, int(y_train.max()) + 1 if y_train.size else 1, what=what)
    top = int(y_train.max())
    missing = sorted(set(range(top + 1)) - set(np.unique(y_train).tolist()))
    if missing:
        i = int(np.argmax(y_train == top))
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{what}: labels must be the consecutive class ids 0..C-1, but class(es) {shown} "
            f"never occur while label {top} does (first at index {i}): a stray label or a "
            "missing class"
        )
    return top + 1


def permuted_stream(
    dataset: str,
    base: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    num_tasks: int,
    seed: int,
    identity_first: bool,
    num_valid: int,
    extra: Mapping[str, Any],
    num_classes: int | None = None,
) -> TaskStream:
    """Tasks that are fixed pixel permutations of one classification problem.

    Args:
      dataset: the stream's name.
      base: ``((x_train, y_train), (x_test, y_test))``, inputs ``float32 [N, D]``.
      num_tasks: number of permutations.
      seed: ``np.random.RandomState`` seed of the permutations.
      identity_first: task 0 keeps the original pixel order.
      num_valid: the first ``num_valid`` training rows become the validation split.
      extra: more metadata for every task.
      num_classes: ``C``; ``None``: the training labels must be ``0..C-1``, all present.

    Returns:
      A lazy stream (tasks built on access) whose fingerprint hashes the base arrays and
      the permutations.

    Raises:
      ValueError: naming the dataset, split and first index of a non-finite input, a bad
        label or a test label that training lacks.
    """
    (x_tr, y_tr), (x_te, y_te) = base
    if num_classes is None:
        num_classes = consecutive_classes(y_tr, f"{dataset} y_train")
    check_labels(y_tr, num_classes, what=f"{dataset} y_train")
    check_labels(y_te, num_classes, what=f"{dataset} y_test")
    check_split_classes(y_tr, y_te, what=dataset)
    check_finite(x_tr, what=f"{dataset} x_train")
    check_finite(x_te, what=f"{dataset} x_test")
    x_tr, y_tr, x_va, y_va = split_valid(x_tr, y_tr, num_valid, None)
    perms = _permutations(num_tasks, x_tr.shape[1], seed, identity_first)
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

    def content(h) -> None:  # the tasks are column permutations of these arrays
        hash_arrays(h, {"x_train": x_tr, "y_train": y_tr, "x_valid": x_va, "y_valid": y_va})
        hash_arrays(h, {"x_test": x_te, "y_test": y_te})
        hash_arrays(h, {f"perm{i:05d}": p for i, p in enumerate(perms)})

    return TaskStream(
        dataset, infos, build, shared_input_dim=int(x_tr.shape[1]), build_test=build_test,
        content=content,
    )  # fmt: skip
