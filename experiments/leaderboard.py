"""One leaderboard per dataset: every model, ablation and baseline with the same data, folds, selection rule,
search budget and seeds, in one table.

Commands::

  python -m experiments.leaderboard --config.dataset=ravdess4 --config.data_path=../shared/data/ravdess \
      --config.features=runs/features/ravdess_whisper
  python -m experiments.leaderboard --config.dataset=mosi_bclstm --config.data_path=../shared/data/mosi
  python -m experiments.leaderboard --config.dataset=synthetic_deap
  python -m experiments.leaderboard --config.dataset=synthetic_deap --config.search_trials=16 --config.seeds=5
  python -m experiments.leaderboard --config.dataset=ravdess4 --config.smoke=True         # every row in seconds

Rows: the paper model (the dataset's preset), its ablations, and the baselines of :mod:`jmoe.models.baseline`
(linear = logistic / linear regression on the concatenated utterance vectors, mlp, late fusion). Every row gets the
same budget: ``search_trials`` configurations of its learning rate, weight decay and loss weights chosen on
validation (0 = each row's default configuration), then ``seeds`` seeds of the chosen one. Each row is an ordinary
run in ``<workdir>/<row>`` (re-running resumes it); ``leaderboard.md`` / ``leaderboard.json`` hold the table: mean
± std over folds (or seeds, with one fold) of the test metrics at the validation-selected checkpoints, the budget
and the wall time of every row. Reduced protocols (``folds_max``) are stated in the title.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import time
from pathlib import Path

import ml_collections
import numpy as np

from jmoe.train import cli
from jmoe.train import workdir as workdir_lib

# The DR-MoE router's knobs (temperature, Gumbel noise, the switch balance weight) added to the default search space:
# the row that asks whether a configuration chosen on validation avoids the collapse onto one scale.
ROUTER_SPACE = (
  "optim.lr=log:1e-4:1e-2;optim.weight_decay=log:1e-6:1e-2;model.router_temperature=log:0.3:5;"
  "model.router_gumbel=choice:True,False;loss_weights.switch=choice:0.0,0.01,0.1"
)
DRMOE_ABLATIONS = [
  ("drmoe_global", {"model.scales": "global"}),
  ("drmoe_local", {"model.scales": "local"}),
  ("drmoe_router_search", {"search.space": ROUTER_SPACE}),
]
EUAR_ABLATIONS = [("euar_mlp_experts", {"model.expert": "mlp"}), ("euar_late", {"model.fusion": "late"})]
HIMOE_ABLATIONS = [("himoe_no_emotion_bank", {"model.emotion_bank": False}), ("himoe_late", {"model.fusion": "late"})]
MOSI_METRICS = ("Non0_acc_2", "Non0_F1", "Has0_acc_2", "MAE", "Corr")
SER_METRICS = ("UA", "WA", "weighted_F1")
PHYSIO_METRICS = ("CCC_mean", "PCC_mean", "MAE_mean")


@dataclasses.dataclass(frozen=True)
class Board:
  """One dataset's leaderboard: the preset experiment (the paper model's row and its ablations), the overrides every
  row shares, the ablation rows, the report metrics, and other paper models on the same data as (row, preset,
  overrides) -- HAEMSA on MOSI: its own evolution is its search (see :func:`population_budget`)."""

  preset: str
  over: dict
  ablations: list
  metrics: tuple
  others: list = dataclasses.field(default_factory=list)


HAEMSA_ROW = [("haemsa", "haemsa_mosi", {})]
DATASETS = {
  "synthetic_mosi": Board("euar_mosi", {}, EUAR_ABLATIONS, MOSI_METRICS, HAEMSA_ROW),
  "mosi_bclstm": Board("euar_mosi", {"data.source": "bclstm"}, EUAR_ABLATIONS, MOSI_METRICS, HAEMSA_ROW),
  "mosi_standard": Board("euar_mosi", {"data.source": "standard"}, EUAR_ABLATIONS, MOSI_METRICS, HAEMSA_ROW),
  "ravdess4": Board("drmoe_ravdess", {}, DRMOE_ABLATIONS, SER_METRICS),
  "ravdess8": Board("drmoe_ravdess", {"head": "emotion8"}, DRMOE_ABLATIONS, SER_METRICS),
  "iemocap4": Board("drmoe_iemocap", {}, DRMOE_ABLATIONS, SER_METRICS),
  "synthetic_deap": Board("himoe_deap", {}, HIMOE_ABLATIONS, PHYSIO_METRICS),
  "synthetic_dreamer": Board("himoe_dreamer", {}, HIMOE_ABLATIONS, PHYSIO_METRICS),
  "deap": Board("himoe_deap", {"data.source": "deap"}, HIMOE_ABLATIONS, PHYSIO_METRICS),
  "dreamer": Board("himoe_dreamer", {"data.source": "dreamer"}, HIMOE_ABLATIONS, PHYSIO_METRICS),
}
BASELINES = {
  "linear": {"kind": "linear", "fusion": "early"},
  "mlp": {"kind": "mlp", "fusion": "early"},
  "late_linear": {"kind": "linear", "fusion": "late"},
}


def get_config():
  c = ml_collections.ConfigDict()
  c.dataset = "synthetic_deap"  # one of DATASETS
  c.data_path = ""  # data.path of the preset (the dataset's files)
  c.features = ""  # data.features of the preset (speech features), when it has that field
  c.text_features = ""  # data.text_features of the preset (e.g. MiniLM text on the standard MOSI split)
  c.modalities = ""  # data.modalities of every row ('' = the preset's)
  c.rows = (
    ""  # comma list of rows to run ('' = all: paper, its ablations, other paper models, linear, mlp, late_linear)
  )
  c.search_trials = 8  # the search budget of every row (0 = each row's default configuration)
  c.seeds = 3
  c.epochs = 0  # 0 = the preset's
  c.folds_max = 0  # 0 = every fold of the preset's protocol
  c.members = "vmap"
  c.member_chunk = 0
  c.ensemble = 0  # K >= 2: also a '<row>+ens' row per row: the mean prediction of the K seeds best on validation
  c.smoke = False
  c.quiet = True
  c.debug = False
  c.workdir = ""  # '' = runs/leaderboard_<dataset>
  return c


def population_budget(search_trials: int, epochs: int) -> dict:
  """The budget of a population row (HAEMSA), matched to the search rows': P = max(4, search_trials) individuals
  (the search's trial count; the paper's evolution is HAEMSA's own search, so it gets no extra search) evolved
  over ``epochs`` epochs in generations of 2 epochs. A search row trains ``search_trials`` trials plus ``seeds``
  seeds of the chosen one; the population trains ``seeds`` x P individuals: the same order of compute."""
  size = max(4, search_trials)
  return {
    "search.trials": 0,
    "population.size": size,
    "population.tournament": min(3, size),
    "population.epochs_per_generation": min(2, epochs),
    "population.generations": max(1, epochs // 2),
  }


def row_configs(cfg) -> list[tuple[str, str, ml_collections.ConfigDict]]:
  """(row name, preset module, run config) of every row, each the preset's config with the shared budget."""
  if cfg.dataset not in DATASETS:
    raise ValueError(f"config.dataset={cfg.dataset!r} is invalid: choose one of {sorted(DATASETS)}")
  board = DATASETS[cfg.dataset]
  root = Path(cfg.workdir or f"runs/leaderboard_{cfg.dataset}")
  epochs = cfg.epochs or importlib.import_module(f"experiments.{board.preset}").get_config().optim.epochs

  def make(name: str, extra: dict, model: dict | None = None, preset: str = board.preset) -> ml_collections.ConfigDict:
    c = importlib.import_module(f"experiments.{preset}").get_config()
    shared = {**board.over, "seeds": cfg.seeds, "members": cfg.members, "member_chunk": cfg.member_chunk}
    shared.update({"search.trials": cfg.search_trials, "smoke": cfg.smoke, "quiet": cfg.quiet, "debug": cfg.debug})
    shared["optim.epochs"] = epochs
    for key, value in (("path", cfg.data_path), ("features", cfg.features), ("text_features", cfg.text_features)):
      if value and key in c.data:
        shared[f"data.{key}"] = value
    if cfg.modalities:
      shared["data.modalities"] = cfg.modalities
    if cfg.folds_max:
      shared["folds.max_folds"] = cfg.folds_max
    if "population" in c and c.population.enabled:
      shared.update(population_budget(cfg.search_trials, epochs))
    else:  # the population reports its fittest individual per seed, not a seed ensemble
      shared["ensemble"] = cfg.ensemble
    c.update_from_flattened_dict({**shared, **extra})
    if model is not None:
      from jmoe.models import baseline

      c.model_name = "baseline"
      c.model = ml_collections.ConfigDict({**baseline.default_model_config(), **model})
      with c.unlocked():
        c.loss_weights = ml_collections.ConfigDict()
    c.name = f"{cfg.dataset}/{name}"
    c.workdir = str(root / name)
    return c

  rows = [("paper", board.preset, make("paper", {}))]
  rows += [(n, board.preset, make(n, o)) for n, o in board.ablations]
  rows += [(n, preset, make(n, o, preset=preset)) for n, preset, o in board.others]
  rows += [(n, board.preset, make(n, {}, m)) for n, m in BASELINES.items()]
  wanted = [r.strip() for r in str(cfg.rows).split(",") if r.strip()]
  unknown = [r for r in wanted if r not in {n for n, _, _ in rows}]
  if unknown:
    raise ValueError(f"config.rows: unknown rows {unknown}; choose from {[n for n, _, _ in rows]}")
  return [r for r in rows if not wanted or r[0] in wanted]


def routed_local(workdir: str | Path) -> dict | None:
  """DR-MoE's scale routing on the test sets (``per_sample.scale_<m>`` in test_outputs.npz: 0 local, 1 global):
  ``share`` -- the share of test samples routed local, pooled over folds x seeds; ``collapsed`` -- how many of the
  ``models`` (fold x seed x modality) route every test sample to one scale. None for models without a scale route."""
  config = Path(workdir) / "config.json"
  if config.is_file() and json.loads(config.read_text()).get("model", {}).get("scales", "route") != "route":
    return None  # one fixed scale (the global-only / local-only ablations): nothing is routed
  per_model = []
  for f in sorted(Path(workdir).glob("fold_*/seed_*/test_outputs.npz")):
    with np.load(f) as z:
      per_model += [1.0 - np.asarray(z[k], np.float64).ravel() for k in z.files if k.startswith("per_sample.scale_")]
  if not per_model:
    return None
  collapsed = sum(bool(np.all(m == m[0])) for m in per_model)
  return {"share": float(np.concatenate(per_model).mean()), "collapsed": collapsed, "models": len(per_model)}


def per_fold(workdir: str | Path, task: str, metric: str) -> list[float | None] | None:
  """The test ``metric`` of ``task`` per fold (mean over the fold's finished seeds) from ``<workdir>/results.json``:
  what a paired comparison of two rows on the same folds needs."""
  path = Path(workdir) / "results.json"
  if not path.is_file():
    return None
  out = []
  for fold in json.loads(path.read_text())["folds"]:
    vals = [s["test"][task].get(metric) for s in fold["seeds"] if s["status"] == "ok" and s.get("test")]
    vals = [v for v in vals if v is not None]
    out.append(float(np.mean(vals)) if vals else None)
  return out


def run(cfg) -> dict:
  rows = row_configs(cfg)
  board = DATASETS[cfg.dataset]
  root = Path(rows[0][2].workdir).parent
  previous = root / "leaderboard.json"
  out = {"dataset": cfg.dataset, "preset": board.preset, "budget": {}, "rows": {}}
  earlier = _read_board(previous) if cfg.rows and previous.is_file() else {}
  out["rows"] = earlier.get("rows", {})  # a subset of rows: keep the rows an earlier run of this board measured
  first = rows[0][2]
  budget = {
    "search_trials": cfg.search_trials,
    "seeds": first.seeds,
    "epochs": first.optim.epochs,
    "folds": f"{first.folds.kind}" + (f" (first {first.folds.max_folds})" if first.folds.max_folds else ""),
  }
  if out["rows"] and earlier.get("budget") != budget:
    raise ValueError(
      f"{previous}: its rows were measured with another budget ({earlier.get('budget')}); "
      f"use another --config.workdir or the same budget ({budget})"
    )
  for name, preset, c in rows:
    t0 = time.time()
    res = importlib.import_module(f"experiments.{preset}").run(c)
    task = main_task(res["summary"], board.metrics[0])
    out["rows"][name] = {
      "model": c.model_name,
      "task": task,
      "test": res["summary"][task]["test"],
      "valid": res["summary"][task]["valid"],
      "seconds": time.time() - t0,
      "synthetic": res["synthetic"],
      "select": res["select"],
      "folds": len(res["folds"]),
      "routed_local": routed_local(c.workdir),
      "per_fold": per_fold(c.workdir, task, board.metrics[0]),
    }
    if "test_ensemble" in res["summary"][task]:
      ens = {"test": res["summary"][task]["test_ensemble"], "seconds": 0.0, "per_fold": None}
      out["rows"][f"{name}+ens"] = {**out["rows"][name], **ens}
  for name, row in out["rows"].items():  # rows of a board written before these columns
    row.setdefault("routed_local", routed_local(root / name.removesuffix("+ens")))
    if not name.endswith("+ens"):
      row.setdefault("per_fold", per_fold(root / name, row["task"], board.metrics[0]))
  order = [m for n, _, _ in row_configs(_all_rows(cfg)) for m in (n, f"{n}+ens")]
  out["rows"] = {n: out["rows"][n] for n in order if n in out["rows"]}
  out["budget"] = budget
  md = table(out, board.metrics)
  workdir_lib.write_atomic(previous, json.dumps(workdir_lib.jsonable(out), indent=1))
  workdir_lib.write_atomic(root / "leaderboard.md", md + "\n")
  print(md)
  return out


def main_task(summary: dict, metric: str) -> str:
  """The task a row is reported on: the first whose test metrics hold the board's first metric (HAEMSA's first
  task is its binary view; the board reports its sentiment regression like EUAR's)."""
  return next((t for t, v in summary.items() if metric in v.get("test", {})), next(iter(summary)))


def _all_rows(cfg) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.rows = ""
  return c


def _read_board(path: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a readable leaderboard.json ({e}); remove it to start the board afresh") from None


def table(out: dict, metrics) -> str:
  """The leaderboard as markdown: one row per model, the routed-local share (and how many models route every sample
  to one scale) where a row routes scales, and per paper model its difference to the best baseline in the first
  metric (lower is better for MAE-like metrics)."""
  b = out["budget"]
  rows = out["rows"]
  synthetic = any(r["synthetic"] for r in rows.values())
  routed = any(r.get("routed_local") is not None for r in rows.values())
  lines = [
    (
      f"### leaderboard {out['dataset']}{' (SYNTHETIC)' if synthetic else ''}: test, mean ± std over folds x seeds at "
      f"the validation-selected checkpoint; budget per row: search {b['search_trials']} trials, {b['seeds']} seeds, "
      f"{b['epochs']} epochs, folds {b['folds']}"
    ),
    "",
    "| row | model | "
    + " | ".join(metrics)
    + (" | routed local (models on one scale)" if routed else "")
    + " | seconds |",
    "|---|---|" + "---|" * len(metrics) + ("---|" if routed else "") + "---|",
  ]
  for name, r in rows.items():
    cells = []
    for m in metrics:
      v = r["test"].get(m)
      cells.append("undefined" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}")
    if routed:
      rl = r.get("routed_local")
      cells.append("–" if rl is None else f"{rl['share']:.1%} ({rl['collapsed']}/{rl['models']} collapsed)")
    lines.append(f"| {name} | {r['model']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
  lines += [""] + verdicts(rows, metrics[0])
  return "\n".join(lines)


def verdicts(rows: dict, metric: str) -> list[str]:
  """One line per non-baseline row: its difference to the best baseline row in ``metric``, and whether it is ahead,
  behind, or within noise: the absolute difference at most the combined std sqrt(std_row² + std_baseline²)."""
  lower_better = metric.upper().startswith("MAE")
  out = []
  for name, r in rows.items():
    v = r["test"].get(metric)
    if r["model"] == "baseline" or v is None:
      continue
    ens = name.endswith("+ens")  # like with like: an ensemble row against the baselines' ensemble rows
    base = {
      n: b["test"][metric]
      for n, b in rows.items()
      if b["model"] == "baseline" and b["test"].get(metric) and n.endswith("+ens") == ens
    }
    if not base:
      continue
    best = (min if lower_better else max)(base, key=lambda n: base[n][0])
    diff = v[0] - base[best][0]
    noise = math.hypot(v[1], base[best][1])
    gain = -diff if lower_better else diff
    verdict = "within noise of it" if abs(diff) <= noise else ("beats it" if gain > 0 else "below it")
    if noise == 0:  # one value each (e.g. a seed ensemble on one fold): nothing to weigh the difference against
      verdict = f"{'ahead of' if gain > 0 else 'behind'} it, one value each (no spread to judge by)"
    line = (
      f"- {name}: {metric} {diff:+.4f} vs the best baseline ({best}, {base[best][0]:.4f} ± {base[best][1]:.4f}; "
      f"this row ± {v[1]:.4f}, combined std {noise:.4f}): {verdict}"
    )
    mine, theirs = r.get("per_fold"), rows[best].get("per_fold")
    if mine and theirs and len(mine) == len(theirs) > 1 and None not in mine + theirs:
      d = np.asarray(mine) - np.asarray(theirs)
      ahead = int(np.sum(d < 0 if lower_better else d > 0))
      line += f"; paired over the {len(d)} folds {d.mean():+.4f} ± {d.std():.4f}, ahead on {ahead} of {len(d)}"
    out.append(line)
  return out


if __name__ == "__main__":
  cli.main(get_config, run)
