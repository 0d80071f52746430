"""EUAR training-throughput benchmark: the jmoe train step (as the training app runs it) vs eager PyTorch.

    python -m tools.bench_euar_train --json runs/bench/euar_train.json   # both configs (vectors, then seq_len 50)
    python -m tools.bench_euar_train --seq-len 0 --dispatch dense,sorted --torch-dispatch loop,dense

The model and training setup are ``experiments.common.euar_config``'s (the euar_mosi defaults) on synthetic
MOSI-shaped batches. Rows, each a thunk of ``--chunk`` train steps blocked at its end: ``jmoe/pmap/<dispatch>``
(the app's step), ``jmoe/jit/<dispatch>`` (the same step under ``jax.jit``) and ``torch/<dispatch>``
(``tools.torch_euar`` from the same initial parameters; ``@1thr`` on one thread), timed interleaved. The target
(``euar_train.app_vs_torch`` in ``tools/targets.json``) compares the app step with the fastest torch row.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from typing import Any

import jax
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
  return euar_lib.build(c, types.SimpleNamespace(modalities=tuple(modalities)), TASKS)


def hparams(c):
  """The train state's objective weights for config ``c`` (EUAR eq. 12)."""
  return state_lib.default_hparams(TASKS, dict(c.loss_weights))


def torch_loss_cfg(c) -> dict[str, Any]:
  """The PyTorch reference's loss config (alpha, beta, lambda of eq. 12) from the app config ``c``."""
  w = c.loss_weights
  return {"alpha": w.kl, "beta": w.auxiliary_loss, "lam": w.uloss, "use_kl": True, "use_uloss": True}


MODALITIES = ("text", "audio", "vision")
DEFAULT_DIMS = (768, 5, 20)


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


def jmoe_rows(cfg: BenchConfig, dispatch: str, batches, variants, params, chunk: int) -> list[dict[str, Any]]:
  """jmoe/pmap/<dispatch> (make_pmap_steps, as the app) and jmoe/jit/<dispatch> (plain jit of the same step)."""
  c = app_config(cfg, dispatch)
  model = build_model(c, cfg.modalities)
  tx = state_lib.make_optimizer(c.optim.lr, c.optim.weight_decay, c.optim.grad_clip)
  devices = jax.local_devices()[:1]
  state = create_state(model, tx, params, hparams(c))
  rng, rows = jax.random.key(10_000), []
  for variant in variants:
    if variant == "pmap":
      step = parallel_lib.make_pmap_steps(model, TASKS, devices)[0]
      holder = {"state": parallel_lib.DataParallel("pmap", devices).replicate(state), "i": 0, "m": None}
    else:
      fn = jax.vmap(steps_lib.train_step_fn(model, TASKS), in_axes=(0, 0, None), axis_name=steps_lib.AXIS)
      step, holder = jax.jit(fn, donate_argnums=(0,)), {"state": stack1(state), "i": 0, "m": None}

    def run(step=step, holder=holder):
      s, m = holder["state"], holder["m"]
      for _ in range(chunk):
        s, m = step(s, batches[holder["i"] % len(batches)], rng)
        holder["i"] += 1
      holder["state"], holder["m"] = s, m
      return s, m

    def loss(holder=holder):
      return float(np.asarray(holder["m"]["loss"]).reshape(-1)[0])

    n = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    rows.append({"name": f"jmoe/{variant}/{dispatch}", "run": run, "loss": loss, "runtime": "jax", "num_params": n})
  return rows


def torch_row(cfg: BenchConfig, dispatch, batches, params, torch, threads, chunk, name, device="cpu") -> dict:
  """torch/<dispatch>: the eager reference from the jmoe initial parameters, on ``threads`` threads."""
  c = app_config(cfg)
  model = torch_euar.make_model(cfg.dim_of, cfg.modalities, cfg.width, cfg.num_experts, cfg.k, cfg.dropout, dispatch)
  torch_euar.load_jax_params(model, params)
  model.to(device).train()
  opt = torch_euar.make_optimizer(model, c.optim.lr, c.optim.weight_decay)
  tb = [{k: v.to(device) for k, v in torch_euar.to_torch_batch(b).items()} for b in batches]
  holder = {"i": 0, "loss": None}

  def run():
    torch.set_num_threads(threads)
    for _ in range(chunk):
      holder["loss"] = torch_euar.train_step(
        model, opt, tb[holder["i"] % len(tb)], torch_loss_cfg(c), c.optim.grad_clip
      )
      holder["i"] += 1

  block = (lambda out: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda out: out)
  n = torch_euar.num_params(model)
  row = {"name": name, "run": run, "block": block, "loss": lambda: float(holder["loss"]), "runtime": "torch"}
  return dict(row, num_params=n, torch_threads=threads)


