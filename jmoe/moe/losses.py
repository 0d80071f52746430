"""Auxiliary losses of the routing core.

Shapes use the package alphabet: N tokens, E experts, and ``...`` any leading group axes (e.g. T task gates).
All losses return float32 scalars and are differentiable with respect to the router outputs. ``mask`` [N] bool
(optional) leaves tokens out of every mean: padding frames and absent modalities add no load and no loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_last_axis(name: str, x: jax.Array, min_ndim: int = 2) -> None:
  if x.ndim < min_ndim:
    raise ValueError(f"{name}: expected an array of rank >= {min_ndim} [..., N, E], got shape {x.shape}")


def token_mean(x: jax.Array, mask: jax.Array | None = None, axis: int = -2) -> jax.Array:
  """Mean of x over its token axis ``axis`` (N), only over tokens where ``mask`` [N] is True."""
  if mask is None:
    return jnp.mean(x, axis=axis)
  axis = axis % x.ndim
  w = mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - axis - 1))
  return jnp.sum(x * w, axis=axis) / jnp.maximum(jnp.sum(mask.astype(x.dtype)), 1.0)


def load_balancing_loss(router_probs: jax.Array, expert_mask: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Switch/GShard load-balancing loss.

  ``E * sum_e mean_N(expert_mask[..., e]) * mean_N(router_probs[..., e])``, averaged over leading group axes.
  It equals 1 when routing is perfectly uniform and E when every token goes to one expert with probability 1.

  Args:
    router_probs: [..., N, E] router probabilities (softmax of the logits).
    expert_mask: [..., N, E] one-hot (top-1) or multi-hot (top-k) dispatch mask; not differentiated.
  Returns:
    scalar.
  """
  _check_last_axis("load_balancing_loss(router_probs)", router_probs)
  if expert_mask.shape != router_probs.shape:
    raise ValueError(
      f"load_balancing_loss: expert_mask shape {expert_mask.shape} != router_probs shape {router_probs.shape}"
    )
  num_experts = router_probs.shape[-1]
  density = token_mean(jax.lax.stop_gradient(expert_mask).astype(jnp.float32), mask)  # [..., E]
  density_proxy = token_mean(router_probs.astype(jnp.float32), mask)  # [..., E]
  return jnp.mean(jnp.sum(density * density_proxy, axis=-1)) * num_experts


def router_z_loss(router_logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """ST-MoE router z-loss: mean over all tokens of ``logsumexp(logits)**2``.

  Args:
    router_logits: [..., N, E].
  Returns:
    scalar.
  """
  _check_last_axis("router_z_loss", router_logits, min_ndim=1)
  z = jnp.square(jax.nn.logsumexp(router_logits.astype(jnp.float32), axis=-1))
  return jnp.mean(z) if mask is None else jnp.mean(token_mean(z, mask, axis=-1))


def importance_loss(router_probs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Importance loss (Shazeer et al. 2017): squared coefficient of variation of expert importance.

  importance_e = sum over all tokens (and leading axes) of router_probs[..., e];
  loss = (std(importance) / mean(importance))**2 with the population std (ddof=0).

  Args:
    router_probs: [..., N, E].
  Returns:
    scalar.
  """
  _check_last_axis("importance_loss", router_probs, min_ndim=1)
  p = router_probs.astype(jnp.float32)
  if mask is not None:
    p = p * mask.astype(jnp.float32)[:, None]
  importance = jnp.sum(p.reshape(-1, router_probs.shape[-1]), axis=0)
  mean = jnp.mean(importance)
  return jnp.var(importance) / jnp.maximum(jnp.square(mean), 1e-12)


def router_entropy(router_probs: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean over tokens of the entropy (nats) of each token's routing distribution. [..., N, E] -> scalar."""
  p = router_probs.astype(jnp.float32)
  h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return jnp.mean(h) if mask is None else jnp.mean(token_mean(h, mask, axis=-1))


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL[N(mu, exp(logvar)) || N(0, I)] per element: -1/2 (1 + logvar - mu^2 - exp(logvar)).  [...] -> [...]."""
  return -0.5 * (1.0 + logvar - jnp.square(mu) - jnp.exp(logvar))
