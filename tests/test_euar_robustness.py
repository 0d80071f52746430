"""experiments.euar_robustness (the generic evaluator jmoe.evaluators.robustness) on a smoke EUAR run: files, rows,
exact agreement of the all-modalities row with the run's own test metrics, missing modalities changing predictions,
errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from experiments import euar_robustness as rob_cli
from jmoe.evaluators import robustness as rob


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from experiments.common import smoke
  from experiments.euar_mosi import get_config
  from jmoe.train import app

  cfg = get_config()
  cfg.smoke, cfg.quiet = True, True
  cfg.workdir = str(tmp_path_factory.mktemp("euar_mosi_smoke"))
  app.run(cfg, smoke)
  return Path(cfg.workdir)


@pytest.fixture(scope="module")
def robustness(smoke_run):
  cfg = rob_cli.get_config()
  cfg.run, cfg.quiet = str(smoke_run), True
  return smoke_run, rob_cli.run(cfg)


def test_files_rows_and_clean_row_matches_results(robustness):
  run_dir, out = robustness
  for f in ("robustness.json", "robustness.md", "robustness.png"):
    assert (run_dir / f).is_file() and (run_dir / f).stat().st_size > 0, f
  miss = [r for r in out["conditions"] if r["group"] == "missing"]
  assert len(miss) == 7 and miss[0]["info"]["available"] == ["text", "audio", "vision"]
  defaults = rob_cli.get_config()
  for kind, levels in (("gaussian", defaults.gaussian_levels), ("salt_pepper", defaults.sp_ratios)):
    assert [r["level"] for r in out["conditions"] if r["info"].get("kind") == kind] == list(levels)
  results = json.loads((run_dir / "results.json").read_text())
  seed = results["folds"][0]["seeds"][0]
  assert miss[0]["per_run"]["0/0"] == seed["test"], "the all-modalities row must reproduce the run's test metrics"
  assert out["synthetic"] is True and "SYNTHETIC" in (run_dir / "robustness.md").read_text()


def test_missing_modalities_change_predictions(robustness):
  _, out = robustness
  rows = {r["name"]: r["summary"]["sentiment"]["MAE"][0] for r in out["conditions"] if r["group"] == "missing"}
  assert len(set(np.round(list(rows.values()), 6))) > 1


def test_random_missing_rate_hits_the_rate_and_sets_presence(smoke_run):
  run = rob.load_run(smoke_run)
  test = run.folds[0].test
  out = rob.drop_random_modalities(test, run.modalities, 0.5, seed=0)
  hit = ~np.all([out.present[m] for m in run.modalities], axis=0)
  assert 0.3 < hit.mean() < 0.7 and np.all(np.any([out.present[m] for m in run.modalities], axis=0))
  for m in run.modalities:
    assert np.all(out.features[m][~out.present[m]] == 0)


def test_errors(tmp_path):
  from jmoe.train import cli

  assert cli.invoke(rob_cli.get_config, rob_cli.run, {"run": str(tmp_path / "nope"), "quiet": True}) == 2
  with pytest.raises(rob.RunError, match="no config.json"):
    rob.load_run(tmp_path)
