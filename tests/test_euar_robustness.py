"""experiments.euar_robustness on a smoke EUAR run (synthetic MOSI, 1 seed, 2 epochs): files, rows, exact
agreement of the clean row with the run's own test metrics, missing modalities changing predictions, errors."""

import json
import shutil

import numpy as np
import pytest

from experiments import euar_robustness as rob
from jmoe.data import perturb


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  from experiments.common import run_experiment
  from experiments.euar_mosi import get_config

  cfg = get_config()
  cfg.smoke = True
  cfg.quiet = True
  cfg.workdir = str(tmp_path_factory.mktemp("euar_mosi_smoke"))
  run_experiment(cfg)
  return cfg.workdir


@pytest.fixture(scope="module")
def robustness(smoke_run):
  out = rob.main(["--run", smoke_run, "--quiet"])
  return smoke_run, out


def test_files_rows_and_clean_row_matches_results(robustness, capsys):
  run_dir, out = robustness
  from pathlib import Path

  run_dir = Path(run_dir)
  for f in ("robustness.json", "robustness.md", "robustness.png"):
    assert (run_dir / f).is_file() and (run_dir / f).stat().st_size > 0, f
  assert json.loads((run_dir / "robustness.json").read_text()) == json.loads(json.dumps(out))
  assert out["synthetic"] is True and out["split"] == "test" and out["seeds"] == [0]
  # 7 fixed-missing rows, in MISSING_COMBOS order
  miss = [r for r in out["conditions"] if r["group"] == "missing"]
  assert [tuple(r["available"]) for r in miss] == list(perturb.MISSING_COMBOS)
  # noise rows: 5 levels for each of the three noise types, vision / vision / text
  for kind, mod, levels in (
    ("gaussian", "vision", rob.GAUSSIAN_LEVELS),
    ("salt_pepper", "vision", rob.SP_RATIOS),
    ("blank_text", "text", rob.BLANK_RATIOS),
  ):
    rows = [r for r in out["conditions"] if r["kind"] == kind]
    assert [r["level"] for r in rows] == list(levels) and {r["modality"] for r in rows} == {mod}
  assert out["gaussian_scale"] > 0
  g = [r for r in out["conditions"] if r["kind"] == "gaussian"]
  assert [r["abs_std"] for r in g] == [lv * out["gaussian_scale"] for lv in rob.GAUSSIAN_LEVELS]
  # all modalities available = the run's own test metrics (same best checkpoint, same data): identical numbers
  results = json.loads((run_dir / "results.json").read_text())
  full = next(r for r in miss if len(r["available"]) == 3)
  for seed_res in results["seeds"]:
    assert full["per_seed"][str(seed_res["seed"])] == seed_res["test"]
  # level 0 of every noise is the clean test split too
  for r in out["conditions"]:
    if r["group"] == "noise" and r["level"] == 0:
      assert r["per_seed"] == full["per_seed"], r["name"]
  # the markdown: two tables, every reported metric, SYNTHETIC in the titles
  md = (run_dir / "robustness.md").read_text()
  assert md.count("### ") == 2 and md.count("SYNTHETIC") == 2
  for k in rob.REPORT_KEYS:
    assert k in md
  assert "| {L, V, A} |" in md and "| {V, A} |" in md and "| salt_pepper | vision | ratio 0.5 |" in md


def test_missing_modalities_change_predictions_and_perturbations_are_deterministic(robustness):
  run_dir, out = robustness
  run = rob.load_run(run_dir)
  test = run.ds.splits["test"]
  clean = run.predict(0, test)
  for combo in (("L",), ("V",), ("A",)):
    pred = run.predict(0, perturb.drop_modalities(test, combo))
    assert pred.shape == clean.shape and np.max(np.abs(pred - clean)) > 1e-6, combo
  # the same condition gives the same perturbed split (and numbers) every time; different levels differ
  scale = rob.gaussian_scale(run.ds.splits["train"])
  for kind, level in (("gaussian", 0.3), ("salt_pepper", 0.2), ("blank_text", 0.3)):
    c = rob.Condition(kind, level=level)
    a, b = rob.apply_condition(c, test, 0, scale), rob.apply_condition(c, test, 0, scale)
    for m in test.features:
      np.testing.assert_array_equal(a.features[m], b.features[m])
    assert any(not np.array_equal(a.features[m], test.features[m]) for m in test.features), kind
  again = rob.evaluate(run, gaussian_levels=(0.3,), sp_ratios=(0.2,), blank_ratios=(0.3,), quiet=True)
  first = {r["name"]: r["per_seed"] for r in out["conditions"]}
  for r in again["conditions"]:
    assert r["per_seed"] == first[r["name"]], r["name"]


def test_noise_levels_flag_and_seeds_from_run(robustness, tmp_path):
  run_dir, _ = robustness
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  out = rob.main(
    ["--run", str(copy), "--quiet", "--noise-levels", "0", "0.25", "--gaussian-levels", "2", "--seeds-from-run"]
  )
  assert out["levels"] == {"gaussian": [2.0], "salt_pepper": [0.0, 0.25], "blank_text": [0.0, 0.25]}
  assert len([r for r in out["conditions"] if r["group"] == "noise"]) == 5
  with pytest.raises(SystemExit, match="ratio"):
    rob.main(["--run", str(copy), "--quiet", "--sp-levels", "1.5"])


def test_missing_run_errors(tmp_path):
  def err(path):
    with pytest.raises(SystemExit) as e:
      rob.main(["--run", str(path), "--quiet"])
    msg = str(e.value.code)
    assert "\n" not in msg
    return msg

  assert str(tmp_path / "nope") in err(tmp_path / "nope")
  run = tmp_path / "run"
  run.mkdir()
  assert str(run / "config.json") in err(run)  # no config.json
  (run / "config.json").write_text("{}")
  (run / "seed_0").mkdir()
  msg = err(run)  # config but no checkpoints
  assert str(run) in msg and "no checkpoints" in msg
  assert not (run / "seed_0" / "best").exists()  # the check does not create checkpoint dirs
