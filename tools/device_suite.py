"""The GPU device suite: one command, six parts, each with a time budget, results written after every part.

    python3 -m tools.device_suite --out $OUT/suite --budget-s 450    # on the H100/H200 (see tools/prepare_wheels)
    python -m tools.device_suite --smoke --out /tmp/suite             # every part at tiny sizes on CPU (< 1 min)

Step 0 installs the wheels carried in ``.whl/``. The parts, in order (docs/benchmarks.md says what each measures):
``environment`` (versions, measured fp32/bf16 matmul peak), ``routing`` (``tools.bench_routing`` rows at GPU
sizes), ``e_scaling`` (fixed T*k, E = 8..128), ``members`` (``tools.bench_members``), ``euar_train``
(``tools.bench_euar_train``) and ``himoe`` (a program of F folds x 5 seeds through the member axis and the
projected paper protocol). A part stops adding rows once its budget is spent; an error in a part is recorded and
the suite goes on; ``suite.json`` and ``suite.md`` are rewritten after every part and the ``device`` targets of
``tools/targets.json`` judged at the end. ``--smoke``: the smallest models and ``--xla_backend_optimization_level=0``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from tools import benchlib, prepare_wheels

PARTS = ("environment", "routing", "e_scaling", "members", "euar_train", "himoe")
# Seconds per part (of the default 450 s budget; scaled to --budget-s). Compilation counts against them.
BUDGET = {"environment": 30, "routing": 150, "e_scaling": 60, "members": 90, "euar_train": 50, "himoe": 70}
HIMOE_PROTOCOL = {"rates": 9, "seeds": 5, "folds": 32}  # missing rates 0.0:0.4:0.05 x 5 seeds x 32 LOSO folds


class Part:
  """A part's deadline: ``left()`` seconds remain; ``open()`` is False once the budget is spent."""

  def __init__(self, seconds: float):
    self.deadline = time.monotonic() + seconds

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def open(self) -> bool:
    return self.left() > 0


def timing(smoke: bool, part: Part) -> dict[str, Any]:
  return {"repeats": 3 if smoke else 10, "warmup": 2, "max_seconds": 0.5 if smoke else min(3.0, part.left() / 20)}


def _torch():
  torch = benchlib.import_torch()
  device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
  return torch, device


# ----------------------------------------------------------------------------------------------------------------
# The parts: each returns {"rows": [...], "table": markdown, ...}


def environment(smoke: bool, part: Part) -> dict[str, Any]:
  import flax
  import jax
  import jax.numpy as jnp

  torch, device = _torch()
  info = benchlib.machine_info(torch)
  info.update(flax=flax.__version__, torch_device=device, hostname=platform.node())
  if torch is not None and device == "cuda":
    info["torch_gpu"] = torch.cuda.get_device_name(0)
  n = 256 if smoke else 8192
  peaks = {}
  for dt in ("float32", "bfloat16"):
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32).astype(dt) for i in (1, 2))
    f = jax.jit(lambda a, b: a @ b)
    st = benchlib.time_fn(lambda f=f, a=a, b=b: f(a, b), repeats=10 if smoke else 20, warmup=3)
    peaks[dt] = 2.0 * n**3 / st["median_s"] / 1e12
  info["matmul_n"], info["peak_tflops"] = n, peaks
  rows = [[k, f"{v:.1f}"] for k, v in peaks.items()]
  lines = [
    f"device: {info['devices']} ({info['backend']}); jax {info['jax']}, flax {info['flax']}, torch {info['torch']}"
  ]
  lines += ["", f"measured matmul peak, {n}^3 (TFLOP/s):", ""] + benchlib.format_rows(["dtype", "TFLOP/s"], rows, True)
  return {"info": info, "table": "\n".join(lines)}


def _routing_rows(cfg, strategies, part, smoke, torch, device, kinds, peak) -> list[dict[str, Any]]:
  from tools import bench_routing as br

  rows = br.run_config(cfg, strategies, timing(smoke, part), torch, kinds, device)
  for r in rows:
    if "gflops" in r:
      r["tflops"] = {p: v / 1e3 for p, v in r["gflops"].items()}
      r["x_peak"] = {p: v / 1e3 / peak for p, v in r["gflops"].items()} if peak else None
  return rows


