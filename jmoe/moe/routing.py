"""Routers: the routing *policy* (which experts, with what weight).

A :class:`Routing` is the decision for N tokens over E experts, in one of two forms:

* **sparse** (top-k): ``index`` [N, K] expert ids and ``weights`` [N, K] -- every dispatch strategy of
  :mod:`jmoe.moe.dispatch` runs it;
* **dense**: ``index=None`` and ``weights`` [..., N, E] (soft routing over every expert, signed or attention
  weights, or T task gates [T, N, E] over one bank) -- the dense path (every expert once, then
  :func:`jmoe.moe.dispatch.combine_dense`) runs it; no K=E index trick.

plus the router's ``probs``/``logits`` [..., N, E] when it has them (None for weights that are not a distribution),
an optional token ``mask`` [N] (False = padding frame or absent modality: no output, no capacity, no load, no
auxiliary loss) and a metrics dict. Build one with :func:`top_k_routing`, :func:`soft_routing` or
:func:`weights_routing`; dispatch never looks at how it was produced, so model-specific routers (the DA router, the
scale router, task gates in :mod:`jmoe.models.layers`) plug in by returning the same structure.

Metrics contract (vmoe's): a router carries its loss weights as attributes and every Routing's metrics hold
``auxiliary_loss``, the weighted sum of its losses (what a model adds to its objective, summed over layers), plus
unweighted diagnostics:

* ``switch_loss`` Switch/GShard load balancing, E * sum_e f_e P_e with f_e the top-1 fraction and P_e the mean
  probability (1 = uniform); ``z_loss`` (ST-MoE); ``importance_loss`` (Shazeer); ``entropy`` (nats);
* ``load`` [E]: the fraction of (unmasked) tokens whose top-1 expert -- the argmax of ``probs`` -- is e. It means
  the same for top-k and soft routing and is the f_e of the Switch loss;
* ``slot_load`` [E] (sparse routings only): the fraction of routed token-slots (N*K) sent to e -- what capacity
  sees;
* ``mean_weight`` [E]: the mean combine weight of e over tokens (for soft routing: the average gate weight).

The distribution metrics (Switch, z, importance, entropy) need ``probs``; a routing with signed or attention
weights and no probs reports ``mean_weight`` and a ``load`` from the argmax of its weights only, and its
``auxiliary_loss`` is 0 unless its router adds its own. Means run over unmasked tokens and, for dense weights
with leading gate axes [T, N, E], over those axes too.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jmoe.moe import losses


@flax.struct.dataclass
class Routing:
  """Routing decision for N tokens over E experts (see the module docstring).

  Attributes:
    weights: [N, K] combine weights of the chosen experts (sparse) or [..., N, E] (dense).
    index: [N, K] int32 expert ids, distinct within a row (column k is the token's k-th choice); None = dense.
    probs: [..., N, E] router probabilities, or None when the weights are not a distribution.
    logits: [..., N, E] router logits, or None.
    mask: [N] bool, False for tokens that are not routed (padding, absent modality); None = every token.
    metrics: ``auxiliary_loss`` and the diagnostics of the module docstring.
    num_experts: E (static).
  """

  weights: jax.Array
  index: jax.Array | None
  probs: jax.Array | None
  logits: jax.Array | None
  mask: jax.Array | None
  metrics: dict[str, Any]
  num_experts: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def is_dense(self) -> bool:
    return self.index is None

  @property
  def k(self) -> int:
    """Experts per token: K for a sparse routing, E for a dense one."""
    return self.num_experts if self.index is None else self.index.shape[-1]

  def dense_weights(self) -> jax.Array:
    """[..., N, E] combine weights (zero off the chosen experts and on masked tokens)."""
    w = self.weights if self.index is None else scatter_weights(self.weights, self.index, self.num_experts)
    return w if self.mask is None else w * self.mask[:, None].astype(w.dtype)

  def top1(self) -> jax.Array:
    """[..., N] int32: each token's highest-probability expert (argmax of probs, else of the weights)."""
    source = self.probs if self.probs is not None else self.dense_weights()
    return jnp.argmax(source, axis=-1).astype(jnp.int32)


def scatter_weights(weights: jax.Array, index: jax.Array, num_experts: int) -> jax.Array:
  """Sparse weights/index [N, K] -> dense [N, E]."""
  return jnp.sum(jax.nn.one_hot(index, num_experts, dtype=weights.dtype) * weights[..., None], axis=-2)


def routing_metrics(
  probs: jax.Array | None,
  logits: jax.Array | None,
  weights: jax.Array,
  index: jax.Array | None = None,
  mask: jax.Array | None = None,
  loss_weights: dict[str, float] | None = None,
) -> dict[str, jax.Array]:
  """Auxiliary losses and statistics of a routing decision (definitions in the module docstring).

  Args:
    probs, logits: [..., N, E] or None.
    weights: [N, K] with ``index`` [N, K] (sparse), or [..., N, E] (dense, ``index=None``).
    mask: [N] bool or None.
    loss_weights: {'switch_loss' | 'z_loss' | 'importance_loss': weight}; terms with weight 0 are left out of
      ``auxiliary_loss`` (Python floats, resolved at trace time).
  """
  if probs is not None:
    num_experts = probs.shape[-1]
  elif index is None:
    num_experts = weights.shape[-1]
  else:
    raise ValueError("a sparse routing needs its router probabilities")
  dense = weights if index is None else scatter_weights(weights, index, num_experts)
  source = probs if probs is not None else dense
  top1 = jax.nn.one_hot(jnp.argmax(source, axis=-1), num_experts, dtype=jnp.float32)  # [..., N, E]
  flat = lambda a: a.reshape((-1,) + a.shape[-2:])  # leading gate axes [..., N, E] -> [G, N, E]
  gate_mean = lambda a: jnp.mean(losses.token_mean(flat(a), mask), axis=0)  # -> [E]
  metrics: dict[str, jax.Array] = {"load": gate_mean(top1), "mean_weight": gate_mean(dense.astype(jnp.float32))}
  if index is not None:
    slots = jnp.sum(jax.nn.one_hot(index, num_experts, dtype=jnp.float32), axis=-2)  # [N, E] multi-hot
    metrics["slot_load"] = losses.token_mean(slots, mask) / index.shape[-1]
  total = jnp.zeros((), jnp.float32)
  if probs is not None:
    metrics["switch_loss"] = losses.load_balancing_loss(probs, top1, mask)
    metrics["importance_loss"] = losses.importance_loss(probs, mask)
    metrics["entropy"] = losses.router_entropy(probs, mask)
  if logits is not None:
    metrics["z_loss"] = losses.router_z_loss(logits, mask)
  for name, w in (loss_weights or {}).items():
    if name not in ("switch_loss", "z_loss", "importance_loss"):
      raise ValueError(f"unknown router loss {name!r}; use switch_loss, z_loss or importance_loss")
    if w:
      if name not in metrics:
        raise ValueError(f"router loss {name!r} needs router probabilities/logits, which this routing has not")
      total = total + w * metrics[name]
  metrics["auxiliary_loss"] = total
  return metrics


def _check_logits(logits: jax.Array, k: int | None = None) -> None:
  if logits.ndim != 2:
    raise ValueError(f"router logits must be [N, E], got shape {logits.shape}")
  if k is not None and not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"top-k routing needs 1 <= k <= num_experts, got k={k} with {logits.shape[-1]} experts")
  if not isinstance(logits, jax.core.Tracer):
    if bool(jnp.any(jnp.isnan(logits))):
      raise ValueError("router logits contain NaN; check the layer inputs (NaN/Inf features?)")


