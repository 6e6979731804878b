"""Dataset readers, task streams and the checks data passes where it enters; no TensorFlow."""

from den_jax.data.checks import check_finite, check_labels, check_split_classes, check_targets
from den_jax.data.cifar100 import download_cifar100, load_cifar100, load_tfds
from den_jax.data.idx import download_mnist, load_idx_dataset, load_mnist, read_idx
from den_jax.data.splits import (
    boundaries,
    class_order,
    indices_in_range,
    remap_labels,
    step_sizes,
)
from den_jax.data.tasks import (
    Task,
    TaskInfo,
    TaskStream,
    make_stream,
    npz_stream,
    permuted_mnist,
    sklearn_hetero,
    stream_fingerprint,
)

__all__ = [
    "Task",
    "TaskInfo",
    "TaskStream",
    "boundaries",
    "check_finite",
    "check_labels",
    "check_split_classes",
    "check_targets",
    "class_order",
    "download_cifar100",
    "download_mnist",
    "indices_in_range",
    "load_cifar100",
    "load_idx_dataset",
    "load_mnist",
    "load_tfds",
    "make_stream",
    "npz_stream",
    "permuted_mnist",
    "read_idx",
    "remap_labels",
    "sklearn_hetero",
    "step_sizes",
    "stream_fingerprint",
]