def routing(smoke: bool, part: Part, peaks: dict[str, float]) -> dict[str, Any]:
  from tools import bench_routing as br

  torch, device = _torch()
  sizes = [(64, 16, 32)] if smoke else [(131072, 1024, 4096), (16384, 1024, 4096)]
  experts = (4,) if smoke else (8, 64)
  out, tables = [], []
  first = True
  for dtype in ("bfloat16",) if smoke else ("bfloat16", "float32"):
    for tokens, d, h in sizes:
      for e in experts:
        if not part.open():
          tables.append(f"(budget spent: {dtype} tokens={tokens} E={e} and later configs not run)")
          break
        cfg = br.Config(tokens, d, h, e, 2, 1.0, dtype)
        strategies = [s for s in ("dense", "einsum", "sorted", "ragged") if s != "dense" or tokens * e * h * 4 < 2**34]
        kinds = ("loop", "loop+compile") if first and not smoke else ("loop",)
        rows = _routing_rows(cfg, strategies, part, smoke, torch, device, kinds, peaks.get(dtype))
        first = False
        out += rows
        tables.append(_routing_md(cfg, rows))
  return {"rows": out, "table": "\n\n".join(tables)}


def _routing_md(cfg, rows) -> str:
  head = ["row", "fwd ms", "f+b ms", "TFLOP/s fwd", "TFLOP/s f+b", "x peak fwd", "x floor fwd", "x floor f+b"]
  lines = []
  for r in rows:
    if "error" in r:
      lines.append([r["name"], "not run: " + r["error"][:60]] + ["-"] * 6)
      continue
    xp = r.get("x_peak") or {}
    lines.append(
      [r["name"], f"{r['fwd']['median_s'] * 1e3:.2f}", f"{r['fwd_bwd']['median_s'] * 1e3:.2f}"]
      + [f"{r['tflops'][p]:.1f}" for p in ("fwd", "fwd_bwd")]
      + [f"{xp['fwd']:.2f}" if xp else "-"]
      + [f"{r['x_floor'][p]:.2f}" for p in ("fwd", "fwd_bwd")]
    )
  return "\n".join([f"**{cfg.label()}**", ""] + benchlib.format_rows(head, lines, True))


def e_scaling(smoke: bool, part: Part) -> dict[str, Any]:
  from tools import bench_routing as br

  out, tables = [], []
  for e in (4, 8) if smoke else (8, 32, 128):
    if not part.open():
      tables.append(f"(budget spent: E={e} and later not run)")
      break
    cfg = br.Config(64 if smoke else 32768, 16 if smoke else 1024, 32 if smoke else 4096, e, 2, 1.0, "bfloat16")
    rows = br.run_config(cfg, ("ragged",) if smoke else ("sorted", "ragged"), timing(smoke, part))
    out += rows
    tables.append(_routing_md(cfg, [dict(r, tflops={p: v / 1e3 for p, v in r["gflops"].items()}) for r in rows]))
  return {"rows": out, "table": "\n\n".join(tables)}


def members(smoke: bool, part: Part) -> dict[str, Any]:
  from tools import bench_members as bm

  plan = [("euar", m) for m in ((2,) if smoke else (1, 4, 16, 64))] + [
    ("haemsa", p) for p in ((2,) if smoke else (16, 64))
  ]
  rows, lines = [], []
  for model, m in plan:
    if not part.open():
      lines.append([model, str(m), "budget spent", "-", "-"])
      continue
    res = bm.bench(model, (m,), steps=2 if smoke else 8, repeats=1 if smoke else 3, smoke=smoke, chunk=0)
    v = res["verdicts"][0]
    by_mode = {r["mode"]: r for r in res["rows"]}
    rows.append({"model": model, "members": m, "speedup": v["speedup"], "rows": res["rows"]})
    lines.append(
      [model, str(m), f"{by_mode['vmap']['samples_per_s']:,.0f}", f"{by_mode['sequential']['samples_per_s']:,.0f}"]
      + [f"{v['speedup']:.2f}"]
    )
  head = ["model", "members", "vmap samples/s", "sequential samples/s", "speedup"]
  return {"rows": rows, "table": "\n".join(benchlib.format_rows(head, lines, True))}


