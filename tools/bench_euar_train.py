"""EUAR training-throughput benchmark: the jmoe train step (as the training app runs it) vs an eager PyTorch reference.

Command (from the repo root)::

    PYTHONPATH=. python -m tools.bench_euar_train                    # both configs (vectors, then --seq-len 50)
    PYTHONPATH=. python -m tools.bench_euar_train --seq-len 0 --steps 200 --json runs/bench/euar_train.json
    PYTHONPATH=. python -m tools.bench_euar_train --dispatch dense,sorted --torch-dispatch loop,dense
    PYTHONPATH=. python -m tools.bench_euar_train --profile          # also: where the jmoe step's time goes

Model and training setup: ``experiments.common.euar_config`` (the euar_mosi defaults: width 72, E=4 Gaussian
experts, top-3 routing without renormalisation, dropout 0.1, loss eq. 12 with alpha=1e-3, beta=1e-5,
lambda=1e-3, AdamW lr 1e-3 / wd 1e-4 after clipping at global norm 1, batch 16), modalities text/audio/vision
with feature sizes 768/5/20. Two configs by default:

* ``seq_len=0``: utterance vectors, text [B, 768], audio [B, 5], vision [B, 20];
* ``seq_len=50``: sequences with masks, text [B, 50, 768], audio [B, 50, 5], vision [B, 50, 20] (random
  lengths, the synthetic data's padding), i.e. ``--config.data.seq_len=50`` of the app.

Batches come from ``jmoe.data.synthetic_mosi`` through ``jmoe.train.batches.iterate_batches`` (numpy, leading
device axis [1, B, ...]), a fixed cycle of ``--num-batches`` of them, the same sequence for every row.

Rows (each runs warm-up steps, then ``--steps`` timed training steps):

* ``jmoe/pmap/<dispatch>``: ``jmoe.train.parallel.make_pmap_steps(model, tasks, devices[:1])`` -- the ``jax.pmap``
  train step of the training app, on one device, called with the host numpy batch like the app's epoch loop.
* ``jmoe/jit/<dispatch>``: the same per-device step function under a plain ``jax.jit`` (``vmap`` with the batch
  axis name over the size-1 device axis so the step's ``pmean``s bind; state donated, numpy batch).
* ``torch/loop`` and ``torch/dense``: ``tools.torch_euar`` (eager PyTorch, nn.Module, AdamW + clip_grad_norm_),
  the per-expert loop with index selection (the usual MoE implementation) and run-all-experts-and-mask, with
  ``torch.set_num_threads`` = the cores JAX may use; ``torch/<dispatch>@1thr``: the same on 1 thread (with other
  processes on a 2-core machine, torch's 2 OpenMP threads stall at every op's barrier and run many times slower;
  one thread does not, so the fastest torch row is the fair reference). ``--torch-threads 2,1`` picks the counts
  (the first gives the reference rows). The torch models start from the jmoe initial parameters (copied), so
  every row trains the same model from the same point.

jmoe steps are blocked (``block_until_ready``) at the end of every timed chunk, so asynchronous dispatch may
overlap steps inside a chunk, as it does in the app's epoch loop. Rows are timed in interleaved rounds
(``--rounds`` chunks of steps/rounds steps, row order rotated every round) so that load from other processes
hits every row alike. Per-step time = chunk time / chunk steps; we report the median over chunks and samples/s
= batch size / median step time. The first call (compilation for jmoe) is reported separately.

Ratios: ``x torch/loop`` = samples/s of a row / samples/s of torch/loop (reference threads); ``x best torch`` =
/ the fastest torch row. The target (>= 3x samples/s) is checked three ways: the app step (``jmoe/pmap`` with
the first ``--dispatch``; default ``dense``, the app's default) vs torch/loop, the app step vs the fastest torch
row, and the fastest jmoe row vs the fastest torch row.

Load: the 1-minute load average at start and before each config's timing, and the CPU share other processes
used while it was timed (``benchlib.ForeignCpu``: /proc/stat busy time minus this process's own CPU time;
the load average also counts this process, e.g. its compiles) are printed and stored. A table is marked LOADED
when other processes used > 10% of the CPU while it was timed (or, where /proc/stat is unreadable, when the
load average before timing was >= 1.5). ``--wait-idle S`` waits up to S seconds for the load average to drop
below 1.5 before each config's timing.

Under load, torch on 2 threads slows down far more than the jit rows and the ratios against it say little;
compare with the @1thr rows. Measured results belong in the JSON this writes and in README, not here.

``--profile`` adds, per config, a breakdown of the jmoe step: jit pieces (forward, forward+backward, optimizer
update), the full step under jit and pmap, empty steps with the same arguments (dispatch + argument-handling
overhead), the step with ``fusion='late'`` (no MoE layers), one MoE layer alone, op counts of the compiled
programs, and a ``jax.profiler`` trace of the app's pmap step whose XLA:CPU thunk time is attributed to model
parts through the HLO ``op_name`` metadata; and of the torch/loop step (forward, backward, clip + AdamW).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import euar_config
from jmoe import data as data_lib
from jmoe.data import format as fmt
from jmoe.models import euar as euar_lib
from jmoe.train import batches as batches_lib
from jmoe.train import parallel as parallel_lib
from jmoe.train import state as state_lib
from jmoe.train import steps as steps_lib
from jmoe.train import tasks as tasks_lib
from tools import benchlib, torch_euar

TASKS = tasks_lib.from_config({"sentiment": {"kind": "sentiment"}}, {"sentiment": fmt.SENTIMENT_SPEC})


def build_model(c, modalities):
  """The app's EUAR for config ``c`` over ``modalities``."""
  c = c.copy_and_resolve_references()
  c.data.modalities = ",".join(modalities)
  return euar_lib.build(c, None, TASKS)


