"""Shared model parts (jmoe.models.layers): encoders ignore padding, cross-attention ignores padded keys, the DA
router computes eq. 5-6 on the experts' outputs (plain and differential), the scale router and task gates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmoe.models.layers import (
  BidirectionalCrossAttention,
  CrossAttention,
  DARouter,
  ModalityEncoder,
  ScaleRouter,
  SequenceEncoder,
  TaskGates,
)
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer, mixture

B, T, D, W = 3, 6, 5, 8


def _seq_and_mask():
  x = jax.random.normal(jax.random.key(0), (B, T, D))
  mask = jnp.arange(T)[None] < jnp.array([[6], [3], [1]])
  return x, mask


@pytest.mark.parametrize("cls", [ModalityEncoder, SequenceEncoder])
def test_encoders_ignore_padding(cls):
  x, mask = _seq_and_mask()
  enc = cls(W)
  params = enc.init(jax.random.key(1), x, mask)
  junk = jnp.where(mask[..., None], x, 100.0)  # change only the padding steps
  a, b = enc.apply(params, x, mask), enc.apply(params, junk, mask)
  if cls is SequenceEncoder:
    assert a.shape == (B, T, W)
    assert np.all(np.asarray(a)[~np.asarray(mask)] == 0)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # a vector input is accepted too (T = 1 for the sequence encoder)
  v = jax.random.normal(jax.random.key(2), (B, D))
  assert enc.apply(enc.init(jax.random.key(3), v), v).shape[-1] == W


def test_cross_attention_ignores_padded_keys_and_is_bidirectional():
  x, mask = _seq_and_mask()
  q = jax.random.normal(jax.random.key(4), (B, 4, W))
  ctx = jax.random.normal(jax.random.key(5), (B, T, W))
  ca = CrossAttention(heads=2)
  p = ca.init(jax.random.key(6), q, ctx, mask)
  junk = jnp.where(mask[..., None], ctx, -50.0)
  np.testing.assert_allclose(ca.apply(p, q, ctx, mask), ca.apply(p, q, junk, mask), atol=1e-5)
  assert not np.allclose(ca.apply(p, q, ctx, mask), ca.apply(p, q, ctx))  # the mask matters
  bi = BidirectionalCrossAttention(heads=2)
  pb = bi.init(jax.random.key(7), q, ctx, None, mask)
  a2, c2 = bi.apply(pb, q, ctx, None, mask)
  assert a2.shape == q.shape and c2.shape == ctx.shape


@pytest.mark.parametrize("differential", [False, True])
def test_da_router_is_eq_5_6_on_the_experts_outputs(differential):
  e, n = 4, 10
  layer = MoELayer(DARouter(e, key_dim=6, differential=differential), MLPExpert(16, W), e)
  x = jax.random.normal(jax.random.key(0), (n, W))
  params = layer.init(jax.random.key(1), x)
  y, routing, m = layer.apply(params, x)
  pr = params["params"]["router"]
  ys = jnp.stack(
    [
      MLPExpert(16, W).apply({"params": jax.tree.map(lambda a: a[i], params["params"]["experts"]["stack"])}, x)
      for i in range(e)
    ]
  )

  def attn(name):
    q = x @ pr[f"{name}_q"]["kernel"] + pr[f"{name}_q"]["bias"]
    k = ys @ pr[f"{name}_k"]["kernel"] + pr[f"{name}_k"]["bias"]
    return jax.nn.softmax(jnp.einsum("nd,end->ne", q, k) / np.sqrt(6), -1)

  want = attn("map1") - (0.5 + pr["lambda"]) * attn("map2") if differential else attn("map1")
  np.testing.assert_allclose(routing.weights, want, atol=1e-5)
  np.testing.assert_allclose(y, jnp.einsum("ne,eno->no", want, ys), atol=1e-5)
  if differential:
    assert routing.probs is None and "switch_loss" not in m and "lambda" in m
    assert (np.asarray(routing.weights) < 0).any(), "differential weights are signed"
  else:
    np.testing.assert_allclose(jnp.sum(routing.weights, -1), 1.0, atol=1e-6)
    assert "entropy" in m


def test_scale_router_top1_straight_through_and_soft():
  n = 12
  s_local = jax.random.normal(jax.random.key(0), (n, 5))
  s_global = jax.random.normal(jax.random.key(1), (n, 3))
  outs = [jax.random.normal(jax.random.key(2), (n, W)), jax.random.normal(jax.random.key(3), (n, W))]
  hard = ScaleRouter(2)
  p = hard.init(jax.random.key(4), [s_local, s_global])
  r = hard.apply(p, [s_local, s_global])
  y, choice = mixture(outs, r)
  np.testing.assert_allclose(y, jnp.where(choice[:, None] == 0, outs[0], outs[1]), atol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(mixture(outs, hard.apply(p, [s_local, s_global]))[0] ** 2))(p)
  assert float(jnp.abs(grad["params"]["gate"]["kernel"]).sum()) > 0
  soft = ScaleRouter(2, estimator="soft").apply(p, [s_local, s_global])
  np.testing.assert_allclose(jnp.sum(soft.weights, -1), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="expects 2 scale summaries"):
    hard.apply(p, [s_local])


def test_task_gates_one_weighting_per_task():
  x = jax.random.normal(jax.random.key(0), (7, W))
  g = TaskGates(3, 4)
  r = g.apply(g.init(jax.random.key(1), x), x)
  assert r.weights.shape == (3, 7, 4) and r.is_dense
  np.testing.assert_allclose(jnp.sum(r.weights, -1), 1.0, atol=1e-6)
  assert not np.allclose(r.weights[0], r.weights[1])
