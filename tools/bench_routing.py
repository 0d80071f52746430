"""Routing-throughput benchmark of the routed expert layer (``jmoe.moe.layer.MoELayer``).

Command (from the repo root)::

    python -m tools.bench_routing --json runs/bench/routing_fp32.json   # default grid
    python -m tools.bench_routing --tokens 4096 --experts 8 --top-k 2 --strategies sorted,einsum
    python -m tools.bench_routing --profile --json runs/bench/profile.json  # where sorted spends its time
    python -m tools.bench_routing --tokens 4096 --experts 8 --top-k 2 --processes 5 --json runs/bench/p5.json

Default grid (no size flags): tokens=4096 dim=256 hidden=512 fp32 with (E=8, k=2) (the headline config), (E=32,
k=2) and (E=8, k=1); one table per config. At E=32 the rows that run every expert on every token (jmoe/dense,
torch/dense) are left out to keep the grid short; ``--experts 32`` runs them.

What is timed, per dispatch strategy (``jmoe/<strategy>`` rows):
  * fwd:      ``jit(MoELayer.apply)`` -- the whole layer: router (Dense + softmax + top-k + routing metrics) +
              dispatch + vmapped experts + combine; returns y and the dropped fraction (other metrics are not
              returned, so XLA prunes the router statistics y does not need; ``--profile`` times the router with
              and without them).
  * fwd+bwd:  ``jit(value_and_grad(lambda p, x: sum(y**2), argnums=(0, 1)))`` -- gradients w.r.t. all params and x.
Every row of a config is compiled and warmed up first (the first call compiles; a second untimed call unless the
first took over a second), then the rows are timed *interleaved* (``tools.benchlib.time_interleaved``), one call
of each per round with ``block_until_ready``, for ``--repeats`` rounds; a row that has spent ``--max-seconds`` and
has ``--min-repeats`` runs leaves the rounds. We report the median, the p10-p90 spread and the fastest run.
Interleaving keeps the ratios meaningful on a shared machine: other processes slow all rows of a round alike. The
CPU share other processes used while a table was timed is printed above it (``benchlib.ForeignCpu``: /proc/stat
minus this process's own CPU time).

Reference rows measured in the same run:
  * ``floor/matmul``: the routed expert work alone under jit: einsum [E, N*K/E, D] x [E, D, H] -> gelu -> einsum
    [E, N*K/E, H] x [E, H, D] (no bias): exactly the routed FLOPs, no routing, no gather/scatter. The floor.
  * ``torch/loop`` (eager: router Linear + softmax + topk, then per expert index_select -> Linear -> GELU(tanh) ->
    Linear -> * weight -> index_add_) and ``torch/dense`` (every expert on every token with baddbmm, masked
    combine). ``torch.set_num_threads`` = the cores JAX's thread pool uses (``--torch-threads`` overrides).
    Torch fwd runs under ``torch.no_grad``. Caveat: when other processes use the CPU, torch's OpenMP threads
    stall at every op's barrier and torch/loop (~100 small ops per call) slows down far more than the jit rows
    (see its spread).

FLOPs: routed expert work only, 2*N*K*(D*H + H*D) fwd and 3x that fwd+bwd. The router (2*N*D*E), gelu, biases,
routing bookkeeping and any padding (capacity slack; dense computing every expert) are *not* counted: GFLOP/s is
useful routed work per second, so overhead shows up as a lower number.

Capacity: ``--capacity-factor`` (default 1.0) applies to ``einsum`` and ``sorted``: at 1.0 their buffers hold
exactly N*K/E rows per expert (the floor's work); overflow is dropped (``drop%`` column). ``dense`` and
``ragged`` never drop. ``--capacity-factor 0`` = no dropping.

Targets (headline config, fp32, one run; printed and stored under ``targets``): the fastest jmoe row <= 1.05x
floor/matmul in fwd and in fwd+bwd, <= 0.9x the fastest torch row in fwd and <= 1.0x in fwd+bwd; sorted and
ragged at E=32 within 1.5x of their E=8 time. Measured results belong in the JSON this writes and in README, not
here.

``--processes P`` runs the whole benchmark in P fresh processes, one after another, and prints every row's median
over them with the [fastest-slowest process] range, and the targets judged on those medians with how many single
runs met each. Why: the ratio of the same two programs can vary more between processes than between repeats in
one process (README has the measurement), so one process's ratio is one sample.

``--profile`` times each piece of jmoe/sorted (router with and without its metrics, slot bookkeeping, dispatch
gather, expert bank, combine; their backward passes), each its own jit with precomputed inputs, interleaved, and
next to them the forms the library's pieces replaced, so that the reasons for the library's choices stay
measurable:
  * the combine adds the K slot slices: XLA:CPU runs a reduction over a small leading axis of a big array
    several times slower than the equivalent adds (piece "jnp.sum over K");
  * dispatch and combine are permutations of the kept slots, so their transposes are the inverse gathers: the
    custom VJPs in ``jmoe/moe/dispatch.py`` run gathers where plain autodiff would run scatter-adds (pieces
    "plain autodiff").
Then it times the whole layer against the floor and the expert bank alone (same routed rows), fwd and fwd+bwd.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe.experts import ExpertBank, MLPExpert
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import TopKRouter
from tools import benchlib

HEADLINE = dict(tokens=4096, dim=256, hidden=512, experts=8, top_k=2)
# Targets of the headline config (one run): fastest jmoe row / floor/matmul, and / the fastest torch row per pass.
TARGET_FLOOR = 1.05
TARGET_TORCH = {"fwd": 0.9, "fwd+bwd": 1.0}
FOREIGN_LOADED = 0.10  # other processes' CPU share above which a table counts as measured under load
# Default grid: the headline config, the same tokens over 32 experts, and top-1. At E=32 the grid leaves out the
# rows that run every expert on every token (jmoe/dense, torch/dense: E/K = 16x the routed work, the slowest rows
# by far) to keep the grid short; ask for them with --experts 32.
DEFAULT_GRID = (
  (dict(HEADLINE), ()),
  (dict(HEADLINE, experts=32), ("jmoe/dense", "torch/dense")),
  (dict(HEADLINE, top_k=1), ()),
)


@dataclasses.dataclass(frozen=True)
class Config:
  tokens: int
  dim: int
  hidden: int
  experts: int
  top_k: int
  capacity_factor: float | None = 1.0
  dtype: str = "float32"
  group_size: int | None = None

  def label(self) -> str:
    gs = "default" if self.group_size is None else self.group_size
    return (
      f"tokens={self.tokens} dim={self.dim} hidden={self.hidden} experts={self.experts} top-k={self.top_k} "
      f"capacity_factor={self.capacity_factor} dtype={self.dtype} group_size={gs}"
    )


def routed_flops(cfg: Config) -> float:
  """Forward FLOPs of the routed expert work: 2*N*K*(D*H + H*D) (router, gelu, bias not counted)."""
  return 2.0 * cfg.tokens * cfg.top_k * (cfg.dim * cfg.hidden + cfg.hidden * cfg.dim)


# ----------------------------------------------------------------------------------------------------------------
# Rows: jmoe strategies, floor, torch


def _jax_dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def make_layer(cfg: Config, strategy: str) -> MoELayer:
  return MoELayer(
    router=TopKRouter(cfg.experts, k=cfg.top_k),
    expert=MLPExpert(hidden=cfg.hidden, out=cfg.dim, dtype=_jax_dtype(cfg.dtype)),
    num_experts=cfg.experts,
    strategy=strategy,
    capacity_factor=cfg.capacity_factor,
    group_size=cfg.group_size,
  )


def make_inputs(cfg: Config, seed: int = 0) -> jax.Array:
  return jax.random.normal(jax.random.PRNGKey(seed), (cfg.tokens, cfg.dim), jnp.float32).astype(_jax_dtype(cfg.dtype))


def _sq_loss(y):
  return jnp.sum(jnp.square(y.astype(jnp.float32)))


def init_params(layer: nn.Module, x: jax.Array, seed: int = 0):
  """Parameters with the layer's tree structure: kernels ~ N(0, 1/fan_in), biases 0.

  ``layer.init`` would run the routing once eagerly (or compile a jitted init) just to create parameters, which
  costs seconds per strategy; ``jax.eval_shape`` gives the tree for free and every strategy of a config gets
  the same values (the tree does not depend on the strategy), so their routing and drops are identical."""
  shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(seed), x)
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(seed)
  out = []
  for leaf in leaves:
    if leaf.ndim >= 2:  # kernel [..., fan_in, fan_out]
      val = rng.standard_normal(leaf.shape, dtype=np.float32) / np.sqrt(leaf.shape[-2])
    else:
      val = np.zeros(leaf.shape, np.float32)
    out.append(jnp.asarray(val, leaf.dtype))
  return jax.tree.unflatten(treedef, out)


def jmoe_fns(cfg: Config, strategy: str, seed: int = 0):
  """(fwd thunk, fwd+bwd thunk, extra info) for MoELayer.apply with this strategy."""
  layer = make_layer(cfg, strategy)
  x = make_inputs(cfg, seed)
  params = init_params(layer, x, seed)

  # fwd also returns the (scalar) dropped fraction so that no second compile is needed to report it.
  fwd = jax.jit(lambda p, x: (lambda out: (out.y, out.metrics["dropped_fraction"]))(layer.apply(p, x)))
  fwd_bwd = jax.jit(jax.value_and_grad(lambda p, x: _sq_loss(layer.apply(p, x)[0]), argnums=(0, 1)))
  t0 = time.perf_counter()
  _, dropped = jax.block_until_ready(fwd(params, x))
  extra = {"dropped_fraction": float(dropped), "compile_fwd_s": time.perf_counter() - t0}
  n, k, e = cfg.tokens, cfg.top_k, cfg.experts
  if strategy in ("einsum", "sorted"):
    gs = dispatch_lib.group_size_for(
      n, (512 if cfg.group_size is None else cfg.group_size) if strategy == "einsum" else cfg.group_size
    )
    c = dispatch_lib.capacity_for(gs, k, e, cfg.capacity_factor)
    extra.update(group_size=gs, capacity=c, executed_rows=e * (n // gs) * c)
  elif strategy == "dense":
    extra.update(executed_rows=e * n)
  else:
    extra.update(executed_rows=n * k)
  return (lambda: fwd(params, x)), (lambda: fwd_bwd(params, x)), extra


def floor_fns(cfg: Config, seed: int = 0):
  """The routed expert FLOPs as one batched matmul pair with gelu between: [E, R, D] x [E, D, H] -> [E, R, D]."""
  e, d, h = cfg.experts, cfg.dim, cfg.hidden
  rows = cfg.tokens * cfg.top_k // e
  dt = _jax_dtype(cfg.dtype)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  xe = jax.random.normal(k1, (e, rows, d), jnp.float32).astype(dt)
  w1 = (jax.random.normal(k2, (e, d, h), jnp.float32) / math.sqrt(d)).astype(dt)
  w2 = (jax.random.normal(k3, (e, h, d), jnp.float32) / math.sqrt(h)).astype(dt)

  def f(w1, w2, xe):
    return jnp.einsum("erh,ehd->erd", jax.nn.gelu(jnp.einsum("erd,edh->erh", xe, w1)), w2)

  fwd = jax.jit(f)
  fwd_bwd = jax.jit(jax.value_and_grad(lambda w1, w2, xe: _sq_loss(f(w1, w2, xe)), argnums=(0, 1, 2)))
  return (lambda: fwd(w1, w2, xe)), (lambda: fwd_bwd(w1, w2, xe)), {"executed_rows": e * rows}


def torch_fns(cfg: Config, kind: str, torch, seed: int = 0):
  """Eager PyTorch MoE rows: 'loop' (index_select per expert, index_add back) or 'dense' (bmm over all experts)."""
  nnt, F = torch.nn, torch.nn.functional
  e, d, h, k = cfg.experts, cfg.dim, cfg.hidden, cfg.top_k
  dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
  torch.manual_seed(seed)

  class LoopMoE(nnt.Module):
    def __init__(self):
      super().__init__()
      self.gate = nnt.Linear(d, e)
      self.experts = nnt.ModuleList(
        [nnt.Sequential(nnt.Linear(d, h), nnt.GELU(approximate="tanh"), nnt.Linear(h, d)) for _ in range(e)]
      )

    def forward(self, x):
      probs = torch.softmax(self.gate(x).float(), dim=-1)
      weights, index = torch.topk(probs, k, dim=-1)  # [N, K]
      out = torch.zeros_like(x)
      for j, expert in enumerate(self.experts):
        tok, slot = torch.where(index == j)
        if tok.numel() == 0:
          continue
        ye = expert(x.index_select(0, tok)) * weights[tok, slot].unsqueeze(-1).to(x.dtype)
        out.index_add_(0, tok, ye)
      return out

  class DenseMoE(nnt.Module):
    def __init__(self):
      super().__init__()
      self.gate = nnt.Linear(d, e)
      self.w1 = nnt.Parameter(torch.randn(e, d, h) / math.sqrt(d))
      self.b1 = nnt.Parameter(torch.zeros(e, 1, h))
      self.w2 = nnt.Parameter(torch.randn(e, h, d) / math.sqrt(h))
      self.b2 = nnt.Parameter(torch.zeros(e, 1, d))

    def forward(self, x):
      probs = torch.softmax(self.gate(x).float(), dim=-1)
      weights, index = torch.topk(probs, k, dim=-1)
      combine = torch.zeros_like(probs).scatter(1, index, weights).to(x.dtype)  # [N, E], zero off the top-k
      xs = x.unsqueeze(0).expand(e, -1, -1)
      hid = F.gelu(torch.baddbmm(self.b1, xs, self.w1), approximate="tanh")
      ys = torch.baddbmm(self.b2, hid, self.w2)  # [E, N, D]
      return torch.einsum("ne,end->nd", combine, ys)

  model = (LoopMoE() if kind == "loop" else DenseMoE()).to(dt)
  x = torch.randn(cfg.tokens, d, dtype=torch.float32).to(dt)
  xg = x.clone().requires_grad_(True)

  def fwd():
    with torch.no_grad():
      return model(x)

  def fwd_bwd():
    model.zero_grad(set_to_none=True)
    xg.grad = None
    loss = model(xg).float().square().sum()
    loss.backward()
    return loss

  return fwd, fwd_bwd, {"executed_rows": cfg.tokens * k if kind == "loop" else e * cfg.tokens}


# ----------------------------------------------------------------------------------------------------------------
# Driver


def run_config(
  cfg: Config, strategies: Sequence[str], args, torch_mod, skip: Sequence[str] = ()
) -> list[dict[str, Any]]:
  flops = routed_flops(cfg)
  builders: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = []
  for s in strategies:
    builders.append((f"jmoe/{s}", lambda s=s: jmoe_fns(cfg, s), benchlib.block))
  builders.append(("floor/matmul", lambda: floor_fns(cfg), benchlib.block))
  if torch_mod is not None:
    for kind in ("loop", "dense"):
      builders.append((f"torch/{kind}", lambda kind=kind: torch_fns(cfg, kind, torch_mod), lambda out: out))
  entries = []
  for name, build, block in builders:
    if name in skip:
      continue
    fwd, fwd_bwd, extra = build()
    runtime = "torch" if name.startswith("torch/") else "jax"
    entries.append({"name": name, "fwd": fwd, "fwd_bwd": fwd_bwd, "block": block, "extra": extra, "runtime": runtime})
  load_before = benchlib.loadavg()
  foreign = benchlib.ForeignCpu().start()
  t_start = time.perf_counter()
  for key in ("fwd", "fwd_bwd"):
    benchlib.time_interleaved(entries, key, args.repeats, args.warmup, args.max_seconds, args.min_repeats)
  timing_s = time.perf_counter() - t_start
  foreign_frac = foreign.stop()
  load_after = benchlib.loadavg()
  rows = []
  for ent in entries:
    tf, tb = ent["stats"]["fwd"], ent["stats"]["fwd_bwd"]
    row = {
      "name": ent["name"],
      "config": dataclasses.asdict(cfg),
      "median_s": tf["median_s"],
      "p10_s": tf["p10_s"],
      "p90_s": tf["p90_s"],
      "min_s": tf["min_s"],
      "n_repeats": tf["n"],
      "first_call_s": ent["first_call_s"]["fwd"],
      "fwd_bwd_median_s": tb["median_s"],
      "fwd_bwd_p10_s": tb["p10_s"],
      "fwd_bwd_p90_s": tb["p90_s"],
      "fwd_bwd_min_s": tb["min_s"],
      "fwd_bwd_n_repeats": tb["n"],
      "fwd_bwd_first_call_s": ent["first_call_s"]["fwd_bwd"],
      "flops_fwd": flops,
      "flops_fwd_bwd": 3 * flops,
      "tokens_per_s": cfg.tokens / tf["median_s"],
      "fwd_bwd_tokens_per_s": cfg.tokens / tb["median_s"],
      "gflops": flops / tf["median_s"] / 1e9,
      "fwd_bwd_gflops": 3 * flops / tb["median_s"] / 1e9,
      "loadavg_before": load_before,
      "loadavg_after": load_after,
      "foreign_cpu_fraction": foreign_frac,
      "config_timing_s": timing_s,
    }
    row.update(ent["extra"])
    rows.append(row)
  floor = next(r for r in rows if r["name"] == "floor/matmul")
  torch_rows = [r for r in rows if r["name"].startswith("torch/")]
  best_t = min(torch_rows, key=lambda r: r["median_s"]) if torch_rows else None
  best_tb = min(torch_rows, key=lambda r: r["fwd_bwd_median_s"]) if torch_rows else None
  for r in rows:
    r["ratio_vs_floor"] = r["median_s"] / floor["median_s"]
    r["fwd_bwd_ratio_vs_floor"] = r["fwd_bwd_median_s"] / floor["fwd_bwd_median_s"]
    r["ratio_vs_best_torch"] = r["median_s"] / best_t["median_s"] if best_t else None
    r["best_torch"] = best_t["name"] if best_t else None
    r["fwd_bwd_ratio_vs_best_torch"] = r["fwd_bwd_median_s"] / best_tb["fwd_bwd_median_s"] if best_tb else None
    r["fwd_bwd_best_torch"] = best_tb["name"] if best_tb else None
  return rows


# ----------------------------------------------------------------------------------------------------------------
# --profile: where the time of the sorted dispatch goes (its pieces use the library's dispatch.sorted_plan and the
# custom-VJP row gathers), next to the forms the library's pieces replaced.


_dispatch_rows = dispatch_lib._dispatch_rows  # pylint: disable=protected-access
_combine_rows = dispatch_lib._combine_rows  # pylint: disable=protected-access


def profile_pieces(cfg: Config, args) -> list[tuple[str, float, float]]:
  """Time each stage of jmoe/sorted separately: each piece its own jit with precomputed inputs, all pieces timed
  interleaved. Returns [(name, median_s, min_s)]."""
  n, d, e, k = cfg.tokens, cfg.dim, cfg.experts, cfg.top_k
  layer = make_layer(cfg, "sorted")
  x = make_inputs(cfg)
  params = init_params(layer, x)
  p = params["params"]
  router, bank = layer.router, ExpertBank(layer.expert, e)
  entries = []

  def t(name, f, *a):
    jf = jax.jit(f)
    entries.append({"name": name, "run": lambda: jf(*a)})
    return jf(*a)

  def route(pr, x):
    return router.apply({"params": pr}, x)

  def route_weights(pr, x):
    ro = route(pr, x)
    return ro.weights, ro.index

  routing = t("fwd  router with all its metrics (losses, load, ...)", route, p["router"], x)
  t(
    "fwd  router, weights and index only (what y needs)",
    route_weights,
    p["router"],
    x,
  )
  c = dispatch_lib.capacity_for(dispatch_lib.group_size_for(n, cfg.group_size), k, e, cfg.capacity_factor)
  token, valid, kslot, row, keep = t(
    "fwd  slot bookkeeping (sorted_plan)",
    lambda index: dispatch_lib.sorted_plan(index, e, c, cfg.group_size)[:5],
    routing.index,
  )
  r = token.shape[0]  # E*G*C buffer rows
  wk = jnp.swapaxes(routing.weights, 0, 1) * keep  # [K, N]

  def gather(x):  # the dispatch as plain autodiff sees it (its transpose is a scatter-add)
    return jnp.where(valid[:, None], x[token], 0).reshape(e, r // e, d)

  xs = t("fwd  dispatch gather x[token] -> [E, G*C, D]", gather, x)
  pb = {"params": p["experts"]}
  ys = t("fwd  expert bank (vmapped Dense-gelu-Dense on buffers)", lambda pb, xs: bank.apply(pb, xs), pb, xs)

  def combine_reduce(ys, wk):  # jnp.sum over the K axis (what the K slice adds replace)
    return jnp.sum(ys.reshape(r, d)[row] * wk[..., None], axis=0)

  def combine_ksum(ys, wk):  # K slice adds, plain autodiff gathers (what the custom VJPs replace)
    return dispatch_lib._sum_k(ys.reshape(r, d)[row] * wk[..., None], axis=0)  # pylint: disable=protected-access

  def combine_gathers(ys, wk):  # dispatch.py
    return _combine_rows(ys.reshape(r, d), wk, row, token, kslot, valid)

  t("fwd  combine: custom-VJP gathers, *w, K slice adds (dispatch.py)", combine_gathers, ys, wk)
  t("fwd    ... its gather ys[row] alone", lambda ys: ys.reshape(r, d)[row], ys)
  t("fwd    ... plain autodiff gathers, K slice adds", combine_ksum, ys, wk)
  t("fwd    ... jnp.sum over K instead of the K slice adds", combine_reduce, ys, wk)
  t("fwd  FULL MoELayer.apply (sorted)", lambda pp, x: layer.apply(pp, x)[0], params, x)
  ones = lambda a: jnp.ones(a.shape, a.dtype)
  dy = jnp.ones((n, d), ys.dtype)
  t(
    "bwd  router vjp (w.r.t. params, x)",
    lambda pr, x, ct: jax.vjp(lambda pr, x: route(pr, x).weights, pr, x)[1](ct),
    p["router"],
    x,
    jnp.ones((n, k), jnp.float32),
  )
  t(
    "bwd  dispatch vjp, plain autodiff: scatter-add into x",
    lambda x, ct: jax.vjp(gather, x)[1](ct),
    x,
    ones(xs),
  )
  t(
    "bwd  dispatch vjp: inverse gathers (dispatch.py custom VJP)",
    lambda x, ct: jax.vjp(lambda x: _dispatch_rows(x, token, valid, row, keep), x)[1](ct),
    x,
    ones(xs).reshape(-1, d),
  )
  t(
    "bwd  expert bank vjp (w.r.t. params, buffers)",
    lambda pb, xs, ct: jax.vjp(lambda pb, xs: bank.apply(pb, xs), pb, xs)[1](ct),
    pb,
    xs,
    ones(ys),
  )
  t(
    "bwd  combine vjp, plain autodiff: pad + scatter-add",
    lambda ys, wk, ct: jax.vjp(combine_ksum, ys, wk)[1](ct),
    ys,
    wk,
    dy,
  )
  t(
    "bwd    ... jnp.sum over K: scatter-add",
    lambda ys, wk, ct: jax.vjp(combine_reduce, ys, wk)[1](ct),
    ys,
    wk,
    dy,
  )
  t(
    "bwd  combine vjp: gathers (dispatch.py custom VJP)",
    lambda ys, wk, ct: jax.vjp(combine_gathers, ys, wk)[1](ct),
    ys,
    wk,
    dy,
  )
  t(
    "f+b  FULL MoELayer value_and_grad (sorted)",
    jax.value_and_grad(lambda pp, x: _sq_loss(layer.apply(pp, x)[0]), argnums=(0, 1)),
    params,
    x,
  )
  benchlib.time_interleaved(entries, "run", args.repeats, args.warmup, args.max_seconds, args.min_repeats)
  return [(ent["name"], ent["stats"]["run"]["median_s"], ent["stats"]["run"]["min_s"]) for ent in entries]


def bank_fns(cfg: Config, seed: int = 0):
  """The layer's expert bank alone (vmapped MLPExpert with biases) on the floor's routed rows [E, N*K/E, D]."""
  layer = make_layer(cfg, "sorted")
  x = make_inputs(cfg, seed)
  pb = {"params": init_params(layer, x, seed)["params"]["experts"]}
  bank = ExpertBank(layer.expert, cfg.experts)
  rows = cfg.tokens * cfg.top_k // cfg.experts
  xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (cfg.experts, rows, cfg.dim), jnp.float32).astype(x.dtype)
  fwd = jax.jit(bank.apply)
  fwd_bwd = jax.jit(jax.value_and_grad(lambda pb, xs: _sq_loss(bank.apply(pb, xs)), argnums=(0, 1)))
  return (lambda: fwd(pb, xs)), (lambda: fwd_bwd(pb, xs)), {"executed_rows": cfg.experts * rows}


def profile_config(cfg: Config, args) -> dict[str, Any]:
  print(f"## profile of jmoe/sorted: {cfg.label()}", flush=True)
  foreign = benchlib.ForeignCpu().start()
  pieces = profile_pieces(cfg, args)
  foreign_pieces = foreign.stop()
  w = max(len(nm) for nm, _, _ in pieces)
  print(f"  {'piece'.ljust(w)} {'median':>9s}    {'best':>9s}")
  for nm, med, best in pieces:
    print(f"  {nm.ljust(w)} {med * 1e3:9.2f} ms {best * 1e3:9.2f} ms")
  print(
    "  (each piece is its own jit with precomputed inputs, timed interleaved; fusion across pieces is lost, so "
    "the pieces of a pass add up to roughly, not exactly, its FULL line)"
  )
  print(_foreign_line(foreign_pieces))
  # The whole layer next to the floor and the expert bank alone: layer - bank = routing + dispatch + combine;
  # bank - floor = biases and the vmapped Dense layout.
  entries = []
  for name, build in [
    ("jmoe/sorted", lambda: jmoe_fns(cfg, "sorted")),
    ("floor/matmul", lambda: floor_fns(cfg)),
    ("bank/alone", lambda: bank_fns(cfg)),
  ]:
    fwd, fwd_bwd, extra = build()
    entries.append({"name": name, "fwd": fwd, "fwd_bwd": fwd_bwd, "extra": extra})
  foreign = benchlib.ForeignCpu().start()
  for key in ("fwd", "fwd_bwd"):
    benchlib.time_interleaved(entries, key, args.repeats, args.warmup, args.max_seconds, args.min_repeats)
  foreign_rows = foreign.stop()
  floor = entries[1]["stats"]
  rows, lines = [], []
  for ent in entries:
    f, b = ent["stats"]["fwd"], ent["stats"]["fwd_bwd"]
    rows.append(
      {
        "name": ent["name"],
        "config": dataclasses.asdict(cfg),
        "median_s": f["median_s"],
        "min_s": f["min_s"],
        "p10_s": f["p10_s"],
        "p90_s": f["p90_s"],
        "fwd_bwd_median_s": b["median_s"],
        "fwd_bwd_min_s": b["min_s"],
        "ratio_vs_floor": f["median_s"] / floor["fwd"]["median_s"],
        "fwd_bwd_ratio_vs_floor": b["median_s"] / floor["fwd_bwd"]["median_s"],
      }
    )
    lines.append(
      [
        ent["name"],
        f"{f['median_s'] * 1e3:.2f}",
        f"{f['median_s'] / floor['fwd']['median_s']:.3f}",
        f"{f['min_s'] / floor['fwd']['min_s']:.3f}",
        f"{b['median_s'] * 1e3:.2f}",
        f"{b['median_s'] / floor['fwd_bwd']['median_s']:.3f}",
        f"{b['min_s'] / floor['fwd_bwd']['min_s']:.3f}",
      ]
    )
  head = ["row", "fwd ms", "x floor", "(min)", "f+b ms", "x floor", "(min)"]
  print("\n".join("  " + line for line in benchlib.format_rows(head, lines)))
  print("  (x floor = ratio of medians; (min) = ratio of the fastest runs, less sensitive to other load)")
  print(_foreign_line(foreign_rows), flush=True)
  print(flush=True)
  return {
    "pieces": [{"name": nm, "median_s": med, "min_s": best} for nm, med, best in pieces],
    "pieces_foreign_cpu_fraction": foreign_pieces,
    "rows": rows,
    "rows_foreign_cpu_fraction": foreign_rows,
  }


def _foreign_line(foreign: float | None) -> str:
  if foreign is None:
    return "   other processes' CPU share: unknown (/proc/stat unreadable)"
  return f"   other processes used {100 * foreign:.0f}% of the CPU while this was timed" + (
    "  -- WARNING: shared machine; absolute times are inflated and noisy (rows are interleaved, so the ratios "
    "suffer less; torch's OpenMP barriers suffer most)"
    if foreign > FOREIGN_LOADED
    else ""
  )


def format_table(cfg: Config, rows: list[dict[str, Any]]) -> str:
  head = [
    "name",
    "fwd ms",
    "p10-p90 ms",
    "best",
    "fwd+bwd ms",
    "p10-p90 ms",
    "tokens/s fwd",
    "GFLOP/s fwd",
    "GFLOP/s f+b",
    "x floor fwd",
    "x floor f+b",
    "x torch fwd",
    "x torch f+b",
    "drop%",
  ]
  lines = []
  for r in rows:
    rt = r.get("ratio_vs_best_torch")
    rtb = r.get("fwd_bwd_ratio_vs_best_torch")
    drop = r.get("dropped_fraction")
    lines.append(
      [
        r["name"],
        f"{r['median_s'] * 1e3:.1f}",
        f"{r['p10_s'] * 1e3:.1f}-{r['p90_s'] * 1e3:.1f}",
        f"{r['min_s'] * 1e3:.1f}",
        f"{r['fwd_bwd_median_s'] * 1e3:.1f}",
        f"{r['fwd_bwd_p10_s'] * 1e3:.1f}-{r['fwd_bwd_p90_s'] * 1e3:.1f}",
        f"{r['tokens_per_s']:,.0f}",
        f"{r['gflops']:.1f}",
        f"{r['fwd_bwd_gflops']:.1f}",
        f"{r['ratio_vs_floor']:.2f}",
        f"{r['fwd_bwd_ratio_vs_floor']:.2f}",
        "-" if rt is None else f"{rt:.2f}",
        "-" if rtb is None else f"{rtb:.2f}",
        "-" if drop is None else f"{100 * drop:.1f}",
      ]
    )
  n_f = [r["n_repeats"] for r in rows]
  n_b = [r["fwd_bwd_n_repeats"] for r in rows]
  foreign = rows[0].get("foreign_cpu_fraction") if rows else None
  out = [
    f"## {cfg.label()}",
    f"   routed FLOPs: fwd {routed_flops(cfg) / 1e9:.3f} GFLOP (2*N*K*(D*H+H*D); router, gelu, bias, padding "
    f"not counted), fwd+bwd 3x. Medians of {min(n_f)}-{max(n_f)} fwd / {min(n_b)}-{max(n_b)} fwd+bwd runs, "
    f"rows interleaved; best = fastest fwd run; ratios are of medians; x torch = vs the fastest torch row.",
    _foreign_line(foreign),
  ]
  return "\n".join(out + benchlib.format_rows(head, lines))


def _config_key(row: dict[str, Any]) -> tuple:
  """A result row's config as a hashable key."""
  return tuple(sorted(row["config"].items()))


