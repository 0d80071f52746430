"""Subprocess worker for tests/test_objectives.py (not a test module): data-parallel exactness of the batch-statistic
objectives on P fake CPU devices (the caller sets ``XLA_FLAGS=--xla_force_host_platform_device_count=P``).

  python tests/objectives_worker.py OUT.json

A global batch of R real rows is padded to P * S rows; the padding rows (``w = 0``, junk values far from the data)
are scattered over several shards, not only at the end. ``jax.pmap`` over P devices of each objective with
``axis_name`` is compared with one device holding the R real rows: the value, the per-device input gradients
(which are P times the single-device rows, see ``jmoe/objectives.py``), zero gradients on padding rows, and the
``lax.pmean`` of a replicated parameter's per-device gradients (the training loop's rule). Results go to OUT.json
as max abs differences for the parent test to assert on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jmoe import objectives  # noqa: E402

AXIS = "batch"


def layout(num_devices: int, rows_per_device: int, num_real: int, seed: int):
  """Global slot -> real row index (or -1 for padding), padding spread over shards; shape [P, S]."""
  rng = np.random.default_rng(seed)
  slots = num_devices * rows_per_device
  pad = np.sort(rng.choice(slots, size=slots - num_real, replace=False))
  idx = -np.ones(slots, np.int64)
  idx[np.setdiff1d(np.arange(slots), pad)] = np.arange(num_real)
  return idx.reshape(num_devices, rows_per_device)


def shard(real: np.ndarray, idx: np.ndarray, junk_seed: int) -> np.ndarray:
  """[R, ...] real rows -> [P, S, ...] with junk in the padding slots."""
  junk = 50.0 + 10.0 * np.random.default_rng(junk_seed).normal(size=idx.shape + real.shape[1:])
  out = np.where((idx >= 0).reshape(idx.shape + (1,) * (real.ndim - 1)), real[np.maximum(idx, 0)], junk)
  return out.astype(np.float32)


def unshard(grads: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, float]:
  """[P, S, ...] per-slot gradients -> ([R, ...] real rows in order, max |grad| over padding slots)."""
  g = np.asarray(grads, np.float64)
  flat = g.reshape((-1,) + g.shape[2:])
  order = idx.reshape(-1)
  real = np.empty((int(order.max()) + 1,) + g.shape[2:])
  real[order[order >= 0]] = flat[order >= 0]
  pad = flat[order < 0]
  return real, float(np.max(np.abs(pad))) if pad.size else 0.0


def maxdiff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def main(out: Path):
  p = jax.device_count()
  s, r, k, d = 4, 27, 3, 6  # 8 x 4 = 32 slots, 27 real rows, 5 padding rows
  idx = layout(p, s, r, seed=0)
  w_sh = (idx >= 0).astype(np.float32)
  rng = np.random.default_rng(1)
  res = {"devices": p, "padding_per_shard": (idx < 0).sum(1).tolist()}

  # ---- ccc_loss: value and d/d(pred) for [B, K]
  tgt = rng.uniform(1, 9, size=(r, k))
  pred = 0.6 * tgt + rng.normal(0, 1.0, size=(r, k)) + 0.5
  tgt_sh, pred_sh = shard(tgt, idx, 2), shard(pred, idx, 3)
  ccc_vg = jax.value_and_grad(objectives.ccc_loss)
  v1, g1 = jax.jit(ccc_vg)(jnp.float32(pred), jnp.float32(tgt), jnp.ones(r, jnp.float32))
  vp, gp = jax.pmap(lambda a, b, c: ccc_vg(a, b, c, AXIS), axis_name=AXIS)(pred_sh, tgt_sh, w_sh)
  g_real, g_pad = unshard(gp, idx)
  res["ccc"] = {
    "value_1": float(v1),
    "value_spread": maxdiff(vp, vp[0]),
    "value_diff": maxdiff(vp[0], v1),
    "grad_scale": float(np.sum(g_real * np.asarray(g1)) / np.sum(np.asarray(g1, np.float64) ** 2)),
    "grad_diff": maxdiff(g_real / p, g1),
    "grad_max": float(np.max(np.abs(g1))),
    "grad_pad_max": g_pad,
  }

  # ---- nt_xent: value and d/d(z_a), d/d(z_b); both variants
  za = rng.normal(size=(r, d))
  zb = 0.7 * za + 0.5 * rng.normal(size=(r, d))
  za_sh, zb_sh = shard(za, idx, 4), shard(zb, idx, 5)
  for intra in (True, False):

    def nt(a, b, c, axis_name=None, intra=intra):
      return objectives.nt_xent(a, b, c, 0.3, axis_name=axis_name, intra_view=intra)

    nt_vg = jax.value_and_grad(nt, argnums=(0, 1))
    v1, (ga1, gb1) = jax.jit(nt_vg)(jnp.float32(za), jnp.float32(zb), jnp.ones(r, jnp.float32))
    vp, (gap, gbp) = jax.pmap(lambda a, b, c, f=nt_vg: f(a, b, c, AXIS), axis_name=AXIS)(za_sh, zb_sh, w_sh)
    ga_real, ga_pad = unshard(gap, idx)
    gb_real, gb_pad = unshard(gbp, idx)
    res[f"nt_xent_intra{int(intra)}"] = {
      "value_1": float(v1),
      "value_spread": maxdiff(vp, vp[0]),
      "value_diff": maxdiff(vp[0], v1),
      "grad_diff": max(maxdiff(ga_real / p, ga1), maxdiff(gb_real / p, gb1)),
      "grad_max": max(float(np.max(np.abs(ga1))), float(np.max(np.abs(gb1)))),
      "grad_pad_max": max(ga_pad, gb_pad),
    }

  # ---- the loop's rule: pmean over devices of a replicated parameter's gradient == single-device gradient.
  x = rng.normal(size=(r, d))
  x_sh = shard(x, idx, 6)
  wa = jnp.float32(rng.normal(size=(d, d)) / np.sqrt(d))
  wb = jnp.float32(rng.normal(size=(d, k)) / np.sqrt(d))

  def combined(params, xx, tt, ww, axis_name=None):
    """A toy two-headed model: an NT-Xent between x and x @ wa, and a CCC loss on (x @ wa) @ wb."""
    h = jnp.tanh(xx @ params["wa"])
    loss = objectives.nt_xent(xx, h, ww, 0.5, axis_name=axis_name)
    return loss + objectives.ccc_loss(h @ params["wb"], tt, ww, axis_name=axis_name)

  params = {"wa": wa, "wb": wb}
  l1_, g1_ = jax.jit(jax.value_and_grad(combined))(params, jnp.float32(x), jnp.float32(tgt), jnp.ones(r, jnp.float32))

  def dp_step(params, xx, tt, ww):
    loss, g = jax.value_and_grad(combined)(params, xx, tt, ww, AXIS)
    return loss, jax.lax.pmean(g, AXIS)

  lp, gp_ = jax.pmap(dp_step, axis_name=AXIS, in_axes=(None, 0, 0, 0))(params, x_sh, tgt_sh, w_sh)
  res["param_grad"] = {
    "value_diff": maxdiff(lp[0], l1_),
    "grad_diff": max(maxdiff(gp_[n][0], g1_[n]) for n in g1_),
    "grad_max": max(float(np.max(np.abs(g1_[n]))) for n in g1_),
  }
  out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
  main(Path(sys.argv[1]))