def hparams(c):
  """The train state's objective weights for config ``c`` (EUAR eq. 12)."""
  return state_lib.default_hparams(TASKS, dict(c.loss_weights))


def torch_loss_cfg(c) -> dict[str, Any]:
  """The PyTorch reference's loss config (alpha, beta, lambda of eq. 12) from the app config ``c``."""
  w = c.loss_weights
  return {"alpha": w.kl, "beta": w.auxiliary_loss, "lam": w.uloss, "use_kl": True, "use_uloss": True}


MODALITIES = ("text", "audio", "vision")
DEFAULT_DIMS = (768, 5, 20)
TARGET_RATIO = 3.0
IDLE_LOAD = 1.5  # 1-minute load average below which the machine counts as idle
FOREIGN_LOADED = 0.10  # other processes' CPU share above which a table counts as measured under load


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  batch_size: int
  seq_len: int
  dims: tuple[int, ...] = DEFAULT_DIMS
  width: int = 72
  num_experts: int = 4
  k: int = 3
  dropout: float = 0.1
  modalities: tuple[str, ...] = MODALITIES  # the model's modalities (a subset of MODALITIES; dims cover all three)

  @property
  def dim_of(self) -> dict[str, int]:
    return dict(zip(MODALITIES, self.dims))

  def label(self) -> str:
    shapes = ", ".join(
      f"{m} [{self.batch_size}{f', {self.seq_len}' if self.seq_len else ''}, {self.dim_of[m]}]" for m in self.modalities
    )
    return (
      f"batch={self.batch_size} seq_len={self.seq_len or '-'} ({shapes}{' + masks' if self.seq_len else ''}) "
      f"width={self.width} E={self.num_experts} k={self.k} dropout={self.dropout}"
    )


def app_config(cfg: BenchConfig, dispatch: str = "dense", fusion: str = "moe"):
  """The training app's config (experiments.common.euar_config) with this benchmark's sizes."""
  c = euar_config("bench_euar_train", "mosi", *cfg.dims)
  c.model.width, c.model.num_experts, c.model.k, c.model.dropout = cfg.width, cfg.num_experts, cfg.k, cfg.dropout
  c.model.dispatch, c.model.fusion = dispatch, fusion
  c.optim.batch_size = cfg.batch_size
  c.data.seq_len = cfg.seq_len
  return c


