"""Robustness of a trained EUAR run under the EUAR paper's protocol (its Tables 2-3), on the TEST split.

Command (after ``python -m experiments.euar_mosi``; any finished run dir of the platform)::

  python -m experiments.euar_robustness --config.run=runs/euar_mosi
  python -m experiments.euar_robustness --config.run=runs/euar_mosi --config.gaussian_levels='(0.0, 1.0, 2.0)'

Conditions (the generic evaluator :mod:`jmoe.evaluators.robustness`, modalities taken from the run): every
non-empty subset of the run's modalities kept (paper Table 2); Gaussian noise and salt-and-pepper on vision and
text blanking at the given levels (paper Table 3). Writes robustness.json / .md / .png next to the run.
"""

from __future__ import annotations

import json

import ml_collections

from jmoe.evaluators import robustness as rob
from jmoe.train import cli

REPORT_KEYS = ("Non0_acc_2", "Non0_F1", "Has0_acc_2", "Acc7", "MAE")


def get_config():
  c = ml_collections.ConfigDict()
  c.run = ""  # a finished run directory (config.json, results.json, checkpoints)
  c.gaussian_levels = (0.0, 0.1, 0.3, 0.5, 1.0)  # Gaussian noise std on vision
  c.sp_ratios = (0.0, 0.1, 0.2, 0.3, 0.5)  # salt-and-pepper ratio on vision
  c.blank_ratios = (0.0, 0.1, 0.2, 0.3, 0.5)  # text blanking ratio
  c.perturb_seed = 0
  c.quiet = False
  c.debug = False
  return c


def run(cfg) -> dict:
  if not cfg.run:
    raise ValueError("config.run is empty: name a finished run directory, e.g. --config.run=runs/euar_mosi")
  for name in ("sp_ratios", "blank_ratios"):
    if any(not 0 <= v <= 1 for v in cfg[name]):
      raise ValueError(f"config.{name}={tuple(cfg[name])} is invalid: use ratios in [0, 1]")
  if any(v < 0 for v in cfg.gaussian_levels):
    raise ValueError(f"config.gaussian_levels={tuple(cfg.gaussian_levels)} is invalid: use levels >= 0")
  loaded = rob.load_run(cfg.run)
  mods = loaded.modalities
  kinds = {}
  if "vision" in mods:
    kinds.update(gaussian=("vision", cfg.gaussian_levels), salt_pepper=("vision", cfg.sp_ratios))
  if "text" in mods:
    kinds["blank_text"] = ("text", cfg.blank_ratios)
  conds = rob.missing_conditions(mods) + rob.noise_conditions(loaded.folds[0].train, kinds)
  out = rob.evaluate(loaded, conds, cfg.perturb_seed)
  task = loaded.setup.tasks[0].name
  md = rob.table(out, task, REPORT_KEYS, "missing") + "\n" + rob.table(out, task, REPORT_KEYS, "noise")
  (loaded.run_dir / "robustness.json").write_text(json.dumps(out, indent=1))
  (loaded.run_dir / "robustness.md").write_text(md)
  rob.plot(out, task, "Non0_acc_2", loaded.run_dir / "robustness.png")
  if not cfg.quiet:
    print(md)
  return out


if __name__ == "__main__":
  cli.main(get_config, run)