def euar_train(smoke: bool, part: Part) -> dict[str, Any]:
  from tools import bench_euar_train as bt

  torch, device = _torch()
  configs, tables = [], []
  for seq_len in (0, 50) if not smoke else (3,):
    if not part.open():
      break
    dims = (12, 3, 5) if smoke else bt.DEFAULT_DIMS
    mods = ("text",) if smoke else bt.MODALITIES
    cfg = bt.BenchConfig(4 if smoke else 16, seq_len, dims, 8 if smoke else 72, modalities=mods)
    opts = {
      "dispatch": ["dense"] if smoke else ["dense", "sorted"],
      "torch_dispatch": ["loop"],
      "variants": ["jit"],
      "torch_threads": [1],
      "chunk": 2 if smoke else 10,
      "num_batches": 2 if smoke else 8,
      "seed": 0,
      "timing": timing(smoke, part),
    }
    configs.append(bt.run_config(cfg, opts, torch, device))
    tables.append(bt.format_table(configs[-1], markdown=True))
  return {"rows": configs, "table": "\n\n".join(tables)}


def himoe(smoke: bool, part: Part, out_dir: Path) -> dict[str, Any]:
  from experiments import himoe_deap
  from jmoe.train import app

  def tiny(cfg, folds):  # smoke: the smallest model (width 8, no encoder layer, 2 experts), one epoch
    himoe_deap.smoke(cfg)
    cfg.optim.epochs, cfg.folds.max_folds = 1, folds
    cfg.model.update(width=8, enc_layers=0, key_dim=4, attn_heads=1, modality_experts=2, emotion_experts=2)

  def one(members: str, folds: int, tag: str) -> float:
    cfg = himoe_deap.get_config()
    cfg.smoke, cfg.quiet, cfg.seeds, cfg.members = smoke, True, HIMOE_PROTOCOL["seeds"], members
    cfg.folds.kind, cfg.folds.group, cfg.folds.within, cfg.folds.max_folds = "logo", "subject", "", folds
    cfg.workdir = str(out_dir / f"himoe_{tag}")
    t0 = time.perf_counter()
    app.run(cfg, functools.partial(tiny, folds=folds) if smoke else None)
    return time.perf_counter() - t0

  p, folds = HIMOE_PROTOCOL, 2 if smoke else 4
  res = {"protocol": p, "one_fold_s": None if smoke else one("vmap", 1, "one")}  # smoke: the program only
  if smoke or part.left() > 2 * res["one_fold_s"]:
    res.update(program_folds=folds, program_s=one("vmap_folds", folds, "folds"))
  else:
    res.update(program_folds=1, program_s=res["one_fold_s"])
  programs = p["rates"] * math.ceil(p["folds"] / res["program_folds"])
  res["projected_min"] = programs * res["program_s"] / 60
  one_s = "- (smoke)" if res["one_fold_s"] is None else f"{res['one_fold_s']:.1f} s"
  lines = [
    ["one run: 1 LOSO fold x 5 seeds (members='vmap')", one_s],
    [f"one program: {res['program_folds']} folds x 5 seeds", f"{res['program_s']:.1f} s"],
    [f"projected: {p['rates']} rates x {p['seeds']} seeds x {p['folds']} folds ({programs} programs)"]
    + [f"{res['projected_min']:.1f} min"],
  ]
  head = ["Hi-MoE (synthetic DEAP, default config)", "time"]
  return dict(res, table="\n".join(benchlib.format_rows(head, lines, True)))


# ----------------------------------------------------------------------------------------------------------------
# Targets and the driver