def make_batches(cfg: BenchConfig, num_batches: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """``num_batches`` full training batches [1, B, ...] of synthetic MOSI-like data, as the app builds them."""
  b = cfg.batch_size
  ds = data_lib.synthetic_mosi(seed=seed, dims=cfg.dim_of, seq_len=cfg.seq_len or None, sizes=(b * num_batches, b, b))
  return list(batches_lib.iterate_batches(ds.splits["train"], cfg.modalities, b, 1, heads=("sentiment",)))


def init_params(model, batch: dict[str, np.ndarray], seed: int = 0):
  """As the app: ``jax.jit(model.init)`` on one device's shard of a batch."""
  return jax.jit(model.init)(jax.random.key(seed), jax.tree.map(lambda a: a[0], batch))["params"]


def create_state(model, tx, params, hp) -> state_lib.TrainState:
  """``TrainState.create`` (optimizer init) in one compiled call rather than one eager op per leaf shape."""
  return jax.jit(lambda p: state_lib.TrainState.create(apply_fn=model.apply, params=p, tx=tx, hparams=hp))(params)


def stack1(tree):
  """A fresh copy of ``tree`` with a leading size-1 device axis (host round trip: no per-shape eager compiles)."""
  return jax.device_put(jax.tree.map(lambda x: np.asarray(x)[None], tree))


def per_device_train_step(model):
  """The app's per-device train step function (what the app pmaps)."""
  return steps_lib.train_step_fn(model, TASKS)


# ----------------------------------------------------------------------------------------------------------------
# Rows


@dataclasses.dataclass
class Row:
  name: str
  run: Callable[[int], None]  # run n training steps and wait for them to finish
  last_loss: Callable[[], float]
  extra: dict[str, Any]
  times: list[float] = dataclasses.field(default_factory=list)  # seconds per step, one per timed chunk
  first_call_s: float = 0.0
  warmup_s: float = 0.0
  steps_done: int = 0


class _Cycle:
  """Index into the fixed batch cycle; every row walks the same sequence."""

  def __init__(self, n: int):
    self.n, self.i = n, 0

  def next(self) -> int:
    i = self.i
    self.i = (self.i + 1) % self.n
    return i


def jmoe_rows(
  cfg: BenchConfig, dispatch: str, batches, variants: Sequence[str], seed: int = 0, fusion: str = "moe", params=None
) -> list[Row]:
  """jmoe/pmap/<dispatch> (make_steps, as the app) and jmoe/jit/<dispatch> (plain jit of the same step).

  ``params``: initial parameters (default: ``init_params`` of this model; the tree does not depend on the
  dispatch strategy, so one init serves every row)."""
  c = app_config(cfg, dispatch, fusion)
  model = build_model(c, cfg.modalities)
  tx = state_lib.make_optimizer(c.optim.lr, c.optim.weight_decay, c.optim.grad_clip)
  devices = jax.local_devices()[:1]
  p_train, _ = parallel_lib.make_pmap_steps(model, TASKS, devices)
  params = init_params(model, batches[0], seed) if params is None else params
  rng = jax.random.key(10_000 + seed)
  n_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
  suffix = dispatch if fusion == "moe" else f"{dispatch}/{fusion}"
  state = create_state(model, tx, params, hparams(c))
  rows = []
  for variant in variants:
    if variant == "pmap":
      step = p_train
      holder = {"state": parallel_lib.DataParallel("pmap", devices).replicate(state), "metrics": None}
    elif variant == "jit":
      step = jax.jit(
        jax.vmap(per_device_train_step(model), in_axes=(0, 0, None), axis_name=steps_lib.AXIS),
        donate_argnums=(0,),
      )
      holder = {"state": stack1(state), "metrics": None}
    else:
      raise ValueError(f"unknown jmoe variant {variant!r} (pmap, jit)")
    cyc = _Cycle(len(batches))

    def run(n, step=step, holder=holder, cyc=cyc):
      s, m = holder["state"], holder["metrics"]
      for _ in range(n):
        s, m = step(s, batches[cyc.next()], rng)
      jax.block_until_ready((s, m))
      holder["state"], holder["metrics"] = s, m

    def last_loss(holder=holder):
      return float(np.asarray(holder["metrics"]["loss"]).reshape(-1)[0])

    rows.append(
      Row(
        f"jmoe/{variant}/{suffix}",
        run,
        last_loss,
        {"framework": "jax", "variant": variant, "dispatch": dispatch, "fusion": fusion, "num_params": n_params},
      )
    )
  return rows


def torch_row(
  cfg: BenchConfig, dispatch: str, batches, jax_params, torch_mod, threads: int, name: str | None = None
) -> Row:
  """torch/<dispatch>: the eager reference, starting from the jmoe initial parameters, on ``threads`` threads
  (``torch.set_num_threads`` is set at the start of every chunk, so rows with different counts can interleave)."""
  c = app_config(cfg)
  model = torch_euar.make_model(cfg.dim_of, cfg.modalities, cfg.width, cfg.num_experts, cfg.k, cfg.dropout, dispatch)
  torch_euar.load_jax_params(model, jax_params)
  model.train()
  opt = torch_euar.make_optimizer(model, c.optim.lr, c.optim.weight_decay)
  loss_cfg, clip = torch_loss_cfg(c), c.optim.grad_clip
  cyc = _Cycle(len(batches))
  holder = {"loss": None}

  def run(n):
    torch_mod.set_num_threads(threads)
    for _ in range(n):
      holder["loss"] = torch_euar.train_step(model, opt, torch_euar.to_torch_batch(batches[cyc.next()]), loss_cfg, clip)

  return Row(
    name or f"torch/{dispatch}",
    run,
    lambda: float(holder["loss"]),
    {"framework": "torch", "dispatch": dispatch, "num_params": torch_euar.num_params(model), "torch_threads": threads},
  )


# ----------------------------------------------------------------------------------------------------------------
# Timing


def time_rows(rows: list[Row], steps: int, rounds: int, warmup: int) -> None:
  """Warm every row up (the first call compiles), then time ``steps`` steps of each in interleaved rounds."""
  for row in rows:
    t0 = time.perf_counter()
    row.run(1)
    row.first_call_s = time.perf_counter() - t0
    if warmup > 1:
      row.run(warmup - 1)
    row.warmup_s = time.perf_counter() - t0
    row.steps_done = warmup
  chunk = max(1, steps // max(1, rounds))
  n_rounds = max(1, math.ceil(steps / chunk))
  for r in range(n_rounds):
    n = min(chunk, steps - r * chunk)
    if n <= 0:
      break
    shift = r % len(rows)
    for row in rows[shift:] + rows[:shift]:
      t0 = time.perf_counter()
      row.run(n)
      row.times.append((time.perf_counter() - t0) / n)
      row.steps_done += n


def _step_stats(times: Sequence[float]) -> dict[str, float]:
  """benchlib.stats of per-step times under this benchmark's keys (median_step_s, p10_step_s, ...)."""
  return {f"{k[: -len('_s')]}_step_s": v for k, v in benchlib.stats(times).items() if k.endswith("_s")}


def run_config(cfg: BenchConfig, args, torch_mod) -> dict[str, Any]:
  batches = make_batches(cfg, args.num_batches, args.seed)
  variants = [v for v in args.jax_variants.split(",") if v]
  rows: list[Row] = []
  # One initialisation (as the app: jax.jit(model.init) with the run's seed) that every row starts from.
  jax_params = init_params(build_model(app_config(cfg), cfg.modalities), batches[0], args.seed)
  for d in args.dispatch_list:
    rows += jmoe_rows(cfg, d, batches, variants, args.seed, params=jax_params)
  if torch_mod is not None:
    for threads in args.torch_threads_list:
      for d in args.torch_dispatch_list:
        name = f"torch/{d}" if threads == args.torch_threads_list[0] else f"torch/{d}@{threads}thr"
        rows.append(torch_row(cfg, d, batches, jax_params, torch_mod, threads, name))
  load_before = benchlib.wait_idle(args.wait_idle, IDLE_LOAD) if args.wait_idle > 0 else benchlib.loadavg()
  foreign = benchlib.ForeignCpu().start()
  t0 = time.perf_counter()
  time_rows(rows, args.steps, args.rounds, args.warmup)
  timing_s = time.perf_counter() - t0
  foreign_frac = foreign.stop()
  load_after = benchlib.loadavg()
  if foreign_frac is not None:
    loaded = foreign_frac > FOREIGN_LOADED
  else:
    loaded = load_before is not None and load_before >= IDLE_LOAD
  out_rows = []
  for row in rows:
    st = _step_stats(row.times)
    out_rows.append(
      {
        "name": row.name,
        **row.extra,
        **st,
        "first_call_s": row.first_call_s,
        "warmup_s": row.warmup_s,
        "timed_steps": row.steps_done - args.warmup,
        "chunks": len(row.times),
        "steps_done": row.steps_done,
        "samples_per_s": cfg.batch_size / st["median_step_s"],
        "samples_per_s_mean": cfg.batch_size / st["mean_step_s"],
        "final_loss": row.last_loss(),
      }
    )
  by_name = {r["name"]: r for r in out_rows}
  ref = by_name.get("torch/loop")
  torch_rows = [r for r in out_rows if r["framework"] == "torch"]
  jax_rows = [r for r in out_rows if r["framework"] == "jax"]
  best_torch = max(torch_rows, key=lambda r: r["samples_per_s"]) if torch_rows else None
  for r in out_rows:
    r["x_torch_loop"] = r["samples_per_s"] / ref["samples_per_s"] if ref else None
    r["x_best_torch"] = r["samples_per_s"] / best_torch["samples_per_s"] if best_torch else None
  app_name = (
    f"jmoe/pmap/{args.dispatch_list[0]}" if "pmap" in variants else f"jmoe/{variants[0]}/{args.dispatch_list[0]}"
  )
  app = by_name.get(app_name)
  best_jax = max(jax_rows, key=lambda r: r["samples_per_s"]) if jax_rows else None
  ratios = {
    "app_row": app_name,
    "app_vs_torch_loop": app["samples_per_s"] / ref["samples_per_s"] if app and ref else None,
    "app_vs_best_torch": app["samples_per_s"] / best_torch["samples_per_s"] if app and best_torch else None,
    "best_jmoe": best_jax["name"] if best_jax else None,
    "best_torch": best_torch["name"] if best_torch else None,
    "best_jmoe_vs_best_torch": (
      best_jax["samples_per_s"] / best_torch["samples_per_s"] if best_jax and best_torch else None
    ),
  }
  return {
    "config": dataclasses.asdict(cfg),
    "label": cfg.label(),
    "rows": out_rows,
    "ratios": ratios,
    "load": {
      "loadavg_before": load_before,
      "loadavg_after": load_after,
      "foreign_cpu_fraction": foreign_frac,
      "loaded": loaded,
      "timing_s": timing_s,
    },
    "steps": args.steps,
    "warmup": args.warmup,
    "rounds": args.rounds,
  }


def format_table(res: dict[str, Any]) -> str:
  head = [
    "row",
    "ms/step",
    "p10-p90 ms",
    "best ms",
    "samples/s",
    "x torch/loop",
    "x best torch",
    "first call s",
    "final loss",
  ]
  lines = []
  for r in res["rows"]:
    lines.append(
      [
        r["name"],
        f"{r['median_step_s'] * 1e3:.2f}",
        f"{r['p10_step_s'] * 1e3:.2f}-{r['p90_step_s'] * 1e3:.2f}",
        f"{r['min_step_s'] * 1e3:.2f}",
        f"{r['samples_per_s']:,.0f}",
        "-" if r["x_torch_loop"] is None else f"{r['x_torch_loop']:.2f}",
        "-" if r["x_best_torch"] is None else f"{r['x_best_torch']:.2f}",
        f"{r['first_call_s']:.2f}",
        f"{r['final_loss']:.4f}",
      ]
    )
  widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
  fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
  ld = res["load"]
  lb = "?" if ld["loadavg_before"] is None else f"{ld['loadavg_before']:.2f}"
  la = "?" if ld["loadavg_after"] is None else f"{ld['loadavg_after']:.2f}"
  fr = "?" if ld["foreign_cpu_fraction"] is None else f"{100 * ld['foreign_cpu_fraction']:.0f}%"
  out = [
    f"## EUAR train step: {res['label']}",
    f"   {res['steps']} timed steps per row in {res['rows'][0]['chunks']} interleaved chunks after "
    f"{res['warmup']} warm-up steps; ms/step = median over chunks; samples/s = batch / median.",
    f"   load average {lb} before, {la} after; other processes used {fr} of the CPU while timing"
    + (
      "  -- LOADED: the machine was shared, absolute numbers are inflated and noisy (rows interleaved, so "
      "ratios suffer less)"
      if ld["loaded"]
      else "  (idle)"
    ),
    fmt(head),
    "-+-".join("-" * w for w in widths),
  ]
  out += [fmt(l) for l in lines]
  rt = res["ratios"]
  if rt["app_vs_torch_loop"] is not None:
    out.append(f"   app step {rt['app_row']} vs torch/loop: {rt['app_vs_torch_loop']:.2f}x samples/s")
  if rt.get("app_vs_best_torch") is not None:
    out.append(f"   app step {rt['app_row']} vs fastest torch ({rt['best_torch']}): {rt['app_vs_best_torch']:.2f}x")
  if rt["best_jmoe_vs_best_torch"] is not None:
    out.append(
      f"   fastest jmoe ({rt['best_jmoe']}) vs fastest torch ({rt['best_torch']}): {rt['best_jmoe_vs_best_torch']:.2f}x"
    )
  return "\n".join(out)


def check_targets(configs: list[dict[str, Any]]) -> list[str]:
  msgs = []
  for res in configs:
    rt = res["ratios"]
    seq = res["config"]["seq_len"]
    tag = f"seq_len={seq or 0}" + (" [LOADED]" if res["load"]["loaded"] else "")
    for key, what in (
      ("app_vs_torch_loop", f"{rt['app_row']} / torch/loop"),
      ("app_vs_best_torch", f"{rt['app_row']} / {rt['best_torch']}"),
      ("best_jmoe_vs_best_torch", f"{rt['best_jmoe']} / {rt['best_torch']}"),
    ):
      if rt[key] is not None and not any(what in m_ for m_ in msgs[-2:] if tag in m_):
        msgs.append(
          f"target jmoe >= {TARGET_RATIO:g}x torch samples/s, {tag}: {what} = {rt[key]:.2f}x -> "
          f"{'MET' if rt[key] >= TARGET_RATIO else 'MISSED'}"
        )
  return msgs


# ----------------------------------------------------------------------------------------------------------------
# --profile


def _median_time(fn: Callable[[], Any], repeats: int, inner: int = 10) -> float:
  """Median seconds per call of fn(), over ``repeats`` chunks of ``inner`` calls (blocked at each chunk's end)."""
  return benchlib.time_fn(fn, repeats, warmup=2, inner=inner)["median_s"]


def hlo_op_counts(compiled_text: str) -> dict[str, int]:
  """Op counts of an optimized HLO module: instructions in ENTRY (XLA:CPU runs ~one thunk each), fusions, ..."""
  entry, in_entry = 0, False
  for line in compiled_text.splitlines():
    if line.startswith("ENTRY"):
      in_entry = True
      continue
    if in_entry:
      if line.startswith("}"):
        in_entry = False
      elif (
        "=" in line
        and not line.strip().startswith(("ROOT %tuple", "%param", "%constant"))
        and " parameter(" not in line
        and " constant(" not in line
        and " get-tuple-element(" not in line
        and " tuple(" not in line
        and " bitcast(" not in line
      ):
        entry += 1
  count = lambda pat: len(re.findall(pat, compiled_text))
  return {
    "entry_ops": entry,
    "fusion_computations": count(r"\n%?fused_computation\S* |\nfused_computation"),
    "sort": count(r" sort\("),
    "scatter": count(r" scatter\("),
    "gather": count(r" gather\("),
    "dot": count(r" dot\("),
    "while": count(r" while\("),
    "custom_call": count(r" custom-call\("),
    "hlo_lines": compiled_text.count("\n"),
  }


_HLO_OP = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]*)\"")


