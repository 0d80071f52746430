"""Failure behaviour of the training platform (issue 13): crash-consistent checkpoints + JSONL at every point of the
save sequence, divergence, damaged checkpoints, CLI errors and --help, degenerate data, the unpickler's memory bound."""

import dataclasses
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments import euar_mosi
from jmoe.data import sources
from jmoe.data.mmsa import safe_load_pickle
from jmoe.train import app, cli, loop
from jmoe.train.checkpoints import Checkpoints, DamagedCheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _cfg(workdir, **over):
  cfg = euar_mosi.get_config()
  cfg.workdir, cfg.quiet, cfg.seeds = str(workdir), True, 1
  cfg.optim.epochs = 4
  cfg.data.synthetic_sizes = (96, 32, 32)
  cfg.update_from_flattened_dict(over)
  return cfg


@pytest.fixture(scope="module")
def built():
  """One compiled setup (smoke-sized EUAR, 4 epochs) shared by the loop-level tests."""
  cfg = _cfg("unused")
  ds = sources.load(cfg.data)
  return app.setup(cfg, ds), app.make_folds(cfg.folds, ds)[0]


@pytest.fixture(scope="module")
def reference(built, tmp_path_factory):
  st, fold = built
  d = tmp_path_factory.mktemp("reference")
  return d, loop.fit(st, fold, [0], d)


def _jsonl(d):
  return (d / "seed_0/metrics.jsonl").read_text()


class Boom(Exception):
  pass


def _arm(mp, point: str, epoch: int, fired: list):
  """Raise Boom once, before or after the save of ``what`` for ``epoch``."""
  what, when = point.split(":")

  def wrap(orig, epoch_of):
    def f(*a, **k):
      hit = not fired and epoch_of(a) == epoch
      if hit and when == "before":
        fired.append(point)
        raise Boom(point)
      out = orig(*a, **k)
      if hit and when == "after":
        fired.append(point)
        raise Boom(point)
      return out

    return f

  if what == "jsonl":
    mp.setattr(loop, "append_jsonl", wrap(loop.append_jsonl, lambda a: a[1]["epoch"]))
  else:
    mp.setattr(Checkpoints, f"save_{what}", wrap(getattr(Checkpoints, f"save_{what}"), lambda a: a[1]))


# epoch 0 always improves, so its best checkpoint is always saved
FAULTS = [
  ("best:before", 0),
  ("best:after", 0),  # was: StepAlreadyExistsError on every re-run
  ("jsonl:before", 0),
  ("jsonl:after", 1),
  ("latest:before", 1),  # was: metrics.jsonl lacked the epoch after resuming
  ("latest:after", 2),
]


def test_interrupted_at_every_point_of_the_save_sequence_resumes_to_the_uninterrupted_run(
  built, reference, tmp_path, monkeypatch
):
  st, fold = built
  ref_dir, ref = reference
  for point, epoch in FAULTS:
    fired = []
    with monkeypatch.context() as mp:
      _arm(mp, point, epoch, fired)
      with pytest.raises(Boom):
        loop.fit(st, fold, [0], tmp_path)
    assert fired == [point]
  assert loop.fit(st, fold, [0], tmp_path) == ref
  assert _jsonl(tmp_path) == _jsonl(ref_dir)
  ck = Checkpoints(tmp_path / "seed_0")
  assert (ck.latest.latest_step(), ck.best_step()) == (3, ref[0]["best_epoch"])
  ck.close()