def check_targets(results: list[dict[str, Any]]) -> list[str]:
  """The report-only targets of the headline config (see module docstring). Returns human-readable lines."""
  msgs = []
  by_cfg: dict[tuple, dict[str, dict]] = {}
  for r in results:
    by_cfg.setdefault(_config_key(r), {})[r["name"]] = r

  def find(**kw):
    for key, rows in by_cfg.items():
      c = dict(key)
      if all(c[k] == v for k, v in kw.items()):
        return rows
    return None

  head = find(**HEADLINE, dtype="float32")
  passes = (
    ("fwd", "median_s", "ratio_vs_floor", "ratio_vs_best_torch", "best_torch"),
    ("fwd+bwd", "fwd_bwd_median_s", "fwd_bwd_ratio_vs_floor", "fwd_bwd_ratio_vs_best_torch", "fwd_bwd_best_torch"),
  )
  jrows = {n: r for n, r in (head or {}).items() if n.startswith("jmoe/")}
  for label, t_key, floor_key, torch_key, torch_name in passes if jrows else ():
    best = min(jrows.values(), key=lambda r: r[t_key])
    ok = best[floor_key] <= TARGET_FLOOR
    msgs.append(
      f"target fastest jmoe <= {TARGET_FLOOR}x floor/matmul ({label}): {best['name']} {best[floor_key]:.2f}x "
      f"-> {'MET' if ok else 'MISSED'}"
    )
    if best.get(torch_key) is not None:
      limit = TARGET_TORCH[label]
      ok = best[torch_key] <= limit
      foreign = best.get("foreign_cpu_fraction")
      caveat = (
        f" (UNRELIABLE: other processes used {100 * foreign:.0f}% of the CPU and torch's OpenMP threads "
        f"stall under contention; rerun on a quiet machine)"
        if foreign is not None and foreign > FOREIGN_LOADED
        else ""
      )
      msgs.append(
        f"target fastest jmoe <= {limit}x best torch ({label}): {best['name']} {best[torch_key]:.2f}x "
        f"of {best[torch_name]} -> {'MET' if ok else 'MISSED'}{caveat}"
      )
  e32 = find(**dict(HEADLINE, experts=32), dtype="float32")
  if head and e32:
    for s in ("jmoe/sorted", "jmoe/ragged"):
      if s in head and s in e32:
        for label, t_key, *_ in passes:
          ratio = e32[s][t_key] / head[s][t_key]
          msgs.append(
            f"target {s} E=32 within 1.5x of E=8 ({label}): {ratio:.2f}x -> {'MET' if ratio <= 1.5 else 'MISSED'}"
          )
  return msgs


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tokens", type=int)
  p.add_argument("--dim", type=int)
  p.add_argument("--hidden", type=int)
  p.add_argument("--experts", type=int)
  p.add_argument("--top-k", type=int)
  p.add_argument(
    "--capacity-factor",
    type=float,
    default=1.0,
    help="einsum/sorted capacity factor (default 1.0: buffers = exactly the routed rows); 0 = no drop",
  )
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--strategies", default=",".join(dispatch_lib.STRATEGIES))
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (the first compiles)")
  p.add_argument(
    "--max-seconds",
    type=float,
    default=3.0,
    help="stop timing a row (fwd or fwd+bwd) once this much was spent, after --min-repeats runs",
  )
  p.add_argument("--min-repeats", type=int, default=3)
  p.add_argument("--json", help="write the results here (e.g. runs/bench/routing.json)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument(
    "--torch-threads",
    type=int,
    help="torch.set_num_threads (default: the cores JAX uses). With other processes on the CPU, 2 OpenMP "
    "threads on 2 cores stall at every op's barrier and torch/loop gets many times slower; 1 avoids that",
  )
  p.add_argument("--group-size", type=int)
  p.add_argument(
    "--profile",
    action="store_true",
    help="time the pieces of the sorted dispatch and the layer against the floor and the bank alone instead",
  )
  p.add_argument(
    "--processes",
    type=int,
    default=1,
    help="run the whole benchmark in this many fresh processes, one after another, and summarise each row's "
    "spread over them (a ratio varies more between processes than between repeats in one process)",
  )
  benchlib.add_malloc_flag(p, "retain")
  p.add_argument("--verbose", action="store_true")
  args = p.parse_args(argv)
  if args.processes < 1:
    p.error(f"--processes must be >= 1, got {args.processes}")
  if args.processes > 1 and args.profile:
    p.error("--processes summarises the benchmark tables; run --profile in one process")
  return args


