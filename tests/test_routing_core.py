"""Routing core: every dispatch strategy against a plain loop over experts; losses on hand-worked values."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe import losses
from jmoe.moe import routing as routing_lib
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import SoftmaxRouter, TopKRouter, top_k_routing

N, D, H = 24, 8, 16
ATOL = 2e-5  # fp32; outputs are O(1) sums of <= 3 expert outputs


def python_kept(index: np.ndarray, num_experts: int, capacity: int, group: int) -> np.ndarray:
  """The documented rule, written as loops: within each group, slots in (k, n) order, first C per expert."""
  n, k = index.shape
  kept = np.zeros((n, k), bool)
  for g0 in range(0, n, group):
    used = [0] * num_experts
    for kk in range(k):
      for t in range(g0, g0 + group):
        e = index[t, kk]
        if used[e] < capacity:
          kept[t, kk] = True
          used[e] += 1
  return kept


def loop_oracle(params, x, num_experts, k, kept):
  """y[n] = sum over kept (n, k) of w * expert_e(x[n]), one expert at a time (a Python loop)."""
  routing = TopKRouter(num_experts, k=k).apply({"params": params["router"]}, x)
  y = jnp.zeros((x.shape[0], D))
  for e in range(num_experts):
    expert_params = jax.tree.map(lambda p: p[e], params["experts"]["stack"])
    ye = MLPExpert(H, D).apply({"params": expert_params}, x)
    w = jnp.sum(jnp.where((routing.index == e) & kept, routing.weights, 0.0), axis=1)
    y = y + w[:, None] * ye
  return y


CASES = [(1, 1), (4, 1), (4, 2), (4, 3), (8, 1), (8, 2), (8, 3)]
VARIANTS = [  # (strategy, capacity_factor, group_size); factor 0.5 forces drops
  ("dense", None, None),
  ("ragged", None, None),
  ("einsum", None, 8),
  ("sorted", None, None),
  ("einsum", 0.5, 8),
  ("sorted", 0.5, 12),
]


@pytest.mark.parametrize("experts,k", CASES)
def test_every_strategy_equals_loop_oracle(experts, k):
  """Outputs, dropped fraction and gradients (params and x) of every strategy vs the loop oracle.

  One test per (E, k) so the oracle compiles once for all strategies (compiles dominate on 2 CPU cores).
  Tolerance: fp32, atol 2e-5 on outputs / input grads, 5e-5 on parameter grads.
  """
  router = TopKRouter(experts, k=k)
  layers = {
    v: MoELayer(router, MLPExpert(H, D), experts, strategy=v[0], capacity_factor=v[1], group_size=v[2])
    for v in VARIANTS
  }
  init = jax.jit(layers[VARIANTS[0]].init)  # every strategy has the same parameter tree
  route = jax.jit(lambda p, x: router.apply({"params": p["params"]["router"]}, x).index)

  def run(layer, p, x, r):
    loss = lambda p, x: jnp.sum(layer.apply(p, x)[0] * r)
    y, _, metrics = layer.apply(p, x)
    return y, metrics["dropped_fraction"], jax.grad(loss, argnums=(0, 1))(p, x)

  runs = {v: jax.jit(lambda p, x, r, layer=layer: run(layer, p, x, r)) for v, layer in layers.items()}

  @jax.jit
  def oracle(p, x, r, kept):
    loss = lambda p, x: jnp.sum(loop_oracle(p["params"], x, experts, k, kept) * r)
    return loop_oracle(p["params"], x, experts, k, kept), jax.grad(loss, argnums=(0, 1))(p, x)

  dropped_any = False
  for seed in range(2):
    kx, kp, kr = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (N, D))
    r = jax.random.normal(kr, (N, D))
    params = init(kp, x)
    index = np.asarray(route(params, x))
    for (strategy, factor, group), fn in runs.items():
      name = f"{strategy} capacity_factor={factor} group={group} seed={seed}"
      if factor is None:
        kept = np.ones_like(index, bool)
      else:
        s = dispatch_lib.group_size_for(N, group)
        kept = python_kept(index, experts, dispatch_lib.capacity_for(s, k, experts, factor), s)
        dropped_any |= not kept.all()
      y, dropped, (g_params, g_x) = fn(params, x, r)
      want, (w_params, w_x) = oracle(params, x, r, kept)
      np.testing.assert_allclose(y, want, atol=ATOL, rtol=1e-5, err_msg=name)
      np.testing.assert_allclose(float(dropped), 1 - kept.mean(), atol=1e-6, err_msg=name)
      np.testing.assert_allclose(g_x, w_x, atol=ATOL, rtol=1e-4, err_msg=name)
      for got, ref in zip(jax.tree.leaves(g_params), jax.tree.leaves(w_params)):
        np.testing.assert_allclose(got, ref, atol=5e-5, rtol=1e-4, err_msg=name)
  if experts > 1:
    assert dropped_any, "capacity_factor=0.5 should drop some token-slots"


def test_drop_rule_is_exercised_and_matches_python():
  # With a tight capacity some slots must drop; kept_slots must equal the loop implementation of the rule.
  rng = np.random.default_rng(0)
  for experts, k, cap, group in [(4, 2, 3, 12), (8, 3, 2, 24), (4, 1, 1, 6)]:
    index = np.stack([rng.permutation(experts)[:k] for _ in range(N)]).astype(np.int32)
    got = np.asarray(dispatch_lib.kept_slots(jnp.asarray(index), experts, cap, group))
    want = python_kept(index, experts, cap, group)
    assert (~want).any(), "the case should drop something"
    np.testing.assert_array_equal(got, want)


def test_load_balancing_loss_hand_computed():
  # probs rows: [.9 .1] [.7 .3] [.6 .4] [.2 .8]; top-1 mask -> experts 0,0,0,1: density = [.75, .25]
  # mean probs = [(.9+.7+.6+.2)/4, (.1+.3+.4+.8)/4] = [.6, .4]; loss = E * (.75*.6 + .25*.4) = 2 * .55 = 1.1
  probs = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
  mask = jax.nn.one_hot(jnp.argmax(probs, -1), 2)
  assert float(losses.load_balancing_loss(probs, mask)) == pytest.approx(1.1, abs=1e-6)
  # leading group axis: the same group twice averages to the same value
  assert float(losses.load_balancing_loss(jnp.stack([probs, probs]), jnp.stack([mask, mask]))) == pytest.approx(
    1.1, abs=1e-6
  )
  # uniform routing gives exactly 1
  assert float(losses.load_balancing_loss(jnp.full((4, 2), 0.5), jnp.array([[1, 0], [0, 1]] * 2))) == pytest.approx(1.0)


def test_importance_and_z_loss_hand_computed():
  # importance = column sums = [2.4, 1.6]; mean 2.0, population std 0.4 -> cv^2 = (0.4/2)^2 = 0.04
  probs = jnp.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
  assert float(losses.importance_loss(probs)) == pytest.approx(0.04, abs=1e-6)
  # logsumexp([0, ln 3]) = ln 4 -> 1.9218121; logsumexp([0, 0]) = ln 2 -> 0.4804530; mean = 1.2011325
  logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])
  assert float(losses.router_z_loss(logits)) == pytest.approx(1.2011325, abs=1e-6)
  # entropy of [.5, .5] is ln 2; of a one-hot is 0; mean = ln2 / 2
  assert float(losses.router_entropy(jnp.array([[0.5, 0.5], [1.0, 0.0]]))) == pytest.approx(math.log(2) / 2)


def test_gaussian_kl_hand_computed():
  # mu=1, logvar=0: -0.5 (1 + 0 - 1 - 1) = 0.5; mu=0, logvar=0: 0
  np.testing.assert_allclose(losses.gaussian_kl(jnp.array([1.0, 0.0]), jnp.zeros(2)), [0.5, 0.0])


def test_top_k_routing_weights_and_renormalize():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
  r = top_k_routing(logits, 2)
  np.testing.assert_array_equal(r.index, [[0, 1], [2, 0]])  # tie 0/1 broken to the lower id
  np.testing.assert_allclose(r.weights, [[0.5, 0.3], [0.8, 0.1]], atol=1e-6)
  rn = top_k_routing(logits, 2, renormalize=True)
  np.testing.assert_allclose(rn.weights, [[0.625, 0.375], [8 / 9, 1 / 9]], atol=1e-6)
  np.testing.assert_allclose(r.metrics["slot_load"], [0.5, 0.25, 0.25])  # routed slots per expert
  np.testing.assert_allclose(r.metrics["load"], [0.5, 0.0, 0.5])  # top-1 (argmax) fraction per expert


def test_soft_router_uses_every_expert():
  x = jax.random.normal(jax.random.key(0), (N, D))
  layer = MoELayer(SoftmaxRouter(4), MLPExpert(H, D), 4)  # strategy 'auto' -> the dense path
  params = jax.jit(layer.init)(jax.random.key(1), x)
  y, routing, m = jax.jit(layer.apply)(params, x)
  assert routing.is_dense and routing.index is None and routing.weights.shape == (N, 4)
  np.testing.assert_allclose(jnp.sum(routing.weights, -1), 1.0, atol=1e-6)
  y_dense, *_ = jax.jit(MoELayer(SoftmaxRouter(4), MLPExpert(H, D), 4, strategy="dense").apply)(params, x)
  np.testing.assert_allclose(y, y_dense, atol=1e-6)
  with pytest.raises(ValueError, match="runs on the dense path"):
    MoELayer(SoftmaxRouter(4), MLPExpert(H, D), 4, strategy="sorted").apply(params, x)


def test_noisy_router_adds_noise_only_in_training():
  x = jax.random.normal(jax.random.key(0), (N, D))
  router = TopKRouter(4, k=2, noisy=True)
  params = router.init(jax.random.key(1), x)
  plain = top_k_routing(nn.Dense(4).apply({"params": params["params"]["gate"]}, x), 2)
  np.testing.assert_allclose(router.apply(params, x).weights, plain.weights)
  noisy = router.apply(params, x, deterministic=False, rngs={"router": jax.random.key(2)})
  assert not np.allclose(noisy.logits, plain.logits)


class _PytreeExpert(nn.Module):
  """Returns a dict with a per-token scalar leaf, like the Gaussian expert's sigma^2."""

  @nn.compact
  def __call__(self, x, deterministic=True):
    y = nn.Dense(D)(x)
    return {"y": y, "s": jnp.sum(y**2, -1)}


