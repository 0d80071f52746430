"""bf16 compute: the routing layer (``MoELayer(dtype=...)``) and each model's forward (``model.dtype``) against fp32.

Parameters stay float32 in both; bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 2e-3 per operation), so
after a few layers the outputs agree with fp32 to a relative L2 error ||y_bf16 - y_fp32|| / ||y_fp32|| of a
few 1e-3. The stated tolerance is REL_TOL = 3e-2 (every check also fails on NaN and on an output that is not
float32 where the contract says float32), and each check first asserts that bf16 actually changed the numbers
(a bf16 path that silently ran in fp32 would agree exactly).
"""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jmoe.models import drmoe, euar, haemsa, himoe
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import TopKRouter

REL_TOL = 3e-2


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _check_close(lo, hi, name):
  """lo (bf16 path) vs hi (fp32 path): float32 result, finite, different from fp32, within REL_TOL."""
  assert np.all(np.isfinite(np.asarray(lo, np.float64))), name
  err = _rel(lo, hi)
  assert err < REL_TOL, (name, err)
  return err


@pytest.mark.parametrize("strategy", ["dense", "einsum", "sorted", "ragged"])
def test_routing_layer_bf16_matches_fp32(strategy):
  x = jax.random.normal(jax.random.key(0), (64, 16), jnp.float32)

  def layer(dtype):
    return MoELayer(TopKRouter(4, k=2), MLPExpert(32, 16), 4, strategy=strategy, dtype=dtype)

  params = layer(None).init(jax.random.key(1), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert jax.tree.structure(layer(jnp.bfloat16).init(jax.random.key(1), x)) == jax.tree.structure(params)
  hi = layer(None).apply(params, x)
  lo = layer(jnp.bfloat16).apply(params, x)
  assert lo.y.dtype == jnp.bfloat16 and hi.y.dtype == jnp.float32
  assert lo.routing.weights.dtype == jnp.float32  # routing weights and metrics stay fp32
  assert lo.metrics["auxiliary_loss"].dtype == jnp.float32
  assert _rel(lo.y, hi.y) > 0  # bf16 really ran
  _check_close(lo.y, hi.y, strategy)
  np.testing.assert_array_equal(lo.routing.index, hi.routing.index)  # same top-k choices at this margin

  def loss(p, dtype):
    return jnp.sum(jnp.square(layer(dtype).apply(p, x).y.astype(jnp.float32)))

  g_lo, g_hi = jax.grad(loss)(params, jnp.bfloat16), jax.grad(loss)(params, None)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_lo), jax.tree.leaves(g_hi)):
    assert a.dtype == jnp.float32, path  # gradients reach the fp32 parameters in fp32
    if "gate" not in jax.tree_util.keystr(path):  # router gradient: tiny and dominated by rounding in both
      _check_close(a, b, jax.tree_util.keystr(path))


def _batch_seq(mods, b=6, t=5, seed=0):
  rng = np.random.default_rng(seed)
  out = {}
  for i, m in enumerate(mods):
    out[m] = jnp.asarray(rng.normal(size=(b, t, 4 + i)), jnp.float32)
    out[f"{m}_mask"] = jnp.asarray(np.arange(t)[None] < rng.integers(2, t + 1, size=(b, 1)))
  return out


def _models():
  rng = np.random.default_rng(0)
  b = 6
  dr_batch = {
    "audio_local": jnp.asarray(rng.standard_normal((b, 10, 8)), jnp.float32),
    "audio_local_mask": jnp.asarray(np.arange(10)[None] < rng.integers(3, 11, (b, 1))),
    "audio_global": jnp.asarray(rng.standard_normal((b, 8)), jnp.float32),
  }
  hi_batch = dict(_batch_seq(("eeg", "peripheral")), weight=jnp.ones((b,), jnp.float32))
  return {
    "euar": (
      lambda dt: euar.EUAR(modalities=("text", "audio"), width=16, num_experts=4, k=2, dropout=0.0, dtype=dt),
      _batch_seq(("text", "audio")),
    ),
    "drmoe": (
      lambda dt: drmoe.DRMoE(
        modalities=("audio_local", "audio_global"),
        width=16,
        router_hidden=8,
        num_heads=2,
        dropout=0.0,
        heads_out=(("emotion4", 4),),
        dtype=dt,
      ),
      dr_batch,
    ),
    "haemsa": (
      lambda dt: haemsa.HAEMSA(
        modalities=("text", "audio"), heads=(("sentiment", ()),), width=16, kt_classes=3, dropout=0.0, dtype=dt
      ),
      _batch_seq(("text", "audio")),
    ),
    "himoe": (
      lambda dt: himoe.HiMoE(
        modalities=("eeg", "peripheral"),
        heads=(("vadl", "regression", 4, 5.0),),
        width=8,
        key_dim=4,
        attn_heads=2,
        dropout=0.0,
        dtype=dt,
      ),
      hi_batch,
    ),
  }


@pytest.mark.parametrize(
  "name", ["euar", "drmoe", "haemsa", pytest.param("himoe", marks=pytest.mark.slow)]
)  # Hi-MoE's compile alone takes ~20 s on 2 cores: slow; its layers are the shared ones tested here
def test_model_forward_bf16_matches_fp32(name):
  make, batch = _models()[name]
  params = make("float32").init(jax.random.key(0), batch)
  params_bf16 = make("bfloat16").init(jax.random.key(0), batch)
  assert jax.tree.structure(params_bf16) == jax.tree.structure(params)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params_bf16))  # parameters stay fp32
  out_hi = make("float32").apply(params, batch)
  out_lo = make("bfloat16").apply(params, batch)
  assert jax.tree.structure(out_lo) == jax.tree.structure(out_hi)
  preds_lo, preds_hi = out_lo[0], out_hi[0]
  changed = False
  for (path, lo), hi in zip(jax.tree_util.tree_leaves_with_path(preds_lo), jax.tree.leaves(preds_hi)):
    assert lo.dtype == hi.dtype, path  # predictions come back in fp32
    changed |= _rel(lo, hi) > 0
    _check_close(lo, hi, f"{name}{jax.tree_util.keystr(path)}")
  assert changed, f"{name}: bf16 gave bit-identical predictions; did the compute dtype reach the layers?"
  for path, leaf in jax.tree_util.tree_leaves_with_path(out_lo[1]):  # losses, stats: fp32 (or int/bool)
    assert not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == jnp.float32, (name, path)


def test_bad_dtype_is_one_clear_error():
  make, batch = _models()["euar"]
  params = make("float32").init(jax.random.key(0), batch)
  with pytest.raises(ValueError, match=r"config.model.dtype='float16' is invalid"):
    make("float16").apply(params, batch)


def test_build_reads_model_dtype():
  from jmoe.data import format as fmt
  from jmoe.train import tasks as tasks_lib

  cfg = ml_collections.ConfigDict(
    {
      "model": dict(
        width=8, num_experts=2, k=1, expert="gaussian", fusion="moe", dispatch="dense", capacity_factor=0.0, dropout=0.0
      ),
      "data": {"modalities": "text,audio"},
    }
  )
  tasks = tasks_lib.from_config({"sentiment": {"kind": "sentiment"}}, {"sentiment": fmt.SENTIMENT_SPEC})
  ds = types.SimpleNamespace(modalities=("text", "audio"))
  assert euar.build(cfg, ds, tasks).dtype == "float32"  # absent key: fp32
  cfg.model.dtype = "bfloat16"
  assert euar.build(cfg, ds, tasks).dtype == "bfloat16"
