"""Model parts shared by the four papers: encoders, cross-attention and the model-specific routers.

The routers here are *policies* on the shared routing core (:mod:`jmoe.moe`): each returns a
:class:`~jmoe.moe.routing.Routing` that :class:`~jmoe.moe.layer.MoELayer` or :func:`~jmoe.moe.layer.mixture`
executes.

* :class:`DARouter` (Hi-MoE eq. 5-6) reads the experts' outputs: beta_l = softmax_l phi(z, F_l(z)) with
  phi(z, F_l(z)) = <W_q z, W_k F_l(z)> / sqrt(d_k), a scaled dot product between a query from the fused input z and
  a key from expert l's output. ``differential=True`` is the differential-attention variant: two such softmax maps
  subtracted, beta = a_1 - lambda a_2, with lambda = lambda_init + a learned scalar (signed weights; the routing then
  has no probabilities and reports no distribution metrics).
* :class:`ScaleRouter` (DR-MoE) sees a summary of every scale (local frames pooled, global vector) and picks one
  expert group per sample: hard top-1 with the straight-through estimator (default), the Switch estimator, or soft.
* :class:`TaskGates` (HAEMSA, MMoE-style): T softmax gates over one expert bank -> weights [T, N, E], one expert
  pass for all tasks.

Axis alphabet (:mod:`jmoe`): B batch, T time steps, N tokens, E experts, G expert groups, D/W widths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmoe.moe.routing import Routing, soft_routing, top1_routing, weights_routing

DTYPES = ("float32", "bfloat16")


def _cast_floats(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def in_dtype(module: nn.Module, forward, batch, deterministic: bool):
  """``forward(module, batch, deterministic)`` computed in ``module.dtype`` ('float32' | 'bfloat16'): parameters
  stay float32 (initialisation runs in float32; under apply each parameter is cast on its way in, so gradients
  reach the float32 parameters), float inputs are cast, and every float output (predictions, losses, metrics) is
  cast back to float32."""
  if module.dtype not in DTYPES:
    raise ValueError(f"config.model.dtype={module.dtype!r} is invalid: choose one of {DTYPES}")
  if module.dtype == "float32" or module.is_initializing():
    return forward(module, batch, deterministic)
  dt = jnp.dtype(module.dtype)
  mapped = nn.map_variables(forward, "params", trans_in_fn=lambda v: _cast_floats(v, dt))
  return _cast_floats(mapped(module, _cast_floats(batch, dt), deterministic), jnp.float32)


def masked_mean(h: jax.Array, mask: jax.Array | None) -> jax.Array:
  """[B, T, W] with mask [B, T] (True = real step) -> [B, W]; an all-padding row gives zeros."""
  m = jnp.ones(h.shape[:2], h.dtype) if mask is None else mask.astype(h.dtype)
  return jnp.sum(h * m[..., None], axis=1) / jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)


class ModalityEncoder(nn.Module):
  """[B, T, D] with mask [B, T] (masked mean over time) or [B, D] -> [B, W]: Dense(W) + GELU, dropout, LayerNorm."""

  width: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    h = nn.gelu(nn.Dense(self.width, name="proj")(x))
    if h.ndim == 3:
      h = masked_mean(h, mask)
    elif h.ndim != 2:
      raise ValueError(f"ModalityEncoder expects [B, T, D] or [B, D] features, got shape {x.shape}")
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.LayerNorm(name="norm")(h)


class SequenceEncoder(nn.Module):
  """Per-step encoder: [B, T, D] (mask [B, T]) -> [B, T, W]; [B, D] is read as T = 1.

  Dense(W) + GELU, then ``layers`` pre-norm self-attention blocks that attend to real steps only. Padding steps
  are set to zero on output.
  """

  width: int
  layers: int = 1
  heads: int = 4
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, mask=None, deterministic: bool = True):
    if x.ndim == 2:
      x = x[:, None, :]
      mask = None if mask is None else mask.reshape(-1, 1)
    if x.ndim != 3:
      raise ValueError(f"SequenceEncoder expects [B, T, D] or [B, D] features, got shape {x.shape}")
    mask = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)
    h = nn.gelu(nn.Dense(self.width, name="proj")(x))
    attn_mask = nn.make_attention_mask(mask, mask)  # [B, 1, T, T]
    for i in range(self.layers):
      a = nn.MultiHeadDotProductAttention(self.heads, name=f"attn_{i}", deterministic=True)(
        nn.LayerNorm(name=f"norm_{i}")(h), mask=attn_mask
      )
      h = h + nn.Dropout(self.dropout)(a, deterministic=deterministic)
    return nn.LayerNorm(name="out_norm")(h) * mask[..., None]


class CrossAttention(nn.Module):
  """Queries [B, Tq, W] attend to keys/values [B, Tk, W'] (key mask [B, Tk]) -> [B, Tq, W]; residual + LayerNorm."""

  heads: int = 4
  dropout: float = 0.0

  @nn.compact
  def __call__(self, query, context, context_mask=None, deterministic: bool = True):
    q_mask = jnp.ones(query.shape[:2], bool)
    k_mask = jnp.ones(context.shape[:2], bool) if context_mask is None else context_mask.astype(bool)
    a = nn.MultiHeadDotProductAttention(self.heads, qkv_features=query.shape[-1], deterministic=True, name="attn")(
      query, context, mask=nn.make_attention_mask(q_mask, k_mask)
    )
    # A query whose context is all padding attends to nothing: its update is zero.
    a = a * jnp.any(k_mask, axis=-1)[:, None, None].astype(a.dtype)
    return nn.LayerNorm(name="norm")(query + nn.Dropout(self.dropout)(a, deterministic=deterministic))


class BidirectionalCrossAttention(nn.Module):
  """a <- b and b <- a cross-attention (DR-MoE fusion): ([B, Ta, W], [B, Tb, W]) -> the two updated sequences."""

  heads: int = 4
  dropout: float = 0.0

  @nn.compact
  def __call__(self, a, b, a_mask=None, b_mask=None, deterministic: bool = True):
    a2 = CrossAttention(self.heads, self.dropout, name="a_from_b")(a, b, b_mask, deterministic)
    b2 = CrossAttention(self.heads, self.dropout, name="b_from_a")(b, a, a_mask, deterministic)
    return a2, b2


class DARouter(nn.Module):
  """Hi-MoE's DA router (eq. 5-6): routes on the experts' outputs. ``router(x [N, D], ys [E, N, O])`` -> dense Routing.

  Attributes:
    num_experts: E (L in the paper).
    key_dim: d_k of the query/key projections.
    differential: two attention maps subtracted (signed weights), else one softmax map (a distribution).
    lambda_init: the differential variant's initial lambda.
  """

  num_experts: int
  key_dim: int = 32
  differential: bool = False
  lambda_init: float = 0.5
  reads_expert_outputs = True

  def _scores(self, x, ys, name: str) -> jax.Array:
    q = nn.Dense(self.key_dim, name=f"{name}_q")(x)  # [N, dk]
    k = nn.Dense(self.key_dim, name=f"{name}_k")(ys)  # [E, N, dk]
    return jnp.einsum("nd,end->ne", q, k) / math.sqrt(self.key_dim)  # [N, E]

  @nn.compact
  def __call__(self, x: jax.Array, ys: jax.Array, deterministic: bool = True, mask=None) -> Routing:
    del deterministic
    if not isinstance(ys, jax.Array) or ys.ndim != 3 or ys.shape[0] != self.num_experts:
      raise ValueError(f"DARouter reads expert outputs [E={self.num_experts}, N, O], got {getattr(ys, 'shape', ys)}")
    s1 = self._scores(x, ys, "map1")
    if not self.differential:
      return soft_routing(s1, mask)
    a1 = jax.nn.softmax(s1, axis=-1)
    a2 = jax.nn.softmax(self._scores(x, ys, "map2"), axis=-1)
    lam = self.lambda_init + self.param("lambda", nn.initializers.zeros, ())
    return weights_routing(a1 - lam * a2, logits=None, mask=mask, metrics={"lambda": lam})


class ScaleRouter(nn.Module):
  """DR-MoE's scale-aware router: summaries of G scales ([N, D_g] each) -> Routing over the G expert groups.

  Attributes:
    num_groups: G (2: local, global).
    estimator: ``'straight_through'`` (hard top-1 forward, softmax gradient backward; the default),
      ``'switch'`` (hard top-1 scaled by its probability) or ``'soft'`` (softmax mixture in training and
      evaluation).
    hidden: width of the router's hidden layer.
    temperature: the logits are divided by it (< 1 sharper, > 1 softer routing probabilities).
    gumbel: in training, Gumbel(0, 1) noise is added to the scaled logits before the choice (the straight-through
      Gumbel-softmax estimator; the noise explores both groups, which a collapsed router otherwise never does);
      evaluation is noise-free.
  """

  num_groups: int = 2
  estimator: str = "straight_through"
  hidden: int = 64
  temperature: float = 1.0
  gumbel: bool = False

  @nn.compact
  def __call__(self, summaries: Sequence[jax.Array], deterministic: bool = True, mask=None) -> Routing:
    if len(summaries) != self.num_groups:
      raise ValueError(f"ScaleRouter expects {self.num_groups} scale summaries, got {len(summaries)}")
    h = nn.gelu(nn.Dense(self.hidden, name="hidden")(jnp.concatenate(list(summaries), axis=-1)))
    logits = nn.Dense(self.num_groups, name="gate")(h) / self.temperature
    if self.gumbel and not deterministic:
      logits = logits + jax.random.gumbel(self.make_rng("dropout"), logits.shape, logits.dtype)
    if self.estimator == "soft":
      return soft_routing(logits, mask)
    return top1_routing(logits, self.estimator, mask)


class TaskGates(nn.Module):
  """HAEMSA task gates: T softmax gates over one bank of E experts. x [N, D] -> dense Routing [T, N, E]."""

  num_tasks: int
  num_experts: int

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True, mask=None) -> Routing:
    del deterministic
    logits = jnp.stack([nn.Dense(self.num_experts, name=f"gate_{t}")(x) for t in range(self.num_tasks)])
    return soft_routing(logits, mask)
