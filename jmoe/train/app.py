"""The training app of every experiment: ``run(config)`` = data -> tasks -> folds -> model -> fit folds x seeds ->
report. Linear functions in the style of big_vision's ``train.py`` and the Flax examples' ``train_and_evaluate``:
no trainer class, no callbacks.

Run directory (``config.workdir``)::

  config.json                      the resolved config (a re-run with a different config is refused)
  results.json / results.md        per task: every fold x seed at its best-validation epoch, mean ± std
  fold_<f>/seed_<s>/metrics.jsonl  one line per epoch (train loss terms and statistics, validation metrics)
  fold_<f>/seed_<s>/latest, best   orbax checkpoints (resume / evaluation)
  fold_<f>/seed_<s>/test_outputs.npz  the best checkpoint's test outputs and per-sample diagnostics
  curves.png, expert_load.png, confusion_<task>.png, scatter_<task>.png

The model is ``jmoe.models.<config.model_name>.build(config, dataset, tasks)`` (big_vision's
``importlib.import_module(f"big_vision.models.{config.model_name}")``).

Trainers compose three functions: :func:`prepare` (smoke settings, validation, data, folds, setup, the workdir),
their own fitting (:func:`run` uses :func:`jmoe.train.loop.fit`; the population and the search train member groups
with :func:`jmoe.train.loop.train_epoch`) and :func:`finish` (results.json / results.md, plots, the table). The
command line is :func:`jmoe.train.cli.main`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jmoe import hostmem
from jmoe.data import folds as folds_lib
from jmoe.data import format as fmt
from jmoe.data import sources
from jmoe.train import cli, loop, report
from jmoe.train import parallel as parallel_lib
from jmoe.train import state as state_lib
from jmoe.train import tasks as tasks_lib
from jmoe.train import workdir as workdir_lib

log = loop.log
FOLD_KINDS = ("auto", "predefined", "kfold", "logo", "random")
MEMBERS = ("sequential", "vmap", "vmap_folds")
# Keys that may change between a run and its resumption without changing what is computed.
RUNTIME_KEYS = (
  "quiet",
  "debug",
  "devices",
  "parallel",
  "distributed",
  "workdir",
  "discard_damaged",
  "retain_host_memory",
  "ensemble",  # a report row over the trained seeds: a finished run can be re-run with another K
)


def base_config(name: str, model_name: str) -> ml_collections.ConfigDict:
  """The fields every experiment has; an experiment's ``get_config()`` fills data, tasks, model and the rest."""
  c = ml_collections.ConfigDict()
  c.name = name
  c.model_name = model_name
  c.workdir = f"runs/{name}"
  c.seeds = 5
  c.seed_offset = 0
  c.members = "sequential"  # 'vmap': the seeds of a fold as one compiled program over a member axis;
  # 'vmap_folds': every fold x seed as one program (folds of equal split sizes)
  c.member_chunk = 0  # at most this many members per vmapped program (0 = all in one); see loop.member_chunks
  c.devices = 0  # 0 = all devices (pmap: local ones; jit: every process's); N = the first N
  c.parallel = "pmap"  # data parallel: 'pmap' (local devices) | 'jit' (Mesh/NamedSharding; multi-host)
  c.distributed = False  # jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)
  c.retain_host_memory = False  # True: glibc keeps freed memory (jmoe.hostmem): for large layers, not small steps
  c.select = ""  # '<task>/<metric>' chosen on validation only; '' = the first task's rule
  c.ensemble = 0  # K >= 2: also report the mean prediction of each fold's K best seeds on validation (own row)
  c.search = ml_collections.ConfigDict(
    dict(
      trials=0,  # N >= 1: hyperparameter search of N trials on the member axis (jmoe.train.search); 0 = none
      seed=0,  # draws the N trials
      space="",  # 'key=log:a:b;key=uniform:a:b;key=choice:x,y' ('' = learning rate, weight decay, loss weights)
      members="vmap",  # the trials as members of one program (in chunks of member_chunk) | 'sequential' (timing)
    )
  )
  c.smoke = False  # seconds: tiny data, 2 epochs, 1 seed, at most 2 folds (the tests run this)
  c.quiet = False
  c.debug = False  # show tracebacks instead of one-line errors
  c.discard_damaged = False  # a damaged checkpoint: False = stop with one line naming it; True = retrain that seed
  c.folds = ml_collections.ConfigDict(
    dict(
      kind="predefined",  # predefined (train/valid/test) | kfold | logo (leave groups out) | random (leaky demo) |
      # auto (predefined when the dataset has a split, else kfold)
      k=10,
      group="",  # kfold: whole groups (e.g. trial) never split; logo: the group left out (subject, session, actor)
      within="",  # kfold: spread each of these (e.g. subject) over all k folds
      valid_fraction=0.1,
      valid_groups=1,
      test_groups_per_fold=1,
      seed=0,
      max_folds=0,  # 0 = all folds; N = the first N (quick looks; results say so)
      standardize=False,  # per-feature (x - mean) / std with statistics from each fold's train split only
    )
  )
  c.optim = ml_collections.ConfigDict(
    dict(
      lr=1e-3,
      weight_decay=1e-4,
      grad_clip=1.0,
      batch_size=16,
      epochs=40,
      patience=8,
      max_loss=0.0,  # > 0: a training loss above it stops the member as diverged; 0 = 100 x the first epoch's loss
      schedule="constant",  # or "cosine": annealed per epoch over optim.epochs (jmoe.train.state.schedule_factor)
    )
  )
  return c


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """One-line ValueError naming the key, the value and the allowed values; runs before anything is written."""

  def need(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}={value!r} is invalid: {allowed}")

  need(cfg.members in MEMBERS, "members", cfg.members, f"choose one of {MEMBERS}")
  need(isinstance(cfg.seeds, int) and cfg.seeds >= 1, "seeds", cfg.seeds, "use an int >= 1")
  k = cfg.get("ensemble", 0)
  need(isinstance(k, int) and (k == 0 or 2 <= k <= cfg.seeds), "ensemble", k, f"use 0 or 2..seeds={cfg.seeds}")
  trials = cfg.get("search", {}).get("trials", 0)
  need(isinstance(trials, int) and trials >= 0, "search.trials", trials, "use an int >= 0 (0 = no search)")
  smembers = cfg.get("search", {}).get("members", "vmap")
  need(smembers in ("vmap", "sequential"), "search.members", smembers, "choose 'vmap' or 'sequential'")
  chunk = cfg.get("member_chunk", 0)
  need(isinstance(chunk, int) and chunk >= 0, "member_chunk", chunk, "use an int >= 0 (0 = no limit)")
  need(cfg.optim.epochs >= 1, "optim.epochs", cfg.optim.epochs, "use an int >= 1")
  need(cfg.optim.batch_size >= 1, "optim.batch_size", cfg.optim.batch_size, "use an int >= 1")
  need(cfg.optim.patience >= 1, "optim.patience", cfg.optim.patience, "use an int >= 1")
  need(cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "use a float > 0")
  max_loss = cfg.optim.get("max_loss", 0.0)
  need(max_loss >= 0, "optim.max_loss", max_loss, "use 0 (automatic: 100 x the first epoch's loss) or a limit > 0")
  need(isinstance(cfg.seed_offset, int) and cfg.seed_offset >= 0, "seed_offset", cfg.seed_offset, "use an int >= 0")
  need(str(cfg.workdir).strip() != "", "workdir", cfg.workdir, "name a run directory (e.g. runs/<name>)")
  schedule = cfg.optim.get("schedule", "constant")
  need(schedule in state_lib.SCHEDULES, "optim.schedule", schedule, " | ".join(state_lib.SCHEDULES))
  need(cfg.folds.kind in FOLD_KINDS, "folds.kind", cfg.folds.kind, f"choose one of {FOLD_KINDS}")
  try:
    importlib.import_module(f"jmoe.models.{cfg.model_name}")
  except ModuleNotFoundError:
    need(False, "model_name", cfg.model_name, "no such module in jmoe.models")
  if "data" in cfg:
    sources.modalities(cfg.data)  # parsed once here: duplicates are a one-line error
  if cfg.select:
    need("/" in cfg.select and cfg.select.split("/")[0] in cfg.tasks, "select", cfg.select, "use '<task>/<metric>'")
  for name, w in cfg.get("loss_weights", {}).items():
    need(w >= 0, f"loss_weights.{name}", w, "use a weight >= 0")
  model = importlib.import_module(f"jmoe.models.{cfg.model_name}")
  if hasattr(model, "validate_config"):
    model.validate_config(cfg)


