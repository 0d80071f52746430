"""Robustness of a finished run, for any model and task of the platform: restore every fold x seed's BEST
checkpoint (chosen on validation by the training app), evaluate its test split under perturbed conditions,
report mean ± std over folds x seeds. Nothing is tuned or selected here.

A condition is a name plus a function ``(test split, seed) -> perturbed split``. Built-in families, computed from
the run's own modalities (``config.data.modalities``, else the dataset's):

* :func:`missing_conditions`: every non-empty subset of the modalities kept, the rest zeroed for every sample
  (masks kept: :func:`jmoe.data.perturb.drop_modalities`); the all-modalities condition reproduces the run's own
  test metrics exactly;
* :func:`noise_conditions`: Gaussian noise ``N(0, (g * s)^2)`` on one modality's real entries (``s`` its pooled
  std on the TRAIN split), salt-and-pepper and text blanking at ratios (:mod:`jmoe.data.perturb`);
* :func:`rate_conditions`: a per-sample missing-modality *rate* r (each sample loses a random non-empty proper
  subset of its modalities with probability r), for the Hi-MoE sweep.

Perturbations are deterministic: condition ``c`` uses seed ``perturb_seed * 1_000_003 + crc32(c)`` and the same
perturbed split is fed to every model, so the ± std is model variance only.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from jmoe import metrics as metrics_lib
from jmoe.data import format as fmt
from jmoe.data import perturb
from jmoe.data import sources
from jmoe.train import app, loop
from jmoe.train import batches as batches_lib
from jmoe.train import state as state_lib
from jmoe.train.checkpoints import Checkpoints

Perturb = Callable[[fmt.Split, int], fmt.Split]


class RunError(ValueError):
  """A run dir that cannot be evaluated; the message is one line naming the path."""


@dataclasses.dataclass(frozen=True)
class Condition:
  name: str  # e.g. "missing:text+audio", "gaussian:vision:0.5", "rate:0.25"
  group: str  # "missing" | "noise" | "rate"
  level: float
  apply: Perturb
  info: dict = dataclasses.field(default_factory=dict)

  def seed(self, perturb_seed: int) -> int:
    return perturb_seed * 1_000_003 + zlib.crc32(self.name.encode())


@dataclasses.dataclass
class LoadedRun:
  """A finished run: its config, dataset, setup (compiled steps), folds and best parameters per fold x seed."""

  run_dir: Path
  cfg: ml_collections.ConfigDict
  ds: fmt.Dataset
  setup: loop.Setup
  folds: list[loop.FoldData]
  params: dict[tuple[int, int], Any]  # (fold index, seed) -> best params
  consts: dict[tuple[int, int], Any] = dataclasses.field(default_factory=dict)  # -> batch constants (genes)

  @property
  def modalities(self) -> tuple[str, ...]:
    return self.setup.modalities


def load_run(run_dir) -> LoadedRun:
  """Restore a run written by :func:`jmoe.train.app.run`; one-line :class:`RunError` for what cannot be read."""
  run_dir = Path(run_dir)
  if not (run_dir / "config.json").is_file():
    raise RunError(f"{run_dir}: not a finished jmoe run (no config.json); train it first")
  if not (run_dir / "results.json").is_file():
    raise RunError(f"{run_dir}: the run has not finished (no results.json); re-run its training command")
  cfg = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
  cfg.quiet = True
  ds = sources.load(cfg.data)
  folds = app.make_folds(cfg.folds, ds)
  st = app.setup(cfg, ds)
  results = json.loads((run_dir / "results.json").read_text())
  params, consts = {}, {}
  for f in results["folds"]:
    fold = folds[f["fold"]]
    sample = jax.tree.map(lambda a: a[0], next(batches_lib.iterate_batches(fold.train, st.modalities, 2, 1)))
    like = state_lib.create_state(st.model, st.tx, sample, jax.random.key(0), st.hparams, st.init_fn)
    for r in f["seeds"]:
      if r["status"] != "ok":
        continue
      d = run_dir / f["dir"] / f"seed_{r['seed']}"
      ck = Checkpoints(d)
      best = ck.restore_best(like)
      ck.close()
      if best is None:
        raise RunError(f"{d / 'best'}: no best checkpoint to evaluate (damaged run?)")
      params[(f["fold"], r["seed"])] = best[0].params
      consts[(f["fold"], r["seed"])] = loop.consts_of(best[0].hparams)
  if not params:
    raise RunError(f"{run_dir}: no seed finished training (all diverged?)")
  return LoadedRun(run_dir, cfg, ds, st, folds, params, consts)


def missing_conditions(modalities: Sequence[str]) -> list[Condition]:
  """Every non-empty subset of ``modalities`` kept (largest first), the others zeroed."""
  out = []
  for size in range(len(modalities), 0, -1):
    for keep in itertools.combinations(modalities, size):
      out.append(
        Condition(
          f"missing:{'+'.join(keep)}",
          "missing",
          float(len(modalities) - size),
          lambda sp, seed, keep=keep: perturb.drop_modalities(sp, keep),
          {"available": list(keep)},
        )
      )
  return out


def noise_conditions(train: fmt.Split, kinds: dict[str, tuple[str, Sequence[float]]]) -> list[Condition]:
  """``kinds``: {'gaussian' | 'salt_pepper' | 'blank_text': (modality, levels)}."""
  out = []
  for kind, (m, levels) in kinds.items():
    if kind == "gaussian":
      x = np.asarray(train.features[m])
      real = x[np.asarray(train.masks[m])] if m in train.masks else x
      scale = float(np.std(real))
      for g in levels:
        out.append(
          Condition(
            f"gaussian:{m}:{g:g}",
            "noise",
            g,
            lambda sp, seed, m=m, s=g * scale: perturb.gaussian_noise(sp, m, s, seed),
            {"kind": kind, "modality": m, "abs_std": g * scale},
          )
        )
    elif kind == "salt_pepper":
      for r in levels:
        fn = lambda sp, seed, m=m, r=r: perturb.salt_and_pepper(sp, m, r, seed)
        out.append(Condition(f"salt_pepper:{m}:{r:g}", "noise", r, fn, {"kind": kind, "modality": m}))
    elif kind == "blank_text":
      for r in levels:
        fn = lambda sp, seed, r=r: perturb.blank_text(sp, r, seed)
        out.append(Condition(f"blank_text:text:{r:g}", "noise", r, fn, {"kind": kind, "modality": "text"}))
    else:
      raise ValueError(f"unknown noise kind {kind!r}; use gaussian, salt_pepper or blank_text")
  return out


def drop_random_modalities(split: fmt.Split, modalities: Sequence[str], rate: float, seed: int) -> fmt.Split:
  """Each sample, with probability ``rate``, loses a uniformly drawn non-empty proper subset of ``modalities``
  (features zeroed, ``present[m]`` False); the others keep everything."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"missing rate must be in [0, 1], got {rate}")
  rng = np.random.default_rng(seed)
  b, mods = len(split), list(modalities)
  subsets = [s for k in range(1, len(mods)) for s in itertools.combinations(range(len(mods)), k)]
  if not subsets:
    return split
  hit = rng.random(b) < rate
  pick = rng.integers(0, len(subsets), b)
  feats, present = dict(split.features), dict(split.present)
  for j, m in enumerate(mods):
    gone = hit & np.array([j in subsets[p] for p in pick])
    x = np.array(split.features[m], copy=True)
    x[gone] = 0.0
    feats[m] = x
    keep = ~gone
    present[m] = keep if m not in split.present else (np.asarray(split.present[m]).T & keep).T
  return dataclasses.replace(split, features=feats, present=present)


