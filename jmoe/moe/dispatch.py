"""Dispatch strategies: the routing *mechanics* (how tokens reach their experts and come back).

All strategies take tokens x [N, D], a :class:`~jmoe.moe.routing.Routing` (index/weights [N, K]) and an expert
function, and return ``(y, metrics)`` with y a pytree of [N, ...] equal to
``sum_k weights[n, k] * expert_{index[n, k]}(x[n])`` over the *kept* token-slots. Shapes are static under
``jit``: capacities are Python ints computed from the config at trace time.

Token mask: tokens with ``routing.mask[n] == False`` (padding frames, absent modalities) output zero and take no
capacity: their slots are given the sentinel expert id E, which sorts after every real expert and owns no buffer
rows; ``dropped_fraction`` counts routed (unmasked) slots only.

Dense routings (``routing.index is None``, weights [..., N, E]) do not go through these strategies: every expert
runs once on every token and :func:`combine_dense` mixes the outputs (soft routing, signed/attention weights, T
task gates over one expert pass).

Strategies (chosen by name with :func:`dispatch`):

* ``dense``   every expert on every token, masked combine. Reference; never drops; fine for E <= 4.
* ``einsum``  GShard/Switch one-hot dispatch/combine tensors [G, S, E, C] per token group.
* ``sorted``  token-slots sorted by expert into fixed-capacity buffers [E, G*C, D] (a gather), one batched
              expert computation, gather-combine. No one-hot tensor, cost ~ N*K, not N*E*C.
* ``ragged``  dropless: sort by expert, ``jax.lax.ragged_dot`` over variable-size groups (GPU path;
              correct but dense-masked on CPU XLA). Experts must define ``ragged_apply``.

Token dropping rule (``einsum`` and ``sorted``): tokens are split into G contiguous groups of S tokens. Inside
a group, the token-slot (n, k) — token n's k-th choice — has priority (k, n): every first choice comes before any
second choice, earlier tokens before later ones. Each expert accepts the first C slots assigned to it in that
order; later ones are dropped (contribute zero) and counted in ``metrics['dropped_fraction']``.
Capacity C = ``capacity`` if given, else ceil(capacity_factor * S * K / E), else (no factor) S — which never
drops because a token picks an expert at most once.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jmoe.moe.routing import Routing

STRATEGIES = ("dense", "einsum", "sorted", "ragged")


class ExpertFns(NamedTuple):
  """How a dispatch strategy calls the experts.

  batched: xs [E, n, D] -> pytree of [E, n, ...] (expert e on xs[e]).
  ragged:  (x [S, D] sorted by expert, group_sizes [E]) -> pytree of [S, ...]; None if unsupported.
  """

  batched: Callable[[jax.Array], Any]
  ragged: Callable[[jax.Array, jax.Array], Any] | None = None


def group_size_for(num_tokens: int, group_size: int | None) -> int:
  """Largest divisor of N that is <= group_size (N itself when group_size is None)."""
  if group_size is None or group_size >= num_tokens:
    return num_tokens
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  return max(d for d in range(1, group_size + 1) if num_tokens % d == 0)


def capacity_for(
  tokens_per_group: int, k: int, num_experts: int, capacity_factor: float | None = None, capacity: int | None = None
) -> int:
  """Slots per expert and group (a Python int, static under jit). See the module docstring."""
  if capacity is not None:
    if capacity <= 0:
      raise ValueError(f"capacity must be a positive int, got {capacity}")
    return min(int(capacity), tokens_per_group)
  if capacity_factor is None:
    return tokens_per_group
  if not capacity_factor > 0:
    raise ValueError(f"capacity_factor must be > 0, got {capacity_factor}")
  return max(1, min(tokens_per_group, math.ceil(capacity_factor * tokens_per_group * k / num_experts)))


def _slot_positions(index: jax.Array, num_experts: int):
  """Position of each token-slot in its expert's queue under the (k, n) priority rule.

  Args:
    index: [G, S, K] expert ids.
  Returns:
    expert [G, K*S] (slot s = k*S + n), order [G, K*S] (slots sorted by expert, stable), counts [G, E+1],
    starts [G, E+1] (offset of each expert's run in ``order``; bin E = masked slots), position [G, K*S].
  """
  g, s, k = index.shape
  return _slot_positions_of(jnp.swapaxes(index, 1, 2).reshape(g, k * s), num_experts)


def _slot_positions_of(expert: jax.Array, num_experts: int):
  """:func:`_slot_positions` for expert ids already in slot order [G, K*S]."""
  ks = expert.shape[1]
  order = jnp.argsort(expert, axis=-1, stable=True)
  # One extra bin for the masked-token sentinel E (it sorts last); callers use counts[:, :E].
  counts = jax.vmap(lambda e: jnp.bincount(e, length=num_experts + 1))(expert)
  starts = jnp.cumsum(counts, axis=-1) - counts
  sorted_expert = jnp.take_along_axis(expert, order, axis=-1)
  pos_sorted = jnp.arange(ks)[None, :] - jnp.take_along_axis(starts, sorted_expert, axis=-1)
  position = jax.vmap(lambda o, p: jnp.zeros_like(p).at[o].set(p))(order, pos_sorted)
  return expert, order, counts, starts, position


class SortedPlan(NamedTuple):
  """Where every token-slot goes in the sorted capacity buffers (integer bookkeeping only, no gradients).

  Buffer rows r in [0, R), R = E*G*C, are ordered [E, G, C]: row (e, g, c) holds the c-th slot of expert e in
  group g under the (k, n) priority rule, if that slot exists.
  token/valid/kslot [R]: the row's global token id, whether the row holds a slot, and which of the token's K
    choices it is (token and kslot are 0 in rows without a slot).
  row/keep [K, N]: the buffer row of token-slot (n, k) and whether the capacity rule keeps it (dropped slots point
    at some valid row; callers give them weight 0).
  groups G and capacity C: Python ints.
  """

  token: jax.Array
  valid: jax.Array
  kslot: jax.Array
  row: jax.Array
  keep: jax.Array
  groups: int
  capacity: int


# Up to this many experts the queue positions come from a running count over a one-hot [G, K*S, E+1]; above it,
# from a stable sort by expert (the one-hot count grows with E, the sort does not).
_ONE_HOT_MAX_EXPERTS = 16


def _queue_positions(expert: jax.Array, num_experts: int) -> jax.Array:
  """Position of each slot in its expert's queue: expert [G, K*S] (slots in priority order; ids <= E, E = the
  masked sentinel) -> position [G, K*S], the number of earlier slots of the same expert."""
  if num_experts <= _ONE_HOT_MAX_EXPERTS:
    one_hot = (expert[..., None] == jnp.arange(num_experts + 1, dtype=expert.dtype)).astype(jnp.int32)
    return jnp.sum((jnp.cumsum(one_hot, axis=1) - 1) * one_hot, axis=-1)
  return _slot_positions_of(expert, num_experts)[-1]


def sorted_plan(index: jax.Array, num_experts: int, capacity: int, group_size: int | None) -> SortedPlan:
  """The sorted dispatch's slot <-> buffer-row maps for index [N, K] (see :class:`SortedPlan`)."""
  n, k = index.shape
  e, c = num_experts, capacity
  s = group_size_for(n, group_size)
  g = n // s
  r = e * g * c
  expert = jnp.swapaxes(index.reshape(g, s, k), 1, 2).reshape(g, k * s)  # [G, K*S], slot j = k*S + n
  position = _queue_positions(expert, e)
  routed = expert < e  # False for masked tokens' slots (sentinel expert E)
  kept = routed & (position < c)
  group = jnp.arange(g, dtype=jnp.int32)[:, None]
  row = expert * (g * c) + group * c + jnp.minimum(position, c - 1)  # [G, K*S]
  # Row -> slot maps by one scatter of (token, k, 1) per kept slot: the maps come out materialised, so the row
  # gathers that use them load indices instead of re-deriving them per gathered element.
  slot = jnp.arange(k * s, dtype=jnp.int32)
  info = jnp.stack(jnp.broadcast_arrays(slot % s + group * s, slot // s, jnp.ones_like(expert)), axis=-1)
  by_row = jnp.zeros((r, 3), jnp.int32).at[jnp.where(kept, row, r).reshape(-1)].set(info.reshape(-1, 3), mode="drop")
  to_kn = lambda a: jnp.swapaxes(a.reshape(g, k, s), 0, 1).reshape(k, n)  # [G, K*S] -> [K, N]
  return SortedPlan(
    token=by_row[:, 0],
    valid=by_row[:, 2] > 0,
    kslot=by_row[:, 1],
    row=to_kn(jnp.where(routed, row, 0)),
    keep=to_kn(kept),
    groups=g,
    capacity=c,
  )


def kept_slots(
  index: jax.Array, num_experts: int, capacity: int, group_size: int | None, mask: jax.Array | None = None
) -> jax.Array:
  """Boolean [N, K]: which token-slots the capacity rule keeps (documented in the module docstring)."""
  return sorted_plan(routed_index(index, mask, num_experts), num_experts, capacity, group_size).keep.T


def routed_index(index: jax.Array, mask: jax.Array | None, num_experts: int) -> jax.Array:
  """index [N, K] with the slots of masked tokens (mask [N] False) sent to the sentinel expert E."""
  return index if mask is None else jnp.where(mask[:, None], index, num_experts).astype(index.dtype)


def _dropped_fraction(keep: jax.Array, routed: jax.Array | None) -> jax.Array:
  """1 - kept / routed token-slots; ``routed`` (broadcastable to keep; None = every slot) marks unmasked tokens."""
  if routed is None:
    return 1.0 - jnp.mean(keep.astype(jnp.float32))
  routed = jnp.broadcast_to(routed, keep.shape).astype(jnp.float32)
  return 1.0 - jnp.sum(keep.astype(jnp.float32) * routed) / jnp.maximum(jnp.sum(routed), 1.0)


def _leaf_combine(spec: str, w: jax.Array, leaf: jax.Array, lead: int) -> jax.Array:
  """einsum over a leaf with arbitrary trailing dims: flatten them to one axis and restore."""
  tail = leaf.shape[lead:]
  flat = leaf.reshape(leaf.shape[:lead] + (-1,))
  out = jnp.einsum(spec, w.astype(flat.dtype), flat)
  return out.reshape(out.shape[:-1] + tail)


def _add_over_k(parts: list[jax.Array]) -> jax.Array:
  """parts[0] + parts[1] + ... (the K slot terms of a token)."""
  out = parts[0]
  for part in parts[1:]:
    out = out + part
  return out


def _sum_k(x: jax.Array, axis: int) -> jax.Array:
  """Sum over the small K axis as K-1 adds of slices: XLA:CPU reduces a small axis of a large array several
  times slower than the equivalent elementwise adds (measured by ``tools.bench_routing --profile``)."""
  return _add_over_k([jax.lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])])