def make_folds(cfg: ml_collections.ConfigDict, ds: fmt.Dataset) -> list[loop.FoldData]:
  """The folds of ``config.folds`` over ``ds`` (a predefined split is one fold)."""
  kind = cfg.kind
  if kind == "auto":  # the dataset's own train/valid/test split, or k-fold over a pool (whole groups with folds.group)
    kind = "predefined" if not ds.is_pool else "kfold"
    cfg = ml_collections.ConfigDict({**cfg.to_dict(), "kind": kind})
  if not ds.is_pool:
    if kind != "predefined":
      raise ValueError(
        f"{ds.name} has a predefined train/valid/test split; folds.kind must be 'predefined', not {kind!r}"
      )
    return [_fold_data(cfg, "predefined", ds.splits["train"], ds.splits["valid"], ds.splits["test"])]
  pool = ds.splits[fmt.POOL]

  def group(key: str):
    if key not in pool.groups:
      raise ValueError(f"{ds.name}: folds need group {key!r}, the dataset has groups {sorted(pool.groups)}")
    return pool.groups[key]

  if kind == "predefined":
    raise ValueError(f"{ds.name} is a cross-validation pool: set folds.kind to kfold, logo or random")
  if kind == "kfold":
    folds = folds_lib.kfold(
      len(pool),
      cfg.k,
      cfg.seed,
      groups=group(cfg.group) if cfg.group else None,
      valid_fraction=cfg.valid_fraction,
      within=group(cfg.within) if cfg.within else None,
    )
  elif kind == "random":  # windows split at random, ignoring trials: leaks; only to measure the leak
    folds = folds_lib.kfold(len(pool), cfg.k, cfg.seed, valid_fraction=cfg.valid_fraction)
  else:
    if not cfg.group:
      raise ValueError("folds.kind='logo' needs folds.group (e.g. subject, session, actor)")
    folds = folds_lib.leave_one_group_out(
      group(cfg.group), valid_groups=cfg.valid_groups, seed=cfg.seed, test_groups_per_fold=cfg.test_groups_per_fold
    )
  if cfg.max_folds:
    folds = folds[: cfg.max_folds]
  return [_fold_data(cfg, f.name, pool.take(f.train), pool.take(f.valid), pool.take(f.test)) for f in folds]