def rate_conditions(modalities: Sequence[str], rates: Sequence[float]) -> list[Condition]:
  return [
    Condition(f"rate:{r:g}", "rate", r, lambda sp, seed, r=r: drop_random_modalities(sp, modalities, r, seed))
    for r in rates
  ]


def evaluate(run: LoadedRun, conditions: Sequence[Condition], perturb_seed: int = 0, progress=None) -> dict:
  """Every condition x fold x seed: {name, group, level, info, per_run: {fold/seed: metrics}, summary}."""
  st = run.setup
  rows = []
  for cond in conditions:
    per_run = {}
    for (fi, seed), params in run.params.items():
      test = cond.apply(run.folds[fi].test, cond.seed(perturb_seed))
      outs = loop.predict(st, st.steps[1], st.dp.replicate(params), test, None, run.consts.get((fi, seed)))[0]
      per_run[f"{fi}/{seed}"] = loop.jsonable(loop.evaluate(st, outs, test))
    summary = {}
    for t in st.tasks:
      keys = next(iter(per_run.values()))[t.name].keys()
      summary[t.name] = {
        k: _mean_std([r[t.name][k] for r in per_run.values()])
        for k in keys
        if isinstance(next(iter(per_run.values()))[t.name][k], (float, int, type(None)))
      }
    rows.append({"name": cond.name, "group": cond.group, "level": cond.level, "info": cond.info, "per_run": per_run})
    rows[-1]["summary"] = summary
    if progress:
      progress(cond.name)
  return {
    "run": str(run.run_dir),
    "dataset": run.ds.name,
    "synthetic": run.ds.synthetic,
    "split": "test",
    "runs": sorted(f"{f}/{s}" for f, s in run.params),
    "conditions": rows,
  }


