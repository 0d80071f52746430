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

import importlib
import json
import time
from pathlib import Path

import ml_collections

from jmoe.train import app, cli
from jmoe.train import workdir as workdir_lib

# dataset -> (preset experiment, {config overrides}, [(ablation row, {overrides})], report metrics)
DATASETS = {
  "mosi_bclstm": (
    "euar_mosi",
    {"data.source": "bclstm"},
    [("euar_mlp_experts", {"model.expert": "mlp"}), ("euar_late", {"model.fusion": "late"})],
    ("Non0_acc_2", "Non0_F1", "Has0_acc_2", "MAE", "Corr"),
  ),
  "mosi_standard": (
    "euar_mosi",
    {"data.source": "standard"},
    [("euar_mlp_experts", {"model.expert": "mlp"}), ("euar_late", {"model.fusion": "late"})],
    ("Non0_acc_2", "Non0_F1", "Has0_acc_2", "MAE", "Corr"),
  ),
  "ravdess4": (
    "drmoe_ravdess",
    {},
    [("drmoe_global", {"model.scales": "global"}), ("drmoe_local", {"model.scales": "local"})],
    ("UA", "WA", "weighted_F1"),
  ),
  "ravdess8": (
    "drmoe_ravdess",
    {"head": "emotion8"},
    [("drmoe_global", {"model.scales": "global"}), ("drmoe_local", {"model.scales": "local"})],
    ("UA", "WA", "weighted_F1"),
  ),
  "iemocap4": (
    "drmoe_iemocap",
    {},
    [("drmoe_global", {"model.scales": "global"})],
    ("UA", "WA", "weighted_F1"),
  ),
  "synthetic_deap": (
    "himoe_deap",
    {},
    [("himoe_no_emotion_bank", {"model.emotion_bank": False}), ("himoe_late", {"model.fusion": "late"})],
    ("CCC_mean", "PCC_mean", "MAE_mean"),
  ),
  "synthetic_dreamer": (
    "himoe_dreamer",
    {},
    [("himoe_no_emotion_bank", {"model.emotion_bank": False}), ("himoe_late", {"model.fusion": "late"})],
    ("CCC_mean", "PCC_mean", "MAE_mean"),
  ),
  "deap": ("himoe_deap", {"data.source": "deap"}, [], ("CCC_mean", "PCC_mean", "MAE_mean")),
  "dreamer": ("himoe_dreamer", {"data.source": "dreamer"}, [], ("CCC_mean", "PCC_mean", "MAE_mean")),
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
  c.rows = ""  # comma list of rows to run ('' = all: paper, its ablations, linear, mlp, late_linear)
  c.search_trials = 8  # the search budget of every row (0 = each row's default configuration)
  c.seeds = 3
  c.epochs = 0  # 0 = the preset's
  c.folds_max = 0  # 0 = every fold of the preset's protocol
  c.members = "vmap"
  c.member_chunk = 0
  c.smoke = False
  c.quiet = True
  c.debug = False
  c.workdir = ""  # '' = runs/leaderboard_<dataset>
  return c


def row_configs(cfg) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(row name, run config) of every row, each the preset's config with the shared budget."""
  if cfg.dataset not in DATASETS:
    raise ValueError(f"config.dataset={cfg.dataset!r} is invalid: choose one of {sorted(DATASETS)}")
  preset, over, ablations, _ = DATASETS[cfg.dataset]
  exp = importlib.import_module(f"experiments.{preset}")
  root = Path(cfg.workdir or f"runs/leaderboard_{cfg.dataset}")

  def make(name: str, extra: dict, model: dict | None = None) -> ml_collections.ConfigDict:
    c = exp.get_config()
    shared = {**over, "seeds": cfg.seeds, "members": cfg.members, "member_chunk": cfg.member_chunk}
    shared.update({"search.trials": cfg.search_trials, "smoke": cfg.smoke, "quiet": cfg.quiet, "debug": cfg.debug})
    if cfg.data_path:
      shared["data.path"] = cfg.data_path
    if cfg.features and "features" in c.data:
      shared["data.features"] = cfg.features
    if cfg.epochs:
      shared["optim.epochs"] = cfg.epochs
    if cfg.folds_max:
      shared["folds.max_folds"] = cfg.folds_max
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

  rows = [("paper", make("paper", {}))] + [(n, make(n, o)) for n, o in ablations]
  rows += [(n, make(n, {}, m)) for n, m in BASELINES.items()]
  wanted = [r for r in str(cfg.rows).split(",") if r.strip()]
  unknown = [r for r in wanted if r not in {n for n, _ in rows}]
  if unknown:
    raise ValueError(f"config.rows: unknown rows {unknown}; choose from {[n for n, _ in rows]}")
  return [(n, c) for n, c in rows if not wanted or n in wanted]


def run(cfg) -> dict:
  rows = row_configs(cfg)
  preset, _, _, metrics = DATASETS[cfg.dataset]
  exp = importlib.import_module(f"experiments.{preset}")
  smoke = getattr(exp, "smoke", None)
  out = {"dataset": cfg.dataset, "preset": preset, "budget": {}, "rows": {}}
  for name, c in rows:
    t0 = time.time()
    res = app.run(c, smoke)
    task = next(iter(res["summary"]))
    out["rows"][name] = {
      "model": c.model_name,
      "task": task,
      "test": res["summary"][task]["test"],
      "valid": res["summary"][task]["valid"],
      "seconds": time.time() - t0,
      "synthetic": res["synthetic"],
      "select": res["select"],
      "folds": len(res["folds"]),
    }
  first = rows[0][1]
  out["budget"] = {
    "search_trials": cfg.search_trials,
    "seeds": first.seeds,
    "epochs": first.optim.epochs,
    "folds": f"{first.folds.kind}" + (f" (first {first.folds.max_folds})" if first.folds.max_folds else ""),
  }
  root = Path(rows[0][1].workdir).parent
  md = table(out, metrics)
  workdir_lib.write_atomic(root / "leaderboard.json", json.dumps(workdir_lib.jsonable(out), indent=1))
  workdir_lib.write_atomic(root / "leaderboard.md", md + "\n")
  print(md)
  return out


def table(out: dict, metrics) -> str:
  b = out["budget"]
  synthetic = any(r["synthetic"] for r in out["rows"].values())
  lines = [
    f"### leaderboard {out['dataset']}{' (SYNTHETIC)' if synthetic else ''}: test, mean ± std over folds x seeds at "
    f"the validation-selected checkpoint; budget per row: search {b['search_trials']} trials, {b['seeds']} seeds, "
    f"{b['epochs']} epochs, folds {b['folds']}",
    "",
    "| row | model | " + " | ".join(metrics) + " | seconds |",
    "|---|---|" + "---|" * len(metrics) + "---|",
  ]
  for name, r in out["rows"].items():
    cells = []
    for m in metrics:
      v = r["test"].get(m)
      cells.append("undefined" if v is None else f"{v[0]:.4f} ± {v[1]:.4f}")
    lines.append(f"| {name} | {r['model']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
  return "\n".join(lines)


if __name__ == "__main__":
  cli.main(get_config, run)