def _damage(d: Path, kind: str) -> Path:
  """Damage seed_0 under ``d`` the way the issue lists; returns the directory that is damaged."""
  seed = d / "seed_0"
  if kind == "deleted best":
    shutil.rmtree(seed / "best")
    return seed / "best"
  step = next(p for p in (seed / "latest").iterdir() if p.name.isdigit())
  if kind == "missing _METADATA":
    (step / "state/_METADATA").unlink()
    return step
  data = max((p for p in (step / "state").rglob("*") if p.is_file() and p.parent.name == "d"), key=os.path.getsize)
  raw = bytearray(data.read_bytes())
  if kind == "truncated array file":
    data.write_bytes(raw[: len(raw) // 2])
  else:  # one flipped byte
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
  return step


@pytest.mark.parametrize("kind", ["deleted best", "missing _METADATA", "truncated array file", "flipped byte"])
def test_a_damaged_checkpoint_is_named_in_one_line_and_never_restored(built, reference, tmp_path, kind):
  st, fold = built
  ref_dir, ref = reference
  d = tmp_path / "run"
  shutil.copytree(ref_dir, d)
  damaged = _damage(d, kind)
  with pytest.raises(DamagedCheckpointError) as e:
    loop.fit(st, fold, [0], d)
  msg = str(e.value)
  assert "\n" not in msg and str(damaged) in msg and "--config.discard_damaged=True" in msg, msg


def test_discard_damaged_retrains_that_seed(built, reference, tmp_path, capsys):
  st, fold = built
  ref_dir, ref = reference
  shutil.copytree(ref_dir, tmp_path / "run")
  _damage(tmp_path / "run", "flipped byte")
  cfg = st.cfg.copy_and_resolve_references()
  cfg.discard_damaged = True
  assert loop.fit(dataclasses.replace(st, cfg=cfg), fold, [0], tmp_path / "run") == ref
  assert _jsonl(tmp_path / "run") == _jsonl(ref_dir)
  assert "discarded (config.discard_damaged=True)" in capsys.readouterr().err


def test_a_diverging_seed_stops_with_one_line_and_the_other_seeds_and_the_table_complete(tmp_path, monkeypatch, capsys):
  """Seed 0's training loss and weights turn NaN in its epoch 1 (6 batches per epoch)."""
  orig_setup = app.setup
  calls = []

  def setup(cfg, ds):
    st = orig_setup(cfg, ds)
    train, ev = st.steps

    def poisoned(state, batch, rngs):
      state, m = train(state, batch, rngs)
      calls.append(1)
      if 6 < len(calls) <= 12:
        state = state.replace(params=jax_tree_nan(state.params))
        m = {**m, "loss": m["loss"] * np.nan}
      return state, m

    return dataclasses.replace(st, steps=(poisoned, ev))

  monkeypatch.setattr(app, "setup", setup)
  cfg = _cfg(tmp_path, seeds=2, **{"optim.epochs": 3})
  out = app.run(cfg)
  err = capsys.readouterr().err
  assert err.count("stopped as diverged") == 1 and "seed 0: training loss nan is non-finite at epoch 1" in err
  res = json.loads((tmp_path / "results.json").read_text())  # valid JSON
  s0, s1 = res["folds"][0]["seeds"]
  assert (s0["status"], s0["best_epoch"], s1["status"]) == ("diverged", 0, "ok")
  assert np.isfinite(s0["test"]["sentiment"]["MAE"])  # the best checkpoint (epoch 0) is kept and evaluated
  md = (tmp_path / "results.md").read_text()
  assert "Left out of the means: predefined/seed 0 (diverged)" in md
  assert res["summary"]["sentiment"]["test"]["MAE"][0] == s1["test"]["sentiment"]["MAE"]
  # a re-run trains nothing (the diverged seed is never resumed from its non-finite state) and reports the same
  n = len(calls)
  again = app.run(_cfg(tmp_path, seeds=2, **{"optim.epochs": 3}))
  assert len(calls) == n and again["folds"] == out["folds"]


def jax_tree_nan(tree):
  import jax

  return jax.tree.map(lambda a: a * np.nan, tree)


def test_degenerate_splits_are_refused_before_anything_is_written(tmp_path):
  """1-sample valid and test splits cannot select or score a model: one line naming the split and the minimum."""
  cfg = _cfg(tmp_path / "run", **{"optim.epochs": 1, "data.synthetic_sizes": (96, 1, 1)})
  with pytest.raises(ValueError, match=r"split 'valid' has 1 sample\(s\) labelled for 'sentiment'; at least 2"):
    app.run(cfg)
  assert not (tmp_path / "run" / "config.json").exists()


def _cli(*args, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "experiments.euar_mosi", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_cli_unknown_key_did_you_mean_and_help(tmp_path):
  bad = _cli("--config.optim.lrr=1", f"--config.workdir={tmp_path / 'w'}")
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.splitlines()[0] == "error: unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"
  assert not (tmp_path / "w").exists()
  helped = _cli("--help")
  assert helped.returncode == 0
  assert "  optim:\n" in helped.stdout and "    lr: 0.001" in helped.stdout
  assert "expert: 'gaussian'  # one of gaussian, linear, mlp" in helped.stdout
  assert "members: 'sequential'  # one of sequential, vmap" in helped.stdout
  assert cli.unknown_key(["--config.model.k=2", "--config.optim=x"], euar_mosi.get_config()) is None


def test_unknown_value_for_model_keys_is_one_line(tmp_path):
  cfg = _cfg(tmp_path / "bad")
  for key, value in [("num_experts", 0), ("width", 0), ("capacity_factor", -1.0), ("fusion", "bogus")]:
    c = _cfg(tmp_path / "bad", **{f"model.{key}": value})
    with pytest.raises(ValueError, match=rf"^config\.model\.{key}=.* is invalid: "):
      app.validate_config(c)
  cfg.data.modalities = "text,text"
  with pytest.raises(ValueError, match="data.modalities='text,text' names"):
    app.validate_config(cfg)


def test_a_tiny_pickle_cannot_ask_for_a_huge_array(tmp_path):
  # protocol 2: numpy.ndarray((10**12,), "u1"), a 1 TB allocation asked for in 36 bytes
  blob = b"\x80\x02cnumpy\nndarray\n\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85X\x02\x00\x00\x00u1\x86R."
  path = tmp_path / "bomb.pkl"
  path.write_bytes(blob)
  assert len(blob) <= 43
  with pytest.raises(ValueError, match="more than the file's size allows"):
    safe_load_pickle(path)


def test_mmsa_nonfinite_advice_is_a_config_key(tmp_path):
  train = {
    "text": np.zeros((2, 3, 4), np.float32),
    "audio": np.full((2, 3, 2), -np.inf, np.float32),
    "vision": np.zeros((2, 3, 2), np.float32),
    "regression_labels": np.zeros(2, np.float32),
    "id": np.array(["a$_$0", "a$_$1"]),
  }
  path = tmp_path / "x.pkl"
  with open(path, "wb") as f:
    pickle.dump({s: dict(train, id=np.array([f"{s}$_$0", f"{s}$_$1"])) for s in ("train", "valid", "test")}, f)
  cfg = _cfg(tmp_path, **{"data.source": "mmsa", "data.path": str(path)}).data
  with pytest.raises(ValueError, match="set --config.data.nonfinite=zero"):  # the EUAR configs have the key
    sources.load(cfg)
  cfg.nonfinite = "zero"
  assert np.all(sources.load(cfg).splits["train"].features["audio"] == 0)


@pytest.mark.slow
def test_kill_9_at_random_times_resumes_to_the_uninterrupted_results(tmp_path):
  args = [
    "--config.quiet=True",
    "--config.seeds=1",
    "--config.optim.epochs=4",
    "--config.data.synthetic_sizes=(96,32,32)",
  ]
  assert _cli(*args, f"--config.workdir={tmp_path / 'full'}", timeout=600).returncode == 0
  rng, cut, kills = random.Random(0), tmp_path / "cut", 0
  cmd = [sys.executable, "-m", "experiments.euar_mosi", *args, f"--config.workdir={cut}"]
  for _ in range(12):
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and not (cut / "fold_0/seed_0/latest").exists() and time.time() - t0 < 300:
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 2.0))
    if proc.poll() is not None:
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  assert kills >= 1
  assert _cli(*args, f"--config.workdir={cut}", timeout=600).returncode == 0
  strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
  assert strip(cut / "results.json") == strip(tmp_path / "full/results.json")
  assert _jsonl(cut / "fold_0") == _jsonl(tmp_path / "full/fold_0")