def combine_dense(ys, weights: jax.Array):
  """Mix every expert's outputs: ys pytree of [E, N, ...], weights [..., N, E] -> pytree of [..., N, ...].

  ``y[..., n] = sum_e weights[..., n, e] * ys[e, n]``; leading weight axes are gates (T task gates over one expert
  pass give [T, N, ...]). Weights may be signed.
  """
  lead = "abcdfghij"[: weights.ndim - 2]
  spec = f"{lead}ne,eno->{lead}no"
  return jax.tree.map(lambda leaf: _leaf_combine(spec, weights, leaf, 2), ys)


def dense(experts: ExpertFns, x: jax.Array, routing: Routing):
  """Every expert on every token; y[n] = sum_e w[n, e] * expert_e(x[n]) with w [N, E] from the routing."""
  ys = experts.batched(jnp.broadcast_to(x[None], (routing.num_experts,) + x.shape))  # [E, N, ...]
  return combine_dense(ys, routing.dense_weights()), {
    "dropped_fraction": jnp.zeros((), jnp.float32),
    "capacity": x.shape[0],
  }


def einsum(
  experts: ExpertFns,
  x: jax.Array,
  routing: Routing,
  capacity_factor: float | None = None,
  capacity: int | None = None,
  group_size: int | None = 512,
):
  """GShard one-hot dispatch/combine in groups of S tokens; dispatch tensor [G, S, E, C]."""
  n, d = x.shape
  k, e = routing.k, routing.num_experts
  s = group_size_for(n, group_size)
  g = n // s
  c = capacity_for(s, k, e, capacity_factor, capacity)
  index = routed_index(routing.index, routing.mask, e).reshape(g, s, k)  # masked slots: one_hot(E) = 0
  w = routing.weights.reshape(g, s, k)
  expert_1h = jax.nn.one_hot(jnp.swapaxes(index, 1, 2).reshape(g, k * s), e, dtype=jnp.int32)  # [G, KS, E]
  position = jnp.sum((jnp.cumsum(expert_1h, axis=1) - 1) * expert_1h, axis=-1)  # [G, KS]
  keep = (position < c).reshape(g, k, s)
  pos_1h = jax.nn.one_hot(jnp.where(keep, position.reshape(g, k, s), c), c, dtype=x.dtype)  # [G, K, S, C]
  exp_1h = expert_1h.reshape(g, k, s, e).astype(x.dtype)
  dispatch_t = jnp.einsum("gkse,gksc->gsec", exp_1h, pos_1h)  # [G, S, E, C]
  combine_t = jnp.einsum("gkse,gksc,gsk->gsec", exp_1h, pos_1h, w.astype(x.dtype))
  xs = jnp.einsum("gsec,gsd->egcd", dispatch_t, x.reshape(g, s, d)).reshape(e, g * c, d)
  ys = experts.batched(xs)  # [E, G*C, ...]
  y = jax.tree.map(
    lambda leaf: _leaf_combine("gsec,egco->gso", combine_t, leaf.reshape((e, g, c) + leaf.shape[2:]), 3).reshape(
      (n,) + leaf.shape[2:]
    ),
    ys,
  )
  kept = keep & (jnp.swapaxes(index, 1, 2) < e)  # [G, K, S]
  mask = None if routing.mask is None else routing.mask.reshape(g, 1, s)
  return y, {"dropped_fraction": _dropped_fraction(kept, mask), "capacity": c}


