"""Probe round 3 (issue 23), training side: checkpoints, interruption, divergence, the population runner and one
workdir per process, each test failing on the code before its fix."""

from __future__ import annotations

import shutil
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import euar_mosi
from jmoe.train import app, cli
from jmoe.train.checkpoints import Checkpoints, DamagedCheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _wide_tree(n: int = 48):
  return {f"w{i:02d}": np.full((64, 64), float(i), np.float32) for i in range(n)}


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_truncated_data_file_is_one_error_without_event_loop_tracebacks(tmp_path, capsys):
  """o_ck04: orbax's failed restore left reads in flight that printed `Event loop is closed` tracebacks."""
  like = _wide_tree()
  ck = Checkpoints(tmp_path / "run")
  ck.save_latest(0, like, {"epoch": 0})
  ck.close()
  for data in (tmp_path / "run/latest/0/state").rglob("d/*"):  # orbax may keep the arrays in more than one file
    with data.open("r+b") as f:
      f.truncate(data.stat().st_size // 3)
  for i in range(3):  # the noise came in most tries, not all; a fresh copy each (no reads cached by the last try)
    shutil.copytree(tmp_path / "run", tmp_path / f"try{i}")
    ck = Checkpoints(tmp_path / f"try{i}")
    with pytest.raises(DamagedCheckpointError, match="latest/0 cannot be read"):
      ck.restore_latest(like)
    ck.close()
  time.sleep(0.5)
  err = capsys.readouterr().err
  assert "Event loop is closed" not in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_save_takes_effect_after_the_commit(tmp_path, monkeypatch, sig):
  """n_int_sigint: Ctrl-C inside an orbax save cut it (KeyboardInterrupt through orbax's writer threads); now the save
  commits and the interrupt follows."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers can be set in the main thread only")
  like = _wide_tree(4)
  ck = Checkpoints(tmp_path)
  orig = ocp.CheckpointManager.save

  def save(self, *a, **k):
    signal.raise_signal(sig)  # the user's Ctrl-C, delivered while orbax starts writing
    return orig(self, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)

  def on_term(signum, frame):  # as the CLI's
    raise KeyboardInterrupt("SIGTERM")

  prev = signal.signal(signal.SIGTERM, on_term)
  try:
    with pytest.raises(KeyboardInterrupt):
      ck.save_latest(0, like, {"epoch": 0})
  finally:
    signal.signal(signal.SIGTERM, prev)
  monkeypatch.undo()
  ck.close()
  state, meta = Checkpoints(tmp_path).restore_latest(like)  # committed before the interrupt acted
  assert meta["epoch"] == 0 and np.array_equal(state["w03"], like["w03"])
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_every_seed_diverged_at_once_says_no_checkpoint_and_exits_2(tmp_path, capsys):
  """n_div_lr1e3_all: each seed said 'best checkpoint kept' (there was none) and the plot warned about a legend."""
  cfg = euar_mosi.get_config()
  over = {"workdir": str(tmp_path / "run"), "quiet": True, "seeds": 1, "optim.epochs": 1, "optim.lr": 1e3}
  cfg.update_from_flattened_dict({**over, "data.synthetic_sizes": (64, 32, 32), "model.width": 8})
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend"
    assert cli.execute(app.run, cfg) == 2
  err = capsys.readouterr().err
  assert "stopped as diverged (no checkpoint; lower optim.lr)" in err and "best checkpoint kept" not in err
  assert "error: no seed of euar_mosi produced a usable model" in err


def test_a_damaged_population_checkpoint_names_the_way_on_and_discard_damaged_restarts_it(tmp_path, capsys):
  """n_pop_damaged_ckpt / n_pop_kill9_in_save: the population runner gave no hint and ignored discard_damaged."""
  from jmoe.train import population

  like = _wide_tree(2)
  ck = Checkpoints(tmp_path)
  ck.save_latest(2, like, {"generation": 2})
  ck.close()
  (tmp_path / "fitness.jsonl").write_text('{"generation": 0}\n')
  meta = tmp_path / "latest/2/meta/metadata"
  meta.write_text(meta.read_text().replace('"generation": 2', '"generation": 3'))
  with pytest.raises(DamagedCheckpointError, match=r"latest/2 does not match.*--config.discard_damaged=True"):
    population.open_population(tmp_path, like, False, "fold seed 0")
  ck, restored = population.open_population(tmp_path, like, True, "fold seed 0")
  ck.close()
  assert restored is None and not (tmp_path / "fitness.jsonl").exists() and not (tmp_path / "latest/2").exists()
  assert "discarded (config.discard_damaged=True), evolving from scratch" in capsys.readouterr().err


def test_an_unfinished_save_is_removed_with_a_note(tmp_path, capsys):
  """n_int_kill9_first_latest / n_pop_kill9_in_save: the re-run resumes (or starts fresh), and says why."""
  from jmoe.train import loop, population

  (tmp_path / "a/latest/0.orbax-checkpoint-tmp").mkdir(parents=True)
  loop.open_checkpoints(tmp_path / "a").close()
  (tmp_path / "b/latest/1.orbax-checkpoint-tmp-123").mkdir(parents=True)
  ck, restored = population.open_population(tmp_path / "b", _wide_tree(1), False, "fold seed 0")
  ck.close()
  assert restored is None and not (tmp_path / "b/latest/1.orbax-checkpoint-tmp-123").exists()
  err = capsys.readouterr().err
  assert err.count("unfinished save removed (an interrupted save; resuming from the last complete checkpoint)") == 2


def test_a_swallowed_ctrl_c_still_stops_the_run_at_the_next_epoch():
  """n_int_sigint: in 1 of 7 tries a Ctrl-C was swallowed (its KeyboardInterrupt raised inside a callback whose
  exceptions are only printed) and training ran on to the end."""
  from jmoe.train import loop

  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signal handlers can be set in the main thread only")
  with loop.interrupts_remembered():
    loop.check_interrupted()  # nothing seen yet
    try:  # a library that swallows it
      signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
      pass
    with pytest.raises(KeyboardInterrupt):
      loop.check_interrupted()
  loop.check_interrupted()  # forgotten once the run is over
  with pytest.raises(KeyboardInterrupt), loop.interrupts_remembered():  # swallowed in the last epoch of a seed
    try:
      signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
      pass
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_failed_save_drops_the_event_loop_noise_of_its_writes_in_flight(tmp_path, monkeypatch, capsys):
  """n_df_train: a save that fails on a full disk left writes in flight whose callbacks printed `Event loop is
  closed` tracebacks before the one error line. Fault injection: the commit reports such an unraisable error from
  a background thread (as orbax's callbacks do) and raises tensorstore's full-disk error."""
  import sys
  import types

  def failing_commit(mngr, step, tree, meta):
    noise = types.SimpleNamespace(
      exc_type=RuntimeError,
      exc_value=RuntimeError("Event loop is closed"),
      exc_traceback=None,
      err_msg=None,
      object=None,
    )
    threading.Timer(0.1, lambda: sys.unraisablehook(noise)).start()
    raise ValueError("RESOURCE_EXHAUSTED: Error writing file: No space left on device [os_error_code='28']")

  monkeypatch.setattr(Checkpoints, "_commit", staticmethod(failing_commit))
  ck = Checkpoints(tmp_path / "run")
  with pytest.raises(ValueError, match="No space left on device"):
    ck.save_latest(0, {"w": np.zeros(3, np.float32)}, {"epoch": 0})
  time.sleep(0.3)
  assert "Event loop is closed" not in capsys.readouterr().err
  assert sys.unraisablehook is not None and type(sys.unraisablehook).__name__ != "_AsyncNoise"  # put back
