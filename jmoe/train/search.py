"""Hyperparameter search on the member axis: ``--config.search.trials=N`` on any experiment of the platform.

N configurations are drawn from ``config.search.space`` (seeded by ``search.seed``: the same N trials on every
run). Each trial trains on every fold with the run's first seed, selecting its best epoch on validation with the
task's rule; the test split is never read during the search. Per fold the trial with the best validation score is
chosen; then the chosen configuration is trained with ``config.seeds`` seeds exactly like a plain run (member axis,
early stopping, checkpoints, test evaluated once per seed at its best-validation epoch) and reported as the run's
result.

Space: ``search.space`` is one string of ``key=spec`` entries separated by ``;``, keys being dotted config keys:

* ``log:a:b`` -- log-uniform in [a, b]; ``uniform:a:b`` -- uniform in [a, b]; ``choice:x,y,z`` -- one of the values
  (ints, floats, True/False or strings).

Values that live in the training state -- ``optim.lr``, ``optim.weight_decay``, ``loss_weights.<name>`` and
``tasks.<name>.weight`` -- train as members of one compiled program (in chunks of ``member_chunk``); any other key
(``model.dropout``, ``model.width``, ...) changes the compiled program, and the trials that share those values form
one sequential group each. Resume: a killed search resumes where it stopped (every trial has its own checkpoints
under ``search/fold_<f>/trial_<t>``; ``search.json`` is rewritten after every fold).

Written to the workdir: ``search.json`` -- ``trials`` (per trial: ``id``, ``overrides``, ``valid`` per fold: the
selection value and the validation metrics) and ``chosen`` (per fold: the chosen trial's id and overrides), and
``search.png`` -- the validation score of every trial against each searched key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from jmoe.train import app, loop
from jmoe.train import workdir as workdir_lib

log = loop.log
# Config keys whose values live in the training state -> the state key of jmoe.train.state.with_overrides.
STATE_KEYS = {"optim.lr": "learning_rate", "optim.weight_decay": "weight_decay"}


def default_space(cfg) -> str:
  """Log-uniform learning rate and weight decay around the config's values, and every positive loss weight
  log-uniform over a factor of 10 either way."""
  parts = ["optim.lr=log:1e-4:1e-2", "optim.weight_decay=log:1e-6:1e-2"]
  for name, w in cfg.get("loss_weights", {}).items():
    if w > 0:
      parts.append(f"loss_weights.{name}=log:{w / 10:g}:{w * 10:g}")
  return ";".join(parts)


@dataclasses.dataclass(frozen=True)
class Dim:
  key: str
  kind: str  # log | uniform | choice
  values: tuple

  def draw(self, rng: np.random.Generator):
    if self.kind == "log":
      return float(math.exp(rng.uniform(math.log(self.values[0]), math.log(self.values[1]))))
    if self.kind == "uniform":
      return float(rng.uniform(self.values[0], self.values[1]))
    return self.values[int(rng.integers(len(self.values)))]


def _value(text: str):
  text = text.strip()
  if text in ("True", "False"):
    return text == "True"
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def parse_space(space: str, cfg) -> list[Dim]:
  """``'key=spec;...'`` -> dimensions; one-line ValueError naming the entry for a bad spec or an unknown key."""
  from jmoe.train import cli

  known = cli.known_keys(cfg)
  dims = []
  for entry in [e.strip() for e in space.split(";") if e.strip()]:
    key, sep, spec = entry.partition("=")
    key = key.strip()
    if not sep or key not in known:
      raise ValueError(f"config.search.space entry {entry!r}: use KEY=SPEC with KEY a config key")
    kind, _, rest = spec.partition(":")
    try:
      if kind in ("log", "uniform"):
        lo, hi = (float(x) for x in rest.split(":"))
        if not lo <= hi or (kind == "log" and lo <= 0):
          raise ValueError
        dims.append(Dim(key, kind, (lo, hi)))
      elif kind == "choice":
        values = tuple(_value(x) for x in rest.split(",") if x.strip())
        if not values:
          raise ValueError
        dims.append(Dim(key, kind, values))
      else:
        raise ValueError
    except ValueError:
      raise ValueError(
        f"config.search.space entry {entry!r}: use log:LOW:HIGH (0 < LOW <= HIGH), uniform:LOW:HIGH or choice:A,B,..."
      ) from None
  return dims


def draw_trials(dims: list[Dim], n: int, seed: int) -> list[dict[str, Any]]:
  """``n`` trials (dicts of dotted key -> value), reproducible from ``seed``."""
  rng = np.random.default_rng([seed, 7177])
  return [{d.key: d.draw(rng) for d in dims} for _ in range(n)]


def state_key(key: str) -> str | None:
  """The training-state hyperparameter a config key sets, None when it changes the compiled program."""
  if key in STATE_KEYS:
    return STATE_KEYS[key]
  parts = key.split(".")
  if len(parts) == 2 and parts[0] == "loss_weights":
    return f"loss/{parts[1]}"
  if len(parts) == 3 and parts[0] == "tasks" and parts[2] == "weight":
    return f"task/{parts[1]}"
  return None


def split_trial(trial: dict) -> tuple[dict, dict]:
  """(static overrides: change the program, state overrides: state key -> value)."""
  static = {k: v for k, v in trial.items() if state_key(k) is None}
  state = {state_key(k): float(v) for k, v in trial.items() if state_key(k) is not None}
  return static, state


def _with(cfg, overrides: dict) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(cfg.to_dict())
  if overrides:
    out.update_from_flattened_dict(overrides)
  return out


def run(cfg: ml_collections.ConfigDict, smoke=None) -> dict:
  """The search, then the chosen configuration trained with ``config.seeds`` seeds per fold; -> the run's results."""
  n = int(cfg.search.trials)
  if n < 1:
    raise ValueError(f"config.search.trials={n} is invalid: use an int >= 1 (0 = no search)")
  dims = parse_space(cfg.search.space or default_space(cfg), cfg)
  with app.prepared(cfg, smoke) as r:
    trials = draw_trials(dims, n, int(cfg.search.seed))
    groups: dict[str, list[int]] = {}
    for t, trial in enumerate(trials):
      groups.setdefault(json.dumps(split_trial(trial)[0], sort_keys=True), []).append(t)
    setups: dict[str, loop.Setup] = {}
    book = {"trials": [{"id": t, "overrides": trial, "valid": {}} for t, trial in enumerate(trials)], "chosen": {}}
    path = r.workdir / "search.json"
    seed = r.seeds[0]
    for i, fold in enumerate(r.folds):
      for key, ids in groups.items():
        if key not in setups:  # the trials (and later the chosen configuration's seeds) on the member axis
          setups[key] = app.setup(_with(cfg, {**json.loads(key), "members": cfg.search.get("members", "vmap")}), r.ds)
        st = setups[key]
        dirs = [r.workdir / "search" / f"fold_{i}" / f"trial_{t}" for t in ids]
        hps = [split_trial(trials[t])[1] for t in ids]
        res = loop.fit(st, fold, [seed] * len(ids), dirs[0].parent, dirs=dirs, hparams=hps, test=False)
        for t, rr in zip(ids, res):
          book["trials"][t]["valid"][str(i)] = {"select": rr["select"], "status": rr["status"], "metrics": rr["valid"]}
      task = r.setup.select_task
      scored = [(t, book["trials"][t]["valid"][str(i)]["select"]) for t in range(n)]
      scored = [(t, v) for t, v in scored if v is not None]
      if not scored:
        raise ValueError(f"search: no trial of {fold.name} had a valid selection value (all diverged?)")
      best = scored[0]
      for t, v in scored[1:]:
        if task.better(v, best[1]):
          best = (t, v)
      book["chosen"][str(i)] = {"trial": best[0], "overrides": trials[best[0]], "valid_select": best[1]}
      log(f"  search {fold.name}: trial {best[0]} chosen on validation ({task.name}/{task.select} {best[1]:.4f})")
      workdir_lib.write_atomic(path, json.dumps(workdir_lib.jsonable(book), indent=1))
    _plot(r.workdir / "search.png", book, dims, f"{task.name}/{task.select}", r.ds.synthetic)
    fold_results = []
    for i, fold in enumerate(r.folds):
      chosen = book["chosen"][str(i)]["overrides"]
      static, state = split_trial(chosen)
      st = setups[json.dumps(static, sort_keys=True)]
      res = loop.fit(st, fold, r.seeds, r.workdir / f"fold_{i}", hparams=[state] * len(r.seeds))
      for rr in res:
        rr["trial"] = book["chosen"][str(i)]["trial"]
      fold_results.append(app.fold_result(i, fold, res))
    app.add_ensembles(cfg, r.setup, r.folds, fold_results, r.workdir)  # the chosen configuration's seeds
    select = f"{r.setup.select_task.name}/{r.setup.select_metric}"
    title = (
      f"{cfg.name}: {r.ds.name}{' (SYNTHETIC)' if r.ds.synthetic else ''}, search of {n} trials (chosen per fold on "
      f"valid by {select}), {len(r.seeds)} seeds of the chosen configuration, mean ± std over "
      f"{'seeds' if len(r.folds) == 1 else f'{len(r.folds)} folds'}"
    )
    return app.finish(cfg, r.ds, r.setup.tasks, fold_results, title, select, r.t0)


def _plot(path: Path, book: dict, dims: list[Dim], metric: str, synthetic: bool) -> None:
  """The validation score of every trial (mean over folds) against each searched key; the chosen trials marked."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if not dims:
    return
  score = []
  for tr in book["trials"]:
    vals = [v["select"] for v in tr["valid"].values() if v["select"] is not None]
    score.append(float(np.mean(vals)) if vals else np.nan)
  chosen = {c["trial"] for c in book["chosen"].values()}
  fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.2), squeeze=False)
  for ax, d in zip(axes[0], dims):
    x = [tr["overrides"][d.key] for tr in book["trials"]]
    if d.kind == "choice":
      labels = [str(v) for v in d.values]
      x = [labels.index(str(v)) for v in x]
      ax.set_xticks(range(len(labels)), labels)
    ax.scatter(x, score, s=18)
    ax.scatter([x[t] for t in chosen], [score[t] for t in chosen], s=50, facecolors="none", edgecolors="r")
    if d.kind == "log":
      ax.set_xscale("log")
    ax.set_xlabel(d.key, fontsize=8)
    ax.set_ylabel(f"valid {metric}", fontsize=8)
  fig.suptitle(f"search: validation score per trial (red: chosen){' (SYNTHETIC)' if synthetic else ''}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
