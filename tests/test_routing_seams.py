"""The routing core's seams against loop-over-experts oracles: token masks, dense / signed weights, routers on the
experts' outputs, T gates over one bank, mixtures of heterogeneous groups, and the router loss-weight contract.

Tolerances: fp32, atol 2e-5 on outputs and input gradients, 5e-5 on parameter gradients.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe import losses
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer, mixture
from jmoe.moe.routing import SoftmaxRouter, TopKRouter, top1_routing, top_k_routing, weights_routing

N, D, H = 24, 8, 16
ATOL = 2e-5


def expert_outputs_loop(params, x, num_experts):
  """[E, N, D]: expert e applied to every token, one expert at a time (the oracle's building block)."""
  outs = []
  for e in range(num_experts):
    pe = jax.tree.map(lambda p: p[e], params["experts"]["stack"])
    outs.append(MLPExpert(H, D).apply({"params": pe}, x))
  return jnp.stack(outs)


def weighted_loop(ys, w):
  """y[n] = sum_e w[n, e] ys[e, n], as a loop over experts."""
  y = jnp.zeros(ys.shape[1:])
  for e in range(ys.shape[0]):
    y = y + w[:, e, None] * ys[e]
  return y


@pytest.mark.parametrize(
  "strategy,factor,group", [("dense", None, None), ("sorted", None, None), ("einsum", 0.75, 12), ("sorted", 0.75, 12)]
)
def test_token_mask_takes_no_capacity_no_load_no_loss(strategy, factor, group):
  """Masked tokens output zero; unmasked tokens get exactly what they get when the masked ones are absent from
  their group (same capacity C); load and losses are those of the unmasked tokens alone."""
  e, k = 4, 2
  x = jax.random.normal(jax.random.key(0), (N, D))
  mask = jnp.asarray(np.random.default_rng(0).random(N) > 0.4)
  layer = MoELayer(TopKRouter(e, k=k), MLPExpert(H, D), e, strategy=strategy, capacity_factor=factor, group_size=group)
  params = layer.init(jax.random.key(1), x)
  y, routing, m = layer.apply(params, x, mask=mask)
  assert np.all(np.asarray(y)[~np.asarray(mask)] == 0)
  # oracle: the capacity rule applied to the unmasked slots only (masked ones never enter an expert's queue)
  index = np.asarray(routing.index)
  s = dispatch_lib.group_size_for(N, group)
  c = dispatch_lib.capacity_for(s, k, e, factor)
  kept = np.zeros((N, k), bool)
  for g0 in range(0, N, s):
    used = [0] * e
    for kk in range(k):
      for t in range(g0, g0 + s):
        if mask[t] and used[index[t, kk]] < c:
          kept[t, kk] = True
          used[index[t, kk]] += 1
  ys = expert_outputs_loop(params["params"], x, e)
  w = np.zeros((N, e), np.float32)
  for t in range(N):
    for kk in range(k):
      if kept[t, kk]:
        w[t, index[t, kk]] += float(routing.weights[t, kk])
  np.testing.assert_allclose(y, weighted_loop(ys, jnp.asarray(w)), atol=ATOL)
  routed = int(np.asarray(mask).sum()) * k
  np.testing.assert_allclose(float(m["dropped_fraction"]), 1 - kept.sum() / routed, atol=1e-6)
  # statistics over the unmasked tokens only
  sub = top_k_routing(routing.logits[np.asarray(mask)], k, loss_weights={"switch_loss": 1.0})
  for name in ("load", "slot_load", "switch_loss", "entropy", "z_loss", "importance_loss", "auxiliary_loss"):
    np.testing.assert_allclose(m[name], sub.metrics[name], atol=1e-6, err_msg=name)


def test_dense_and_signed_weights_equal_the_loop_with_gradients():
  """A precomputed dense routing (signed weights, e.g. differential attention) vs the loop: outputs and grads."""
  e = 4
  x = jax.random.normal(jax.random.key(0), (N, D))
  w = jax.random.normal(jax.random.key(1), (N, e))  # signed, not a distribution
  layer = MoELayer(None, MLPExpert(H, D), e)
  params = layer.init(jax.random.key(2), x, routing=weights_routing(w))
  r = jax.random.normal(jax.random.key(3), (N, D))

  def via_layer(p, x, w):
    return jnp.sum(layer.apply(p, x, routing=weights_routing(w)).y * r)

  def via_loop(p, x, w):
    return jnp.sum(weighted_loop(expert_outputs_loop(p["params"], x, e), w) * r)

  got = jax.jit(jax.value_and_grad(via_layer, argnums=(0, 1, 2)))(params, x, w)
  want = jax.jit(jax.value_and_grad(via_loop, argnums=(0, 1, 2)))(params, x, w)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)
  m = weights_routing(w).metrics
  assert "switch_loss" not in m and "entropy" not in m and float(m["auxiliary_loss"]) == 0.0
  with pytest.raises(ValueError, match="runs on the dense path"):
    MoELayer(None, MLPExpert(H, D), e, strategy="sorted").apply(params, x, routing=weights_routing(w))


def test_soft_routing_runs_every_expert_once_and_falls_back_to_bias_on_zero_input():
  e = 4
  layer = MoELayer(SoftmaxRouter(e), MLPExpert(H, D), e)
  x = jax.random.normal(jax.random.key(0), (N, D)).at[:5].set(0.0)
  params = layer.init(jax.random.key(1), x)
  y, routing, _ = layer.apply(params, x)
  bias = params["params"]["router"]["gate"]["bias"]
  np.testing.assert_allclose(routing.weights[:5], np.broadcast_to(jax.nn.softmax(bias), (5, e)), atol=1e-6)
  want = weighted_loop(expert_outputs_loop(params["params"], x, e), routing.weights)
  np.testing.assert_allclose(y, want, atol=ATOL)
  # one expert pass: router gate, the two expert layers batched over E on the N tokens ([4,24,8] x [4,8,16]), combine
  hlo = jax.jit(layer.apply).lower(params, x).as_text()
  assert hlo.count("dot_general") == 4 and "tensor<4x24x16xf32>" in hlo


