"""Simple baselines on the same data, folds, task and selection rule as a training-app run.

  python -m tools.baselines --config-like runs/euar_mosi            # -> runs/euar_mosi_ridge, runs/euar_mosi_single
  python -m tools.baselines --experiment euar_mosi --set data.source=bclstm --set data.path=../shared/data/mosi \
      --out runs/bclstm                                             # -> runs/bclstm_ridge, runs/bclstm_single
  python -m tools.summarize_runs runs/euar_mosi runs/euar_mosi_ridge runs/euar_mosi_single

The data, tasks and folds come from the run's ``config.json`` (or an experiment's ``get_config()`` with ``--set``
overrides) through the platform's ``sources.load`` and ``app.make_folds``. Features: each modality's utterance vector
(sequences: masked mean over time), standardised with the mean and std of the TRAIN samples labelled for the
selection task. Samples without a label (``label_masks``) enter neither fit, statistics nor scores, and
``data.labelled_only`` drops them before the folds are made, as the platform does. Models (closed form):

* ``ridge``: ridge regression on all modalities concatenated, alpha from ``ALPHAS`` chosen on VALIDATION;
* ``single``: ridge on one modality, the (modality, alpha) pair chosen on VALIDATION.

Selection uses the run's rule (``config.select`` or the first task's default, e.g. sentiment/MAE, lower is better);
test is evaluated once, for the chosen model only. Deterministic: one "seed" per fold. Each baseline writes a
``results.json`` with the training app's structure (``folds[f]['seeds'][0]['test'][task]``, ``summary``), so
``tools.summarize_runs`` prints it next to the model's runs. Only scalar-score tasks (sentiment / regression).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from pathlib import Path

import ml_collections
import numpy as np

ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))


def utterance_features(split, modality: str) -> np.ndarray:
  """float64 [B, D]: the modality's vector, or its masked mean over time for a sequence [B, T, D]."""
  x = np.asarray(split.features[modality], np.float64)
  if x.ndim == 2:
    return x
  mask = np.asarray(split.masks[modality], np.float64) if modality in split.masks else np.ones(x.shape[:2])
  return (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1.0)


def keep_labelled(ds, head: str):
  """The dataset with only the samples labelled for ``head`` in every split (``data.labelled_only``; '' = all), as
  the platform's data loading does before it makes the folds."""
  if not head:
    return ds
  if head not in ds.label_specs:
    raise ValueError(f"data.labelled_only={head!r}: {ds.name} has label heads {sorted(ds.label_specs)}")
  splits = {k: sp.take(np.flatnonzero(sp.label_mask(head))) for k, sp in ds.splits.items()}
  return dataclasses.replace(ds, splits=splits)


def load_data(cfg):
  """``(dataset, folds)`` as the platform makes them: ``sources.load(cfg.data)``, then ``data.labelled_only``
  (applied here too, so a source that ignores it cannot change the baseline's folds), then ``make_folds``."""
  from jmoe.data import sources
  from jmoe.train import app

  ds = keep_labelled(sources.load(cfg.data), str(cfg.data.get("labelled_only", "") or ""))
  return ds, app.make_folds(cfg.folds, ds)


