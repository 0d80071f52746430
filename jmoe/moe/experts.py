"""Expert banks: E experts with parameters stacked on a leading expert axis, applied with ``vmap``.

An expert is any Flax linen module whose ``__call__(x, deterministic)`` maps tokens x [n, D] to a pytree of
arrays with leading axis n (e.g. [n, O], or a dict {'z': [n, O], 'sigma2': [n]} for Gaussian experts).
:class:`ExpertBank` lifts a *template* expert with ``nn.vmap`` so that its parameters get a leading [E] axis and
``bank(xs)`` runs expert e on xs[e] for xs [E, n, D] — one batched computation, no Python loop — and
``bank.all(x)`` runs every expert on the same tokens x [N, D] (the dense path). The RNG streams ``'noise'`` and
``'dropout'`` are split over experts: every expert draws its own noise and its own dropout mask.

Experts built from dense layers may also define ``ragged_apply(params, x, group_sizes, rng)`` that computes the
same function on tokens sorted by expert with ``jax.lax.ragged_dot`` (the dropless dispatch path).

We use Flax *linen* throughout: its functional ``init``/``apply`` gives plain parameter pytrees that compose
directly with ``jit``, ``pmap``, ``shard_map``, ``vmap`` over populations and orbax, as in vmoe/big_vision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _template_fields(module: nn.Module) -> dict[str, Any]:
  return {
    f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.init and f.name not in ("parent", "name")
  }


def ragged_dense(x, kernel, bias, group_sizes):
  """x [S, D] sorted by expert, kernel [E, D, O], bias [E, O], group_sizes [E] -> [S, O]."""
  y = jax.lax.ragged_dot(x, kernel.astype(x.dtype), group_sizes)
  expert_of_row = jnp.repeat(jnp.arange(kernel.shape[0]), group_sizes, total_repeat_length=x.shape[0])
  return y + bias[expert_of_row].astype(y.dtype)


class MLPExpert(nn.Module):
  """Two-layer MLP expert: Dense(H) -> GELU -> Dense(O). x [n, D] -> [n, O]."""

  hidden: int
  out: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
    del deterministic
    h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="wi")(x))
    return nn.Dense(self.out, dtype=self.dtype, name="wo")(h)

  def ragged_apply(self, params, x, group_sizes, rng=None):
    """Same function on x [S, D] sorted by expert; params stacked [E, ...]; group_sizes [E] -> [S, O]."""
    del rng
    x = x.astype(self.dtype)
    h = nn.gelu(ragged_dense(x, params["wi"]["kernel"], params["wi"]["bias"], group_sizes))
    return ragged_dense(h, params["wo"]["kernel"], params["wo"]["bias"], group_sizes)


class ExpertBank(nn.Module):
  """E copies of a template expert with stacked parameters [E, ...].

  Attributes:
    expert: template expert module (its fields are copied; the template itself holds no parameters).
    num_experts: E.
  """

  expert: nn.Module
  num_experts: int

  def setup(self):
    if self.num_experts < 1:
      raise ValueError(f"ExpertBank needs num_experts >= 1, got {self.num_experts}")
    stacked = nn.vmap(
      type(self.expert),
      variable_axes={"params": 0},
      split_rngs={"params": True, "noise": True, "dropout": True},
      in_axes=(0, None),
      out_axes=0,
      axis_size=self.num_experts,
    )
    self.stack = stacked(**_template_fields(self.expert))

  def __call__(self, xs: jax.Array, deterministic: bool = True):
    """xs [E, n, D] -> pytree of [E, n, ...]: expert e applied to xs[e]."""
    if xs.ndim != 3 or xs.shape[0] != self.num_experts:
      raise ValueError(f"ExpertBank expects [E={self.num_experts}, n, D] inputs, got shape {xs.shape}")
    return self.stack(xs, deterministic)

  def all(self, x: jax.Array, deterministic: bool = True):
    """x [N, D] -> pytree of [E, N, ...]: every expert on every token (the dense path)."""
    if x.ndim != 2:
      raise ValueError(f"ExpertBank.all expects tokens [N, D], got shape {x.shape}")
    return self(jnp.broadcast_to(x[None], (self.num_experts,) + x.shape), deterministic)

  @property
  def supports_ragged(self) -> bool:
    return hasattr(type(self.expert), "ragged_apply")

  def ragged(self, x: jax.Array, group_sizes: jax.Array, deterministic: bool = True):
    """x [S, D] sorted by expert with group_sizes [E] (sum = S) -> pytree of [S, ...]."""
    if not self.supports_ragged:
      raise ValueError(f"expert {type(self.expert).__name__} has no ragged_apply; use the 'sorted' dispatch")
    if self.is_initializing():  # create the stacked parameters through the vmapped path
      self.stack(jnp.zeros((self.num_experts, 1, x.shape[-1]), x.dtype), True)
    params = self.stack.variables["params"]
    rng = None if deterministic else self.make_rng("noise")
    return self.expert.ragged_apply(params, x, group_sizes, rng)
