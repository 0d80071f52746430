"""Routers: the routing *policy* (which experts, with what weight).

Every router maps tokens x [N, D] to a :class:`Routing`: top-K expert indices and combine weights per token,
plus the full probabilities/logits and a metrics dict holding auxiliary losses and statistics. Dispatch
strategies (:mod:`jmoe.moe.dispatch`) consume a ``Routing`` and never look at how it was produced, so
model-specific routers (uncertainty-aware, differential attention, scale-aware, task gates) plug in by
returning the same structure — build it with :func:`top_k_routing` or :func:`soft_routing` from their logits.
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
  """Routing decision for N tokens over E experts, K of them per token.

  Attributes:
    weights: [N, K] float combine weights of the chosen experts.
    index: [N, K] int32 expert ids (distinct within a row; column k is the token's k-th choice).
    probs: [N, E] router probabilities over all experts.
    logits: [N, E] router logits.
    metrics: dict of scalars / [E] arrays: ``aux_loss`` (Switch load balancing, top-1 mask), ``z_loss``,
      ``importance_loss``, ``entropy``, ``load`` ([E] fraction of token-slots per expert).
  """

  weights: jax.Array
  index: jax.Array
  probs: jax.Array
  logits: jax.Array
  metrics: dict[str, Any]

  @property
  def num_experts(self) -> int:
    return self.probs.shape[-1]

  @property
  def k(self) -> int:
    return self.index.shape[-1]


def routing_metrics(probs: jax.Array, logits: jax.Array, index: jax.Array) -> dict[str, jax.Array]:
  """Auxiliary losses and statistics of a routing decision. probs/logits [N, E], index [N, K]."""
  num_experts = probs.shape[-1]
  top1 = jax.nn.one_hot(index[:, 0], num_experts, dtype=jnp.float32)  # [N, E]
  slots = jnp.sum(jax.nn.one_hot(index, num_experts, dtype=jnp.float32), axis=1)  # [N, E] multi-hot
  return {
    "aux_loss": losses.load_balancing_loss(probs, top1),
    "z_loss": losses.router_z_loss(logits),
    "importance_loss": losses.importance_loss(probs),
    "entropy": losses.router_entropy(probs),
    "load": jnp.mean(slots, axis=0) / index.shape[-1],
  }


def _check_logits(logits: jax.Array, k: int | None = None) -> None:
  if logits.ndim != 2:
    raise ValueError(f"router logits must be [N, E], got shape {logits.shape}")
  if k is not None and not 1 <= k <= logits.shape[-1]:
    raise ValueError(f"top-k routing needs 1 <= k <= num_experts, got k={k} with {logits.shape[-1]} experts")
  if not isinstance(logits, jax.core.Tracer):
    if bool(jnp.any(jnp.isnan(logits))):
      raise ValueError("router logits contain NaN; check the layer inputs (NaN/Inf features?)")


def top_k_routing(logits: jax.Array, k: int, renormalize: bool = False) -> Routing:
  """Top-k softmax routing (Shazeer et al.; EUAR eq. 5): probs = softmax(logits), keep the k largest.

  Args:
    logits: [N, E].
    k: experts per token, 1 <= k <= E (checked at trace time).
    renormalize: divide the kept weights by their sum (Mixtral style); off = the raw softmax scores (EUAR).
  Returns:
    Routing with weights/index [N, K]; ties broken towards the lower expert id (``lax.top_k``).
  """
  _check_logits(logits, k)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  weights, index = jax.lax.top_k(probs, k)
  if renormalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  index = index.astype(jnp.int32)
  return Routing(
    weights=weights, index=index, probs=probs, logits=logits, metrics=routing_metrics(probs, logits, index)
  )


def soft_routing(logits: jax.Array) -> Routing:
  """Soft routing over all experts: weights = softmax(logits), K = E, index = arange(E) on every row."""
  _check_logits(logits)
  n, e = logits.shape
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  index = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (n, e))
  return Routing(weights=probs, index=index, probs=probs, logits=logits, metrics=routing_metrics(probs, logits, index))


class SoftmaxRouter(nn.Module):
  """Soft router: a linear gate and a softmax over all E experts (every expert sees every token)."""

  num_experts: int

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> Routing:
    """x: [N, D] -> Routing with K = E."""
    del deterministic
    return soft_routing(nn.Dense(self.num_experts, name="gate")(x))


class TopKRouter(nn.Module):
  """Top-k softmax router with optional noisy gating.

  Attributes:
    num_experts: E.
    k: experts per token.
    renormalize: renormalise the kept weights to sum to one.
    noisy: add Shazeer-style learned Gaussian noise ``eps * softplus(W_noise x)`` to the logits in training
      (needs the ``'router'`` RNG stream when ``deterministic=False``).
  """

  num_experts: int
  k: int = 2
  renormalize: bool = False
  noisy: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> Routing:
    """x: [N, D] -> Routing with index/weights [N, K]."""
    if not 1 <= self.k <= self.num_experts:
      raise ValueError(f"TopKRouter needs 1 <= k <= num_experts, got k={self.k}, num_experts={self.num_experts}")
    logits = nn.Dense(self.num_experts, name="gate")(x)
    if self.noisy:
      scale = nn.softplus(nn.Dense(self.num_experts, name="noise", kernel_init=nn.initializers.zeros)(x))
      if not deterministic:
        logits = logits + scale * jax.random.normal(self.make_rng("router"), logits.shape, logits.dtype)
    return top_k_routing(logits, self.k, self.renormalize)
