"""Hardening, round 2 (issue 23): interrupted checkpoint saves, checksum-less checkpoints, the workdir lock, torn
JSONL logs, duplicate ids, degenerate splits and the loaders' duplicate / off-scale inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jmoe.train import workdir
from jmoe.train.checkpoints import ASIDE_PREFIX, DIGEST_KEY, Checkpoints, DamagedCheckpointError

LIKE = {"w": np.zeros(3, np.float32), "step": np.int32(0)}


def _tree(v: float):
  return {"w": np.full(3, v, np.float32), "step": np.int32(int(v))}


# --- checkpoints (item 1 and the checksum item of 10) ---------------------------------------------------------------


@pytest.mark.parametrize("which", ["latest", "best"])
def test_an_interrupted_first_save_is_not_damage(tmp_path, which):
  """The state a kill -9 or a full disk inside the very first save leaves: only an orbax tmp folder."""
  d = tmp_path / "fold_0/seed_0"
  (d / which / "0.orbax-checkpoint-tmp").mkdir(parents=True)
  (d / which / "0.orbax-checkpoint-tmp" / "junk").write_text("x")
  ck = Checkpoints(d)
  restore = ck.restore_latest if which == "latest" else ck.restore_best
  assert restore(LIKE) is None  # start fresh
  assert not (d / which / "0.orbax-checkpoint-tmp").exists()
  assert ck.recovered and "unfinished save" in ck.recovered[0]
  getattr(ck, f"save_{which}")(0, _tree(1.0), {"epoch": 0})  # and the re-run can save that step
  state, meta = restore(LIKE)
  assert meta["epoch"] == 0 and state["w"].tolist() == [1.0] * 3
  ck.close()


def test_an_interrupted_later_save_resumes_from_the_last_complete_step(tmp_path):
  ck = Checkpoints(tmp_path)
  ck.save_latest(1, _tree(1.0), {"epoch": 1})
  ck.close()
  (tmp_path / "latest/2.orbax-checkpoint-tmp-1712345678").mkdir()
  ck = Checkpoints(tmp_path)
  state, meta = ck.restore_latest(LIKE)
  assert meta["epoch"] == 1 and state["w"].tolist() == [1.0] * 3
  assert sorted(p.name for p in (tmp_path / "latest").iterdir()) == ["1"]
  ck.close()


def test_an_interrupted_re_save_of_one_step_keeps_the_old_copy(tmp_path, monkeypatch):
  """Re-saving a step (an epoch redone after a kill) is killed before the new copy commits: the old one comes back."""
  ck = Checkpoints(tmp_path)
  ck.save_best(3, _tree(3.0), {"epoch": 3})

  class Killed(Exception):
    pass

  def die(*a, **k):
    raise Killed

  with monkeypatch.context() as mp:
    mp.setattr(ck.best, "save", die)
    with pytest.raises(Killed):
      ck.save_best(3, _tree(4.0), {"epoch": 3, "again": True})
  assert (tmp_path / "best" / f"{ASIDE_PREFIX}3").is_dir() and not (tmp_path / "best/3").exists()
  ck = Checkpoints(tmp_path)
  state, meta = ck.restore_best(LIKE)
  assert state["w"].tolist() == [3.0] * 3 and "again" not in meta
  ck.save_best(3, _tree(4.0), {"epoch": 3, "again": True})  # an uninterrupted re-save replaces it, nothing left aside
  state, meta = ck.restore_best(LIKE)
  assert state["w"].tolist() == [4.0] * 3 and meta["again"]
  assert [p.name for p in (tmp_path / "best").iterdir()] == ["3"]
  ck.close()


def test_a_checkpoint_without_its_checksum_is_not_trusted(tmp_path):
  ck = Checkpoints(tmp_path)
  ck.save_latest(2, _tree(2.0), {"epoch": 2})
  ck.close()
  meta_file = tmp_path / "latest/2/meta/metadata"
  meta = json.loads(meta_file.read_text())
  meta.pop(DIGEST_KEY)
  meta_file.write_text(json.dumps(meta))
  ck = Checkpoints(tmp_path)
  with pytest.raises(DamagedCheckpointError) as e:
    ck.restore_latest(LIKE)
  msg = str(e.value)
  assert "\n" not in msg and str(tmp_path / "latest/2") in msg and "checksum" in msg, msg
  ck.close()


# --- one process per workdir (item 3) ----------------------------------------------------------------------------

_HOLDER = """
import sys, time
from jmoe.train import workdir
with workdir.lock(sys.argv[1], "run"):
  print("locked", flush=True)
  time.sleep(60)