def _take_rows(a: jax.Array, idx: jax.Array) -> jax.Array:
  """a[idx] for indices known to be in range (no clamping code)."""
  return a.at[idx].get(mode="promise_in_bounds")


# The sorted dispatch moves rows with two gathers: token -> buffer row (dispatch) and buffer row -> token-slot
# (combine). Every kept token-slot owns exactly one buffer row, so both maps are permutations plus masking and
# their transposes are the *inverse gathers*. Autodiff would transpose a gather into a scatter-add, which XLA:CPU
# runs several times slower than a gather (``tools.bench_routing --profile`` times both forms), so both get custom
# VJPs whose backward passes are gathers too.
# Consequence: the sorted (and expert_parallel) dispatch supports reverse-mode autodiff (grad/vjp, any order of
# jit/vmap/pmap/shard_map) but not forward mode (jvp/jacfwd); use 'dense' or 'einsum' for those.


@jax.custom_vjp
def _dispatch_rows(x, token, valid, row, keep):
  """xs [R, D]: xs[r] = x[token[r]] if valid[r] else 0. x [N, D]; token/valid [R]; row/keep [K, N] (slot -> row)."""
  return jnp.where(valid[:, None], _take_rows(x, token), 0)


def _dispatch_rows_fwd(x, token, valid, row, keep):
  return _dispatch_rows(x, token, valid, row, keep), (token, valid, row, keep)


