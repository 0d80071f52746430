"""Compare finished runs: one row per run dir (test split, mean ± std over its seeds -- or over its folds -- at the
best epoch on validation), for one task.

python -m tools.summarize_runs runs/syn_euar runs/syn_mlp runs/syn_late [--metrics Non0_acc_2,Non0_F1,MAE]
python -m tools.summarize_runs runs/himoe_deap --task vadl --metrics CCC_valence,CCC_arousal
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jmoe.metrics import format_table

DEFAULT = "Non0_acc_2,Non0_F1,Has0_acc_2,Has0_F1,Acc7,MAE,Corr"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("runs", nargs="+", help="run directories written by the training app")
  ap.add_argument("--metrics", default=DEFAULT)
  ap.add_argument("--split", default="test", choices=["valid", "test"])
  ap.add_argument("--task", default="", help="task name (default: the run's first task)")
  args = ap.parse_args(argv)
  metrics = args.metrics.split(",")
  rows = []
  for run in map(Path, args.runs):
    path = run / "results.json"
    if not path.is_file():
      print(f"error: {path}: no results.json (is the run finished?)", file=sys.stderr)
      return 2
    try:
      res = json.loads(path.read_text())
    except ValueError as e:  # a truncated or damaged file
      why = str(e).splitlines()[0][:120]
      print(f"error: {path}: not a readable results.json ({why}); re-run the run's training command", file=sys.stderr)
      return 2
    missing = [
      k for k in ("summary", "tasks", "folds", "dataset", "synthetic") if not isinstance(res, dict) or k not in res
    ]
    if missing:
      print(f"error: {path}: not a jmoe results.json (no {', '.join(missing)})", file=sys.stderr)
      return 2
    task = args.task or next(iter(res["tasks"]))
    if task not in res["summary"]:
      print(f"error: {path}: no task {task!r}; has {sorted(res['summary'])}", file=sys.stderr)
      return 2
    summary = {k: v for k, v in res["summary"][task][args.split].items() if v is not None}
    unknown = [m for m in metrics if m not in summary]
    if unknown:
      print(f"error: {path}: no metric(s) {unknown}; has {sorted(summary)}", file=sys.stderr)
      return 2
    rows.append(
      {
        "run": run.name,
        "data": res["dataset"] + (" (synthetic)" if res["synthetic"] else ""),
        "seeds": len(res["folds"][0]["seeds"]),
        "folds": len(res["folds"]),
        **{m: tuple(summary[m]) for m in metrics},
      }
    )
  title = f"{args.split} split, mean ± std over seeds (one fold) or over fold means (several folds)"
  print(format_table(rows, ["run", "data", "folds", "seeds", *metrics], title=title))
  return 0


if __name__ == "__main__":
  sys.exit(main())
