"""Hardening, round 2 (issue 23): interrupted checkpoint saves, checksum-less checkpoints, the workdir lock, torn
JSONL logs, duplicate ids, degenerate splits and the loaders' duplicate / off-scale inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