def _fold_data(cfg, name: str, train: fmt.Split, valid: fmt.Split, test: fmt.Split) -> loop.FoldData:
  """One fold; with ``folds.standardize`` every split is standardised with the train split's statistics."""
  if cfg.get("standardize", False):
    stats = fmt.feature_stats(train, list(train.features))
    train, valid, test = (fmt.standardize(sp, stats) for sp in (train, valid, test))
  return loop.FoldData(name, train, valid, test)


def _config_diff(saved: dict, now: dict, prefix: str = "") -> list[str]:
  keys = sorted(set(saved) | set(now))
  out = []
  for k in keys:
    if not prefix and k in RUNTIME_KEYS:
      continue
    a, b = saved.get(k), now.get(k)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_diff(a, b, f"{prefix}{k}.")
    elif a != b:
      out.append(f"{prefix}{k}: {a!r} -> {b!r}")
  return out


def setup(cfg: ml_collections.ConfigDict, ds: fmt.Dataset) -> loop.Setup:
  """Tasks, model, optimizer, hyperparameters and compiled steps: built once per run."""
  tasks = tasks_lib.from_config(cfg.tasks, ds.label_specs)
  model = importlib.import_module(f"jmoe.models.{cfg.model_name}").build(cfg, ds, tasks)
  select_task, select_metric = tasks[0], tasks[0].select
  if cfg.select:
    task_name, select_metric = cfg.select.split("/", 1)
    select_task = next(t for t in tasks if t.name == task_name)
    tasks_lib.check_select(select_task, select_metric)
    mode = "min" if select_metric.split("_")[0] in tasks_lib.LOWER_IS_BETTER else "max"
    select_task = dataclasses.replace(select_task, select=select_metric, mode=mode)
  dp = parallel_lib.DataParallel.from_config(cfg)
  tx = state_lib.make_optimizer(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip)
  hparams = state_lib.default_hparams(tasks, dict(cfg.get("loss_weights", {})))
  # Architecture genes of a population (``gene/<name>``) are hyperparameters too: every state of the run, and every
  # restore template (evaluators), carries them; a plain run starts them at the top of their init range.
  for name, gene in cfg.get("population", {}).get("genes", {}).items():
    if name.startswith("gene/"):
      hparams[name] = jax.numpy.float32(tuple(gene.get("init", (gene["low"], gene["high"])))[1])
  members = dp.make_steps(model, tasks, members=True) if cfg.members != "sequential" else None
  steps = dp.make_steps(model, tasks)
  init_fn = jax.jit(model.init)  # compiled once for every fold and seed
  return loop.Setup(cfg, model, tasks, tx, hparams, dp, steps, members, select_task, select_metric, init_fn)