def _dispatch_rows_bwd(res, dxs):
  token, valid, row, keep = res
  dx = _add_over_k([jnp.where(keep[j][:, None], _take_rows(dxs, row[j]), 0) for j in range(row.shape[0])])
  return dx, None, None, None, None


_dispatch_rows.defvjp(_dispatch_rows_fwd, _dispatch_rows_bwd)


@jax.custom_vjp
def _combine_rows(ys, wk, row, token, kslot, valid):
  """y [N, F] = sum_k wk[k, n] * ys[row[k, n]]. ys [R, F]; wk/row [K, N]; token/kslot/valid [R] (row -> slot)."""
  return _add_over_k([_take_rows(ys, row[j]) * wk[j][:, None].astype(ys.dtype) for j in range(row.shape[0])])


def _combine_rows_fwd(ys, wk, row, token, kslot, valid):
  return _combine_rows(ys, wk, row, token, kslot, valid), (ys, wk, row, token, kslot, valid)


def _combine_rows_bwd(res, dy):
  ys, wk, row, token, kslot, valid = res
  w_of_row = wk[kslot, token]  # [R]: the weight of the slot that owns buffer row r
  dys = jnp.where(valid[:, None], _take_rows(dy, token) * w_of_row[:, None].astype(dy.dtype), 0).astype(ys.dtype)
  # One [N, F] reduction per k: XLA:CPU reduces the stacked [K, N, F] several times slower.
  dwk = jnp.stack(
    [jnp.sum(_take_rows(ys, row[j]).astype(jnp.float32) * dy.astype(jnp.float32), axis=-1) for j in range(row.shape[0])]
  ).astype(wk.dtype)  # [K, N]
  return dys, dwk, None, None, None, None


_combine_rows.defvjp(_combine_rows_fwd, _combine_rows_bwd)


