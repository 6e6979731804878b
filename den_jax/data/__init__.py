"""Dataset readers and task streams; none of them needs TensorFlow."""

from den_jax.data.cifar100 import download_cifar100, load_cifar100, load_tfds
from den_jax.data.idx import load_idx_dataset, read_idx
from den_jax.data.splits import (
    boundaries,
    class_order,
    indices_in_range,
    remap_labels,
    step_sizes,
)

__all__ = [
    "boundaries",
    "class_order",
    "download_cifar100",
    "indices_in_range",
    "load_cifar100",
    "load_idx_dataset",
    "load_tfds",
    "read_idx",
    "remap_labels",
    "step_sizes",
]