def _check_mask(mask, n: int) -> jax.Array | None:
  if mask is None:
    return None
  if mask.shape != (n,):
    raise ValueError(f"routing mask must be [N={n}] bool, got shape {mask.shape}")
  return mask.astype(bool)


def _build(weights, index, probs, logits, mask, loss_weights, metric_weights=None) -> Routing:
  """A Routing with its metrics (computed on ``metric_weights`` when given, e.g. a hard one-hot)."""
  mw = weights if metric_weights is None else metric_weights
  return Routing(
    weights=weights,
    index=index,
    probs=probs,
    logits=logits,
    mask=mask,
    metrics=routing_metrics(probs, logits, mw, index, mask, loss_weights),
    num_experts=(probs if probs is not None else weights).shape[-1],
  )


# Up to this k, top_k takes k argmax passes instead of XLA's TopK (a sort per row).
_ARGMAX_MAX_K = 4


def top_k(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest of probs [N, E] per row, as ``lax.top_k``: (values [N, K], int32 indices [N, K]), descending,
  ties towards the lower index.

  For k <= 4 it takes k argmax passes: the value is picked by a one-hot multiply-add, so the backward pass is
  elementwise instead of a scatter into [N, E]. Values, indices and gradients are bit-identical to ``lax.top_k``'s
  (tested); XLA:CPU's TopK custom call sorts each row and is slower at these sizes (``tools.bench_routing
  --profile`` times the router; docs/benchmarks.md has the numbers)."""
  if k > _ARGMAX_MAX_K:
    values, index = jax.lax.top_k(probs, k)
    return values, index.astype(jnp.int32)
  experts = jnp.arange(probs.shape[-1], dtype=jnp.int32)
  remaining, values, index = probs, [], []
  for _ in range(k):
    i = jnp.argmax(remaining, axis=-1).astype(jnp.int32)
    chosen = experts == i[..., None]
    values.append(jnp.sum(jnp.where(chosen, probs, 0), axis=-1))
    index.append(i)
    remaining = jnp.where(chosen, -jnp.inf, remaining)
  return jnp.stack(values, axis=-1), jnp.stack(index, axis=-1)


def top_k_routing(
  logits: jax.Array,
  k: int,
  renormalize: bool = False,
  mask: jax.Array | None = None,
  loss_weights: dict[str, float] | None = None,
) -> Routing:
  """Top-k softmax routing (Shazeer et al.; EUAR eq. 5): probs = softmax(logits), keep the k largest.

  Args:
    logits: [N, E].
    k: experts per token, 1 <= k <= E (checked at trace time).
    renormalize: divide the kept weights by their sum (Mixtral style); off = the raw softmax scores (EUAR).
    mask: [N] bool; masked tokens get weight 0 and are not dispatched (no capacity, no load, no loss).
    loss_weights: weights of the router losses in ``metrics['auxiliary_loss']`` (default: none).
  Returns:
    Routing with weights/index [N, K]; ties broken towards the lower expert id (as ``lax.top_k``).
  """
  _check_logits(logits, k)
  mask = _check_mask(mask, logits.shape[0])
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  weights, index = top_k(probs, k)
  if renormalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  if mask is not None:
    weights = weights * mask[:, None]
  return _build(weights, index.astype(jnp.int32), probs, logits, mask, loss_weights)


def soft_routing(
  logits: jax.Array, mask: jax.Array | None = None, loss_weights: dict[str, float] | None = None
) -> Routing:
  """Soft routing over all experts (Hi-MoE eq. 2-3): dense weights = softmax(logits) [..., N, E].

  ``logits`` may carry leading gate axes ([T, N, E]: T gates over one bank).
  """
  if logits.ndim < 2:
    raise ValueError(f"router logits must be [..., N, E], got shape {logits.shape}")
  _check_logits(logits.reshape(-1, logits.shape[-1]))
  mask = _check_mask(mask, logits.shape[-2])
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  weights = probs if mask is None else probs * mask[:, None]
  return _build(weights, None, probs, logits, mask, loss_weights)


def weights_routing(
  weights: jax.Array,
  *,
  probs: jax.Array | None = None,
  logits: jax.Array | None = None,
  mask: jax.Array | None = None,
  metrics: dict[str, Any] | None = None,
  loss_weights: dict[str, float] | None = None,
) -> Routing:
  """A dense routing from any weights [..., N, E]: signed (differential attention), attention or task-gate weights.

  ``probs`` is None unless the weights are a distribution the caller vouches for; then the distribution metrics are
  computed on it. ``metrics`` are merged over the computed ones (a router adding its own ``auxiliary_loss``).
  """
  if weights.ndim < 2:
    raise ValueError(f"routing weights must be [..., N, E], got shape {weights.shape}")
  mask = _check_mask(mask, weights.shape[-2])
  if mask is not None:
    weights = weights * mask[:, None].astype(weights.dtype)
  computed = routing_metrics(probs, logits, weights, None, mask, loss_weights)
  if metrics and "auxiliary_loss" in metrics:
    metrics = {**metrics, "auxiliary_loss": computed["auxiliary_loss"] + metrics["auxiliary_loss"]}
  return Routing(
    weights=weights,
    index=None,
    probs=probs,
    logits=logits,
    mask=mask,
    metrics={**computed, **(metrics or {})},
    num_experts=weights.shape[-1],
  )


def top1_routing(
  logits: jax.Array,
  estimator: str = "straight_through",
  mask: jax.Array | None = None,
  loss_weights: dict[str, float] | None = None,
) -> Routing:
  """Hard top-1 choice among G experts or groups as a dense Routing [N, G] with one non-zero weight per row.

  The argmax is not differentiable; ``estimator`` says how the router still learns:
  * ``'straight_through'``: forward weight exactly 1 on the chosen group; backward the gradient of the softmax
    probabilities (w = onehot + p - stop_gradient(p), Bengio et al. 2013). The output is the chosen group's,
    unscaled.
  * ``'switch'``: weight p_top1 on the chosen group (Switch Transformer): the output is scaled by the router's
    confidence and the gradient flows through that probability only.
  """
  _check_logits(logits)
  mask = _check_mask(mask, logits.shape[0])
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  onehot = jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1], dtype=probs.dtype)
  if estimator == "straight_through":
    weights = onehot + probs - jax.lax.stop_gradient(probs)
  elif estimator == "switch":
    weights = onehot * probs
  else:
    raise ValueError(f"top1_routing estimator must be 'straight_through' or 'switch', got {estimator!r}")
  if mask is not None:
    weights = weights * mask[:, None]
  return _build(weights, None, probs, logits, mask, loss_weights, metric_weights=onehot)


def _loss_weights(router) -> dict[str, float]:
  return {"switch_loss": router.switch_weight, "z_loss": router.z_weight, "importance_loss": router.importance_weight}


class SoftmaxRouter(nn.Module):
  """Soft router (Hi-MoE eq. 2): a linear gate and a softmax over all E experts -> a dense Routing.

  With zero input (a missing modality) the logits are the gate's bias, so the weights fall back to softmax(bias).
  Loss weights: ``switch_weight``, ``z_weight``, ``importance_weight`` (default 0: soft banks need no balancing).
  """

  num_experts: int
  switch_weight: float = 0.0
  z_weight: float = 0.0
  importance_weight: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Routing:
    """x: [N, D] -> dense Routing (weights [N, E])."""
    del deterministic
    logits = nn.Dense(self.num_experts, name="gate")(x).astype(jnp.float32)  # softmax in fp32 for bf16 inputs too
    return soft_routing(logits, mask, _loss_weights(self))


class TopKRouter(nn.Module):
  """Top-k softmax router with optional noisy gating.

  Attributes:
    num_experts: E.
    k: experts per token.
    renormalize: renormalise the kept weights to sum to one.
    noisy: add Shazeer-style learned Gaussian noise ``eps * softplus(W_noise x)`` to the logits in training
      (needs the ``'router'`` RNG stream when ``deterministic=False``).
    switch_weight / z_weight / importance_weight: weights of the router losses in ``auxiliary_loss``
      (Switch default 1.0; EUAR eq. 7-9 is the Switch loss / E^2).
  """

  num_experts: int
  k: int = 2
  renormalize: bool = False
  noisy: bool = False
  switch_weight: float = 1.0
  z_weight: float = 0.0
  importance_weight: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True, mask: jax.Array | None = None) -> Routing:
    """x: [N, D] -> Routing with index/weights [N, K]."""
    if not 1 <= self.k <= self.num_experts:
      raise ValueError(f"TopKRouter needs 1 <= k <= num_experts, got k={self.k}, num_experts={self.num_experts}")
    logits = nn.Dense(self.num_experts, name="gate")(x).astype(jnp.float32)  # softmax and top-k in fp32
    if self.noisy:
      scale = nn.softplus(nn.Dense(self.num_experts, name="noise", kernel_init=nn.initializers.zeros)(x))
      if not deterministic:
        logits = logits + scale * jax.random.normal(self.make_rng("router"), logits.shape, logits.dtype)
    return top_k_routing(logits, self.k, self.renormalize, mask, _loss_weights(self))