def hlo_op_names(compiled_text: str) -> dict[str, str]:
  """HLO instruction name -> its op_name metadata (the JAX source path), for every computation of the module."""
  out = {}
  for line in compiled_text.splitlines():
    m = _HLO_OP.match(line)
    if m:
      out[m.group(1)] = m.group(2)
    else:
      m2 = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
      if m2:
        out.setdefault(m2.group(1), "")
  return out


def categorize(op_name: str) -> str:
  """Coarse owner of an HLO op from its op_name path: phase (forward / backward / optimizer) and model part."""
  if not op_name:
    return "no metadata (copies, layout)"
  if re.search(r"threefry|_bernoulli|_uniform|_normal|random_bits|random_split|random_fold_in|random_wrap", op_name):
    return "rng (threefry: dropout masks, expert noise, key derivation)"
  if "transpose(" in op_name:
    phase = "backward"
  elif "jvp(" in op_name:
    phase = "forward"
  else:
    return "optimizer + grad/metric reductions (clip, adamw, pmean, apply)"
  if re.search(r"/enc_\w+/", op_name):
    part = "encoders (proj, gelu, masked mean, dropout, layernorm)"
  elif re.search(r"router|TopKRouter", op_name):
    part = "routers (gate, softmax, top-k, aux stats)"
  elif re.search(r"/moe_\w+/experts", op_name):
    part = "experts (mu/logvar Dense, noise, KL, sigma2)"
  elif re.search(r"/moe_\w+", op_name):
    part = "dispatch + combine"
  elif re.search(r"/(fuse|head)/", op_name):
    part = "fusion head"
  else:
    part = "loss terms, concat, other"
  return f"{phase}: {part}"


