"""Routing-throughput benchmark of the routed expert layer (``jmoe.moe.layer.MoELayer``): what is timed.

    python -m tools.bench_routing --json runs/bench/routing.json          # default grid (three configs)
    python -m tools.bench_routing --tokens 4096 --experts 8 --top-k 2 --processes 5 --json runs/bench/p5.json
    python -m tools.bench_routing --profile --tokens 4096 --experts 8 --top-k 2   # pieces of jmoe/sorted

Rows, each a (fwd, fwd+bwd) pair timed interleaved: ``jmoe/<strategy>`` (``jit(MoELayer.apply)`` and the
gradient of sum(y**2) w.r.t. parameters and x), ``floor/matmul`` (exactly the routed FLOPs as one batched matmul
pair with gelu between, no routing) and the PyTorch twins ``torch/loop``, ``torch/dense``, ``torch/loop+compile``.
GFLOP/s counts the routed expert work only, 2*N*K*(D*H + H*D) fwd and 3x that fwd+bwd. ``--capacity-factor``
applies to einsum and sorted (overflow dropped, ``drop%``). Grid, rows and numbers: docs/benchmarks.md; targets:
``tools/targets.json`` (bench ``routing``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jmoe.moe import dispatch as dispatch_lib
from jmoe.moe.experts import ExpertBank, MLPExpert
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import TopKRouter
from tools import benchlib

HEADLINE = {"tokens": 4096, "dim": 256, "hidden": 512, "experts": 8, "top_k": 2}
DEFAULT_GRID = (
  (dict(HEADLINE), ()),
  (dict(HEADLINE, experts=32), ("jmoe/dense", "torch/dense")),
  (dict(HEADLINE, top_k=1), ()),
)
PASSES = ("fwd", "fwd_bwd")


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
    return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


def routed_flops(cfg: Config) -> float:
  """Forward FLOPs of the routed expert work: 2*N*K*(D*H + H*D)."""
  return 2.0 * cfg.tokens * cfg.top_k * (cfg.dim * cfg.hidden + cfg.hidden * cfg.dim)


def _sq_loss(y):
  return jnp.sum(jnp.square(y.astype(jnp.float32)))


def make_layer(cfg: Config, strategy: str) -> MoELayer:
  return MoELayer(
    router=TopKRouter(cfg.experts, k=cfg.top_k),
    expert=MLPExpert(hidden=cfg.hidden, out=cfg.dim),
    num_experts=cfg.experts,
    strategy=strategy,
    capacity_factor=cfg.capacity_factor,
    group_size=cfg.group_size,
    dtype=jnp.dtype(cfg.dtype),
  )


def init_params(layer, x, seed: int = 0):
  """fp32 parameters with the layer's tree (``jax.eval_shape``, no routing run): kernels ~ N(0, 1/fan_in), biases
  0; every strategy of a config gets the same values, so their routing and drops are identical."""
  leaves, treedef = jax.tree.flatten(jax.eval_shape(layer.init, jax.random.PRNGKey(seed), x))
  rng = np.random.default_rng(seed)
  vals = [
    rng.standard_normal(a.shape, np.float32) / np.sqrt(a.shape[-2]) if a.ndim >= 2 else np.zeros(a.shape, np.float32)
    for a in leaves
  ]
  return jax.tree.unflatten(treedef, [jnp.asarray(v, jnp.float32) for v in vals])


def jmoe_fns(cfg: Config, strategy: str, seed: int = 0):
  """(fwd thunk, fwd+bwd thunk, extra info) for MoELayer.apply with this strategy."""
  layer = make_layer(cfg, strategy)
  x = jax.random.normal(jax.random.PRNGKey(seed), (cfg.tokens, cfg.dim), jnp.float32)
  params = init_params(layer, x, seed)

  def fwd_fn(p, x):
    out = layer.apply(p, x)
    return out.y, out.metrics["dropped_fraction"]

  fwd = jax.jit(fwd_fn)
  fwd_bwd = jax.jit(jax.value_and_grad(lambda p, x: _sq_loss(layer.apply(p, x)[0]), argnums=(0, 1)))
  extra = {"dropped_fraction": float(jax.block_until_ready(fwd(params, x))[1])}
  return (lambda: fwd(params, x)), (lambda: fwd_bwd(params, x)), extra


def floor_fns(cfg: Config, seed: int = 0):
  """The routed expert FLOPs as one batched matmul pair with gelu between: [E, R, D] x [E, D, H] -> [E, R, D]."""
  e, d, h = cfg.experts, cfg.dim, cfg.hidden
  rows, dt = cfg.tokens * cfg.top_k // e, jnp.dtype(cfg.dtype)
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  xe = jax.random.normal(k1, (e, rows, d), jnp.float32).astype(dt)
  w1 = (jax.random.normal(k2, (e, d, h), jnp.float32) / math.sqrt(d)).astype(dt)
  w2 = (jax.random.normal(k3, (e, h, d), jnp.float32) / math.sqrt(h)).astype(dt)

  def f(w1, w2, xe):
    return jnp.einsum("erh,ehd->erd", jax.nn.gelu(jnp.einsum("erd,edh->erh", xe, w1)), w2)

  fwd = jax.jit(f)
  fwd_bwd = jax.jit(jax.value_and_grad(lambda w1, w2, xe: _sq_loss(f(w1, w2, xe)), argnums=(0, 1, 2)))
  return (lambda: fwd(w1, w2, xe)), (lambda: fwd_bwd(w1, w2, xe)), {}


def torch_fns(cfg: Config, kind: str, torch, device: str = "cpu", seed: int = 0):
  """PyTorch MoE rows: 'loop' (index_select per expert, index_add back), 'dense' (bmm over all experts) or
  'loop+compile' (torch.compile of the loop)."""
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
      weights, index = torch.topk(torch.softmax(self.gate(x).float(), dim=-1), k, dim=-1)  # [N, K]
      out = torch.zeros_like(x)
      for j, expert in enumerate(self.experts):
        tok, slot = torch.where(index == j)
        out.index_add_(0, tok, expert(x.index_select(0, tok)) * weights[tok, slot].unsqueeze(-1).to(x.dtype))
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
      hid = F.gelu(torch.baddbmm(self.b1, x.unsqueeze(0).expand(e, -1, -1), self.w1), approximate="tanh")
      return torch.einsum("ne,end->nd", combine, torch.baddbmm(self.b2, hid, self.w2))

  model = (DenseMoE() if kind == "dense" else LoopMoE()).to(device=device, dtype=dt)
  run = torch.compile(model) if kind.endswith("+compile") else model
  x = torch.randn(cfg.tokens, d, dtype=torch.float32).to(device=device, dtype=dt)
  xg = x.clone().requires_grad_(True)

  def fwd():
    with torch.no_grad():
      return run(x)

  def fwd_bwd():
    model.zero_grad(set_to_none=True)
    xg.grad = None
    loss = run(xg).float().square().sum()
    loss.backward()
    return loss

  return fwd, fwd_bwd, {}


def torch_block(torch, device: str):
  return (lambda out: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda out: out)


# ----------------------------------------------------------------------------------------------------------------
# One config: build the rows, time them interleaved, derive the numbers


def run_config(
  cfg: Config,
  strategies: Sequence[str],
  timing: dict[str, Any],
  torch_mod=None,
  torch_kinds: Sequence[str] = ("loop", "dense"),
  torch_device: str = "cpu",
  skip: Sequence[str] = (),
) -> list[dict[str, Any]]:
  """The timed rows of one config. ``timing``: kwargs of ``benchlib.time_interleaved`` (repeats, warmup,
  max_seconds, min_repeats). A row that fails to build (e.g. torch.compile on an image without a compiler) is
  reported with its error instead of stopping the config."""
  builders: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = [
    (f"jmoe/{s}", lambda s=s: jmoe_fns(cfg, s), benchlib.block) for s in strategies
  ]
  builders.append(("floor/matmul", lambda: floor_fns(cfg), benchlib.block))
  for kind in torch_kinds if torch_mod is not None else ():
    build = lambda kind=kind: torch_fns(cfg, kind, torch_mod, torch_device)
    builders.append((f"torch/{kind}", build, torch_block(torch_mod, torch_device)))
  entries, failed = [], []
  for name, build, block in builders:
    if name in skip:
      continue
    try:
      fwd, fwd_bwd, extra = build()
      block(fwd())  # a row that cannot run fails here, before the rounds
    except Exception as e:  # pylint: disable=broad-except
      if not name.startswith("torch/"):
        raise
      failed.append({"name": name, "config": dataclasses.asdict(cfg), "error": f"{type(e).__name__}: {e}"[:300]})
      continue
    runtime = "torch" if name.startswith("torch/") else "jax"
    entries.append({"name": name, "fwd": fwd, "fwd_bwd": fwd_bwd, "block": block, "extra": extra, "runtime": runtime})
  foreign = benchlib.ForeignCpu().start()
  for key in PASSES:
    benchlib.time_interleaved(entries, key, **timing)
  foreign_frac = foreign.stop()
  return derive(cfg, entries, foreign_frac) + failed


def derive(cfg: Config, entries: list[dict[str, Any]], foreign: float | None = None) -> list[dict[str, Any]]:
  """Rows with stats per pass, routed GFLOP/s, tokens/s and the ratios to floor/matmul and the fastest torch row."""
  flops = {"fwd": routed_flops(cfg), "fwd_bwd": 3 * routed_flops(cfg)}
  rows = []
  for ent in entries:
    med = {p: ent["stats"][p]["median_s"] for p in PASSES}
    row = {"name": ent["name"], "config": dataclasses.asdict(cfg), **{p: ent["stats"][p] for p in PASSES}}
    row.update(ent.get("extra", {}), first_call_s=ent.get("first_call_s"), foreign_cpu_fraction=foreign)
    row.update(flops=flops, gflops={p: flops[p] / med[p] / 1e9 for p in PASSES})
    row["tokens_per_s"] = {p: cfg.tokens / med[p] for p in PASSES}
    rows.append(row)
  floor = next(r for r in rows if r["name"] == "floor/matmul")
  torch_rows = [r for r in rows if r["name"].startswith("torch/")]
  best = {p: min(torch_rows, key=lambda r: r[p]["median_s"]) if torch_rows else None for p in PASSES}
  for r in rows:
    r["x_floor"] = {p: r[p]["median_s"] / floor[p]["median_s"] for p in PASSES}
    r["x_torch"] = {p: r[p]["median_s"] / best[p][p]["median_s"] if best[p] else None for p in PASSES}
    r["best_torch"] = {p: best[p]["name"] if best[p] else None for p in PASSES}
  return rows


def format_table(cfg: Config, rows: list[dict[str, Any]], markdown: bool = False) -> str:
  head = ["name", "fwd ms", "p10-p90", "f+b ms", "GFLOP/s fwd", "GFLOP/s f+b", "x floor fwd", "x floor f+b"]
  head += ["x torch fwd", "x torch f+b", "drop%"]
  lines, notes = [], []
  for r in rows:
    if "error" in r:
      notes.append(f"   {r['name']}: not run ({r['error']})")
      continue
    f, drop = r["fwd"], r.get("dropped_fraction")
    lines.append(
      [
        r["name"],
        benchlib.with_spread(r, "fwd.median_s", 1e3, "{:.2f}"),
        f"{f['p10_s'] * 1e3:.1f}-{f['p90_s'] * 1e3:.1f}",
      ]
      + [benchlib.with_spread(r, "fwd_bwd.median_s", 1e3, "{:.2f}")]
      + [f"{r['gflops'][p]:.1f}" for p in PASSES]
      + [benchlib.with_spread(r, f"{k}.{p}") for k in ("x_floor", "x_torch") for p in PASSES]
      + ["-" if drop is None else f"{100 * drop:.1f}"]
    )
  foreign = rows[0].get("foreign_cpu_fraction") if rows else None
  out = [f"## {cfg.label()}", benchlib.foreign_line(foreign)] if not markdown else [f"**{cfg.label()}**", ""]
  return "\n".join(out + benchlib.format_rows(head, lines, markdown) + notes)


def check_targets(results: list[dict[str, Any]]) -> list[str]:
  """The headline-config targets of ``tools/targets.json`` (bench 'routing'), judged on the given rows."""
  targets = benchlib.load_targets("routing")
  by_cfg: dict[tuple, dict[str, dict]] = {}
  for r in results:
    if "error" not in r:
      by_cfg.setdefault(tuple(sorted(r["config"].items())), {})[r["name"]] = r

  def find(**kw):
    return next((rows for key, rows in by_cfg.items() if all(dict(key)[k] == v for k, v in kw.items())), None)

  head, e32, lines = find(**HEADLINE, dtype="float32"), find(**dict(HEADLINE, experts=32), dtype="float32"), []
  jrows = {n: r for n, r in (head or {}).items() if n.startswith("jmoe/")}
  for p in PASSES if jrows else ():
    best = min(jrows.values(), key=lambda r: r[p]["median_s"])
    lines.append(benchlib.judge(targets[f"routing.floor.{p}"], best["x_floor"][p], f"{best['name']} ")["line"])
    if best["x_torch"][p] is not None:
      torch_name = best["best_torch"][p]
      t = benchlib.judge(targets[f"routing.torch.{p}"], best["x_torch"][p], f"{best['name']} vs {torch_name} ")
      lines.append(t["line"])
  for p in PASSES if head and e32 and "jmoe/sorted" in head and "jmoe/sorted" in e32 else ():
    ratio = e32["jmoe/sorted"][p]["median_s"] / head["jmoe/sorted"][p]["median_s"]
    lines.append(benchlib.judge(targets[f"routing.e32.sorted.{p}"], ratio)["line"])
  return lines


# ----------------------------------------------------------------------------------------------------------------
# --profile: where the time of jmoe/sorted goes (its pieces, each its own jit, interleaved)


def profile(cfg: Config, timing: dict[str, Any]) -> list[dict[str, Any]]:
  """The sorted layer's pieces (router, slot plan, dispatch, expert bank, combine) fwd, the whole layer fwd and
  fwd+bwd, and the floor; each piece its own jit with precomputed inputs, so fusion across pieces is lost."""
  layer = make_layer(cfg, "sorted")
  x = jax.random.normal(jax.random.PRNGKey(0), (cfg.tokens, cfg.dim), jnp.float32)
  params = init_params(layer, x)
  p, e, k = params["params"], cfg.experts, cfg.top_k
  c = dispatch_lib.capacity_for(dispatch_lib.group_size_for(cfg.tokens, cfg.group_size), k, e, cfg.capacity_factor)
  routing = layer.router.apply({"params": p["router"]}, x)
  plan = dispatch_lib.sorted_plan(routing.index, e, c, cfg.group_size)
  token, valid, kslot, row, keep = plan[:5]
  xs = jnp.where(valid[:, None], x[token], 0).reshape(e, -1, cfg.dim)
  bank_mod = ExpertBank(layer.expert, e)
  ys = bank_mod.apply({"params": p["experts"]}, xs)
  wk = jnp.swapaxes(routing.weights, 0, 1) * keep
  fwd_bwd = jax.value_and_grad(lambda pp, x: _sq_loss(layer.apply(pp, x)[0]), argnums=(0, 1))
  pieces = {
    "router (weights, index, metrics)": (lambda pr, x: layer.router.apply({"params": pr}, x), p["router"], x),
    "slot plan (sorted_plan)": (lambda i: dispatch_lib.sorted_plan(i, e, c, cfg.group_size)[:5], routing.index),
    "dispatch gather": (lambda x: dispatch_lib._dispatch_rows(x, token, valid, row, keep), x),  # pylint: disable=protected-access
    "expert bank": (lambda pb, xs: bank_mod.apply({"params": pb}, xs), p["experts"], xs),
    "combine": (
      lambda ys, wk: dispatch_lib._combine_rows(ys.reshape(-1, cfg.dim), wk, row, token, kslot, valid),
      ys,
      wk,
    ),  # pylint: disable=protected-access
    "whole layer fwd": (lambda pp, x: layer.apply(pp, x)[0], params, x),
    "whole layer fwd+bwd": (fwd_bwd, params, x),
  }
  entries = []
  for name, (f, *a) in pieces.items():
    jf = jax.jit(f)
    entries.append({"name": name, "run": lambda jf=jf, a=a: jf(*a)})
  ffwd, ffb, _ = floor_fns(cfg)
  entries += [{"name": "floor fwd", "run": ffwd}, {"name": "floor fwd+bwd", "run": ffb}]
  benchlib.time_interleaved(entries, "run", **timing)
  return [{"name": ent["name"], **ent["stats"]["run"]} for ent in entries]


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  for flag in ("--tokens", "--dim", "--hidden", "--experts", "--top-k", "--group-size", "--torch-threads"):
    p.add_argument(flag, type=int)
  p.add_argument("--capacity-factor", type=float, default=1.0, help="einsum/sorted capacity factor; 0 = no drop")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--strategies", default=",".join(dispatch_lib.STRATEGIES))
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (the first compiles)")
  p.add_argument("--max-seconds", type=float, default=3.0, help="a row leaves the rounds after this much time")
  p.add_argument("--min-repeats", type=int, default=3)
  p.add_argument("--json", help="write the results here (e.g. runs/bench/routing.json)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--torch-compile", action="store_true", help="also time torch.compile of the loop")
  p.add_argument("--profile", action="store_true", help="time the pieces of jmoe/sorted instead")
  p.add_argument("--processes", type=int, default=1, help="run in this many fresh processes; medians over them")
  benchlib.add_malloc_flag(p, "retain")
  args = p.parse_args(argv)
  if args.processes < 1:
    p.error(f"--processes must be >= 1, got {args.processes}")
  if args.processes > 1 and args.profile:
    p.error("--processes summarises the benchmark tables; run --profile in one process")
  unknown = [s for s in args.strategies.split(",") if s and s not in dispatch_lib.STRATEGIES]
  if unknown:
    p.error(f"unknown strategies {unknown}; choose from {dispatch_lib.STRATEGIES}")
  return args


def configs_from_args(args) -> list[tuple[Config, tuple[str, ...]]]:
  """[(config, row names to skip)]: the default grid without size flags, else one config (headline defaults)."""
  given = {k: getattr(args, k) for k in HEADLINE if getattr(args, k) is not None}
  grid = DEFAULT_GRID if not given else ((dict(HEADLINE, **given), ()),)
  cf = None if args.capacity_factor is not None and args.capacity_factor <= 0 else args.capacity_factor
  return [(Config(**g, capacity_factor=cf, dtype=args.dtype, group_size=args.group_size), skip) for g, skip in grid]


def main(argv=None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.processes > 1:
    runs = benchlib.fresh_processes("tools.bench_routing", argv, args.processes)
    keys = [f"{p}.median_s" for p in PASSES] + [f"{k}.{p}" for k in ("x_floor", "x_torch") for p in PASSES]
    rows = benchlib.median_over_runs([r["results"] for r in runs], lambda r: (str(r["config"]), r["name"]), keys)
    for cfg in dict.fromkeys(Config(**r["config"]) for r in rows):
      print(format_table(cfg, [r for r in rows if Config(**r["config"]) == cfg]) + "\n")
    targets = [
      f"{line} [single runs: met in {sum(t[j].endswith('-> MET') for t in (r['targets'] for r in runs))} of "
      f"{len(runs)}]"
      for j, line in enumerate(check_targets(rows))
    ]
    print("\n".join(f"median over processes: {t}" for t in targets))
    out = {"machine": runs[0]["machine"], "runs": runs, "summary": rows, "targets": targets}
    benchlib.write_json(out, args.json)
    return out
  malloc = benchlib.apply_malloc(args)
  torch_mod = None if args.no_torch else benchlib.import_torch()
  if torch_mod is not None:
    torch_mod.set_num_threads(args.torch_threads or benchlib.num_threads())
  machine = dict(benchlib.machine_info(torch_mod), malloc=malloc)
  print(f"{malloc}\nmachine: {machine}", flush=True)
  timing = {
    "repeats": args.repeats,
    "warmup": args.warmup,
    "max_seconds": args.max_seconds,
    "min_repeats": args.min_repeats,
  }
  strategies = [s for s in args.strategies.split(",") if s]
  kinds = ("loop", "dense") + (("loop+compile",) if args.torch_compile else ())
  results, profiles = [], []
  for cfg, skip in configs_from_args(args):
    if args.profile:
      prof = profile(cfg, timing)
      profiles.append({"config": dataclasses.asdict(cfg), "pieces": prof})
      lines = [[r["name"], f"{r['median_s'] * 1e3:.2f}", f"{r['min_s'] * 1e3:.2f}"] for r in prof]
      print(
        "\n".join([f"## profile of jmoe/sorted: {cfg.label()}"] + benchlib.format_rows(["piece", "ms", "best"], lines))
      )
      continue
    rows = run_config(cfg, strategies, timing, torch_mod, kinds, skip=skip)
    results += rows
    print(format_table(cfg, rows) + "\n", flush=True)
  out = {"machine": machine, "results": results, "targets": check_targets(results), "profiles": profiles}
  print("\n".join(out["targets"]))
  benchlib.write_json(out, args.json)
  return out


if __name__ == "__main__":
  main()