def design(fold, modalities, keep=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train, valid, test) feature matrices of ``modalities`` concatenated, standardised on the train rows ``keep``
  (bool [B_train]; default all): samples without a label enter no statistic."""
  parts = [[utterance_features(getattr(fold, s), m) for m in modalities] for s in ("train", "valid", "test")]
  xs = [np.concatenate(p, axis=1) for p in parts]
  ref = xs[0] if keep is None else xs[0][keep]
  mu, sd = ref.mean(0), ref.std(0)
  sd = np.where(sd > 1e-12, sd, 1.0)
  return tuple((x - mu) / sd for x in xs)


def ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
  """Ridge with an unpenalised intercept: (w [D], b). Solved in the smaller of the primal / dual forms."""
  xm, ym = x.mean(0), y.mean()
  xc, yc = x - xm, y - ym
  n, d = xc.shape
  if d <= n:
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(d), xc.T @ yc)
  else:
    w = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(n), yc)
  return w, float(ym - xm @ w)


def select_task(cfg, tasks):
  """The task and metric that select on validation (the training app's rule, :func:`jmoe.train.app.setup`)."""
  from jmoe.train import tasks as tasks_lib

  task = tasks[0]
  if cfg.get("select"):
    name, metric = cfg.select.split("/", 1)
    task = next(t for t in tasks if t.name == name)
    tasks_lib.check_select(task, metric)
    mode = "min" if metric.split("_")[0] in tasks_lib.LOWER_IS_BETTER else "max"
    task = dataclasses.replace(task, select=metric, mode=mode)
  return task


def fit_select(fold, tasks, sel, candidates, alphas=ALPHAS) -> dict:
  """Fit every (modalities, alpha) candidate on train, keep the best on VALIDATION, evaluate it once on test.

  ``candidates``: {name: tuple of modalities}. Returns one app-style seed result with ``chosen``.
  """
  from jmoe.train import tasks as tasks_lib

  label = lambda split: np.asarray(split.labels[sel.label], np.float64)
  ytr = label(fold.train)
  keep = fold.train.label_mask(sel.label)
  if not keep.any():
    raise ValueError(f"{fold.name}: no training sample has a {sel.label!r} label")
  best = None
  for name, mods in candidates.items():
    xtr, xva, xte = design(fold, mods, keep)
    for a in alphas:
      w, b = ridge_fit(xtr[keep], ytr[keep], a)
      valid = {t.name: tasks_lib.evaluate(t, xva @ w + b, fold.valid) for t in tasks}
      v = tasks_lib.selection_value(sel, valid[sel.name])
      if v is not None and (best is None or sel.better(v, best[0])):
        best = (v, name, a, valid, xte @ w + b)
  if best is None:
    raise ValueError(f"{fold.name}: no candidate has a defined validation {sel.name}/{sel.select}")
  _, name, a, valid, pred = best
  test = {t.name: tasks_lib.evaluate(t, pred, fold.test) for t in tasks}
  return {
    "seed": 0,
    "status": "ok",
    "best_epoch": None,
    "chosen": {"features": name, "modalities": list(candidates[name]), "alpha": a},
    "valid": valid,
    "test": test,
  }


def run_baselines(cfg: ml_collections.ConfigDict, out_prefix: Path, kinds=("ridge", "single")) -> dict[str, dict]:
  """Write ``<out_prefix>_<kind>/results.json`` for each kind; returns {kind: results}."""
  from jmoe.train import loop, report
  from jmoe.train import tasks as tasks_lib

  ds, folds = load_data(cfg)
  mods = tuple(m for m in str(cfg.data.get("modalities", "")).split(",") if m) or tuple(ds.modalities)
  tasks = tasks_lib.from_config(cfg.tasks, ds.label_specs)
  bad = [t.name for t in tasks if t.kind not in ("sentiment", "regression") or t.num_outputs != ()]
  if bad:
    raise ValueError(f"baselines predict one score per sample; tasks {bad} need other heads")
  sel = select_task(cfg, tasks)
  all_candidates = {"ridge": {"+".join(mods): mods}, "single": {m: (m,) for m in mods}}
  written = {}
  for kind in kinds:
    fold_results = []
    for i, fold in enumerate(folds):
      r = fit_select(fold, tasks, sel, all_candidates[kind])
      sizes = {"train": len(fold.train), "valid": len(fold.valid), "test": len(fold.test)}
      fold_results.append({"fold": i, "name": fold.name, "dir": f"fold_{i}", "sizes": sizes, "seeds": [r]})
    summary = report.summarize(tasks, fold_results)
    what = "all modalities concatenated" if kind == "ridge" else "the best single modality"
    res = {
      "name": f"{cfg.name}_{kind}",
      "model": f"ridge on {what}; alpha{' and modality' if kind == 'single' else ''} chosen on validation",
      "dataset": ds.name,
      "synthetic": ds.synthetic,
      "source": ds.source,
      "select": f"{sel.name}/{sel.select}",
      "alphas": list(ALPHAS),
      "tasks": {t.name: {"kind": t.kind, "head": t.head, "label": t.label, "loss": t.loss} for t in tasks},
      "folds": fold_results,
      "summary": summary,
    }
    out = Path(f"{out_prefix}_{kind}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json(indent=2))
    (out / "results.json").write_text(json.dumps(loop.jsonable(res), indent=2))
    title = f"{res['name']}: {ds.name}{' (SYNTHETIC)' if ds.synthetic else ''}, {res['model']} ({res['select']})"
    table = report.table(tasks, summary, title)
    chosen = "; ".join(f"{f['name']}: {f['seeds'][0]['chosen']}" for f in fold_results)
    (out / "results.md").write_text(f"{table}\nchosen: {chosen}\n")
    print(table)
    print(f"chosen: {chosen}\nrun dir: {out}\n")
    written[kind] = res
  return written


def _config(args) -> tuple[ml_collections.ConfigDict, Path]:
  if args.config_like:
    run = Path(args.config_like)
    path = run / "config.json"
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no config.json (give a run dir written by the training app)")
    cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
    default_out = run
  else:
    cfg = importlib.import_module(f"experiments.{args.experiment}").get_config()
    default_out = Path(cfg.workdir)
  for kv in args.set:
    key, value = kv.split("=", 1)
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    old = node[leaf]
    if isinstance(old, bool):
      node[leaf] = value.lower() in ("1", "true", "yes")
    else:
      node[leaf] = type(old)(value) if isinstance(old, (int, float, str)) else value
  return cfg, Path(args.out) if args.out else default_out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  src = ap.add_mutually_exclusive_group(required=True)
  src.add_argument("--config-like", help="a run dir: use its config.json (data, tasks, folds, select)")
  src.add_argument("--experiment", help="an experiments.<name> module: use its get_config()")
  ap.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
  ap.add_argument("--out", default="", help="output prefix (default: the run dir / the config's workdir)")
  ap.add_argument("--kinds", default="ridge,single")
  args = ap.parse_args(argv)
  try:
    cfg, out = _config(args)
    run_baselines(cfg, out, tuple(k for k in args.kinds.split(",") if k))
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
