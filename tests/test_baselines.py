"""tools.baselines: closed-form ridge, selection on validation only, app-style results that summarize_runs reads."""

import json

import numpy as np
import pytest

from jmoe.data import format as fmt
from jmoe.train import loop
from jmoe.train.tasks import Task
from tools import baselines

TASK = Task(
  name="sentiment", kind="sentiment", head="sentiment", label="sentiment", loss="mse", select="MAE", mode="min"
)


def _split(feats, y):
  n = len(y)
  ids = np.asarray([f"s{i}" for i in range(n)])
  return fmt.Split(features=feats, masks={}, labels=np.clip(y, -3, 3).astype(np.float32), ids=ids)


def test_ridge_fit_matches_least_squares_and_dual_form():
  rng = np.random.default_rng(0)
  x, w0 = rng.normal(size=(40, 3)), np.array([1.0, -2.0, 0.5])
  y = x @ w0 + 0.7
  w, b = baselines.ridge_fit(x, y, 1e-9)
  np.testing.assert_allclose(w, w0, atol=1e-6)
  assert b == pytest.approx(0.7)
  wide = rng.normal(size=(5, 12))  # D > n: the dual form
  yw = rng.normal(size=5)
  w, b = baselines.ridge_fit(wide, yw, 2.0)
  xc, yc = wide - wide.mean(0), yw - yw.mean()
  np.testing.assert_allclose(w, np.linalg.solve(xc.T @ xc + 2.0 * np.eye(12), xc.T @ yc), atol=1e-10)


def test_selection_uses_validation_only():
  """Validation favours modality a and a small alpha; test favours b and a huge alpha: test must not decide."""
  rng = np.random.default_rng(1)

  def part(n, target):
    a, b = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    ya, yb = a @ np.ones(4) * 0.5, b @ np.ones(4) * 0.5
    return {"a": a, "b": b}, {"train": ya + yb, "valid": ya, "test": yb}[target]

  train, valid, test = (_split(*part(n, t)) for n, t in ((300, "train"), (100, "valid"), (100, "test")))
  fold = loop.FoldData("f", train, valid, test)
  r = baselines.fit_select(fold, (TASK,), TASK, {"a": ("a",), "b": ("b",)}, alphas=(0.01, 1e7))
  assert r["chosen"]["features"] == "a" and r["chosen"]["alpha"] == 0.01
  assert r["valid"]["sentiment"]["MAE"] < 0.5 < r["test"]["sentiment"]["MAE"]
  # the alpha alone: a constant test target is best fit by the huge alpha (the train mean); validation says small
  feats, _y = part(100, "valid")
  flat = _split(feats, np.full(100, float(np.clip(train.labels["sentiment"], -3, 3).mean())))
  fold = loop.FoldData("f", train, _split(*part(100, "train")), flat)
  r = baselines.fit_select(fold, (TASK,), TASK, {"a+b": ("a", "b")}, alphas=(0.01, 1e7))
  assert r["chosen"]["alpha"] == 0.01


def test_results_json_is_read_by_summarize_runs(tmp_path, capsys):
  from experiments import euar_mosi
  from tools import summarize_runs

  cfg = euar_mosi.get_config()
  cfg.data.synthetic_sizes = (96, 32, 32)
  out = baselines.run_baselines(cfg, tmp_path / "syn")
  assert set(out) == {"ridge", "single"}
  res = json.loads((tmp_path / "syn_single" / "results.json").read_text())
  seed = res["folds"][0]["seeds"][0]
  assert seed["chosen"]["features"] in ("text", "audio", "vision") and "Non0_acc_2" in seed["test"]["sentiment"]
  capsys.readouterr()
  assert summarize_runs.main([str(tmp_path / "syn_ridge"), str(tmp_path / "syn_single")]) == 0
  assert "syn_single" in capsys.readouterr().out
