"""Suite-wide setup: each test module's compiled programs are released when it ends.

An xdist worker runs many modules in one process; without this, every jitted program of
every earlier module stays alive in jax's caches for the rest of the worker's life.
"""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    yield
    jax.clear_caches()