# ----------------------------------------------------------------------------------------------------------------
# --processes P: the same benchmark in P fresh processes, and the spread of every row over them

# The per-row numbers that are summarised over processes (median and range).
_SPREAD_KEYS = (
  "median_s",
  "fwd_bwd_median_s",
  "ratio_vs_floor",
  "fwd_bwd_ratio_vs_floor",
  "ratio_vs_best_torch",
  "fwd_bwd_ratio_vs_best_torch",
)


def _without_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
  """argv minus each ``--flag value`` / ``--flag=value`` in flags."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a in flags:
      skip = True
    elif not any(a.startswith(f + "=") for f in flags):
      out.append(a)
  return out


def summarize_runs(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
  """Rows of P runs (each a list of result rows, same configs and names) -> one row per (config, name): the first
  run's row with every ``_SPREAD_KEYS`` value replaced by its median over the runs, plus ``spread`` = {key: (min,
  max)} and ``processes`` = P. The medians are what :func:`check_targets` then judges."""
  by_key: dict[tuple, list[dict[str, Any]]] = {}
  for rows in runs:
    for r in rows:
      by_key.setdefault((_config_key(r), r["name"]), []).append(r)
  out = []
  for rows in by_key.values():
    if len(rows) != len(runs):
      raise ValueError(f"row {rows[0]['name']!r} is in {len(rows)} of {len(runs)} runs; the runs do not match")
    row = dict(rows[0], processes=len(runs), spread={})
    for k in _SPREAD_KEYS:
      vals = [r[k] for r in rows if r.get(k) is not None]
      row[k] = statistics.median(vals) if vals else None
      if vals:
        row["spread"][k] = (min(vals), max(vals))
    out.append(row)
  return out


def format_summary(rows: list[dict[str, Any]]) -> str:
  """One table per config: every row's median over the processes and [min-max] range."""

  def cell(r, k, scale=1.0, fmt="{:.2f}"):
    if r.get(k) is None:
      return "-"
    lo, hi = r["spread"][k]
    return f"{fmt.format(r[k] * scale)} [{fmt.format(lo * scale)}-{fmt.format(hi * scale)}]"

  head = ["name", "fwd ms", "fwd+bwd ms", "x floor fwd", "x floor f+b", "x torch fwd", "x torch f+b"]
  out, configs = [], {}
  for r in rows:
    configs.setdefault(_config_key(r), []).append(r)
  for cfg_rows in configs.values():
    cfg = Config(**cfg_rows[0]["config"])
    out.append(f"## over {cfg_rows[0]['processes']} processes: {cfg.label()}")
    out.append("   median over the processes [fastest-slowest process]; each process's own numbers are medians")
    lines = [
      [
        r["name"],
        cell(r, "median_s", 1e3, "{:.1f}"),
        cell(r, "fwd_bwd_median_s", 1e3, "{:.1f}"),
        cell(r, "ratio_vs_floor"),
        cell(r, "fwd_bwd_ratio_vs_floor"),
        cell(r, "ratio_vs_best_torch"),
        cell(r, "fwd_bwd_ratio_vs_best_torch"),
      ]
      for r in cfg_rows
    ]
    out += benchlib.format_rows(head, lines) + [""]
  return "\n".join(out)


