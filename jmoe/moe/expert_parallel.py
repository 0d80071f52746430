"""Expert parallelism: experts sharded over a mesh axis, tokens exchanged with ``all_to_all`` (capacity based).

The P devices of axis ``axis`` each own E/P consecutive experts (device i: experts [i*E/P, (i+1)*E/P)) and hold
N/P of the tokens. On every device:

1. route its own n = N/P tokens and pack them into fixed-capacity buffers [E, C, D] exactly as the ``sorted``
   strategy does (:func:`jmoe.moe.dispatch.sorted_buffers`, same (k, n) priority and drop rule, one group of the
   device's n tokens unless ``group_size`` is smaller);
2. ``all_to_all``: buffer rows of expert e go to e's owner -> [P sources, E/P, C, D] received;
3. run only its own E/P experts on [E/P, P*C, D] (one batched call);
4. ``all_to_all`` back and combine with the routing weights (the ``sorted`` gather-combine).

So on N tokens split over P devices the result equals single-device ``sorted`` dispatch with ``group_size=N/P``
and the same capacity settings (dense when nothing is dropped); the tests check outputs, dropped fractions and
gradients. Capacity C = ``capacity_for(N/P, K, E, capacity_factor, capacity)`` per device group; without a
capacity factor C = N/P, which never drops (buffers then hold E*N/P rows per device).

Two ways in (chosen automatically by :func:`expert_parallel_dispatch`):

* the axis is already bound — inside ``jax.pmap``/``jax.shard_map`` over it (the training steps of
  :mod:`jmoe.train` bind ``'batch'``): tokens are the device's own; the stacked expert params are replicated and
  each device slices (and computes with) only its own E/P experts;
* the axis is not bound — under ``jax.jit`` with a mesh (``jax.set_mesh(mesh)``, or ``MoELayer(mesh=...)``):
  the layer wraps steps 1-4 in ``jax.shard_map`` with tokens and expert params sharded ``P(axis)`` on their
  leading axis (store the expert params with that sharding to also shard their memory).

Stochastic experts draw noise and dropout masks with ``fold_in(key, global expert id)`` per RNG stream (``'noise'``,
``'dropout'``), not the streams ``nn.vmap`` uses in the single-device strategies, so stochastic training outputs
differ in their random draws (deterministic outputs match); every expert still gets its own draws.
Padding rows of a data-parallel batch are routed like real tokens and take capacity slots (they come last in
the global batch, so they only matter when a capacity factor makes the layer drop tokens).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe.routing import Routing

STRATEGY = "expert_parallel"
DEFAULT_AXIS = "batch"  # the data-parallel axis of jmoe.train (pmap / shard_map) — experts sharded over it


def axis_is_bound(axis: str) -> bool:
  """True inside ``pmap`` / ``shard_map`` / ``vmap`` that name ``axis``."""
  try:
    jax.lax.axis_size(axis)
    return True
  except NameError:
    return False


def check_divisible(num_experts: int, axis_size: int, axis: str) -> int:
  """Experts per device E/P, or a ValueError naming the fix."""
  if num_experts % axis_size:
    raise ValueError(
      f"expert parallelism: num_experts={num_experts} is not divisible by the size {axis_size} of "
      f"axis {axis!r}; use a multiple of {axis_size} experts or an expert axis whose size divides "
      f"{num_experts}"
    )
  return num_experts // axis_size


def apply_local_experts(template, params, xs: jax.Array, deterministic: bool, rngs, offset) -> Any:
  """Run experts offset .. offset+El-1: params stacked [El, ...], xs [El, n, D] -> pytree of [El, n, ...]."""
  expert = template.clone(parent=None)
  ids = offset + jnp.arange(xs.shape[0])

  def one(p, x, e):
    keys = None if not rngs else {name: jax.random.fold_in(key, e) for name, key in rngs.items()}
    return expert.apply({"params": p}, x, deterministic, rngs=keys)

  return jax.vmap(one)(params, xs, ids)


def exchange(apply_local: Callable[[jax.Array], Any], num_experts: int, axis: str) -> Callable[[jax.Array], Any]:
  """``ExpertFns.batched`` for one device: buffers [E, C', D] -> all_to_all -> own experts -> all_to_all back."""

  def batched(xs):
    e, c, d = xs.shape
    p = jax.lax.axis_size(axis)
    el = check_divisible(e, p, axis)
    recv = jax.lax.all_to_all(xs.reshape(p, el, c, d), axis, 0, 0)  # [P sources, El, C', D]
    ys = apply_local(jnp.swapaxes(recv, 0, 1).reshape(el, p * c, d))  # [El, P*C', ...]

    def back(leaf):
      tail = leaf.shape[2:]
      leaf = jnp.swapaxes(leaf.reshape((el, p, c) + tail), 0, 1)  # [P sources, El, C', ...]
      return jax.lax.all_to_all(leaf, axis, 0, 0).reshape((e, c) + tail)  # [P owners, El, C'] -> [E, C', ...]

    return jax.tree.map(back, ys)

  del num_experts
  return batched


def _local(
  template,
  params_local,
  x,
  routing: Routing,
  axis: str,
  offset,
  deterministic,
  rngs,
  capacity_factor,
  capacity,
  group_size,
):
  fns = dispatch_lib.ExpertFns(
    batched=exchange(
      lambda xs: apply_local_experts(template, params_local, xs, deterministic, rngs, offset), routing.num_experts, axis
    )
  )
  return dispatch_lib.sorted_buffers(fns, x, routing, capacity_factor, capacity, group_size)


def expert_parallel_dispatch(
  template,
  params,
  x: jax.Array,
  routing: Routing,
  *,
  axis: str = DEFAULT_AXIS,
  mesh=None,
  deterministic: bool = True,
  rngs=None,
  capacity_factor: float | None = None,
  capacity: int | None = None,
  group_size: int | None = None,
):
  """Expert-parallel dispatch of tokens x [N, D] with ``routing`` (index/weights [N, K]) -> (y pytree [N, ...], metrics).

  Args:
    template: the (unbound) template expert module (``MoELayer.expert``).
    params: the expert bank's stacked parameters [E, ...] (``variables['params']['experts']['stack']``).
    x, routing: the tokens and their routing — the device's own when ``axis`` is bound, else the global ones.
    axis: the axis the experts are sharded over (E must be divisible by its size).
    mesh: mesh holding ``axis`` when it is not bound (default: the context mesh of ``jax.set_mesh``).
    rngs: {stream: key} for stochastic experts (``'noise'``, ``'dropout'``; None or {} when deterministic).
  metrics: ``dropped_fraction`` (mean over devices when run through ``shard_map``, the device's own when the axis
  is bound, like the other strategies under pmap) and ``capacity`` C per device group.
  """
  e = routing.num_experts
  if x.ndim != 2 or routing.index.shape[0] != x.shape[0]:
    raise ValueError(
      f"expert_parallel_dispatch expects tokens [N, D] and routing [N, K], got {x.shape} / {routing.index.shape}"
    )
  if axis_is_bound(axis):
    el = check_divisible(e, jax.lax.axis_size(axis), axis)
    offset = jax.lax.axis_index(axis) * el
    local = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, offset, el, 0), params)
    return _local(template, local, x, routing, axis, offset, deterministic, rngs, capacity_factor, capacity, group_size)

  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if axis not in mesh.axis_names:
    raise ValueError(
      f"expert parallelism over axis {axis!r}: the axis is not bound (not inside pmap/shard_map "
      f"over it) and the mesh {dict(mesh.shape) or '(none)'} has no such axis; call under "
      f"`with jax.set_mesh(mesh):` or pass MoELayer(mesh=...)"
    )
  p = mesh.shape[axis]
  el = check_divisible(e, p, axis)
  n = x.shape[0]
  if n % p:
    raise ValueError(
      f"expert parallelism over axis {axis!r} of size {p}: the token count N={n} must be divisible "
      f"by {p} (pad the batch; jmoe.train.batches pads to a multiple of the device count)"
    )
  cap = dispatch_lib.capacity_for(
    dispatch_lib.group_size_for(n // p, group_size), routing.k, e, capacity_factor, capacity
  )

  def body(params_l, x_l, w_l, idx_l, mask_l, rngs_l):
    routing_l = Routing(weights=w_l, index=idx_l, probs=None, logits=None, mask=mask_l, metrics={}, num_experts=e)
    offset = jax.lax.axis_index(axis) * el
    y, m = _local(
      template, params_l, x_l, routing_l, axis, offset, deterministic, rngs_l, capacity_factor, capacity, group_size
    )
    return y, jax.lax.pmean(m["dropped_fraction"], axis)

  param_specs = jax.tree.map(lambda _: P(axis), params)
  mask = jnp.ones(x.shape[:1], bool) if routing.mask is None else routing.mask
  specs = (param_specs, P(axis), P(axis), P(axis), P(axis), P())
  args = (params, x, routing.weights, routing.index, mask, dict(rngs or {}))
  fn = body
  y, dropped = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=(P(axis), P()))(*args)
  return y, {"dropped_fraction": dropped, "capacity": cap}