def device_targets(results: dict[str, Any]) -> list[str]:
  t = benchlib.load_targets("device")
  lines = []
  rows = results.get("routing", {}).get("rows", [])
  big = [r for r in rows if "error" not in r and r["config"]["dtype"] == "bfloat16"]
  big = [r for r in big if r["config"]["tokens"] == max(x["config"]["tokens"] for x in big)] if big else []
  jrows = [r for r in big if r["name"].startswith("jmoe/") and r["config"]["experts"] == 8]
  best = min(jrows, key=lambda r: r["fwd"]["median_s"]) if jrows else None
  lines.append(benchlib.judge(t["device.routing.peak"], best and (best.get("x_peak") or {}).get("fwd"))["line"])
  lines.append(benchlib.judge(t["device.routing.floor"], best and best["x_floor"]["fwd"])["line"])
  rag = [r["x_floor"]["fwd"] for r in results.get("e_scaling", {}).get("rows", []) if r.get("name") == "jmoe/ragged"]
  lines.append(benchlib.judge(t["device.ragged.floor"], max(rag) if rag else None)["line"])
  mem = {(r["model"], r["members"]): r["speedup"] for r in results.get("members", {}).get("rows", [])}
  lines.append(benchlib.judge(t["device.members.euar16"], mem.get(("euar", 16)))["line"])
  lines.append(benchlib.judge(t["device.members.haemsa16"], mem.get(("haemsa", 16)))["line"])
  tr = [c["ratio"]["app_vs_best_torch"] for c in results.get("euar_train", {}).get("rows", [])]
  lines.append(benchlib.judge(t["device.euar_train.torch"], min(tr) if tr and None not in tr else None)["line"])
  lines.append(benchlib.judge(t["device.himoe.protocol_min"], results.get("himoe", {}).get("projected_min"))["line"])
  return lines


def write(out: Path, results: dict[str, Any]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "suite.json").write_text(json.dumps(results, indent=1, default=str))
  md = [f"# jmoe device suite{' (SMOKE: tiny sizes)' if results['smoke'] else ''}", ""]
  for name in PARTS:
    if name in results:
      r = results[name]
      md += [f"## {name} ({r.get('seconds', 0):.0f} s)", ""]
      md += [f"ERROR: {r['error']}"] if "error" in r else [r.get("table", "")]
      md.append("")
  if "targets" in results:
    md += ["## targets", ""] + [f"- {line}" for line in results["targets"]]
  (out / "suite.md").write_text("\n".join(md) + "\n")


def main(argv=None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True, help="folder for suite.json and suite.md (rewritten after each part)")
  ap.add_argument("--smoke", action="store_true", help="every part at tiny sizes (CPU, < 1 minute)")
  ap.add_argument("--budget-s", type=float, default=450.0, help="seconds for all parts (split as BUDGET)")
  ap.add_argument("--parts", default=",".join(PARTS), help="comma list of parts to run")
  a = ap.parse_args(argv)
  out, t_start = Path(a.out), time.monotonic()
  if a.smoke:  # as tests/conftest.py: compiling dominates tiny sizes (a no-op once a JAX backend has started)
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
  results: dict[str, Any] = {"smoke": a.smoke, "install": prepare_wheels.install(), "parts": a.parts}
  print(results["install"], flush=True)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to the torch rows too
  scale = a.budget_s / sum(BUDGET.values())
  for name in [p for p in a.parts.split(",") if p]:
    if name not in PARTS:
      raise SystemExit(f"--parts: unknown part {name!r}; choose from {PARTS}")
    part, t0 = Part(BUDGET[name] * scale), time.monotonic()
    print(f"== {name} (budget {BUDGET[name] * scale:.0f} s)", flush=True)
    try:
      if name == "environment":
        res = environment(a.smoke, part)
      elif name == "routing":
        res = routing(a.smoke, part, results.get("environment", {}).get("info", {}).get("peak_tflops", {}))
      elif name == "himoe":
        res = himoe(a.smoke, part, out)
      else:
        res = globals()[name](a.smoke, part)
    except Exception as e:  # noqa: BLE001  # one part's failure must not lose the others' results
      res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    res["seconds"] = time.monotonic() - t0
    results[name] = res
    print(res.get("table") or res.get("error"), flush=True)
    write(out, results)
  results["targets"], results["seconds"] = device_targets(results), time.monotonic() - t_start
  print("\n".join(results["targets"]), flush=True)
  write(out, results)
  return results


if __name__ == "__main__":
  main()
