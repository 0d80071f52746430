"""Data-parallel training throughput: samples/s of the EUAR train step on 1, 2, 8 devices, pmap and jit paths.

    PYTHONPATH=. python -m tools.bench_parallel                              # CPU: 1/2/8 forced host devices
    PYTHONPATH=. python -m tools.bench_parallel --batch 16,256 --paths pmap,jit,pmap+ep --json runs/bench/par.json
    PYTHONPATH=. python -m tools.bench_parallel --platform gpu --devices 1,2,4,8   # real accelerators

Each (devices, path, batch) row runs in its own interpreter (a JAX process fixes its device count at start: on
CPU ``--xla_force_host_platform_device_count=N``, which splits *the same cores*, so CPU rows measure the parallel
program's overhead, not scaling). Timed: the app's ``DataParallel(kind, N).make_steps`` train step on pre-built
host batches of the euar_mosi model (``pmap+ep``: ``dispatch='expert_parallel'`` with ``--ep-experts``), by
``benchlib.time_fn`` (chunks of ``--chunk-steps`` steps; samples/s = B / median step time). Rows run in
``--rounds`` rounds, the order rotated each round; the median round is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tools import benchlib

REPO = Path(__file__).resolve().parents[1]
PATHS = ("pmap", "jit", "pmap+ep")


# ---------------------------------------------------------------------------------------------------------- child


def child(args) -> dict:
  import jax
  import numpy as np

  from experiments.common import euar_config
  from jmoe.data import format as fmt
  from jmoe.data import synthetic_mosi
  from jmoe.models.euar import EUAR
  from jmoe.train import batches as batches_lib
  from jmoe.train import parallel
  from jmoe.train import state as state_lib
  from jmoe.train import tasks as tasks_lib

  cfg = euar_config("bench", "mosi", 768, 5, 20)
  m = cfg.model
  kind, ep = args.path.split("+")[0], args.path.endswith("+ep")
  experts = args.ep_experts if ep else m.num_experts
  mods = ("text", "audio", "vision")
  dispatch = "expert_parallel" if ep else m.dispatch
  model = EUAR(mods, m.width, experts, min(m.k, experts), m.expert, m.fusion, dispatch, dropout=m.dropout)
  tx = state_lib.make_optimizer(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip)
  tasks = tasks_lib.from_config(dict(cfg.tasks), {"sentiment": fmt.SENTIMENT_SPEC})
  par = parallel.DataParallel.create(kind, args.n)
  ds = synthetic_mosi(seed=0, sizes=(args.batch * args.num_batches, 8, 8))
  batches = list(
    batches_lib.iterate_batches(ds.splits["train"], mods, args.batch, par.num_shards, heads=("sentiment",))
  )
  sample = jax.tree.map(lambda a: a[0], next(batches_lib.iterate_batches(ds.splits["train"], mods, 8, 1)))
  hp = state_lib.default_hparams(tasks, dict(cfg.loss_weights))
  state = par.replicate(state_lib.create_state(model, tx, sample, jax.random.key(0), hp))
  train, _ = par.make_steps(model, tasks)
  rng, holder = jax.random.key(1), {"state": state, "metrics": None, "i": 0}

  def run():  # one train step on the next pre-built batch
    holder["state"], holder["metrics"] = train(holder["state"], batches[holder["i"] % len(batches)], rng)
    holder["i"] += 1
    return holder["state"], holder["metrics"]

  st = benchlib.time_fn(run, repeats=args.chunks, warmup=args.warmup, inner=args.chunk_steps)
  loss = float(np.asarray(holder["metrics"]["loss"])[0])
  step_s = st["median_s"]
  return {
    "devices": par.num_shards,
    "path": args.path,
    "batch": args.batch,
    "rows_per_device": batches[0]["weight"].shape[1],
    "step_ms": 1e3 * step_s,
    "p10_ms": 1e3 * st["p10_s"],
    "p90_ms": 1e3 * st["p90_s"],
    "samples_per_s": args.batch / step_s,
    "first_step_s": st["first_call_s"],
    "loss": loss,
    "finite": bool(np.isfinite(loss)),
    "experts": experts,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
  }


# ---------------------------------------------------------------------------------------------------------- parent


def run_row(n: int, path: str, batch: int, args) -> dict:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  if args.platform == "cpu":
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
    env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, "-m", "tools.bench_parallel", "--child", f"--n={n}", f"--path={path}", f"--batch={batch}"]
  cmd += [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("warmup", "chunks", "chunk_steps", "num_batches")]
  cmd.append(f"--ep-experts={args.ep_experts}")
  foreign = benchlib.ForeignCpu(children=True).start()
  proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=args.timeout, check=False)
  foreign_frac = foreign.stop()
  if proc.returncode:
    return {"devices": n, "path": path, "batch": batch, "error": proc.stderr.strip().splitlines()[-1:]}
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  if foreign_frac is not None:
    row["foreign_cpu"] = foreign_frac
  return row


def machine() -> dict:
  """benchlib.machine_info without starting a JAX backend here (the children own the devices), plus the GPUs."""
  info = benchlib.machine_info(devices=False)
  info["loadavg_start"] = benchlib.loadavg()
  try:
    out = subprocess.run(
      ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
      capture_output=True,
      text=True,
      timeout=20,
      check=False,
    )
    info["gpus"] = [l.strip() for l in out.stdout.splitlines() if l.strip()]
  except (OSError, subprocess.SubprocessError):
    info["gpus"] = []
  return info


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--devices", default="1,2,8", help="device counts, comma separated")
  ap.add_argument("--paths", default="pmap,jit", help=f"subset of {PATHS}")
  ap.add_argument("--batch", default="256", help="global batch sizes, comma separated")
  ap.add_argument("--platform", default="cpu", choices=("cpu", "gpu"))
  ap.add_argument("--rounds", type=int, default=1)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--chunks", type=int, default=7)
  ap.add_argument("--chunk-steps", type=int, default=5)
  ap.add_argument("--num-batches", type=int, default=4)
  ap.add_argument("--ep-experts", type=int, default=8, help="experts of the pmap+ep rows (divisible by N)")
  ap.add_argument("--timeout", type=int, default=900)
  ap.add_argument("--json", default="")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
  ap.add_argument("--path", default="pmap", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.child:
    args.batch = int(args.batch)
    print(json.dumps(child(args)))
    return
  counts = [int(v) for v in args.devices.split(",") if v]
  paths = [p for p in args.paths.split(",") if p]
  bad = [p for p in paths if p not in PATHS]
  if bad:
    raise SystemExit(f"unknown paths {bad}; choose from {PATHS}")
  info = machine()
  if args.platform == "gpu" and info["gpus"]:
    counts = [n for n in counts if n <= len(info["gpus"])]
  rows_cfg = [(n, p, int(b)) for b in args.batch.split(",") for n in counts for p in paths]
  results: dict[tuple, list] = {c: [] for c in rows_cfg}
  for r in range(args.rounds):
    order = rows_cfg[r % len(rows_cfg) :] + rows_cfg[: r % len(rows_cfg)]
    for cfg in order:
      row = run_row(*cfg, args)
      results[cfg].append(row)
      print(
        f"  round {r}: {cfg} -> "
        + (f"{row['samples_per_s']:.0f} samples/s" if "error" not in row else f"error {row['error']}"),
        file=sys.stderr,
        flush=True,
      )
  table = []
  for rows in results.values():
    ok = sorted((x for x in rows if "error" not in x), key=lambda x: x["samples_per_s"])
    table.append(dict(ok[len(ok) // 2], rounds=len(ok)) if ok else rows[-1])  # the median round
  info["loadavg_end"] = benchlib.loadavg()
  print(
    f"\nmachine: {info['cpu_model']}, {info['cores']} cores, jax {info['jax']}, platform {args.platform}"
    f"{', GPUs: ' + ', '.join(info['gpus']) if info['gpus'] else ''}; load avg {info['loadavg_start']:.1f}"
    f" -> {info['loadavg_end']:.1f}"
  )
  if args.platform == "cpu":
    print(
      "CPU rows: N forced host devices share the same cores (a correctness/overhead simulation, no extra "
      "compute); read them as the cost of the parallel program, not as scaling."
    )
  head = ["devices", "path", "batch (rows/device)", "step ms (p10-p90)", "samples/s", "vs 1 device", "first step s"]
  head, lines, base = head + ["foreign%"], [], {}
  for row in table:
    if "error" in row:
      lines.append([str(row["devices"]), row["path"], str(row["batch"]), f"error: {row['error']}", "", "", "", ""])
      continue
    key = (row["path"], row["batch"])
    if row["devices"] == min(counts):
      base[key] = row["samples_per_s"]
    lines.append(
      [
        str(row["devices"]),
        row["path"],
        f"{row['batch']} ({row['rows_per_device']})",
        f"{row['step_ms']:.1f} ({row['p10_ms']:.1f}-{row['p90_ms']:.1f})",
        f"{row['samples_per_s']:.0f}",
        f"{row['samples_per_s'] / base[key]:.2f}x" if key in base else "-",
        f"{row['first_step_s']:.1f}",
        f"{100 * row['foreign_cpu']:.0f}" if row.get("foreign_cpu") is not None else "?",
      ]
    )
  print("\n".join(benchlib.format_rows(head, lines, markdown=True)))
  benchlib.write_json({"machine": info, "args": vars(args), "rows": table}, args.json)


if __name__ == "__main__":
  main()
