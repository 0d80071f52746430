"""The routed expert layer (router policy + expert bank + dispatch mechanics) and the mixture of expert groups.

Four routing kinds run on this one core:

* **top-k** (EUAR): ``MoELayer(TopKRouter(E, k), expert, E)``; sparse routing, any dispatch strategy;
* **soft** (Hi-MoE eq. 2-3): ``MoELayer(SoftmaxRouter(E), expert, E)``; a dense routing, so ``strategy='auto'``
  runs every expert once and combines with weights [N, E];
* **routers on the experts' outputs** (Hi-MoE DA router, eq. 5-6): a router with ``reads_expert_outputs = True``
  is called as ``router(x, ys, ...)`` after the bank ran once (ys [E, N, ...]); its weights may be signed. Routers
  returning [T, N, E] (T task gates, HAEMSA) give T outputs [T, ..., O] from the same single expert pass;
* **groups of different experts** (DR-MoE local/global scales, HAEMSA specific/shared levels): :func:`mixture`
  gates between the outputs of G arbitrary modules with any routing over G (top-1 with a stated gradient
  estimator: :func:`jmoe.moe.routing.top1_routing`, or soft), and returns each sample's choice.

A model may also compute the routing itself (the vmoe ``MlpMoeBlock`` pattern: the router then sees any inputs --
context, both scales, a task id) and pass it as ``MoELayer(...)(x, routing=r)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe import expert_parallel as ep_lib
from jmoe.moe.experts import ExpertBank
from jmoe.moe.routing import Routing

STRATEGIES = ("auto",) + dispatch_lib.STRATEGIES + (ep_lib.STRATEGY,)


def _raise_if_nan(bad):
  if bool(np.asarray(bad)):
    raise FloatingPointError("MoE layer: router logits contain NaN or Inf (check the layer inputs)")


class MoEOut(NamedTuple):
  """What an MoE layer returns: ``y, routing, metrics = layer(x)``.

  y: pytree of [..., O] (or [T, ..., O] for T gates); routing: the :class:`Routing` (for evaluation: per-token
  choices and weights); metrics: the router's ``auxiliary_loss`` and diagnostics plus ``dropped_fraction``.
  """

  y: Any
  routing: Routing
  metrics: dict[str, jax.Array]


def reads_expert_outputs(router) -> bool:
  """True for routers called as ``router(x, expert_outputs, ...)`` (they need the bank's outputs first)."""
  return bool(getattr(router, "reads_expert_outputs", False))


class MoELayer(nn.Module):
  """x [..., D] -> MoEOut(y [..., O] (or the experts' pytree), routing, metrics).

  Attributes:
    router: a module mapping tokens x [N, D] (and ``mask`` [N]) to a :class:`Routing` (``TopKRouter``,
      ``SoftmaxRouter`` or a model router); may be None when every call passes ``routing=``.
    expert: template expert module (see :mod:`jmoe.moe.experts`).
    num_experts: E; must match the router's.
    strategy: ``'auto'`` (dense for dense routings and output-reading routers, else ``'sorted'``), one of
      ``dispatch.STRATEGIES``, or ``'expert_parallel'``: experts sharded over ``expert_axis``, tokens exchanged
      with ``all_to_all`` (:mod:`jmoe.moe.expert_parallel`; equals ``'sorted'`` with one group per device).
      Initialisation runs the ``'sorted'`` path (same parameters).
    capacity_factor / capacity / group_size: see :mod:`jmoe.moe.dispatch` (None = no dropping).
    expert_axis: the named axis of the ``'expert_parallel'`` strategy (None = ``'batch'``, the data-parallel axis
      of :mod:`jmoe.train`); bound by pmap/shard_map, or an axis of ``mesh`` / of the ``jax.set_mesh`` mesh.
    mesh: optional mesh for ``'expert_parallel'`` when the axis is not bound (default: the context mesh).
    check_numerics: raise at run time (host callback) when router logits are NaN/Inf inside ``jit``; concrete
      (non-traced) NaN logits always raise immediately.
    dtype: compute dtype of the dispatch and the experts (None: the inputs' own; e.g. ``jnp.bfloat16``): tokens are
      cast to it and an expert template with a ``dtype`` field is given it; parameters stay as initialised (fp32),
      the router computes its softmax in float32 and routing weights and metrics stay float32.
  """

  router: nn.Module | None
  expert: nn.Module
  num_experts: int
  strategy: str = "auto"
  capacity_factor: float | None = None
  capacity: int | None = None
  group_size: int | None = None
  check_numerics: bool = False
  expert_axis: str | None = None
  mesh: Any = None
  dtype: Any = None

  @nn.compact
  def __call__(
    self, x: jax.Array, deterministic: bool = True, *, mask: jax.Array | None = None, routing: Routing | None = None
  ) -> MoEOut:
    """x [..., D]; mask [...] bool (False = not routed: padding, absent modality); routing: precomputed, with its
    mask inside (then ``mask`` must be None)."""
    if x.ndim < 2:
      raise ValueError(f"MoELayer expects [..., D] with at least a token axis, got shape {x.shape}")
    if self.strategy not in STRATEGIES:
      raise ValueError(f"unknown dispatch strategy {self.strategy!r}; choose one of {STRATEGIES}")
    lead = x.shape[:-1]
    tokens = x.reshape(-1, x.shape[-1])
    if mask is not None:
      if routing is not None:
        raise ValueError("MoELayer: pass the token mask inside the precomputed routing, not beside it")
      if mask.shape != lead:
        raise ValueError(f"MoELayer: mask shape {mask.shape} must equal the token shape {lead}")
      mask = mask.reshape(-1)
    expert = self.expert
    if self.dtype is not None:
      tokens = tokens.astype(self.dtype)
      expert = expert.clone(dtype=self.dtype) if hasattr(expert, "dtype") else expert
    bank = ExpertBank(expert, self.num_experts, name="experts")
    ys = None
    if routing is None:
      if self.router is None:
        raise ValueError("MoELayer has no router: pass routing= or build the layer with a router")
      if reads_expert_outputs(self.router):
        if self.strategy not in ("auto", "dense"):
          raise ValueError(
            f"a router that reads the experts' outputs needs strategy 'auto' or 'dense', not {self.strategy!r}"
          )
        ys = bank.all(tokens, deterministic)
        routing = self.router(tokens, ys, deterministic=deterministic, mask=mask)
      else:
        routing = self.router(tokens, deterministic=deterministic, mask=mask)
    if routing.num_experts != self.num_experts:
      raise ValueError(f"router has {routing.num_experts} experts but the layer has {self.num_experts}")
    if self.check_numerics and routing.logits is not None:
      jax.debug.callback(_raise_if_nan, ~jnp.all(jnp.isfinite(routing.logits)))
    strategy = self.strategy
    if strategy == "auto":
      strategy = "dense" if routing.is_dense else "sorted"
    if ys is not None or routing.is_dense:
      if strategy != "dense":
        raise ValueError(
          f"a dense routing (weights [..., N, E]) runs on the dense path: use strategy 'auto' or 'dense', not {strategy!r}"
        )
      ys = bank.all(tokens, deterministic) if ys is None else ys
      y = dispatch_lib.combine_dense(ys, routing.dense_weights())
      dmetrics = {"dropped_fraction": jnp.zeros((), jnp.float32)}
    elif strategy == ep_lib.STRATEGY and not self.is_initializing():
      y, dmetrics = ep_lib.expert_parallel_dispatch(
        expert,
        self.variables["params"]["experts"]["stack"],
        tokens,
        routing,
        axis=self.expert_axis or ep_lib.DEFAULT_AXIS,
        mesh=self.mesh,
        deterministic=deterministic,
        rngs=_stochastic_rngs(self, deterministic),
        capacity_factor=self.capacity_factor,
        capacity=self.capacity,
        group_size=self.group_size,
      )
    else:
      fns = dispatch_lib.ExpertFns(
        batched=lambda xs: bank(xs, deterministic),
        ragged=(lambda xs, gs: bank.ragged(xs, gs, deterministic)) if bank.supports_ragged else None,
      )
      y, dmetrics = dispatch_lib.dispatch(
        "sorted" if strategy == ep_lib.STRATEGY else strategy,
        fns,
        tokens,
        routing,
        capacity_factor=self.capacity_factor,
        capacity=self.capacity,
        group_size=self.group_size,
      )
    gates = routing.weights.shape[:-2] if routing.is_dense else ()
    y = jax.tree.map(lambda leaf: leaf.reshape(gates + lead + leaf.shape[len(gates) + 1 :]), y)
    return MoEOut(y, routing, {**routing.metrics, "dropped_fraction": dmetrics["dropped_fraction"]})


def _stochastic_rngs(module: nn.Module, deterministic: bool) -> dict[str, jax.Array]:
  """The expert RNG streams the module has, for the expert-parallel path (which applies experts itself)."""
  if deterministic:
    return {}
  return {name: module.make_rng(name) for name in ("noise", "dropout") if module.has_rng(name)}


def mixture(outputs: Sequence[Any], routing: Routing) -> tuple[Any, jax.Array]:
  """Gate between G expert groups: outputs[g] pytree of [N, ...] (same structure), routing over G -> (y, choice).

  ``y[n] = sum_g w[n, g] * outputs[g][n]`` with the routing's dense weights [N, G] (a top-1 routing has one
  non-zero weight per row; its gradient estimator is the routing's: see :func:`jmoe.moe.routing.top1_routing`);
  ``choice`` [N] int32 is each sample's top-1 group (for per-class analysis). Every group is computed (G is small
  and the groups differ in kind: a sequence expert and a vector expert), so this is a mixture, not a dispatch.
  """
  g = len(outputs)
  if g < 1:
    raise ValueError("mixture needs at least one expert group")
  if routing.num_experts != g:
    raise ValueError(f"mixture: the routing is over {routing.num_experts} groups but {g} outputs were given")
  weights = routing.dense_weights()
  if weights.ndim != 2:
    raise ValueError(f"mixture: routing weights must be [N, G], got shape {weights.shape}")
  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)  # [G, N, ...]
  return dispatch_lib.combine_dense(stacked, weights), routing.top1()
