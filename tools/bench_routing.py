"""Routing-throughput benchmark of the routed expert layer (``jmoe.moe.layer.MoELayer``).

Command (from the repo root)::

    PYTHONPATH=. python -m tools.bench_routing --json runs/bench/routing_fp32.json   # default grid, ~3 min idle
    PYTHONPATH=. python -m tools.bench_routing --tokens 4096 --experts 8 --top-k 2 --strategies sorted,einsum
    PYTHONPATH=. python -m tools.bench_routing --profile --json runs/bench/profile.json  # where sorted spends time

Default grid (no size flags): tokens=4096 dim=256 hidden=512 fp32 with (E=8, k=2) [the headline of GUIDE section
3], (E=32, k=2) and (E=8, k=1); one table per config. At E=32 the rows that run every expert on every token
(jmoe/dense, torch/dense) are left out to keep the grid short; ``--experts 32`` runs them.

What is timed, per dispatch strategy (``jmoe/<strategy>`` rows):
  * fwd:      ``jit(MoELayer.apply)`` -- the whole layer: router (Dense + softmax + top-k + routing metrics) +
              dispatch + vmapped experts + combine; returns y and the dropped fraction (other metrics are not
              returned, so XLA may prune the router statistics y does not need).
  * fwd+bwd:  ``jit(value_and_grad(lambda p, x: sum(y**2), argnums=(0, 1)))`` -- gradients w.r.t. all params and x.
Every row of a config is compiled and warmed up first (the first call compiles; a second untimed call unless the
first took over a second), then the rows are timed *interleaved*, one call of each per round with
``block_until_ready``, for ``--repeats`` rounds; a row that has spent ``--max-seconds`` and has ``--min-repeats``
runs leaves the rounds. We report the median, the p10-p90 spread and the fastest run. Interleaving keeps the
ratios meaningful on a shared machine: other processes slow all rows of a round alike. The CPU share other
processes used while a table was timed is printed above it (from /proc/stat minus this process's own CPU time).

Reference rows measured in the same run:
  * ``floor/matmul``: the routed expert work alone under jit: einsum [E, N*K/E, D] x [E, D, H] -> gelu -> einsum
    [E, N*K/E, H] x [E, H, D] (no bias): exactly the routed FLOPs, no routing, no gather/scatter. The floor.
  * ``torch/loop`` (eager: router Linear + softmax + topk, then per expert index_select -> Linear -> GELU(tanh) ->
    Linear -> * weight -> index_add_) and ``torch/dense`` (every expert on every token with baddbmm, masked
    combine). ``torch.set_num_threads`` = the cores JAX's thread pool uses (2 here; ``--torch-threads`` overrides).
    Torch fwd runs under ``torch.no_grad``. Caveat: when other processes use the CPU, torch's 2 OpenMP threads
    stall at every op's barrier and torch/loop (~100 small ops per call) gets 10-20x slower (see its spread).

FLOPs: routed expert work only, 2*N*K*(D*H + H*D) fwd and 3x that fwd+bwd. The router (2*N*D*E), gelu, biases,
routing bookkeeping and any padding (capacity slack; dense computing every expert) are *not* counted: GFLOP/s is
useful routed work per second, so overhead shows up as a lower number.

Capacity: ``--capacity-factor`` (default 1.0) applies to ``einsum`` and ``sorted``: at 1.0 their buffers hold
exactly N*K/E rows per expert (the floor's work); overflow is dropped (``drop%``, ~2% at E=8 and ~6% at E=32 with
these random weights). ``dense`` and ``ragged`` never drop. ``--capacity-factor 0`` = no dropping.

Measured on the 2-core AMD EPYC dev box with AVX-512 (jax 0.10.2, torch 2.13.0, dispatch.py with the gather VJPs,
machine otherwise idle), default grid, headline config fp32, medians: floor/matmul 20 ms fwd / 65 ms fwd+bwd;
jmoe/sorted 16 / 70 ms (0.81x / 1.07x the floor; 0.60x / 0.84x torch/loop); einsum 2.3x the floor; dense 4.2x;
ragged 7.6x at E=8 and 32x at E=32 (XLA:CPU runs ragged_dot as E dense masked matmuls); torch/loop 27 / 83 ms;
torch/dense 133 / 364 ms. sorted at E=32: 1.58x (bimodal fwd runs; fastest runs 1.10x; 1.05x in an earlier run) /
0.94x its E=8 time. The default grid took 1.5 minutes. Single-run fwd ratios at this size swing by +-0.2-0.4
(floor/matmul's forward the most); fwd+bwd ratios are steadier.
(An earlier AVX2-only box measured ~5x slower matmuls: floor 57 / 186 ms, sorted 62 / 210 ms before the gather VJPs.)

``--profile`` times each piece of jmoe/sorted (router, slot bookkeeping, dispatch gather, expert bank, combine;
their backward passes), interleaved, and times prototype variants against the library rows (same params,
outputs and gradients checked against the library first):
  * (found here, in dispatch.py since 9ea9081) the combine adds the K slot slices: XLA:CPU runs a reduction over a
    small leading axis of a big array several times slower than the equivalent adds (headline config: ~1.7 ms vs
    ~0.2 ms in today's [K, N] slot layout; ~6 ms in the old [G, K*S] one). The piece table still times the old form.
  * (found here, in dispatch.py since the gather-VJP commit) custom VJPs whose backward passes are gathers
    (dispatch and combine are permutations of the kept slots, so their transposes are the inverse gathers): the
    combine's backward is ~1 ms, vs ~5 ms for plain autodiff's scatter-add in the same [K, N] layout (and ~32 ms
    for the old [G, K*S]-layout autodiff code). The piece table times both forms, from ``dispatch.sorted_plan``.
  * proto/ragged-blocked: dropless without ragged_dot: each expert's run padded to blocks of 128 rows, one
                          lax.scan step per block; cost stays flat in E.
These live here only to measure; the library's dispatch is ``jmoe/moe/dispatch.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import TopKRouter

HEADLINE = dict(tokens=4096, dim=256, hidden=512, experts=8, top_k=2)
# Default grid: the headline config, the same tokens over 32 experts, and top-1. At E=32 the grid leaves out the
# rows that run every expert on every token (jmoe/dense, torch/dense: E/K = 16x the routed work, ~1-2 s fwd and
# ~3-6 s fwd+bwd each here) to keep the grid near 3 minutes; ask for them with --experts 32.
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


def num_threads() -> int:
  """Cores this process may run on (what XLA's CPU thread pool sizes itself to)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - non-Linux
    return os.cpu_count() or 1


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel

    return torch
  except ImportError:
    return None


def machine_info(torch_mod=None) -> dict[str, Any]:
  cpu = platform.processor() or "unknown"
  flags: list[str] = []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
          cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
          flags = [fl for fl in line.split(":", 1)[1].split() if fl.startswith(("avx", "fma", "amx"))]
  except OSError:
    pass
  devices = jax.devices()
  info = {
    "cpu_model": cpu,
    "cpu_simd_flags": sorted(set(flags)),
    "cores": num_threads(),
    "os_cpu_count": os.cpu_count(),
    "platform": platform.platform(),
    "python": sys.version.split()[0],
    "jax": jax.__version__,
    "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
    "backend": jax.default_backend(),
    "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "torch": None,
    "torch_threads": None,
  }
  if torch_mod is not None:
    info["torch"] = torch_mod.__version__
    info["torch_threads"] = torch_mod.get_num_threads()
  return info


def _jaxlib_version() -> str:
  import jaxlib  # pylint: disable=import-outside-toplevel

  return jaxlib.__version__


# ----------------------------------------------------------------------------------------------------------------
# Timing


def _block(out):
  return jax.block_until_ready(out)


def time_fn(
  fn: Callable[[], Any],
  repeats: int,
  warmup: int,
  max_seconds: float,
  min_repeats: int,
  block: Callable[[Any], Any] = _block,
) -> dict[str, Any]:
  """Warm up, then time ``repeats`` calls of fn() (each blocked until ready). Returns stats in seconds."""
  t0 = time.perf_counter()
  block(fn())
  first = time.perf_counter() - t0  # includes compilation for jitted functions
  for _ in range(max(0, warmup - 1)):
    block(fn())
  times = []
  spent = 0.0
  for i in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    dt = time.perf_counter() - t0
    times.append(dt)
    spent += dt
    if spent > max_seconds and i + 1 >= min_repeats:
      break
  arr = np.asarray(times)
  return {
    "median_s": float(np.median(arr)),
    "p10_s": float(np.percentile(arr, 10)),
    "p90_s": float(np.percentile(arr, 90)),
    "min_s": float(arr.min()),
    "n": len(times),
    "first_call_s": first,
  }


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


def _stats(times: list[float]) -> dict[str, Any]:
  arr = np.asarray(times)
  return {
    "median_s": float(np.median(arr)),
    "p10_s": float(np.percentile(arr, 10)),
    "p90_s": float(np.percentile(arr, 90)),
    "min_s": float(arr.min()),
    "n": len(times),
  }


def time_interleaved(entries: list[dict[str, Any]], key: str, args) -> None:
  """Time entries[i][key]() in rounds (every active row once per round), so that load from other processes on a
  shared machine hits all rows of a config alike and the ratios stay meaningful. A row leaves the rounds once it
  has spent ``--max-seconds`` and run ``--min-repeats`` times. Stores the stats under entries[i]['stats'][key]."""
  for ent in entries:
    fn, block = ent[key], ent["block"]
    t0 = time.perf_counter()
    block(fn())
    ent.setdefault("first_call_s", {})[key] = time.perf_counter() - t0  # includes compilation
    for _ in range(max(0, args.warmup - 1)):  # untimed warm calls; skipped once one takes over a second
      t0 = time.perf_counter()
      block(fn())
      if time.perf_counter() - t0 > 1.0:
        break
    ent.setdefault("times", {})[key] = []
  active = list(entries)
  for _ in range(args.repeats):
    for ent in active:
      fn, block = ent[key], ent["block"]
      t0 = time.perf_counter()
      block(fn())
      ent["times"][key].append(time.perf_counter() - t0)
    active = [
      e for e in active if not (sum(e["times"][key]) > args.max_seconds and len(e["times"][key]) >= args.min_repeats)
    ]
    if not active:
      break
  for ent in entries:
    ent.setdefault("stats", {})[key] = _stats(ent["times"][key])


def run_config(
  cfg: Config, strategies: Sequence[str], args, torch_mod, skip: Sequence[str] = ()
) -> list[dict[str, Any]]:
  flops = routed_flops(cfg)
  builders: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = []
  for s in strategies:
    builders.append((f"jmoe/{s}", lambda s=s: jmoe_fns(cfg, s), _block))
  builders.append(("floor/matmul", lambda: floor_fns(cfg), _block))
  if torch_mod is not None:
    for kind in ("loop", "dense"):
      builders.append((f"torch/{kind}", lambda kind=kind: torch_fns(cfg, kind, torch_mod), lambda out: out))
  entries = []
  for name, build, block in builders:
    if name in skip:
      continue
    fwd, fwd_bwd, extra = build()
    entries.append({"name": name, "fwd": fwd, "fwd_bwd": fwd_bwd, "block": block, "extra": extra})
  load_before = _loadavg()
  foreign = ForeignCpu().start()
  t_start = time.perf_counter()
  time_interleaved(entries, "fwd", args)
  time_interleaved(entries, "fwd_bwd", args)
  timing_s = time.perf_counter() - t_start
  foreign_frac = foreign.stop()
  load_after = _loadavg()
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


def _loadavg() -> float | None:
  try:
    return os.getloadavg()[0]
  except OSError:  # pragma: no cover
    return None


class ForeignCpu:
  """Fraction of the machine's CPU time used by *other* processes between start() and stop().

  Busy ticks of all CPUs from /proc/stat minus this process's own user+system time (all its threads). The load
  average cannot tell: it counts this benchmark's own threads too."""

  def __init__(self):
    self.t0 = self.busy0 = self.own0 = None

  @staticmethod
  def _busy_s() -> float | None:
    try:
      with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    busy = sum(vals[:8]) - vals[3] - vals[4]  # user nice system idle iowait irq softirq steal: all but idle/iowait
    return busy / os.sysconf("SC_CLK_TCK")

  @staticmethod
  def _own_s() -> float:
    t = os.times()
    return t.user + t.system

  def start(self):
    self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()
    return self

  def stop(self) -> float | None:
    busy = self._busy_s()
    if busy is None or self.busy0 is None:
      return None
    wall = time.perf_counter() - self.t0
    frac = ((busy - self.busy0) - (self._own_s() - self.own0)) / (wall * (os.cpu_count() or 1))
    return max(0.0, min(1.0, frac))


# ----------------------------------------------------------------------------------------------------------------
# --profile: where the time of the sorted dispatch goes (its pieces use the library's dispatch.sorted_plan), and
# prototype variants of it (measured here only; the library's jmoe/moe/dispatch.py is not changed by this script).


# The custom-VJP row gathers of the library's sorted dispatch (timed piece by piece below).
_dispatch_rows = dispatch_lib._dispatch_rows  # pylint: disable=protected-access
_combine_rows = dispatch_lib._combine_rows  # pylint: disable=protected-access


RAGGED_BLOCK = 128


def proto_ragged_blocked(
  experts, x, routing, capacity_factor=None, group_size=None, blocked=None, block: int = RAGGED_BLOCK
):
  """Dropless like ``ragged``, without ``lax.ragged_dot`` (which XLA:CPU runs as E dense masked matmuls).

  Token-slots sorted by expert are laid out in blocks of ``block`` rows, each expert's run padded to a whole
  number of blocks; NB = N*K // block + E blocks always suffice (a static shape). ``blocked(xb [NB, b, D],
  expert_of_block [NB])`` runs each block through its expert inside a ``lax.scan`` (one [b, D] x [D, H] matmul
  pair per step, weights picked by dynamic index, no copy). Padding <= E*(block-1) rows. Combine: gather the
  K rows of each token and add the K slices."""
  del capacity_factor, group_size
  n, d = x.shape
  k, e = routing.k, routing.num_experts
  expert, order, counts, starts, position = dispatch_lib._slot_positions(  # pylint: disable=protected-access
    routing.index.reshape(1, n, k), e
  )
  expert, order, counts, starts, position = expert[0], order[0], counts[0], starts[0], position[0]
  nb = (n * k) // block + e
  blocks_of = (counts + block - 1) // block  # [E]
  bend = jnp.cumsum(blocks_of)
  bstart = bend - blocks_of
  eob = jnp.searchsorted(bend, jnp.arange(nb), side="right").astype(jnp.int32)  # [NB], E for unused blocks
  eob_c = jnp.minimum(eob, e - 1)
  pos = (jnp.arange(nb) - bstart[eob_c])[:, None] * block + jnp.arange(block)[None, :]  # [NB, b] rank in expert
  valid = (eob < e)[:, None] & (pos < counts[eob_c][:, None])
  slot = order[jnp.clip(starts[eob_c][:, None] + pos, 0, n * k - 1)]  # [NB, b]
  xb = jnp.where(valid[..., None], x[slot % n], 0)
  yb = blocked(xb, eob_c).reshape(nb * block, -1)  # [NB*b, O]
  row = (bstart[expert] * block + position).reshape(k, n)  # slot (k, n) -> its row
  w = jnp.swapaxes(routing.weights, 0, 1)  # [K, N]
  y = None
  for j in range(k):
    term = yb[row[j]] * w[j][:, None].astype(yb.dtype)
    y = term if y is None else y + term
  return y, {"dropped_fraction": jnp.zeros((), jnp.float32), "capacity": n}


def _blocked_mlp(params, xb, eob):
  """MLPExpert (Dense -> gelu -> Dense) on blocks xb [NB, b, D], block j through expert eob[j]."""
  wi, wo = params["wi"], params["wo"]

  def step(_, inp):
    xblk, ex = inp
    h = nn.gelu(xblk @ wi["kernel"][ex] + wi["bias"][ex])
    return None, h @ wo["kernel"][ex] + wo["bias"][ex]

  return jax.lax.scan(step, None, (xb, eob))[1]


# Earlier prototypes are in dispatch.py now: the K-slice combine (commit 9ea9081) and the gather-only custom VJPs
# (proto/sorted-gathers); the piece table still times the forms they replaced.
PROTOS = {"proto/ragged-blocked": proto_ragged_blocked}
# Which library row each prototype must reproduce (same params, same routing).
PROTO_REFERENCE = {"proto/ragged-blocked": "jmoe/ragged"}


class ProtoMoELayer(nn.Module):
  """MoELayer.__call__ with the dispatch function swapped for a prototype (same parameter tree)."""

  router: nn.Module
  expert: nn.Module
  num_experts: int
  dispatch_fn: Callable
  capacity_factor: float | None = None
  group_size: int | None = None

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    from jmoe.moe.experts import ExpertBank  # pylint: disable=import-outside-toplevel

    routing = self.router(x, deterministic=deterministic)
    bank = ExpertBank(self.expert, self.num_experts, name="experts")
    fns = dispatch_lib.ExpertFns(batched=lambda xs: bank(xs, deterministic))
    kw = {}
    if self.dispatch_fn is proto_ragged_blocked:  # MLPExpert only; params read from the bank's stacked tree
      kw["blocked"] = lambda xb, eob: _blocked_mlp(self.variables["params"]["experts"]["stack"], xb, eob)
    y, dm = self.dispatch_fn(fns, x, routing, capacity_factor=self.capacity_factor, group_size=self.group_size, **kw)
    return y, dict(routing.metrics, dropped_fraction=dm["dropped_fraction"])


def proto_fns(cfg: Config, name: str, seed: int = 0):
  layer = ProtoMoELayer(
    router=TopKRouter(cfg.experts, k=cfg.top_k),
    expert=MLPExpert(hidden=cfg.hidden, out=cfg.dim, dtype=_jax_dtype(cfg.dtype)),
    num_experts=cfg.experts,
    dispatch_fn=PROTOS[name],
    capacity_factor=cfg.capacity_factor,
    group_size=cfg.group_size,
  )
  x = make_inputs(cfg, seed)
  params = init_params(make_layer(cfg, "sorted"), x, seed)  # the same params as jmoe/sorted
  fwd = jax.jit(lambda p, x: layer.apply(p, x)[0])
  fwd_bwd = jax.jit(jax.value_and_grad(lambda p, x: _sq_loss(layer.apply(p, x)[0]), argnums=(0, 1)))
  _, _, metrics = jax.jit(layer.apply)(params, x)
  return (
    (lambda: fwd(params, x)),
    (lambda: fwd_bwd(params, x)),
    {"dropped_fraction": float(metrics["dropped_fraction"]), "params": params, "x": x, "layer": layer},
  )


def profile_pieces(cfg: Config, args) -> list[tuple[str, float, float]]:
  """Time each stage of jmoe/sorted separately: each piece its own jit with precomputed inputs, all pieces timed
  interleaved. Returns [(name, median_s, min_s)]."""
  from jmoe.moe.experts import ExpertBank  # pylint: disable=import-outside-toplevel

  n, d, e, k = cfg.tokens, cfg.dim, cfg.experts, cfg.top_k
  layer = make_layer(cfg, "sorted")
  x = make_inputs(cfg)
  params = init_params(layer, x)
  p = params["params"]
  router, bank = layer.router, ExpertBank(layer.expert, e)
  entries = []

  def t(name, f, *a):
    jf = jax.jit(f)
    entries.append({"name": name, "run": lambda: jf(*a), "block": _block})
    return jf(*a)

  def route(pr, x):
    return router.apply({"params": pr}, x)

  routing = t("fwd  router (Dense, softmax, top_k, metrics)", route, p["router"], x)
  c = dispatch_lib.capacity_for(dispatch_lib.group_size_for(n, cfg.group_size), k, e, cfg.capacity_factor)
  token, valid, kslot, row, keep = t(
    "fwd  slot bookkeeping (argsort, bincount, positions)",
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

  def combine_reduce(ys, wk):  # jnp.sum over the K axis (dispatch.py before 9ea9081)
    return jnp.sum(ys.reshape(r, d)[row] * wk[..., None], axis=0)

  def combine_ksum(ys, wk):  # K slice adds, plain autodiff gathers (before the custom VJPs)
    return dispatch_lib._sum_k(ys.reshape(r, d)[row] * wk[..., None], axis=0)  # pylint: disable=protected-access

  def combine_gathers(ys, wk):  # dispatch.py
    return _combine_rows(ys.reshape(r, d), wk, row, token, kslot, valid)

  t("fwd  combine: custom-VJP gathers, *w, K slice adds (dispatch.py)", combine_gathers, ys, wk)
  t("fwd    ... its gather ys[row] alone", lambda ys: ys.reshape(r, d)[row], ys)
  t("fwd    ... plain autodiff gathers, K slice adds (before the custom VJPs)", combine_ksum, ys, wk)
  t("fwd    ... jnp.sum over K instead (dispatch.py before 9ea9081)", combine_reduce, ys, wk)
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
    "bwd  dispatch vjp, plain autodiff: scatter-add into x (before)",
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
    "bwd  combine vjp, plain autodiff: pad + scatter-add (before)",
    lambda ys, wk, ct: jax.vjp(combine_ksum, ys, wk)[1](ct),
    ys,
    wk,
    dy,
  )
  t(
    "bwd    ... jnp.sum over K: scatter-add (before 9ea9081)",
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
  time_interleaved(entries, "run", args)
  return [(ent["name"], ent["stats"]["run"]["median_s"], ent["stats"]["run"]["min_s"]) for ent in entries]


def profile_config(cfg: Config, args) -> list[dict[str, Any]]:
  print(f"## profile of jmoe/sorted: {cfg.label()}", flush=True)
  pieces = profile_pieces(cfg, args)
  w = max(len(nm) for nm, _, _ in pieces)
  print(f"  {'piece'.ljust(w)} {'median':>9s}    {'best':>9s}")
  for nm, med, best in pieces:
    print(f"  {nm.ljust(w)} {med * 1e3:9.2f} ms {best * 1e3:9.2f} ms")
  print(
    "  (each piece is its own jit with precomputed inputs, timed interleaved; fusion across pieces is lost, so "
    "the pieces of a pass add up to roughly, not exactly, its FULL line)"
  )
  # Variants, interleaved with the library rows they replace and the floor.
  entries = []
  for name, build in [
    ("jmoe/sorted", lambda: jmoe_fns(cfg, "sorted")),
    ("floor/matmul", lambda: floor_fns(cfg)),
    ("jmoe/ragged", lambda: jmoe_fns(cfg, "ragged")),
  ] + [(nm, lambda nm=nm: proto_fns(cfg, nm)) for nm in PROTOS]:
    fwd, fwd_bwd, extra = build()
    entries.append({"name": name, "fwd": fwd, "fwd_bwd": fwd_bwd, "block": _block, "extra": extra})
  # Check each prototype against the library row it replaces (same params and routing) before timing it.
  by_name = {ent["name"]: ent for ent in entries}
  for ent in entries:
    if ent["name"] not in PROTO_REFERENCE:
      continue
    ref = by_name[PROTO_REFERENCE[ent["name"]]]
    err = float(jnp.max(jnp.abs(ent["fwd"]() - ref["fwd"]()[0])))
    gerr = max(
      float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
      for a, b in zip(jax.tree.leaves(ent["fwd_bwd"]()), jax.tree.leaves(ref["fwd_bwd"]()))
    )
    ent["extra"]["max_abs_err"] = (err, gerr)
    print(
      f"  {ent['name']} vs {ref['name']}: max |y - y_ref| = {err:.2e}, "
      f"max |grad - grad_ref| / max |grad_ref| = {gerr:.2e} (worst leaf; loss value included)"
    )
  time_interleaved(entries, "fwd", args)
  time_interleaved(entries, "fwd_bwd", args)
  floor = entries[1]["stats"]
  rows = []
  print(
    f"  {'variant':22s} {'fwd ms':>8s} {'x floor':>8s} {'(min)':>6s} {'f+b ms':>8s} {'x floor':>8s} {'(min)':>6s}"
    f"   (x floor = ratio of medians; (min) = ratio of fastest runs, less sensitive to other load)"
  )
  for ent in entries:
    st = ent["stats"]
    f, b = st["fwd"], st["fwd_bwd"]
    print(
      f"  {ent['name']:22s} {f['median_s'] * 1e3:8.1f} {f['median_s'] / floor['fwd']['median_s']:8.2f} "
      f"{f['min_s'] / floor['fwd']['min_s']:6.2f} {b['median_s'] * 1e3:8.1f} "
      f"{b['median_s'] / floor['fwd_bwd']['median_s']:8.2f} {b['min_s'] / floor['fwd_bwd']['min_s']:6.2f}"
    )
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
        "reference": PROTO_REFERENCE.get(ent["name"]),
        "max_abs_err": ent["extra"].get("max_abs_err"),
        "dropped_fraction": ent["extra"].get("dropped_fraction"),
      }
    )
  print(flush=True)
  return {"pieces": [{"name": nm, "median_s": med, "min_s": best} for nm, med, best in pieces], "variants": rows}


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
  widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
  fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  n_f = [r["n_repeats"] for r in rows]
  n_b = [r["fwd_bwd_n_repeats"] for r in rows]
  foreign = rows[0].get("foreign_cpu_fraction") if rows else None
  out = [
    f"## {cfg.label()}",
    f"   routed FLOPs: fwd {routed_flops(cfg) / 1e9:.3f} GFLOP (2*N*K*(D*H+H*D); router, gelu, bias, padding "
    f"not counted), fwd+bwd 3x. Medians of {min(n_f)}-{max(n_f)} fwd / {min(n_b)}-{max(n_b)} fwd+bwd runs, "
    f"rows interleaved; best = fastest fwd run; ratios are of medians; x torch = vs the fastest torch row.",
    (
      ""
      if foreign is None
      else f"   other processes used {100 * foreign:.0f}% of the CPU while this table was timed"
      + (
        "  -- WARNING: shared machine; absolute times are inflated and noisy (rows are interleaved, so "
        "the ratios suffer less; torch's OpenMP barriers suffer most)"
        if foreign > 0.1
        else ""
      )
    ),
    fmt(head),
    "-+-".join("-" * w for w in widths),
  ]
  out += [fmt(l) for l in lines]
  return "\n".join(out)


