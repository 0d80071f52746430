"""The platform's side of the second reliability probe: a live workdir is refused to a second process, an
interrupted first checkpoint save is resumed past, finite divergence is caught, constant predictions are flagged,
a run where every seed diverged exits non-zero, and bad values fail before anything is written."""

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import euar_mosi
from jmoe.train import app, cli, loop

ROOT = Path(__file__).resolve().parents[1]


def _cfg(workdir, **over):
  cfg = euar_mosi.get_config()
  cfg.update_from_flattened_dict(
    {
      "workdir": str(workdir),
      "quiet": True,
      "seeds": 1,
      "optim.epochs": 2,
      "data.synthetic_sizes": (96, 32, 32),
      "model.width": 16,
      **over,
    }
  )
  return cfg


def test_a_live_workdir_is_refused_naming_it_and_the_other_process(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from jmoe.train import workdir\n"
      f"with workdir.lock({str(tmp_path / 'run')!r}, 'run'):\n  print('held', flush=True); time.sleep(60)",
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=rf"{tmp_path / 'run'}.*{holder.pid}"):
      app.run(_cfg(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()
  finally:
    holder.kill()
    holder.wait()
  time.sleep(0.1)
  out = app.run(_cfg(tmp_path / "run"))  # the lock of a process that is gone is taken over
  assert out["folds"][0]["seeds"][0]["status"] == "ok"


def test_an_interrupted_first_checkpoint_save_is_not_damage(tmp_path):
  (tmp_path / "run" / "fold_0" / "seed_0" / "latest" / "0.orbax-checkpoint-tmp").mkdir(parents=True)
  out = app.run(_cfg(tmp_path / "run"))
  assert out["folds"][0]["seeds"][0]["status"] == "ok"


def test_loss_limit_is_relative_to_the_first_epoch_and_max_loss_must_be_positive(tmp_path):
  assert loop.loss_limit(0.0, None)[0] == np.inf
  assert loop.loss_limit(0.0, 2.5)[0] == 250.0 and loop.loss_limit(0.0, -0.3)[0] == 100.0
  assert loop.loss_limit(7.0, 2.5)[0] == 7.0
  for key, value, msg in [
    ("optim.max_loss", -1.0, "optim.max_loss=-1.0 is invalid"),
    ("seed_offset", -5, "seed_offset=-5 is invalid"),
    ("workdir", "", "workdir='' is invalid"),
    ("ensemble", 3, "ensemble=3 is invalid"),
  ]:
    cfg = _cfg(tmp_path / "w")
    cfg.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=msg):
      app.run(cfg)
  assert not (tmp_path / "w").exists()


def _poison_after(monkeypatch, steps: int, scale: float):
  """Every training step after the first ``steps`` reports a loss ``scale`` times larger (finite)."""
  orig_setup = app.setup
  calls = []

  def setup(cfg, ds):
    st = orig_setup(cfg, ds)
    train, ev = st.steps

    def grown(state, batch, rngs):
      state, m = train(state, batch, rngs)
      calls.append(1)
      if len(calls) > steps:
        m = {**m, "loss": m["loss"] * scale}
      return state, m

    return dataclasses.replace(st, steps=(grown, ev))

  monkeypatch.setattr(app, "setup", setup)


def test_finite_divergence_is_caught_and_a_run_without_a_model_exits_2(tmp_path, monkeypatch, capsys):
  _poison_after(monkeypatch, 6, 1e7)  # from epoch 1 on (6 batches per epoch): a loss 1e7 times larger, finite
  with pytest.raises(app.RunFailed, match="no seed of euar_mosi produced a usable model"):
    app.run(_cfg(tmp_path / "run", **{"optim.epochs": 3}))
  err = capsys.readouterr().err
  assert "above 100 x the first epoch's loss" in err and "stopped as diverged" in err
  res = json.loads((tmp_path / "run" / "results.json").read_text())
  assert res["folds"][0]["seeds"][0]["status"] == "diverged"
  # the same command again: the diverged seed is not retrained, and the run exits 2 with one line
  assert cli.invoke(lambda: _cfg(tmp_path / "run", **{"optim.epochs": 3}), app.run) == 2
  err = capsys.readouterr().err
  assert "error: no seed of euar_mosi produced a usable model" in err
  assert "the best checkpoints of 1 of them are kept" in err and "no best checkpoint exists" not in err  # epoch 0's


def test_constant_predictions_are_flagged_in_the_table(tmp_path, monkeypatch):
  orig = loop.predict

  def constant(setup, eval_fn, params_r, split, members, consts=None):
    outs = orig(setup, eval_fn, params_r, split, members, consts)
    return [{**o, "sentiment": np.full_like(o["sentiment"], 0.25)} for o in outs]

  monkeypatch.setattr(loop, "predict", constant)
  out = app.run(_cfg(tmp_path / "run"))
  assert out["folds"][0]["seeds"][0]["flags"] == ["sentiment: constant predictions (std < 1e-3 x the label std)"]
  assert "Flagged (in the means)" in (tmp_path / "run" / "results.md").read_text()
  assert json.loads((tmp_path / "run" / "results.json").read_text())["folds"][0]["seeds"][0]["flags"]