def trace_attribution(run_step: Callable[[], Any], compiled_text: str, steps: int) -> dict[str, Any]:
  """Run ``steps`` steps under ``jax.profiler`` and attribute the XLA:CPU thunk time (exclusive of nested thunks,
  e.g. while-loop bodies) to :func:`categorize` categories. Tracing inflates small thunks, so use the shares."""
  import glob  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import tempfile  # pylint: disable=import-outside-toplevel

  names = hlo_op_names(compiled_text)
  d = tempfile.mkdtemp(prefix="bench_euar_trace_")
  try:
    jax.block_until_ready(run_step())
    jax.profiler.start_trace(d)
    t0 = time.perf_counter()
    out = None
    for _ in range(steps):
      out = run_step()
    jax.block_until_ready(out)
    traced_wall = (time.perf_counter() - t0) / steps
    jax.profiler.stop_trace()
    files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    if not files:
      return {"error": "no trace written"}
    pdata = jax.profiler.ProfileData.from_file(files[0])
    excl: dict[str, float] = {}
    count: dict[str, int] = {}
    for plane in pdata.planes:
      for line in plane.lines:
        evs = sorted((ev for ev in line.events if ev.name in names), key=lambda e: (e.start_ns, -e.duration_ns))
        stack: list[list] = []  # [end_ns, name, child_ns]

        def close(until):
          while stack and stack[-1][0] <= until:
            end_ns, nm, child, dur = stack.pop()
            excl[nm] = excl.get(nm, 0.0) + max(0.0, dur - child)
            if stack:
              stack[-1][2] += dur

        for ev in evs:
          close(ev.start_ns)
          stack.append([ev.start_ns + ev.duration_ns, ev.name, 0.0, ev.duration_ns])
          count[ev.name] = count.get(ev.name, 0) + 1
        close(float("inf"))
  finally:
    shutil.rmtree(d, ignore_errors=True)
  total = sum(excl.values())
  cats: dict[str, float] = {}
  for nm, v in excl.items():
    c = categorize(names.get(nm, ""))
    cats[c] = cats.get(c, 0.0) + v
  top = sorted(excl.items(), key=lambda kv: -kv[1])[:12]
  return {
    "traced_ms_per_step": traced_wall * 1e3,
    "thunk_ms_per_step": total / steps / 1e6,
    "thunks_per_step": sum(count.values()) / steps,
    "categories": {
      k: {"share": v / total, "traced_ms_per_step": v / steps / 1e6}
      for k, v in sorted(cats.items(), key=lambda kv: -kv[1])
    }
    if total
    else {},
    "top_ops": [
      {"name": nm, "op_name": names.get(nm, ""), "share": v / total, "calls_per_step": count[nm] / steps}
      for nm, v in top
    ]
    if total
    else [],
  }