def sorted_buffers(
  experts: ExpertFns,
  x: jax.Array,
  routing: Routing,
  capacity_factor: float | None = None,
  capacity: int | None = None,
  group_size: int | None = None,
):
  """Sort token-slots by expert into fixed-capacity buffers [E, G*C, D], one batched expert call, gather back.

  Both data movements are gathers in the forward *and* the backward pass (custom VJPs above).
  """
  n, d = x.shape
  k, e = routing.k, routing.num_experts
  c = capacity_for(group_size_for(n, group_size), k, e, capacity_factor, capacity)
  pl = sorted_plan(routed_index(routing.index, routing.mask, e), e, c, group_size)
  g = pl.groups
  wk = jnp.swapaxes(routing.weights, 0, 1) * pl.keep  # [K, N]; dropped slots weigh 0
  xs = _dispatch_rows(x, pl.token, pl.valid, pl.row, pl.keep).reshape(e, g * c, d)
  ys = experts.batched(xs)  # pytree of [E, G*C, ...]

  def combine(leaf):
    flat = leaf.reshape(e * g * c, -1)
    return _combine_rows(flat, wk, pl.row, pl.token, pl.kslot, pl.valid).reshape((n,) + leaf.shape[2:])

  return jax.tree.map(combine, ys), {
    "dropped_fraction": _dropped_fraction(pl.keep, None if routing.mask is None else routing.mask[None, :]),
    "capacity": c,
  }


def ragged(experts: ExpertFns, x: jax.Array, routing: Routing):
  """Dropless: sort token-slots by expert and run ``ragged_apply`` (``jax.lax.ragged_dot``) on the groups."""
  if experts.ragged is None:
    raise ValueError("the 'ragged' dispatch needs experts with ragged_apply (e.g. MLPExpert); use 'sorted'")
  n, _ = x.shape
  k, e = routing.k, routing.num_experts
  index = routed_index(routing.index, routing.mask, e)
  expert, order, counts, _, position = _slot_positions(index.reshape(1, n, k), e)
  token = order[0] % n
  ys = experts.ragged(x[token], counts[0, :e])  # [KS, ...] in sorted order; masked slots (last) are not computed
  inverse = jnp.zeros_like(order[0]).at[order[0]].set(jnp.arange(k * n))
  weights = routing.weights if routing.mask is None else routing.weights * routing.mask[:, None]
  wk = jnp.swapaxes(weights, 0, 1).reshape(k * n)

  def combine(leaf):
    picked = leaf[inverse] * wk.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)
    return _sum_k(picked.reshape((k, n) + leaf.shape[1:]), axis=0)

  return jax.tree.map(combine, ys), {"dropped_fraction": jnp.zeros((), jnp.float32), "capacity": n}


def dispatch(
  strategy: str,
  experts: ExpertFns,
  x: jax.Array,
  routing: Routing,
  *,
  capacity_factor: float | None = None,
  capacity: int | None = None,
  group_size: int | None = None,
):
  """Run ``strategy`` on x [N, D] with ``routing`` (index/weights [N, K]); returns (y pytree [N, ...], metrics).

  Shapes and arguments are checked at trace time. ``group_size`` defaults to 512 for ``einsum`` (the one-hot
  tensors grow with S) and to N (one group) for ``sorted``.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown dispatch strategy {strategy!r}; choose one of {STRATEGIES}")
  if x.ndim != 2:
    raise ValueError(f"dispatch expects tokens [N, D], got shape {x.shape}")
  if routing.is_dense:
    if strategy != "dense":
      raise ValueError(
        f"a dense routing (weights [N, E], no index) runs on the dense path, not {strategy!r}: use strategy "
        "'dense' or 'auto'"
      )
    return dense(experts, x, routing)
  if routing.index.ndim != 2 or routing.index.shape[0] != x.shape[0] or routing.weights.shape != routing.index.shape:
    raise ValueError(
      f"routing index/weights must be [N={x.shape[0]}, K], got {routing.index.shape} / {routing.weights.shape}"
    )
  if routing.k > routing.num_experts:
    raise ValueError(f"k={routing.k} exceeds num_experts={routing.num_experts}")
  if capacity is not None and capacity <= 0:
    raise ValueError(f"capacity must be a positive int, got {capacity}")
  if strategy == "dense":
    return dense(experts, x, routing)
  if strategy == "ragged":
    return ragged(experts, x, routing)
  if strategy == "einsum":
    return einsum(experts, x, routing, capacity_factor, capacity, 512 if group_size is None else group_size)
  return sorted_buffers(experts, x, routing, capacity_factor, capacity, group_size)