@pytest.mark.parametrize("strategy", ["dense", "einsum", "sorted"])
def test_pytree_expert_outputs(strategy):
  x = jax.random.normal(jax.random.key(0), (N, D))
  layer = MoELayer(TopKRouter(4, k=2), _PytreeExpert(), 4, strategy=strategy, group_size=8)
  params = layer.init(jax.random.key(1), x)
  out, _, m = layer.apply(params, x)
  ref, *_ = MoELayer(TopKRouter(4, k=2), _PytreeExpert(), 4, strategy="dense").apply(params, x)
  assert out["s"].shape == (N,)
  np.testing.assert_allclose(out["s"], ref["s"], rtol=1e-5)
  np.testing.assert_allclose(out["y"], ref["y"], atol=ATOL)


def test_leading_axes_are_flattened():
  x = jax.random.normal(jax.random.key(0), (3, 8, D))
  layer = MoELayer(TopKRouter(4, k=2), MLPExpert(H, D), 4)
  params = layer.init(jax.random.key(1), x)
  y, *_ = layer.apply(params, x)
  y_flat, *_ = layer.apply(params, x.reshape(24, D))
  np.testing.assert_allclose(y.reshape(24, D), y_flat, atol=1e-6)


def test_no_recompilation_across_batches():
  traces = []
  layer = MoELayer(TopKRouter(8, k=2), MLPExpert(H, D), 8, strategy="sorted", capacity_factor=1.0)

  @jax.jit
  def step(params, x):
    traces.append(1)
    return layer.apply(params, x)[0]

  params = layer.init(jax.random.key(0), jnp.zeros((N, D)))
  for seed in range(4):
    step(params, jax.random.normal(jax.random.key(seed), (N, D))).block_until_ready()
  assert len(traces) == 1