def profile_config(cfg: BenchConfig, args, torch_mod) -> dict[str, Any]:
  """Piecewise timing of the jmoe step (jit pieces, pmap overhead, no-MoE variant, op counts, thunk-time
  attribution of the app's pmap step) and of the torch/loop step."""
  batches = make_batches(cfg, args.num_batches, args.seed)
  batch = batches[0]
  c = app_config(cfg, args.dispatch_list[0])
  model = build_model(c, cfg.modalities)
  loss_cfg = torch_loss_cfg(c)
  hp = hparams(c)
  tx = state_lib.make_optimizer(c.optim.lr, c.optim.weight_decay, c.optim.grad_clip)
  params = init_params(model, batch, args.seed)
  state = create_state(model, tx, params, hp)
  rng = jax.random.key(1)
  ax = steps_lib.AXIS
  devices = jax.local_devices()[:1]
  vm = lambda f: jax.vmap(f, in_axes=(None, 0, None), axis_name=ax)

  def loss_fn(p, b, r):
    return steps_lib.objective(steps_lib.loss_terms(model, p, b, r, True, TASKS)[0], hp)

  fwd = jax.jit(vm(loss_fn))
  grad = jax.jit(vm(jax.grad(loss_fn)))
  grads = jax.tree.map(lambda g: g[0], grad(params, batch, rng))
  opt = jax.jit(lambda s, g: s.apply_gradients(grads=g))
  donated = lambda f: jax.jit(jax.vmap(f, in_axes=(0, 0, None), axis_name=ax), donate_argnums=(0,))
  holders = {
    "jit": stack1(state),
    "jit_empty": stack1(state),
    "pmap": parallel_lib.DataParallel("pmap", devices).replicate(state),
    "pmap_empty": parallel_lib.DataParallel("pmap", devices).replicate(state),
  }
  jit_step = donated(per_device_train_step(model))
  jit_empty = donated(lambda s, b, r: (s, jnp.zeros(())))
  p_train, _ = parallel_lib.make_pmap_steps(model, TASKS, devices)
  p_empty = jax.pmap(
    lambda s, b, r: (s, jnp.zeros(())), axis_name=ax, in_axes=(0, 0, None), devices=devices, donate_argnums=(0,)
  )

  def stepper(key, fn, b=batch):
    def call():
      holders[key], m = fn(holders[key], b, rng)
      return m

    return call

  late = build_model(app_config(cfg, args.dispatch_list[0], fusion="late"), cfg.modalities)
  late_params = init_params(late, batch, args.seed)
  holders["late"] = stack1(create_state(late, tx, late_params, hp))
  late_step = donated(per_device_train_step(late))
  batch_dev = jax.device_put(batch)
  r = args.profile_repeats
  pieces = [
    ("jit forward (train mode, loss eq. 12)", _median_time(lambda: fwd(params, batch, rng), r)),
    ("jit forward+backward (grads)", _median_time(lambda: grad(params, batch, rng), r)),
    ("jit optimizer (clip + adamw + apply)", _median_time(lambda: opt(state, grads), r)),
    ("jit full step", _median_time(stepper("jit", jit_step), r)),
    ("jit full step, batch already on device", _median_time(stepper("jit", jit_step, batch_dev), r)),
    ("pmap full step (the app)", _median_time(stepper("pmap", p_train), r)),
    ("jit empty step (same args, state donated)", _median_time(stepper("jit_empty", jit_empty), r)),
    ("pmap empty step (same args, state donated)", _median_time(stepper("pmap_empty", p_empty), r)),
    ("jit full step, fusion='late' (no MoE layers)", _median_time(stepper("late", late_step), r)),
  ]
  # One MoE layer alone (router + dispatch + Gaussian experts + combine), forward+backward, x [B, W].
  from jmoe.models.euar import GaussianExpert  # pylint: disable=import-outside-toplevel
  from jmoe.moe.layer import MoELayer  # pylint: disable=import-outside-toplevel
  from jmoe.moe.routing import TopKRouter  # pylint: disable=import-outside-toplevel

  layer = MoELayer(
    TopKRouter(cfg.num_experts, k=cfg.k), GaussianExpert(cfg.width), cfg.num_experts, strategy=args.dispatch_list[0]
  )
  x = jax.random.normal(jax.random.key(2), (cfg.batch_size, cfg.width))
  lp = jax.jit(layer.init)(jax.random.key(0), x)
  layer_loss = lambda p, x, r: sum(
    jnp.sum(v) for v in jax.tree.leaves(layer.apply(p, x, deterministic=False, rngs={"noise": r})[0])
  )
  layer_grad = jax.jit(jax.grad(layer_loss, argnums=(0, 1)))
  pieces.append(
    (
      f"one MoELayer ({args.dispatch_list[0]}) fwd+bwd, x [{cfg.batch_size}, {cfg.width}]",
      _median_time(lambda: layer_grad(lp, x, rng), r),
    )
  )
  pmap_text = p_train.lower(holders["pmap"], batch, rng).compile().as_text()
  ops = {
    "pmap full step (the app)": hlo_op_counts(pmap_text),
    "jit full step, fusion='late'": hlo_op_counts(late_step.lower(holders["late"], batch, rng).compile().as_text()),
    "one MoELayer fwd+bwd": hlo_op_counts(layer_grad.lower(lp, x, rng).compile().as_text()),
  }
  trace = trace_attribution(stepper("pmap", p_train), pmap_text, args.profile_trace_steps)
  torch_pieces = []
  if torch_mod is not None:
    tm = torch_euar.make_model(cfg.dim_of, cfg.modalities, cfg.width, cfg.num_experts, cfg.k, cfg.dropout, "loop")
    torch_euar.load_jax_params(tm, params)
    topt = torch_euar.make_optimizer(tm, c.optim.lr, c.optim.weight_decay)
    tb = torch_euar.to_torch_batch(batch)

    def t_fwd():
      with torch_mod.no_grad():
        return torch_euar.loss_terms(tm, tb, loss_cfg)[0]

    def t_fwd_bwd():
      tm.zero_grad(set_to_none=True)
      loss = torch_euar.loss_terms(tm, tb, loss_cfg)[0]
      loss.backward()
      return loss

    def t_opt():
      torch_mod.nn.utils.clip_grad_norm_(tm.parameters(), c.optim.grad_clip)
      topt.step()

    t_fwd_bwd()
    for threads in args.torch_threads_list:
      torch_mod.set_num_threads(threads)
      tag = f"torch/loop@{threads}thr"
      torch_pieces += [
        (f"{tag} forward (no_grad)", _median_time(t_fwd, r)),
        (f"{tag} forward (autograd on) + backward", _median_time(t_fwd_bwd, r)),
        (f"{tag} clip_grad_norm_ + AdamW step", _median_time(t_opt, r)),
        (
          f"{tag} full step",
          _median_time(
            lambda: torch_euar.train_step(tm, topt, torch_euar.to_torch_batch(batch), loss_cfg, c.optim.grad_clip), r
          ),
        ),
      ]
  return {
    "config": dataclasses.asdict(cfg),
    "dispatch": args.dispatch_list[0],
    "pieces_ms": {k: v * 1e3 for k, v in pieces + torch_pieces},
    "hlo_ops": ops,
    "trace": trace,
    "loadavg": benchlib.loadavg(),
  }


