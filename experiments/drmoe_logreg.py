"""Baseline for the DR-MoE experiments: logistic regression on the global (utterance) features, on the same folds.

  python -m experiments.drmoe_logreg --config.exp=ravdess   # or synthetic | iemocap; [--config.data.path=DIR ...]

Same data, task and folds as ``experiments.drmoe_<exp>`` (its ``get_config()`` through the platform's
``sources.load``, ``data.labelled_only`` and ``app.make_folds``: :func:`tools.baselines.load_data`); samples without
a label for the head (``label_masks``) are dropped from fit, standardisation, selection and test; features: the ``<m>_global`` views concatenated, standardised on the
training split; scikit-learn ``LogisticRegression`` (lbfgs, multinomial) with C chosen on validation UA from
{0.001, 0.01, 0.1, 1, 10}; test UA / WA / weighted F1 with the platform's ``jmoe.metrics.classification_metrics``,
mean ± std over folds (deterministic: one "seed"). Writes ``runs/drmoe_<exp>_logreg/results.json``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np

from jmoe.train import cli

C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
METRICS = ("UA", "WA", "weighted_F1")


def global_features(split, views) -> np.ndarray:
  return np.concatenate([np.asarray(split.features[v], np.float64) for v in views], axis=1)


def logreg_baseline(cfg) -> dict:
  """Fit and evaluate per fold; returns {'folds': [...], 'summary': {metric: (mean, std)}}."""
  import warnings

  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  from jmoe import metrics as metrics_lib
  from tools.baselines import load_data

  ds, folds = load_data(cfg)
  head = cfg.tasks[next(iter(cfg.tasks))].label
  classes = ds.label_specs[head].classes
  views = [v for v in cfg.data.modalities.split(",") if v.endswith("_global")]
  if not views:
    raise ValueError(f"drmoe_logreg: data.modalities={cfg.data.modalities!r} has no '<m>_global' view to fit on")
  rows = []
  for fold in folds:
    # Only the samples labelled for the head: fit, standardisation, selection and test never see a placeholder.
    parts = {k: getattr(fold, k) for k in ("train", "valid", "test")}
    parts = {k: sp.take(np.flatnonzero(sp.label_mask(head))) for k, sp in parts.items()}
    empty = [k for k, sp in parts.items() if len(sp) == 0]
    if empty:
      raise ValueError(f"{fold.name}: no sample of the {empty[0]} split has a {head!r} label")
    xs = {k: global_features(sp, views) for k, sp in parts.items()}
    ys = {k: np.asarray(sp.labels[head]) for k, sp in parts.items()}
    scaler = StandardScaler().fit(xs["train"])
    xs = {k: scaler.transform(v) for k, v in xs.items()}
    best = None
    for c in C_GRID:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(C=c, max_iter=2000).fit(xs["train"], ys["train"])
        ua = metrics_lib.classification_metrics(clf.predict(xs["valid"]), ys["valid"], class_names=classes)["UA"]
      if best is None or ua > best[0]:
        best = (ua, c, clf)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      test = metrics_lib.classification_metrics(best[2].predict(xs["test"]), ys["test"], class_names=classes)
    sizes = {f"n_{k}": len(sp) for k, sp in parts.items()}
    rows.append({"fold": fold.name, "C": best[1], "valid_UA": best[0], **sizes, **{k: float(test[k]) for k in METRICS}})
  summary = {k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in METRICS}
  return {"dataset": ds.name, "views": views, "head": head, "folds": rows, "summary": summary}


PRESETS = ("ravdess", "synthetic", "iemocap")


def get_config():
  """The DR-MoE experiment's config (``exp`` picks it; every ``data.*``, ``folds.*`` and ``head`` key applies)."""
  from experiments import drmoe_ravdess

  c = drmoe_ravdess.get_config()
  c.exp = "ravdess"  # synthetic | ravdess | iemocap: whose data, task and folds
  c.name = "drmoe_logreg"
  c.workdir = ""  # '' = runs/drmoe_<exp>_logreg
  return c


def run(cfg) -> dict:
  """The chosen experiment's config with the keys set on the command line, then :func:`logreg_baseline`."""
  if cfg.exp not in PRESETS:
    raise ValueError(f"config.exp={cfg.exp!r} is invalid: choose one of {PRESETS}")
  exp = importlib.import_module(f"experiments.drmoe_{cfg.exp}")
  default = dict(cli.leaves(get_config()))
  changed = {k: v for k, v in cli.leaves(cfg) if default.get(k) != v and k not in ("exp", "workdir", "name", "head")}
  base = exp.get_config()
  if cfg.head != default["head"]:
    base.head = cfg.head
  base.update_from_flattened_dict({k: v for k, v in changed.items() if k in dict(cli.leaves(base))})
  if base.smoke:
    base.folds.max_folds = 2
    exp.smoke(base)
  res = logreg_baseline(base)
  out = Path(cfg.workdir or f"runs/drmoe_{cfg.exp}_logreg")
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(res, indent=2))
  s = res["summary"]
  print(
    f"logistic regression on {'+'.join(res['views'])} ({res['dataset']}, {res['head']}, {len(res['folds'])} folds): "
    + ", ".join(f"{k} {s[k][0]:.4f} ± {s[k][1]:.4f}" for k in METRICS)
  )
  return res


if __name__ == "__main__":
  cli.main(get_config, run)
