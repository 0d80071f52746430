"""Robustness of a trained EUAR run under the EUAR paper's protocol (its Tables 2-3), on the TEST split.

Command (after ``python -m experiments.euar_mosi``; any finished run dir of the platform)::

  python -m experiments.euar_robustness --run runs/euar_mosi
  python -m experiments.euar_robustness --run runs/euar_mosi --gaussian-levels 0 1 2

Conditions (the generic evaluator :mod:`jmoe.evaluators.robustness`, modalities taken from the run): every
non-empty subset of the run's modalities kept (paper Table 2); Gaussian noise and salt-and-pepper on vision and
text blanking at the given levels (paper Table 3). Writes robustness.json / .md / .png next to the run.
"""

from __future__ import annotations

import argparse
import json
import sys

from jmoe.evaluators import robustness as rob

REPORT_KEYS = ("Non0_acc_2", "Non0_F1", "Has0_acc_2", "Acc7", "MAE")
GAUSSIAN_LEVELS = (0.0, 0.1, 0.3, 0.5, 1.0)
SP_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.5)
BLANK_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.5)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--run", required=True, help="a finished run directory (config.json, results.json, checkpoints)")
  p.add_argument("--gaussian-levels", type=float, nargs="+", default=GAUSSIAN_LEVELS)
  p.add_argument("--sp-ratios", type=float, nargs="+", default=SP_RATIOS)
  p.add_argument("--blank-ratios", type=float, nargs="+", default=BLANK_RATIOS)
  p.add_argument("--perturb-seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true")
  args = p.parse_args(argv)
  for name, levels in (("--sp-ratios", args.sp_ratios), ("--blank-ratios", args.blank_ratios)):
    if any(not 0 <= v <= 1 for v in levels):
      p.error(f"{name} must be ratios in [0, 1], got {levels}")
  if any(v < 0 for v in args.gaussian_levels):
    p.error(f"--gaussian-levels must be >= 0, got {args.gaussian_levels}")
  try:
    run = rob.load_run(args.run)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  mods = run.modalities
  kinds = {}
  if "vision" in mods:
    kinds.update(gaussian=("vision", args.gaussian_levels), salt_pepper=("vision", args.sp_ratios))
  if "text" in mods:
    kinds["blank_text"] = ("text", args.blank_ratios)
  conds = rob.missing_conditions(mods) + rob.noise_conditions(run.folds[0].train, kinds)
  out = rob.evaluate(run, conds, args.perturb_seed)
  task = run.setup.tasks[0].name
  md = rob.table(out, task, REPORT_KEYS, "missing") + "\n" + rob.table(out, task, REPORT_KEYS, "noise")
  (run.run_dir / "robustness.json").write_text(json.dumps(out, indent=1))
  (run.run_dir / "robustness.md").write_text(md)
  rob.plot(out, task, "Non0_acc_2", run.run_dir / "robustness.png")
  if not args.quiet:
    print(md)
  return out


if __name__ == "__main__":
  main()