def check_targets(results: list[dict[str, Any]]) -> list[str]:
  """The report-only targets of the headline config (see module docstring). Returns human-readable lines."""
  msgs = []
  by_cfg: dict[tuple, dict[str, dict]] = {}
  for r in results:
    c = r["config"]
    by_cfg.setdefault(tuple(sorted(c.items())), {})[r["name"]] = r

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
    ok = best[floor_key] <= 1.15
    msgs.append(
      f"target fastest jmoe <= 1.15x floor/matmul ({label}): {best['name']} {best[floor_key]:.2f}x "
      f"-> {'MET' if ok else 'MISSED'}"
    )
    if best.get(torch_key) is not None:
      ok = best[torch_key] <= 0.9
      foreign = best.get("foreign_cpu_fraction")
      caveat = (
        f" (UNRELIABLE: other processes used {100 * foreign:.0f}% of the CPU and torch's OpenMP threads "
        f"stall under contention; rerun on a quiet machine)"
        if foreign is not None and foreign > 0.1
        else ""
      )
      msgs.append(
        f"target fastest jmoe <= 0.9x best torch ({label}): {best['name']} {best[torch_key]:.2f}x "
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
    "threads on 2 cores stall at every op's barrier and torch/loop gets 10-20x slower; 1 avoids that",
  )
  p.add_argument("--group-size", type=int)
  p.add_argument(
    "--profile",
    action="store_true",
    help="time the pieces of the sorted dispatch and prototype variants instead (see profile_sorted)",
  )
  p.add_argument("--verbose", action="store_true")
  return p.parse_args(argv)


def configs_from_args(args) -> list[tuple[Config, tuple[str, ...]]]:
  """[(config, row names to skip)]: the default grid without size flags, else one config (headline defaults)."""
  given = {k: getattr(args, k) for k in HEADLINE if getattr(args, k) is not None}
  grid = DEFAULT_GRID if not given else ((dict(HEADLINE, **given), ()),)
  cf = None if args.capacity_factor is not None and args.capacity_factor <= 0 else args.capacity_factor
  return [
    (Config(**g, capacity_factor=cf, dtype=args.dtype, group_size=args.group_size), tuple(skip)) for g, skip in grid
  ]


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
  unknown = [s for s in strategies if s not in dispatch_lib.STRATEGIES]
  if unknown:
    raise SystemExit(f"unknown strategies {unknown}; choose from {dispatch_lib.STRATEGIES}")
  torch_mod = None if args.no_torch else _import_torch()
  if torch_mod is not None:
    torch_mod.set_num_threads(args.torch_threads or num_threads())
  machine = machine_info(torch_mod)
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
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {args.json}")
  return out


if __name__ == "__main__":
  main()