def test_task_gates_share_one_expert_pass():
  from jmoe.models.layers import TaskGates

  e, t = 4, 3
  layer = MoELayer(TaskGates(t, e), MLPExpert(H, D), e)
  x = jax.random.normal(jax.random.key(0), (2, 12, D))
  params = layer.init(jax.random.key(1), x)
  y, routing, m = layer.apply(params, x)
  assert y.shape == (t, 2, 12, D) and routing.weights.shape == (t, 24, e)
  ys = expert_outputs_loop(params["params"], x.reshape(24, D), e)
  for task in range(t):
    np.testing.assert_allclose(y[task].reshape(24, D), weighted_loop(ys, routing.weights[task]), atol=ATOL)
  assert m["load"].shape == (e,) and np.isclose(float(jnp.sum(m["mean_weight"])), 1.0, atol=1e-5)


class _DotRouter(nn.Module):
  """A minimal output-reading router: weights = softmax over experts of <x W, y_e>."""

  num_experts: int
  reads_expert_outputs = True

  @nn.compact
  def __call__(self, x, ys, deterministic=True, mask=None):
    from jmoe.moe.routing import soft_routing

    return soft_routing(jnp.einsum("nd,end->ne", nn.Dense(ys.shape[-1], name="q")(x), ys), mask)


def test_router_on_expert_outputs_computes_the_bank_once():
  e = 4
  layer = MoELayer(_DotRouter(e), MLPExpert(H, D), e)
  x = jax.random.normal(jax.random.key(0), (N, D))
  params = layer.init(jax.random.key(1), x)
  y, routing, _ = layer.apply(params, x)
  ys = expert_outputs_loop(params["params"], x, e)
  q = x @ params["params"]["router"]["q"]["kernel"] + params["params"]["router"]["q"]["bias"]
  w = jax.nn.softmax(jnp.einsum("nd,end->ne", q, ys), -1)
  np.testing.assert_allclose(routing.weights, w, atol=1e-5)
  np.testing.assert_allclose(y, weighted_loop(ys, w), atol=ATOL)
  with pytest.raises(ValueError, match="reads the experts' outputs needs strategy"):
    MoELayer(_DotRouter(e), MLPExpert(H, D), e, strategy="sorted").apply(params, x)


@pytest.mark.parametrize("estimator", ["straight_through", "switch", "soft"])
def test_mixture_of_heterogeneous_groups_vs_loop(estimator):
  """Group 0 a sequence expert (mean over T of Dense), group 1 a vector expert; gate from both summaries."""
  b, t = 10, 5
  seq = jax.random.normal(jax.random.key(0), (b, t, D))
  vec = jax.random.normal(jax.random.key(1), (b, D))
  local, glob, gate = nn.Dense(D), nn.Dense(D), nn.Dense(2)
  pl = local.init(jax.random.key(2), seq)
  pg = glob.init(jax.random.key(3), vec)
  pr = gate.init(jax.random.key(4), jnp.zeros((b, 2 * D)))

  def run(pl, pg, pr):
    outs = [jnp.mean(local.apply(pl, seq), axis=1), glob.apply(pg, vec)]
    logits = gate.apply(pr, jnp.concatenate([jnp.mean(seq, 1), vec], -1))
    from jmoe.moe.routing import soft_routing

    routing = soft_routing(logits) if estimator == "soft" else top1_routing(logits, estimator)
    y, choice = mixture(outs, routing)
    return y, choice, outs, jax.nn.softmax(logits)

  y, choice, outs, p = run(pl, pg, pr)
  for n in range(b):
    c = int(jnp.argmax(p[n]))
    assert int(choice[n]) == c
    if estimator == "straight_through":
      want = outs[c][n]  # hard forward: exactly the chosen group's output
    elif estimator == "switch":
      want = p[n, c] * outs[c][n]
    else:
      want = p[n, 0] * outs[0][n] + p[n, 1] * outs[1][n]
    np.testing.assert_allclose(y[n], want, atol=1e-5)
  g = jax.grad(lambda pr: jnp.sum(run(pl, pg, pr)[0] ** 2))(pr)
  assert float(jnp.abs(g["params"]["kernel"]).sum()) > 0, "the router must receive a gradient"


def test_router_carries_its_loss_weights():
  logits = jax.random.normal(jax.random.key(0), (32, 4))
  r = top_k_routing(logits, 2, loss_weights={"switch_loss": 0.25, "z_loss": 0.5})
  np.testing.assert_allclose(r.metrics["auxiliary_loss"], 0.25 * r.metrics["switch_loss"] + 0.5 * r.metrics["z_loss"])
  probs = jax.nn.softmax(logits)
  np.testing.assert_allclose(
    r.metrics["switch_loss"], losses.load_balancing_loss(probs, jax.nn.one_hot(jnp.argmax(probs, -1), 4)), rtol=1e-6
  )
  assert float(top_k_routing(logits, 2).metrics["auxiliary_loss"]) == 0.0
  with pytest.raises(ValueError, match="unknown router loss"):
    top_k_routing(logits, 2, loss_weights={"balance": 1.0})
  x = jax.random.normal(jax.random.key(1), (8, D))
  router = TopKRouter(4, k=2, switch_weight=1 / 16)
  rr = router.apply(router.init(jax.random.key(2), x), x)
  assert float(rr.metrics["auxiliary_loss"]) == float(rr.metrics["switch_loss"]) / 16