@dataclasses.dataclass
class Prepared:
  """A run ready to train: its config, dataset, folds, setup (compiled steps), workdir and seeds."""

  cfg: ml_collections.ConfigDict
  ds: fmt.Dataset
  folds: list[loop.FoldData]
  setup: loop.Setup
  workdir: Path
  seeds: list[int]
  t0: float


SMOKE_SIZES = {"train": 96, "valid": 32, "test": 32, fmt.POOL: 240}


def apply_smoke(cfg: ml_collections.ConfigDict, smoke: Callable | None = None, epochs: bool = True) -> None:
  """``config.smoke``: 1 seed, at most 2 epochs and 2 folds, then the experiment's own ``smoke(cfg)``; says what
  it changed (smoke mode overrides the user's sizes)."""
  if not cfg.smoke:
    return
  before = dict(cli.leaves(cfg))
  cfg.seeds = min(cfg.seeds, 1)
  if epochs:
    cfg.optim.epochs = min(cfg.optim.epochs, 2)
  cfg.folds.max_folds = cfg.folds.max_folds or 2
  if smoke is not None:
    smoke(cfg)
  changed = [f"{k}={v!r} (was {before.get(k)!r})" for k, v in cli.leaves(cfg) if before.get(k) != v]
  if changed:
    log(f"smoke mode overrides: {', '.join(changed)}")


def shrink(ds: fmt.Dataset, sizes: dict[str, int] = SMOKE_SIZES, seed: int = 0) -> fmt.Dataset:
  """Smoke mode on any dataset: at most ``sizes[split]`` samples per split, a seeded random subset (sorted)."""
  out = {}
  for name, sp in ds.splits.items():
    n = sizes.get(name, sizes["train"])
    if len(sp) > n:
      idx = np.sort(np.random.default_rng(seed).choice(len(sp), n, replace=False))
      sp = sp.take(idx)
    out[name] = sp
  if all(len(out[k]) == len(ds.splits[k]) for k in out):
    return ds
  log(f"smoke mode: {ds.name} shrunk to {', '.join(f'{k} {len(v)}' for k, v in out.items())} samples")
  return dataclasses.replace(ds, splits=out)