def test_bad_inputs_raise_clear_errors():
  x = jnp.ones((N, D))
  with pytest.raises(ValueError, match="1 <= k <= num_experts"):
    MoELayer(TopKRouter(4, k=5), MLPExpert(H, D), 4).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="at least a token axis"):
    MoELayer(TopKRouter(4), MLPExpert(H, D), 4).init(jax.random.key(0), jnp.ones((D,)))
  with pytest.raises(ValueError, match="capacity must be a positive int"):
    MoELayer(TopKRouter(4), MLPExpert(H, D), 4, capacity=0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="capacity_factor must be > 0"):
    MoELayer(TopKRouter(4), MLPExpert(H, D), 4, capacity_factor=-1.0).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="unknown dispatch strategy"):
    MoELayer(TopKRouter(4), MLPExpert(H, D), 4, strategy="magic").init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="router has 4 experts but the layer has 8"):
    MoELayer(TopKRouter(4), MLPExpert(H, D), 8).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"router logits must be \[N, E\]"):
    top_k_routing(jnp.ones((2, 3, 4)), 2)
  with pytest.raises(ValueError, match="contain NaN"):
    top_k_routing(jnp.array([[0.0, jnp.nan]]), 1)
  with pytest.raises(ValueError, match="needs experts with ragged_apply"):
    MoELayer(TopKRouter(4), _PytreeExpert(), 4, strategy="ragged").init(jax.random.key(0), x)


