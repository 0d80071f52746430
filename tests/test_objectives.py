"""Tests for jmoe.objectives: float64 numpy references written as plain loops, finite gradients, padding invariance
(junk rows with w = 0 change neither the value nor the real rows' gradients), and data-parallel exactness on 8 fake
CPU devices in a subprocess (tests/objectives_worker.py, ~7 s)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmoe import objectives

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("objectives_worker.py")


# --------------------------------------------------------------------------- references (float64, loops)
def ref_softmax(row):
  m = max(row)
  e = [math.exp(v - m) for v in row]
  s = sum(e)
  return [v / s for v in e]


def ref_ccc_loss(pred, target, w):
  """pred, target [B, K]; w [B, K]: mean_k (1 - CCC_k) with weighted population moments."""
  b, k = pred.shape
  out = []
  for j in range(k):
    tot = sum(w[i, j] for i in range(b))
    mp = sum(w[i, j] * pred[i, j] for i in range(b)) / tot
    mt = sum(w[i, j] * target[i, j] for i in range(b)) / tot
    vp = sum(w[i, j] * (pred[i, j] - mp) ** 2 for i in range(b)) / tot
    vt = sum(w[i, j] * (target[i, j] - mt) ** 2 for i in range(b)) / tot
    c = sum(w[i, j] * (pred[i, j] - mp) * (target[i, j] - mt) for i in range(b)) / tot
    out.append(1.0 - 2.0 * c / (vp + vt + (mp - mt) ** 2))
  return sum(out) / k


def ref_nt_xent_eq7(za, zb, tau):
  """Hi-MoE eq. 7 literally: Z = [u_a; u_b] (2n rows), S = Z Z^T / tau, y_i = i +- n, diagonal masked, mean."""
  u = [r / np.linalg.norm(r) for r in np.concatenate([za, zb]).astype(np.float64)]
  n2 = len(u)
  n = n2 // 2
  total = 0.0
  for i in range(n2):
    y = (i + n) % n2
    s = [float(np.dot(u[i], u[j])) / tau for j in range(n2)]
    total += -s[y] + math.log(sum(math.exp(s[j]) for j in range(n2) if j != i))
  return total / n2


def ref_nt_xent_clip(za, zb, w, tau):
  """Symmetric cross-view InfoNCE with weighted anchors; rows with w = 0 dropped from the candidates."""
  ua = [r / np.linalg.norm(r) for r in za.astype(np.float64)]
  ub = [r / np.linalg.norm(r) for r in zb.astype(np.float64)]
  real = [j for j in range(len(w)) if w[j] > 0]
  num = 0.0
  for i in real:
    for x, y in ((ua, ub), (ub, ua)):
      s = {j: float(np.dot(x[i], y[j])) / tau for j in real}
      num += w[i] * (-s[i] + math.log(sum(math.exp(v) for v in s.values())))
  return num / (2.0 * sum(w[i] for i in real))


# --------------------------------------------------------------------------- per-sample
def test_mse_l1_against_reference():
  rng = np.random.default_rng(0)
  for shape in [(7,), (7, 3)]:
    p, t = rng.normal(size=shape), rng.normal(size=shape)
    got_mse = np.asarray(objectives.mse(jnp.float32(p), jnp.float32(t)))
    got_l1 = np.asarray(objectives.l1(jnp.float32(p), jnp.float32(t)))
    p2, t2 = p.reshape(7, -1), t.reshape(7, -1)
    ref_mse = [sum((p2[i, j] - t2[i, j]) ** 2 for j in range(p2.shape[1])) / p2.shape[1] for i in range(7)]
    ref_l1 = [sum(abs(p2[i, j] - t2[i, j]) for j in range(p2.shape[1])) / p2.shape[1] for i in range(7)]
    assert got_mse.shape == got_l1.shape == (7,)
    np.testing.assert_allclose(got_mse, ref_mse, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_l1, ref_l1, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    objectives.mse(jnp.zeros(3), jnp.zeros((3, 1)))


def test_softmax_xent_and_kl_against_reference():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 4)) * 3
  q_logits = rng.normal(size=(6, 4)) * 2
  labels = rng.integers(0, 4, size=6)
  xent = np.asarray(objectives.softmax_xent(jnp.float32(logits), jnp.int32(labels)))
  kl = np.asarray(objectives.kl_div(jnp.float32(logits), jnp.float32(q_logits)))
  for i in range(6):
    p, q = ref_softmax(logits[i]), ref_softmax(q_logits[i])
    assert xent[i] == pytest.approx(-math.log(p[labels[i]]), rel=1e-5)
    assert kl[i] == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)), rel=1e-4, abs=1e-6)
  # KL(p || p) = 0 and shift invariance of logits
  same = objectives.kl_div(jnp.float32(logits), jnp.float32(logits + 5.0))
  np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-5)
  with pytest.raises(ValueError, match=r"\[B, C\]"):
    objectives.softmax_xent(jnp.zeros((3, 2)), jnp.zeros((3, 1), jnp.int32))


# --------------------------------------------------------------------------- ccc
@pytest.mark.parametrize("k", [None, 3])
def test_ccc_loss_against_reference(k):
  rng = np.random.default_rng(2)
  shape = (20,) if k is None else (20, k)
  t = rng.uniform(1, 9, size=shape)
  p = 0.5 * t + rng.normal(size=shape) + 1.0
  w = rng.uniform(0.2, 2.0, size=20)  # general (non 0/1) weights
  got = float(objectives.ccc_loss(jnp.float32(p), jnp.float32(t), jnp.float32(w)))
  p2, t2 = p.reshape(20, -1), t.reshape(20, -1)
  ref = ref_ccc_loss(p2, t2, np.repeat(w[:, None], p2.shape[1], 1))
  assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
  # hand-worked (test_metrics: preds [1,2,3], labels [2,4,6] -> CCC 4/11)
  one = objectives.ccc_loss(jnp.float32([1, 2, 3]), jnp.float32([2, 4, 6]), jnp.ones(3))
  assert float(one) == pytest.approx(1 - 4 / 11, rel=1e-6)


def test_ccc_loss_label_mask_per_dimension():
  rng = np.random.default_rng(3)
  t = rng.normal(size=(12, 2))
  p = t + rng.normal(size=(12, 2))
  m = (rng.random((12, 2)) > 0.3).astype(np.float64)
  got = float(objectives.ccc_loss(jnp.float32(p), jnp.float32(t), jnp.float32(m)))
  assert got == pytest.approx(ref_ccc_loss(p, t, m), rel=1e-5)
  with pytest.raises(ValueError, match="w must be"):
    objectives.ccc_loss(jnp.zeros((4, 2)), jnp.zeros((4, 2)), jnp.zeros(3))


def test_ccc_loss_gradients_finite_on_degenerate_batches():
  g = jax.grad(objectives.ccc_loss)
  for p, t in [([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]), ([2.0, 2.0, 2.0], [2.0, 2.0, 2.0])]:
    assert np.all(np.isfinite(np.asarray(g(jnp.float32(p), jnp.float32(t), jnp.ones(3)))))
  # an all-padding batch: loss 1, zero gradient
  v, gr = jax.value_and_grad(objectives.ccc_loss)(jnp.ones(3), jnp.ones(3), jnp.zeros(3))
  assert float(v) == pytest.approx(1.0) and np.all(np.asarray(gr) == 0)


# --------------------------------------------------------------------------- nt_xent
def test_nt_xent_equals_himoe_eq7():
  rng = np.random.default_rng(4)
  za, zb = rng.normal(size=(9, 5)), rng.normal(size=(9, 5))
  got = float(objectives.nt_xent(jnp.float32(za), jnp.float32(zb), jnp.ones(9), 0.2))
  assert got == pytest.approx(ref_nt_xent_eq7(za, zb, 0.2), rel=1e-5)


def test_nt_xent_cross_view_against_reference():
  rng = np.random.default_rng(5)
  za, zb = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
  w = np.array([1.0, 0.5, 0.0, 2.0, 1.0, 0.0, 1.0, 1.5])
  got = float(objectives.nt_xent(jnp.float32(za), jnp.float32(zb), jnp.float32(w), 0.5, intra_view=False))
  assert got == pytest.approx(ref_nt_xent_clip(za, zb, w, 0.5), rel=1e-5)
  # perfectly aligned, well separated views -> small loss; scaling an embedding changes nothing (cosine)
  e = np.eye(4) * 10
  small = float(objectives.nt_xent(jnp.float32(e), jnp.float32(3 * e), jnp.ones(4), 0.05, intra_view=False))
  assert small < 1e-6
  with pytest.raises(ValueError, match=r"\[B, D\]"):
    objectives.nt_xent(jnp.zeros((3, 2)), jnp.zeros((3, 3)), jnp.ones(3), 0.1)


# --------------------------------------------------------------------------- padding invariance
def _with_junk(x, n, seed):
  junk = 100.0 + 30.0 * np.random.default_rng(seed).normal(size=(n,) + x.shape[1:])
  return np.concatenate([x, junk]).astype(np.float32)


@pytest.mark.parametrize("which", ["ccc", "nt_xent", "nt_xent_cross"])
def test_padding_rows_change_nothing(which):
  rng = np.random.default_rng(6)
  b, pad = 10, 5
  if which == "ccc":
    x, y = rng.normal(size=(b, 2)), rng.normal(size=(b, 2))

    def fn(a, c, w):
      return objectives.ccc_loss(a, c, w)
  else:
    x, y = rng.normal(size=(b, 6)), rng.normal(size=(b, 6))

    def fn(a, c, w):
      return objectives.nt_xent(a, c, w, 0.3, intra_view=which == "nt_xent")

  vg = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
  v0, (ga0, gb0) = vg(jnp.float32(x), jnp.float32(y), jnp.ones(b))
  # junk rows appended *and* interleaved (permute everything): same value, same real-row grads, zero junk grads
  xp, yp = _with_junk(x, pad, 7), _with_junk(y, pad, 8)
  wp = np.concatenate([np.ones(b), np.zeros(pad)]).astype(np.float32)
  perm = rng.permutation(b + pad)
  v1, (ga1, gb1) = vg(jnp.asarray(xp[perm]), jnp.asarray(yp[perm]), jnp.asarray(wp[perm]))
  inv = np.argsort(perm)
  ga1, gb1 = np.asarray(ga1)[inv], np.asarray(gb1)[inv]
  assert float(v1) == pytest.approx(float(v0), rel=1e-6, abs=1e-7)
  np.testing.assert_allclose(ga1[:b], np.asarray(ga0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gb1[:b], np.asarray(gb0), rtol=1e-5, atol=1e-7)
  assert np.all(ga1[b:] == 0) and np.all(gb1[b:] == 0)
  assert np.all(np.isfinite(ga1)) and np.all(np.isfinite(gb1))


# --------------------------------------------------------------------------- data parallel (8 fake devices)
@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory):
  out = tmp_path_factory.mktemp("objectives") / "parallel.json"
  env = dict(os.environ)
  env.update(
    {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
      "JAX_PLATFORMS": "cpu",
      "PYTHONPATH": str(REPO),
    }
  )
  proc = subprocess.run(
    [sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
  )
  if proc.returncode:
    raise AssertionError(f"objectives_worker failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return json.loads(out.read_text())


def test_data_parallel_exact(parallel_results):
  res = parallel_results
  assert res["devices"] == 8
  assert sum(1 for n in res["padding_per_shard"] if n) >= 3  # padding sits on several shards, not only the last
  for name in ("ccc", "nt_xent_intra1", "nt_xent_intra0"):
    r = res[name]
    assert r["value_spread"] == 0.0, name  # the same value on every device
    assert r["value_diff"] <= 1e-5 * max(1.0, abs(r["value_1"])), (name, r)
    # per-device input gradient = 8 x the single-device rows (module docstring); padding rows get exactly 0
    assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_max"]), (name, r)
    assert r["grad_pad_max"] == 0.0, (name, r)
  assert res["ccc"]["grad_scale"] == pytest.approx(8.0, rel=1e-5)
  # the training loop's rule: pmean of per-device parameter gradients == the single-device gradient
  r = res["param_grad"]
  assert r["value_diff"] <= 1e-5 and r["grad_diff"] <= 1e-5 * max(1.0, r["grad_max"]), r


def test_nt_xent_gradient_is_finite_for_all_zero_rows():
  """A missing modality gives all-zero embeddings; with weight 0 they must not poison the gradient with NaN."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jmoe.objectives import nt_xent

  z_a = jax.random.normal(jax.random.key(0), (6, 4)).at[2].set(0.0)
  z_b = jax.random.normal(jax.random.key(1), (6, 4)).at[2].set(0.0)
  w = jnp.ones(6).at[2].set(0.0)
  g = jax.grad(lambda a, b: nt_xent(a, b, w, 0.5), argnums=(0, 1))(z_a, z_b)
  assert all(np.isfinite(np.asarray(x)).all() for x in g)
