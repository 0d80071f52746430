"""Regression tests for two routing-core defects (both failed before their fix).

1. Soft routing reported a Switch loss with expert 0 as every token's top-1 (``index[:, 0]`` of the K=E index trick).
2. An expert holding ``nn.Dropout`` crashed inside ``ExpertBank`` in training (no ``'dropout'`` RNG split), and the
   expert-parallel path passed only the ``'noise'`` key.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmoe.moe import losses
from jmoe.moe.experts import ExpertBank
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import TopKRouter, soft_routing, top_k_routing

N, D = 16, 6


def test_soft_routing_top1_is_the_argmax():
  logits = jax.random.normal(jax.random.key(0), (64, 4)) * 2.0
  soft = soft_routing(logits)
  probs = jax.nn.softmax(logits)
  want = losses.load_balancing_loss(probs, jax.nn.one_hot(jnp.argmax(probs, -1), 4))
  np.testing.assert_allclose(soft.metrics["switch_loss"], want, rtol=1e-6)
  # the same routing seen as top-E gives the same Switch loss and the same load (top-1 fraction per expert)
  topk = top_k_routing(logits, 4)
  np.testing.assert_allclose(soft.metrics["switch_loss"], topk.metrics["switch_loss"], rtol=1e-6)
  np.testing.assert_allclose(soft.metrics["load"], topk.metrics["load"], atol=1e-7)
  np.testing.assert_allclose(soft.metrics["load"], np.bincount(np.argmax(logits, -1), minlength=4) / 64, atol=1e-7)


class DropoutExpert(nn.Module):
  """y = Dropout(0.5)(x) * scale with scale initialised to ones: identical parameters in every expert, so any
  difference between experts' outputs is their dropout mask."""

  @nn.compact
  def __call__(self, x, deterministic=True):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    return nn.Dropout(0.5)(x, deterministic=deterministic) * scale


def test_every_expert_gets_its_own_dropout_mask():
  bank = ExpertBank(DropoutExpert(), 4)
  x = jnp.ones((N, D))
  params = bank.init(jax.random.key(0), jnp.ones((4, N, D)))
  ys = bank.apply(params, jnp.broadcast_to(x, (4, N, D)), False, rngs={"dropout": jax.random.key(1)})
  zeros = np.asarray(ys == 0)
  assert 0.3 < zeros.mean() < 0.7
  for e in range(1, 4):
    assert not np.array_equal(zeros[0], zeros[e]), f"experts 0 and {e} share a dropout mask"


@pytest.mark.parametrize("strategy", ["dense", "sorted", "expert_parallel"])
def test_dropout_expert_trains_under_every_strategy(strategy):
  layer = MoELayer(TopKRouter(4, k=2), DropoutExpert(), 4, strategy=strategy)
  x = jax.random.normal(jax.random.key(0), (N, D))
  params = layer.init(jax.random.key(1), x)
  rngs = {"dropout": jax.random.key(2), "noise": jax.random.key(3)}

  def train_out(x):
    return layer.apply(params, x, deterministic=False, rngs=rngs)[0]

  if strategy == "expert_parallel":  # bind the expert axis (size 1) as the data-parallel steps do
    y = jax.vmap(train_out, axis_name="batch")(x[None])[0]
    y_eval = jax.vmap(lambda x: layer.apply(params, x)[0], axis_name="batch")(x[None])[0]
  else:
    y = train_out(x)
    y_eval = layer.apply(params, x)[0]
  dropped = np.asarray(y == 0)
  assert dropped.any() and not dropped.all(), "training should drop some units and keep others"
  assert not np.allclose(y, y_eval)