def check_workdir(cfg: ml_collections.ConfigDict) -> Path:
  """The run directory: a re-run with another config is refused; the config is written before training."""
  workdir = Path(cfg.workdir)
  if jax.process_index() == 0:
    if workdir.exists() and not workdir.is_dir():
      raise ValueError(f"config.workdir={str(workdir)!r} is a file, not a directory; choose another --config.workdir")
    saved = workdir / "config.json"
    if saved.exists():
      diff = _config_diff(json.loads(saved.read_text()), json.loads(cfg.to_json()))
      if diff:
        raise ValueError(
          f"{workdir} holds a run with another config ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); "
          "use another --config.workdir or delete that run"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    workdir_lib.write_atomic(saved, cfg.to_json(indent=2))
  return workdir


@contextlib.contextmanager
def prepared(cfg: ml_collections.ConfigDict, smoke: Callable | None = None, epochs: bool = True):
  """``with prepared(cfg) as r:`` :func:`prepare` with the workdir locked for the whole run: a second process on a
  live workdir is refused in one line naming it and the other process (a lock whose process is gone is taken
  over)."""
  t0 = time.time()
  apply_smoke(cfg, smoke, epochs)
  validate_config(cfg)
  wd = Path(cfg.workdir)
  existed, had_config = wd.exists(), (wd / "config.json").exists()
  try:
    with workdir_lib.lock(wd, "run"):
      try:
        yield prepare(cfg, t0=t0)
      except BaseException:
        # Refused after prepare() wrote config.json but before training wrote anything (e.g. a population that does
        # not fit the device): that config.json alone would refuse the corrected re-run as 'another config'.
        left = {p.name for p in wd.iterdir()} if wd.is_dir() else {"?"}
        if not had_config and left <= {"config.json", workdir_lib.LOCK_NAME}:
          (wd / "config.json").unlink(missing_ok=True)
        raise
  finally:  # a run refused before it wrote anything leaves no empty workdir behind
    if not existed and wd.is_dir() and not any(wd.iterdir()):
      wd.rmdir()


def prepare(
  cfg: ml_collections.ConfigDict, smoke: Callable | None = None, epochs: bool = True, t0: float | None = None
) -> Prepared:
  """Everything before training: smoke settings, validation, data (banner when synthetic), folds (each checked
  for splits too small to select or score on), the setup and the workdir (config written; a re-run with another
  config refused). Called by :func:`prepared`, which holds the workdir's lock; ``t0`` set = already validated."""
  if t0 is None:
    t0 = time.time()
    apply_smoke(cfg, smoke, epochs)
    validate_config(cfg)
  if cfg.members == "sequential" and cfg.get("member_chunk", 0):
    log(f"note: member_chunk={cfg.member_chunk} has no effect with members='sequential'")
  # Both before anything touches a device (the allocator setting before XLA's threads make their arenas).
  memory = hostmem.retain_freed_memory() if cfg.get("retain_host_memory", False) else None
  parallel_lib.maybe_initialize_distributed(cfg.get("distributed", False))
  if memory:
    log(memory)
  ds = sources.load(cfg.data)
  if cfg.smoke:
    ds = shrink(ds)
  if ds.synthetic:
    log(f"*** SYNTHETIC DATA: {ds.name} ({ds.source}) — numbers are not results on a real dataset. ***")
  log(f"data: {fmt.describe(ds)}")
  folds = make_folds(cfg.folds, ds)
  st = setup(cfg, ds)
  for fold in folds:
    for warning in check_fold(fold, st, ds):
      log(f"warning: {warning}")
  workdir = check_workdir(cfg)
  seeds = [cfg.seed_offset + i for i in range(cfg.seeds)]
  return Prepared(cfg, ds, folds, st, workdir, seeds, t0)


def check_fold(fold: loop.FoldData, st: loop.Setup, ds: fmt.Dataset) -> list[str]:
  """Refuse a fold whose splits are too small to train, select or score on (:func:`jmoe.data.format.
  check_split_sizes`, one line naming the fold); warnings for small splits and for a split holding one class only
  (a leave-one-group-out test split may: its scores are per-class recalls of that class)."""
  try:
    return fmt.check_split_sizes(fold.train, fold.valid, fold.test, fold.name, st.heads, ds.label_specs)
  except ValueError as e:
    if "holds only class" not in str(e):
      raise
    return [str(e).split("; at least")[0] + ": its classification scores cover that class only"]


def add_ensembles(cfg, st: loop.Setup, folds: list[loop.FoldData], fold_results: list[dict], workdir: Path) -> None:
  """With ``config.ensemble=K``: per fold, the mean test prediction of the K seeds best on validation (class
  probabilities for classification heads), evaluated once, in ``fold['ensemble']``."""
  k = int(cfg.get("ensemble", 0) or 0)
  if k < 2:
    return
  for fold, fr in zip(folds, fold_results):
    score = lambda r: tasks_lib.selection_value(st.select_task, r["valid"][st.select_task.name])
    ok = [r for r in fr["seeds"] if r["status"] == "ok" and r["valid"] and score(r) is not None]
    if len(ok) < k:
      log(f"  {fold.name}: ensemble of {k} needs {k} finished seeds, has {len(ok)}: no ensemble row")
      continue
    ranked = sorted(ok, key=score, reverse=st.select_task.mode == "max")[:k]
    outs = []
    for r in ranked:
      with np.load(workdir / fr["dir"] / f"seed_{r['seed']}" / "test_outputs.npz") as z:
        outs.append({t.head: np.asarray(z[t.head.replace("/", ".")]) for t in st.tasks})
    mean = {}
    for t in st.tasks:
      stack = np.stack([o[t.head] for o in outs]).astype(np.float64)
      if t.kind in ("classification", "sentiment_class", "high_low") and stack.ndim == 3:
        p = np.exp(stack - stack.max(-1, keepdims=True))
        stack = np.log(np.mean(p / p.sum(-1, keepdims=True), axis=0) + 1e-12)[None]
      mean[t.head] = np.mean(stack, axis=0)
    test = loop.jsonable(loop.evaluate(st, mean, fold.test))
    fr["ensemble"] = {"seeds": [r["seed"] for r in ranked], "test": test}


def fold_result(i: int, fold: loop.FoldData, seeds: list[dict]) -> dict:
  """The results.json entry of fold ``i``."""
  return {"fold": i, "name": fold.name, "dir": f"fold_{i}", "sizes": _sizes(fold), "seeds": seeds}


def run(cfg: ml_collections.ConfigDict, smoke: Callable[[ml_collections.ConfigDict], Any] | None = None) -> dict:
  """Train ``config.seeds`` seeds on every fold, select on validation, report test mean ± std. Re-running resumes.
  With ``config.search.trials`` > 0: the hyperparameter search first (:mod:`jmoe.train.search`)."""
  if cfg.get("search", {}).get("trials", 0):
    from jmoe.train import search

    return search.run(cfg, smoke)
  with prepared(cfg, smoke) as r:
    return _run(cfg, r)


def _run(cfg, r: Prepared) -> dict:
  st, folds, seeds, workdir = r.setup, r.folds, r.seeds, r.workdir
  log(f"model: {cfg.model_name} {cfg.model.to_dict()} | devices: {st.dp.describe()} | members: {cfg.members}")
  if cfg.members == "vmap_folds":  # every fold x seed in one compiled program
    members = [(f, s, workdir / f"fold_{i}" / f"seed_{s}") for i, f in enumerate(folds) for s in seeds]
    res = loop.fit_members(st, members)
    per_fold = [res[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(folds))]
  else:
    per_fold = [
      loop.fit(st, fold, seeds, workdir / f"fold_{i}")
      for i, fold in enumerate(tqdm(folds, desc="folds", disable=len(folds) == 1 or cfg.quiet))
    ]
  fold_results = [fold_result(i, fold, res) for i, (fold, res) in enumerate(zip(folds, per_fold))]
  add_ensembles(cfg, st, folds, fold_results, workdir)
  over = "seeds" if len(folds) == 1 else f"{len(folds)} folds (each the mean of its seeds)"
  select = f"{st.select_task.name}/{st.select_metric}"
  title = (
    f"{cfg.name}: {r.ds.name}{' (SYNTHETIC)' if r.ds.synthetic else ''}, {len(seeds)} seeds, mean ± std over {over}, "
    f"best epoch on valid by {select}"
  )
  return finish(cfg, r.ds, st.tasks, fold_results, title, select, r.t0)


def finish(cfg, ds, tasks, fold_results: list[dict], title: str, select: str, t0: float, plots: bool = True) -> dict:
  """Summarise a finished run (mean ± std per task), write results.json / results.md (and the plots), print the
  table; shared by the training app and the population run."""
  workdir = Path(cfg.workdir)
  summary = report.summarize(tasks, fold_results)
  table = report.table(tasks, summary, title)
  left_out = [
    f"{f['name']}/seed {r['seed']} ({r['status']})" for f in fold_results for r in f["seeds"] if r["status"] != "ok"
  ]
  if left_out:
    table += f"\nLeft out of the means: {', '.join(left_out)}\n"
  flagged = [
    f"{f['name']}/seed {r['seed']}: {x}"
    for f in fold_results
    for r in f["seeds"]
    if r["status"] == "ok"  # the others are listed above, out of the means
    for x in r.get("flags", [])
  ]
  if flagged:
    table += f"\nFlagged (in the means): {'; '.join(flagged)}\n"
  for t in tasks:
    for split, metrics in summary[t.name].items():
      undefined = [m for m, v in metrics.items() if v is None]
      if undefined:
        log(
          f"warning: {t.name} {split} {', '.join(undefined)} undefined on every seed (reported as null / 'undefined')"
        )
  out = {
    "name": cfg.name,
    "dataset": ds.name,
    "synthetic": ds.synthetic,
    "source": ds.source,
    "modalities": list(ds.modalities),
    "select": select,
    "tasks": {t.name: {"kind": t.kind, "head": t.head, "label": t.label, "loss": t.loss} for t in tasks},
    "folds": fold_results,
    "summary": summary,
    "seconds": time.time() - t0,
  }
  if jax.process_index() == 0:
    workdir_lib.write_atomic(workdir / "results.json", json.dumps(workdir_lib.jsonable(out), indent=2))
    (workdir / "results.md").write_text(table + "\n")
    written = report.plots(workdir, tasks, fold_results, ds.synthetic, select) if plots else []
    print(table)
    print(f"\nrun dir: {workdir} (results.json{''.join(', ' + w for w in written)}); {out['seconds']:.0f} s")
  if not any(r["status"] == "ok" for f in fold_results for r in f["seeds"]):
    kept = [r for f in fold_results for r in f["seeds"] if r.get("best_epoch") is not None]
    where = (
      f"the best checkpoints of {len(kept)} of them are kept and evaluated in results.json, out of the means"
      if kept
      else "no best checkpoint exists"
    )
    raise RunFailed(
      f"no seed of {cfg.name} produced a usable model ({', '.join(sorted(set(left_out))) or 'none trained'}); "
      f"{where}: lower --config.optim.lr or check the data"
    )
  return out


class RunFailed(ValueError):
  """Every member diverged or had no valid selection metric: the run has no result (exit status 2)."""


def _sizes(fold: loop.FoldData) -> dict[str, int]:
  return {"train": len(fold.train), "valid": len(fold.valid), "test": len(fold.test)}
