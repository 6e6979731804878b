"""Suite-wide setup: one persistent XLA compilation cache for the whole test session.

Many tests compile the same programs (the same tiny ResNet-32 train step, the smoke
presets that the fault tests run three times in subprocesses). A cache directory shared
by the pytest process, its xdist workers and every subprocess they start (through the
``JAX_COMPILATION_CACHE_DIR`` environment variable, which jax reads at import) turns a
repeated compile into a cache read. The executables are the same, so no result changes.
The directory is removed when the session ends; a directory set by the caller is kept.
"""

import os
import shutil
import sys
import tempfile

_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWNED = "_DEN_JAX_TEST_CACHE_OWNED"


def pytest_configure(config):
    # The controller (or a plain run) creates the directory before xdist starts workers;
    # workers and subprocesses inherit the environment variable.
    if _ENV not in os.environ:
        os.environ[_ENV] = tempfile.mkdtemp(prefix="den_jax_xla_cache_")
        os.environ[_OWNED] = os.environ[_ENV]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    if "jax" in sys.modules:  # imported by a plugin before this hook: set it directly
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ[_ENV])
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs",
            float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
        )


def pytest_unconfigure(config):
    if os.environ.get("PYTEST_XDIST_WORKER") is None and os.environ.get(_OWNED):
        shutil.rmtree(os.environ.pop(_OWNED), ignore_errors=True)
