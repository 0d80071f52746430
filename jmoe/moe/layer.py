"""The routed expert layer: router (policy) + expert bank + dispatch (mechanics)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe import expert_parallel as ep_lib
from jmoe.moe.experts import ExpertBank
from jmoe.moe.routing import Routing


def _raise_if_nan(bad):
  if bool(np.asarray(bad)):
    raise FloatingPointError("MoE layer: router logits contain NaN or Inf (check the layer inputs)")


class MoELayer(nn.Module):
  """x [..., D] -> (y [..., O] (or the experts' pytree), metrics).

  Attributes:
    router: a module mapping x [N, D] to a :class:`Routing` (``TopKRouter``, ``SoftmaxRouter`` or a
      model-specific router).
    expert: template expert module (see :mod:`jmoe.moe.experts`).
    num_experts: E; must match the router's.
    strategy: dispatch strategy name, one of ``dispatch.STRATEGIES``, or ``'expert_parallel'``: experts sharded
      over ``expert_axis``, tokens exchanged with ``all_to_all`` (:mod:`jmoe.moe.expert_parallel`; equals
      ``'sorted'`` with one group per device). Initialisation runs the ``'sorted'`` path (same parameters).
    capacity_factor / capacity / group_size: see :mod:`jmoe.moe.dispatch` (None = no dropping).
    expert_axis: the named axis of the ``'expert_parallel'`` strategy (None = ``'batch'``, the data-parallel axis
      of :mod:`jmoe.train`); bound by pmap/shard_map, or an axis of ``mesh`` / of the ``jax.set_mesh`` mesh.
    mesh: optional mesh for ``'expert_parallel'`` when the axis is not bound (default: the context mesh).
    check_numerics: raise at run time (host callback) when router logits are NaN/Inf inside ``jit``; concrete
      (non-traced) NaN logits always raise immediately.
  Metrics: the router's (``aux_loss``, ``z_loss``, ``importance_loss``, ``entropy``, ``load``) plus
  ``dropped_fraction``; the :class:`Routing` itself is returned under ``metrics['routing']``.
  """

  router: nn.Module
  expert: nn.Module
  num_experts: int
  strategy: str = "sorted"
  capacity_factor: float | None = None
  capacity: int | None = None
  group_size: int | None = None
  check_numerics: bool = False
  expert_axis: str | None = None
  mesh: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True):
    if x.ndim < 2:
      raise ValueError(f"MoELayer expects [..., D] with at least a token axis, got shape {x.shape}")
    lead = x.shape[:-1]
    tokens = x.reshape(-1, x.shape[-1])
    routing: Routing = self.router(tokens, deterministic=deterministic)
    if routing.num_experts != self.num_experts:
      raise ValueError(f"router has {routing.num_experts} experts but the layer has {self.num_experts}")
    if self.check_numerics:
      jax.debug.callback(_raise_if_nan, ~jnp.all(jnp.isfinite(routing.logits)))
    bank = ExpertBank(self.expert, self.num_experts, name="experts")
    fns = dispatch_lib.ExpertFns(
      batched=lambda xs: bank(xs, deterministic),
      ragged=(lambda xs, gs: bank.ragged(xs, gs, deterministic)) if bank.supports_ragged else None,
    )
    if self.strategy == ep_lib.STRATEGY and not self.is_initializing():
      rng = self.make_rng("noise") if not deterministic and self.has_rng("noise") else None
      y, dmetrics = ep_lib.expert_parallel_dispatch(
        self.expert,
        self.variables["params"]["experts"]["stack"],
        tokens,
        routing,
        axis=self.expert_axis or ep_lib.DEFAULT_AXIS,
        mesh=self.mesh,
        deterministic=deterministic,
        rng=rng,
        capacity_factor=self.capacity_factor,
        capacity=self.capacity,
        group_size=self.group_size,
      )
    else:
      strategy = "sorted" if self.strategy == ep_lib.STRATEGY else self.strategy
      y, dmetrics = dispatch_lib.dispatch(
        strategy,
        fns,
        tokens,
        routing,
        capacity_factor=self.capacity_factor,
        capacity=self.capacity,
        group_size=self.group_size,
      )
    y = jax.tree.map(lambda leaf: leaf.reshape(lead + leaf.shape[1:]), y)
    metrics = dict(routing.metrics)
    metrics["dropped_fraction"] = dmetrics["dropped_fraction"]
    metrics["routing"] = routing
    return y, metrics