def targets_over_runs(summary: list[dict[str, Any]], per_run: list[list[str]]) -> list[str]:
  """:func:`check_targets` on the medians over processes, each line with how many single runs met it."""
  return [
    f"{line} [single runs: met in {sum('-> MET' in t[j] for t in per_run)} of {len(per_run)}]"
    for j, line in enumerate(check_targets(summary))
  ]


def run_processes(argv: Sequence[str], args) -> dict[str, Any]:
  """``--processes P``: run this benchmark (argv without --processes/--json) in P fresh processes one after
  another, print each one's tables, then the spread table and the targets judged on the medians over processes,
  each with how many single runs met it."""
  # The children get --processes 1 and their own --json last (argparse keeps the last value), so an abbreviated
  # flag the strip below misses (--proc 5) cannot make a child spawn processes of its own.
  child_argv = _without_flags(argv, ("--processes", "--json"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.processes):
      path = os.path.join(tmp, f"run{i}.json")
      print(f"# process {i + 1} of {args.processes}", flush=True)
      cmd = [sys.executable, "-m", "tools.bench_routing", *child_argv, "--processes", "1", "--json", path]
      if subprocess.run(cmd, cwd=root, check=False).returncode != 0:
        raise SystemExit(f"bench_routing: process {i + 1} of {args.processes} failed: {' '.join(cmd)}")
      with open(path) as f:
        runs.append(json.load(f))
  summary = summarize_runs([run["results"] for run in runs])
  print(format_summary(summary), flush=True)
  targets = targets_over_runs(summary, [run["targets"] for run in runs])
  for m in targets:
    print(f"median over processes: {m}")
  return {"machine": runs[0]["machine"], "runs": runs, "summary": summary, "targets": targets}


def configs_from_args(args) -> list[tuple[Config, tuple[str, ...]]]:
  """[(config, row names to skip)]: the default grid without size flags, else one config (headline defaults)."""
  given = {k: getattr(args, k) for k in HEADLINE if getattr(args, k) is not None}
  grid = DEFAULT_GRID if not given else ((dict(HEADLINE, **given), ()),)
  cf = None if args.capacity_factor is not None and args.capacity_factor <= 0 else args.capacity_factor
  return [
    (Config(**g, capacity_factor=cf, dtype=args.dtype, group_size=args.group_size), tuple(skip)) for g, skip in grid
  ]


def _write_json(out: dict[str, Any], path: str | None) -> None:
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {path}")


def main(argv=None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.processes > 1:
    out = run_processes(argv, args)
    _write_json(out, args.json)
    return out
  malloc_status = benchlib.apply_malloc(args)
  strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
  unknown = [s for s in strategies if s not in dispatch_lib.STRATEGIES]
  if unknown:
    raise SystemExit(f"unknown strategies {unknown}; choose from {dispatch_lib.STRATEGIES}")
  torch_mod = None if args.no_torch else benchlib.import_torch()
  if torch_mod is not None:
    torch_mod.set_num_threads(args.torch_threads or benchlib.num_threads())
  machine = benchlib.machine_info(torch_mod)
  machine["malloc"] = malloc_status
  print(malloc_status, flush=True)
  print(
    f"machine: {machine['cpu_model']} ({', '.join(machine['cpu_simd_flags'])}), {machine['cores']} cores; "
    f"jax {machine['jax']} / jaxlib {machine['jaxlib']}, backend {machine['backend']} {machine['devices']}; "
    + (
      f"torch {machine['torch']} with set_num_threads({machine['torch_threads']})"
      + (f" to match JAX's {machine['cores']}-core thread pool" if not args.torch_threads else "")
      if torch_mod is not None
      else ("torch rows skipped (--no-torch)" if args.no_torch else "torch not importable: torch rows skipped")
    ),
    flush=True,
  )
  results, profiles = [], []
  for cfg, skip in configs_from_args(args):
    if args.profile:
      profiles.append(profile_config(cfg, args))
      continue
    rows = run_config(cfg, strategies, args, torch_mod, skip)
    results += rows
    print(format_table(cfg, rows), flush=True)
    print(flush=True)
  out = {"machine": machine, "results": results, "targets": check_targets(results)}
  if profiles:
    out["profiles"] = profiles
  for m in out["targets"]:
    print(m)
  _write_json(out, args.json)
  return out


if __name__ == "__main__":
  main()