"""


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
  wd = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(wd)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError) as e, workdir.lock(wd, "run"):
      pass
    msg = str(e.value)
    assert "\n" not in msg and str(wd) in msg and f"pid {holder.pid}" in msg, msg
  finally:
    holder.kill()  # kill -9: the lock file stays behind, stale
    holder.wait()
  assert (wd / workdir.LOCK_NAME).exists()
  with workdir.lock(wd, "run") as f:
    assert f.read_text().split()[0] == str(os.getpid())
    with workdir.lock(wd, "run"):  # re-entering in the holding process is allowed
      pass
    assert f.exists()
  assert not (wd / workdir.LOCK_NAME).exists()  # released: removed


def test_lock_on_an_output_file_uses_a_lock_file_beside_it(tmp_path):
  out = tmp_path / "feats.npz"
  with workdir.lock(out, "feature extraction", file=tmp_path / "feats.npz.lock"):
    assert (tmp_path / "feats.npz.lock").exists() and not out.exists()
    code = (
      "import sys; from jmoe.train import workdir\n"
      "with workdir.lock(sys.argv[1], 'feature extraction', file=sys.argv[1] + '.lock'): pass"
    )
    r = subprocess.run([sys.executable, "-c", code, str(out)], check=False, capture_output=True, text=True)
    assert r.returncode == 1 and f"{out} is in use by another feature extraction (pid {os.getpid()}" in r.stderr


# --- JSONL logs a kill cannot block (item 2) -------------------------------------------------------------------------


def test_a_torn_last_jsonl_line_is_dropped_with_a_warning_and_the_file_repaired(tmp_path, capsys):
  p = tmp_path / "fitness.jsonl"
  workdir.append_jsonl(p, {"generation": 0, "fitness": np.float32(0.5)})
  workdir.append_jsonl(p, {"generation": 0, "fitness": float("nan")})
  with p.open("a") as f:
    f.write('{"generation": 1, "indiv')
  assert workdir.read_jsonl(p) == [{"generation": 0, "fitness": 0.5}, {"generation": 0, "fitness": None}]
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and str(p) in err and "cut-off last line" in err, err
  assert p.read_text() == '{"generation": 0, "fitness": 0.5}\n{"generation": 0, "fitness": null}\n'
  with p.open("a") as f:
    f.write('{"generation": 1, "indiv')
  workdir.append_jsonl(p, {"generation": 1})  # an append after a torn line does not join it
  assert workdir.read_jsonl(p)[-1] == {"generation": 1} and len(workdir.read_jsonl(p)) == 3
  assert workdir.read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_bad_jsonl_line_in_the_middle_is_one_line_naming_file_and_line(tmp_path):
  p = tmp_path / "metrics.jsonl"
  p.write_text('{"epoch": 0}\n{"epoch": 1, "tr\n{"epoch": 2}\n')
  with pytest.raises(ValueError) as e:
    workdir.read_jsonl(p)
  assert "\n" not in str(e.value) and f"{p}:2:" in str(e.value), e.value
  p.write_text('{"epoch": 0}\n[1, 2]\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: a JSON list"):
    workdir.read_jsonl(p)


def test_write_atomic_leaves_the_old_text_when_interrupted(tmp_path, monkeypatch):
  p = tmp_path / "results.json"
  workdir.write_atomic(p, "old")

  def boom(*a):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "replace", boom)
  with pytest.raises(OSError):
    workdir.write_atomic(p, "new")
  assert p.read_text() == "old" and not (tmp_path / "results.json.tmp").exists()
