"""experiments.drmoe_routing on a user's saved dataset (data.source='dir'): class names, heads and groups from its
metadata."""

import json

import numpy as np
import pytest

from jmoe.data import format as fmt


def _dir_run(tmp_path, head="mood"):
  """A tiny saved dataset (pool, head 'mood' with classes in a non-sorted order, groups speaker/session) and a run
  directory whose test outputs route by hand."""
  classes = ("sleepy", "furious", "calm")
  ids = np.array([f"u{i}" for i in range(8)])
  y = np.array([0, 1, 2, 1, 0, 1, 2, 2], np.int32)
  lm = np.array([True] * 7 + [False])
  split = fmt.Split(
    features={"audio_global": np.zeros((8, 3), np.float32)},
    masks={},
    labels={"mood": y},
    ids=ids,
    label_masks={"mood": lm},
    groups={"speaker": np.array(["a", "a", "a", "a", "b", "b", "b", "b"]), "session": np.arange(8) % 2},
  )
  ds = fmt.Dataset(
    "mine",
    {"pool": split},
    ("audio_global",),
    {"audio_global": 3},
    False,
    "test",
    label_specs={"mood": fmt.LabelSpec("classification", classes=classes)},
  )
  data = fmt.save_dataset(ds, tmp_path / "data")
  run = tmp_path / "run"
  (run / "fold_0" / "seed_0").mkdir(parents=True)
  cfg = {"data": {"source": "dir", "path": str(data)}, "tasks": {"emotion": {"label": head}}}
  (run / "config.json").write_text(json.dumps(cfg))
  scale = np.array([0, 0, 1, 1, 1, 0, 1, 0])  # 0 local, 1 global
  np.savez(
    run / "fold_0" / "seed_0" / "test_outputs.npz",
    ids=ids,
    **{"label.mood": y, "label_mask.mood": lm, "per_sample.scale_audio": scale},
  )
  return run


def test_routing_reads_class_names_and_groups_from_the_saved_dataset(tmp_path):
  from experiments import drmoe_routing

  run = _dir_run(tmp_path)
  res = drmoe_routing.report(run)
  assert res["classes"] == ["sleepy", "furious", "calm"]
  e = res["modalities"]["audio"]
  # labelled samples u0..u6: sleepy {u0: local, u4: global}, furious {u1, u3, u5: local, global, local}, calm
  # {u2, u6: global, global}
  assert e["classes"]["sleepy"] == {"n": 2, "local": 0.5, "global": 0.5}
  assert e["classes"]["furious"]["local"] == pytest.approx(2 / 3)
  assert e["classes"]["calm"] == {"n": 2, "local": 0.0, "global": 1.0}
  assert e["overall_local"] == pytest.approx(3 / 7)
  assert e["claims"] == {"calm_leans_global": True}
  assert e["groups"]["speaker"] == {"a": {"n": 4, "local": 0.5}, "b": {"n": 3, "local": pytest.approx(1 / 3)}}
  assert set(e["groups"]["session"]) == {"0", "1"}
  md = (run / "routing.md").read_text()
  assert "| furious |" in md and "audio routed local by speaker: a 50% (n=4), b 33% (n=3)" in md


def test_routing_on_a_saved_dataset_refuses_a_head_it_lacks(tmp_path):
  from experiments import drmoe_routing

  run = _dir_run(tmp_path, head="valence")
  with pytest.raises(ValueError, match="the run's head 'valence' is not in the dataset's heads \\['mood'\\]"):
    drmoe_routing.analyze(run)
  cfg = json.loads((run / "config.json").read_text())
  cfg["data"]["path"] = str(tmp_path / "gone")
  (run / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(FileNotFoundError, match="has no meta.json"):
    drmoe_routing.analyze(run)