def run_config(cfg: BenchConfig, opts: dict[str, Any], torch=None, torch_device: str = "cpu") -> dict[str, Any]:
  """Build and time the rows of one config. opts: dispatch, torch_dispatch, variants, torch_threads, chunk,
  num_batches, seed, timing (kwargs of benchlib.time_interleaved)."""
  batches = make_batches(cfg, opts["num_batches"], opts["seed"])
  params = init_params(build_model(app_config(cfg), cfg.modalities), batches[0], opts["seed"])
  rows = [r for d in opts["dispatch"] for r in jmoe_rows(cfg, d, batches, opts["variants"], params, opts["chunk"])]
  for i, threads in enumerate(opts["torch_threads"] if torch is not None else ()):
    for d in opts["torch_dispatch"]:
      name = f"torch/{d}" if i == 0 else f"torch/{d}@{threads}thr"
      rows.append(torch_row(cfg, d, batches, params, torch, threads, opts["chunk"], name, torch_device))
  foreign = benchlib.ForeignCpu().start()
  benchlib.time_interleaved(rows, "run", **opts["timing"])
  foreign_frac = foreign.stop()
  out = []
  for r in rows:
    st = {k: v / opts["chunk"] if k.endswith("_s") else v for k, v in r["stats"]["run"].items()}
    extra = {k: r[k] for k in ("num_params", "torch_threads") if k in r}
    out.append(
      {
        "name": r["name"],
        "step": st,
        "samples_per_s": cfg.batch_size / st["median_s"],
        "first_call_s": r["first_call_s"]["run"],
        "final_loss": r["loss"](),
        **extra,
      }
    )
  torch_rows = [r for r in out if r["name"].startswith("torch/")]
  best = max(torch_rows, key=lambda r: r["samples_per_s"]) if torch_rows else None
  for r in out:
    r["x_best_torch"] = r["samples_per_s"] / best["samples_per_s"] if best else None
  app = out[0]
  ratio = {"app_row": app["name"], "best_torch": best and best["name"], "app_vs_best_torch": app["x_best_torch"]}
  return {
    "config": dataclasses.asdict(cfg),
    "label": cfg.label(),
    "rows": out,
    "ratio": ratio,
    "foreign_cpu_fraction": foreign_frac,
    "chunk": opts["chunk"],
  }


def format_table(res: dict[str, Any], markdown: bool = False) -> str:
  head = ["row", "ms/step", "p10-p90 ms", "samples/s", "x best torch", "first call s", "final loss"]
  lines = [
    [
      r["name"],
      f"{r['step']['median_s'] * 1e3:.2f}",
      f"{r['step']['p10_s'] * 1e3:.2f}-{r['step']['p90_s'] * 1e3:.2f}",
      f"{r['samples_per_s']:,.0f}",
      "-" if r["x_best_torch"] is None else f"{r['x_best_torch']:.2f}",
      f"{r['first_call_s']:.2f}",
      f"{r['final_loss']:.4f}",
    ]
    for r in res["rows"]
  ]
  title = [f"## EUAR train step: {res['label']}", benchlib.foreign_line(res["foreign_cpu_fraction"])]
  return "\n".join(
    (title if not markdown else [f"**{res['label']}**", ""]) + benchlib.format_rows(head, lines, markdown)
  )


def check_targets(configs: list[dict[str, Any]]) -> list[str]:
  target = benchlib.load_targets("euar_train")["euar_train.app_vs_torch"]
  out = []
  for res in configs:
    rt = res["ratio"]
    if rt["app_vs_best_torch"] is not None:
      detail = f"seq_len={res['config']['seq_len']}: {rt['app_row']} / {rt['best_torch']} = "
      out.append(benchlib.judge(target, rt["app_vs_best_torch"], detail)["line"])
  return out


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--seq-len", type=int, action="append", help="0 = vectors; repeat for several (default 0 and 50)")
  p.add_argument("--dispatch", default="dense,sorted", help="jmoe dispatch strategies (first = the app's row)")
  p.add_argument("--torch-dispatch", default="loop,dense", help="torch reference variants (loop, dense)")
  p.add_argument("--jax-variants", default="pmap,jit", help="pmap (make_steps, as the app) and/or jit")
  p.add_argument("--torch-threads", default="", help="thread counts, first = reference (default: cores,1)")
  p.add_argument("--dims", default=",".join(map(str, DEFAULT_DIMS)), help="text,audio,vision feature sizes")
  p.add_argument("--width", type=int, default=72)
  p.add_argument("--modalities", default=",".join(MODALITIES), help="subset of text,audio,vision")
  p.add_argument("--chunk", type=int, default=10, help="training steps per timed call")
  p.add_argument("--repeats", type=int, default=20, help="timed chunks per row (interleaved rounds)")
  p.add_argument("--warmup", type=int, default=2, help="untimed chunks per row (the first compiles)")
  p.add_argument("--max-seconds", type=float, default=20.0, help="a row leaves the rounds after this much time")
  p.add_argument("--num-batches", type=int, default=8, help="distinct batches cycled through")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--json", help="write the results here (e.g. runs/bench/euar_train.json)")
  benchlib.add_malloc_flag(p, "default")
  return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  malloc = benchlib.apply_malloc(args)
  torch = None if args.no_torch else benchlib.import_torch()
  threads = [int(t) for t in args.torch_threads.split(",") if t] or sorted({benchlib.num_threads(), 1}, reverse=True)
  opts = {
    "dispatch": [d for d in args.dispatch.split(",") if d],
    "torch_dispatch": [d for d in args.torch_dispatch.split(",") if d],
    "variants": [v for v in args.jax_variants.split(",") if v],
    "torch_threads": threads,
    "chunk": args.chunk,
    "num_batches": args.num_batches,
    "seed": args.seed,
    "timing": {"repeats": args.repeats, "warmup": args.warmup, "max_seconds": args.max_seconds},
  }
  dims = tuple(int(x) for x in args.dims.split(","))
  mods = tuple(m for m in args.modalities.split(",") if m)
  configs = []
  for seq_len in args.seq_len if args.seq_len is not None else (0, 50):
    cfg = BenchConfig(args.batch_size, seq_len, dims, args.width, modalities=mods)
    configs.append(run_config(cfg, opts, torch))
    print(format_table(configs[-1]) + "\n", flush=True)
  out = {"machine": dict(benchlib.machine_info(torch), malloc=malloc), "args": vars(args), "configs": configs}
  out["targets"] = check_targets(configs)
  print("\n".join(out["targets"]))
  benchlib.write_json(out, args.json)
  return out


if __name__ == "__main__":
  main()