def test_nan_logits_inside_jit_raise_with_check_numerics():
  layer = MoELayer(TopKRouter(4), MLPExpert(H, D), 4, check_numerics=True)
  params = layer.init(jax.random.key(0), jnp.ones((N, D)))
  bad = jnp.ones((N, D)).at[3, 2].set(jnp.nan)
  with pytest.raises(Exception, match="router logits contain NaN or Inf"):
    jax.block_until_ready(jax.jit(lambda p, x: layer.apply(p, x)[0])(params, bad))


def test_sorted_custom_vjp_under_vmap_over_a_population():
  """vmap(grad) over stacked params (HAEMSA-style populations) through sorted's custom-VJP gathers equals einsum
  (same drop rule: one group, capacity factor 0.75 forces drops). Tolerance: fp32, 2e-5."""
  x = jax.random.normal(jax.random.key(0), (32, D))
  make = lambda s: MoELayer(TopKRouter(4, k=2), MLPExpert(H, D), 4, strategy=s, capacity_factor=0.75)
  pop = jax.vmap(lambda key: make("sorted").init(key, x))(jax.random.split(jax.random.key(1), 3))
  grads = {
    s: jax.jit(jax.vmap(jax.grad(lambda p: jnp.sum(make(s).apply(p, x)[0] ** 2))))(pop) for s in ("sorted", "einsum")
  }
  dropped = jax.vmap(lambda p: make("sorted").apply(p, x)[2]["dropped_fraction"])(pop)
  assert float(jnp.min(dropped)) > 0  # the capacity rule really dropped slots in every member
  for a, b in zip(jax.tree.leaves(grads["sorted"]), jax.tree.leaves(grads["einsum"])):
    np.testing.assert_allclose(a, b, atol=2e-5)


@pytest.mark.parametrize("num_experts,k", [(8, 1), (8, 2), (32, 2), (4, 4), (16, 3), (8, 6)])
def test_top_k_is_bit_identical_to_lax_top_k(num_experts, k):
  """routing.top_k (argmax passes for k <= 4, lax.top_k above): same values, indices (ties towards the lower id)
  and gradients, bit for bit."""
  probs = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(num_experts * k), (256, num_experts)))
  probs = probs.at[:5].set(1.0 / num_experts).at[5:9, :2].set(0.3)  # exact ties
  v0, i0 = jax.lax.top_k(probs, k)
  v1, i1 = routing_lib.top_k(probs, k)
  np.testing.assert_array_equal(np.asarray(i1), np.asarray(i0))
  np.testing.assert_array_equal(np.asarray(v1), np.asarray(v0))
  assert i1.dtype == jnp.int32
  ct = jax.random.normal(jax.random.PRNGKey(1), (256, k))
  g0 = jax.vjp(lambda p: jax.lax.top_k(p, k)[0], probs)[1](ct)[0]
  g1 = jax.vjp(lambda p: routing_lib.top_k(p, k)[0], probs)[1](ct)[0]
  np.testing.assert_array_equal(np.asarray(g1), np.asarray(g0))
