import os

# Tests compile many tiny XLA programs; on 2 CPU cores compile time dominates the suite. Backend optimisation
# level 0 roughly halves it and does not change results beyond fp32 rounding. Set XLA_FLAGS yourself to override.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import tempfile

import jax

# Many tests build the same small programs again (every smoke run of a model compiles its steps anew): JAX's
# persistent compilation cache, keyed by the program, lets the second build load the first one's executable.
# A fresh directory per session: nothing carries over between test runs.
jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jmoe-test-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from pathlib import Path

import pytest

MOSI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosi"


@pytest.fixture
def mosi_dir() -> Path:
  """The real CMU-MOSI files (../shared/data/mosi next to the repo); skip when absent."""
  if not MOSI_DIR.is_dir():
    pytest.skip(f"real CMU-MOSI data not found at {MOSI_DIR} (../shared/data/mosi); see README")
  return MOSI_DIR
