"""Dataset readers that need no TensorFlow."""

from den_jax.data.idx import load_idx_dataset, read_idx

__all__ = ["load_idx_dataset", "read_idx"]