def format_profile(prof: dict[str, Any]) -> str:
  width = max(len(k) for k in prof["pieces_ms"])
  out = [
    f"## profile (seq_len={prof['config']['seq_len'] or 0}, dispatch={prof['dispatch']}): median ms per call"
    + (f"; load average {prof['loadavg']:.2f}" if prof.get("loadavg") is not None else "")
  ]
  out += [f"   {k.ljust(width)}  {v:8.3f}" for k, v in prof["pieces_ms"].items()]
  out.append("   compiled HLO op counts (entry_ops ~ thunks XLA:CPU runs one after another):")
  for k, v in prof["hlo_ops"].items():
    out.append(f"   {k}: " + ", ".join(f"{a}={b}" for a, b in v.items()))
  tr = prof.get("trace") or {}
  if tr.get("categories"):
    out.append(
      f"   XLA:CPU thunk time of the pmap step under jax.profiler ({tr['traced_ms_per_step']:.2f} ms/step traced, "
      f"{tr['thunk_ms_per_step']:.2f} ms of thunks, {tr['thunks_per_step']:.0f} thunks/step incl. loop "
      f"bodies), exclusive time by owner:"
    )
    cw = max(len(k) for k in tr["categories"])
    out += [f"     {k.ljust(cw)}  {100 * v['share']:5.1f}%" for k, v in tr["categories"].items()]
    out.append("   top ops:")
    out += [
      f"     {o['name']:28s} {100 * o['share']:5.1f}%  x{o['calls_per_step']:.0f}/step  {o['op_name'][-90:]}"
      for o in tr["top_ops"]
    ]
  return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Driver


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--steps", type=int, default=200, help="timed training steps per row")
  benchlib.add_malloc_flag(p, "default")
  p.add_argument(
    "--seq-len", default="0,50", help="comma list of configs: 0 = utterance vectors, T = sequences [B, T, D] with masks"
  )
  p.add_argument("--dispatch", default="dense,sorted", help="jmoe dispatch strategies (first = the headline row)")
  p.add_argument("--torch-dispatch", default="loop,dense", help="torch reference variants (loop, dense)")
  p.add_argument("--jax-variants", default="pmap,jit", help="pmap (make_steps, as the app) and/or jit")
  p.add_argument("--dims", default=",".join(map(str, DEFAULT_DIMS)), help="text,audio,vision feature sizes")
  p.add_argument("--width", type=int, default=72)
  p.add_argument("--modalities", default=",".join(MODALITIES), help="subset of text,audio,vision (tests use one)")
  p.add_argument("--warmup", type=int, default=10, help="untimed steps per row (the first compiles)")
  p.add_argument("--rounds", type=int, default=10, help="interleaved timing chunks per row")
  p.add_argument("--num-batches", type=int, default=8, help="distinct batches cycled through")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument(
    "--torch-threads",
    default="",
    help="comma list of torch.set_num_threads values, one set of torch rows each; the first is the "
    "reference (torch/loop, torch/dense). Default: the cores JAX may use, then 1 (rows "
    "torch/<dispatch>@1thr): with other processes on the CPU, 2 OpenMP threads on 2 cores stall at "
    "every op's barrier and torch gets 5-20x slower, 1 thread avoids that",
  )
  p.add_argument(
    "--wait-idle",
    type=float,
    default=0.0,
    help=f"wait up to this many seconds for the load average to drop below {IDLE_LOAD} before timing",
  )
  p.add_argument("--profile", action="store_true", help="also break the jmoe and torch steps down (see docstring)")
  p.add_argument("--profile-repeats", type=int, default=15)
  p.add_argument("--profile-trace-steps", type=int, default=20, help="steps traced with jax.profiler in --profile")
  p.add_argument("--json", help="write the results here (e.g. runs/bench/euar_train.json)")
  args = p.parse_args(argv)
  args.seq_lens = [int(s) for s in args.seq_len.split(",") if s.strip()]
  args.dispatch_list = [s.strip() for s in args.dispatch.split(",") if s.strip()]
  args.torch_dispatch_list = [s.strip() for s in args.torch_dispatch.split(",") if s.strip()]
  args.dims_tuple = tuple(int(s) for s in args.dims.split(","))
  cores = benchlib.num_threads()
  args.torch_threads_list = [int(s) for s in args.torch_threads.split(",") if s.strip()] or (
    [cores, 1] if cores > 1 else [1]
  )
  if len(args.dims_tuple) != len(MODALITIES):
    p.error(f"--dims needs {len(MODALITIES)} sizes (text,audio,vision)")
  args.modalities_tuple = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
  if not args.modalities_tuple or any(m not in MODALITIES for m in args.modalities_tuple):
    p.error(f"--modalities must be a non-empty subset of {MODALITIES}")
  bad = [t for t in args.torch_dispatch_list if t not in torch_euar.DISPATCHES]
  if bad:
    p.error(f"unknown --torch-dispatch {bad}; choose from {torch_euar.DISPATCHES}")
  if args.steps < 1 or args.warmup < 1:
    p.error("--steps and --warmup must be >= 1")
  return args