def _mean_std(values):
  vals = [v for v in values if v is not None]
  return list(metrics_lib.mean_std(vals)) if vals else None


def table(out: dict, task: str, metrics: Sequence[str], group: str) -> str:
  rows = [
    {"condition": r["name"], **{k: tuple(r["summary"][task].get(k) or (np.nan, np.nan)) for k in metrics}}
    for r in out["conditions"]
    if r["group"] == group
  ]
  tag = " (SYNTHETIC)" if out["synthetic"] else ""
  title = f"{out['dataset']}{tag} test, {group} conditions, task {task}: mean ± std over {len(out['runs'])} fold x seed"
  return metrics_lib.format_table(rows, ["condition", *metrics], title=title)


def plot(out: dict, task: str, metric: str, path: Path) -> None:
  """Metric vs level per noise family (± std band), and a bar per missing-modality combination."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  families: dict[str, list] = {}
  for r in out["conditions"]:
    if r["group"] != "missing":
      fam = r["name"].rsplit(":", 1)[0]
      families.setdefault(fam, []).append(r)
  missing = [r for r in out["conditions"] if r["group"] == "missing"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for fam, rows in families.items():
    lv = [r["level"] for r in rows]
    ms = [r["summary"][task].get(metric) or (np.nan, np.nan) for r in rows]
    m, s = np.array([x[0] for x in ms]), np.array([x[1] for x in ms])
    axes[0].plot(lv, m, marker="o", label=fam)
    axes[0].fill_between(lv, m - s, m + s, alpha=0.2)
  axes[0].set_xlabel("level / ratio / missing rate")
  axes[0].set_ylabel(f"{task} {metric}")
  axes[0].legend(fontsize=7)
  if missing:
    vals = [r["summary"][task].get(metric) or (np.nan, np.nan) for r in missing]
    axes[1].bar(range(len(missing)), [v[0] for v in vals], yerr=[v[1] for v in vals], color="tab:blue")
    axes[1].set_xticks(range(len(missing)), [r["name"][8:] for r in missing], rotation=45, ha="right", fontsize=7)
    axes[1].set_ylabel(f"{task} {metric}")
  tag = " (SYNTHETIC data)" if out["synthetic"] else ""
  fig.suptitle(f"robustness on test, mean ± std over folds x seeds{tag}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