def main(argv=None) -> dict[str, Any]:
  load_start = benchlib.loadavg()
  args = parse_args(argv)
  malloc_status = benchlib.apply_malloc(args)
  torch_mod = None if args.no_torch else benchlib.import_torch()
  if torch_mod is not None:
    torch_mod.set_num_threads(args.torch_threads_list[0])
  machine = benchlib.machine_info(torch_mod)
  machine["malloc"] = malloc_status
  print(malloc_status, flush=True)
  print(
    f"machine: {machine['cpu_model']} ({', '.join(machine['cpu_simd_flags'])}), {machine['cores']} cores "
    f"(os.cpu_count {machine['os_cpu_count']}); python {machine['python']}; jax {machine['jax']} / jaxlib "
    f"{machine['jaxlib']}, backend {machine['backend']} {machine['devices']}; XLA_FLAGS='{machine['xla_flags']}'; "
    + (
      f"torch {machine['torch']}, rows with set_num_threads in {args.torch_threads_list} (the first = reference)"
      if torch_mod is not None
      else ("torch rows skipped (--no-torch)" if args.no_torch else "torch not importable: torch rows skipped")
    ),
    flush=True,
  )
  print(
    f"load average at start: {load_start if load_start is None else f'{load_start:.2f}'} "
    f"({'idle' if load_start is not None and load_start < IDLE_LOAD else 'LOADED'} by the < {IDLE_LOAD} rule)",
    flush=True,
  )
  configs, profiles = [], []
  for seq in args.seq_lens:
    cfg = BenchConfig(
      batch_size=args.batch_size, seq_len=seq, dims=args.dims_tuple, width=args.width, modalities=args.modalities_tuple
    )
    res = run_config(cfg, args, torch_mod)
    configs.append(res)
    print(format_table(res), flush=True)
    print(flush=True)
    if args.profile:
      prof = profile_config(cfg, args, torch_mod)
      profiles.append(prof)
      print(format_profile(prof), flush=True)
      print(flush=True)
  out = {
    "machine": machine,
    "loadavg_start": load_start,
    "args": dict(vars(args)),
    "configs": configs,
    "targets": check_targets(configs),
  }
  if profiles:
    out["profiles"] = profiles
  for m in out["targets"]:
    print(m)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1, default=str)
    print(f"wrote {args.json}")
  return out


if __name__ == "__main__":
  main()
