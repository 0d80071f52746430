"""bc-LSTM MOSI loaders: real shared files (skipped when absent) and a tiny fake in the exact layout."""

import json

import numpy as np
import pytest

from jmoe.data.bclstm import DIMS, load_mosi_bclstm, load_mosi_standard, read_bclstm
from jmoe.data.sdk import load_mosi_labels
from test_data_sdk import write_csd

SCORES = {
  "v1": [2.0, -1.0, 0.0],
  "v2": [-0.4, 1.2, 3.0],
  "v3": [1.0, -2.2, 0.2],
  "v4": [-3.0, 0.6, -0.2],
  "v5": [1.4, 1.0, -1.0],
}
TRAIN_VIDEOS, TEST_VIDEOS = ("v1", "v2", "v3"), ("v4", "v5")


def fmt(row):
  return ",".join(f'"{x}"' for x in row) + "\n"


def write_fake_mosi(root, rng=None):
  """A 5-video MOSI folder in the real bc-LSTM + SDK layout; returns {utterance id: {modality: vector}}."""
  rng = rng or np.random.default_rng(0)
  bl = root / "bclstm"
  for m in ("text", "audio", "video"):
    (bl / m).mkdir(parents=True)
  ids = [f"{v}_{i + 1}" for v in sorted(SCORES) for i in range(3)]
  score = {f"{v}_{i + 1}": s for v, ss in SCORES.items() for i, s in enumerate(ss)}
  (bl / "transcripts.csv").write_text("".join(fmt([u, f"TEXT OF {u}", 93, int(score[u] >= 0)]) for u in ids))
  feats = {u: {m: rng.normal(size=DIMS[m]).round(5) for m in DIMS} for u in ids}
  for part, vids in (("train", TRAIN_VIDEOS), ("test", TEST_VIDEOS)):
    rows = [r for r, u in enumerate(ids) if u.rsplit("_", 1)[0] in vids][::-1]  # file order != id order
    (bl / f"text_{part}.csv").write_text("".join(fmt([r, *feats[ids[r]]["text"]]) for r in rows))
    for m, folder in (("text", "text"), ("audio", "audio"), ("vision", "video")):
      (bl / folder / f"{folder}_{part}0.csv").write_text(
        "".join(fmt([*feats[ids[r]][m], int(score[ids[r]] >= 0)]) for r in rows)
      )
  write_csd(
    root / "CMU_MOSI_Opinion_Labels.csd",
    "Opinion Segment Labels",
    {v: ([[s] for s in ss], [[i, i + 1.0] for i in range(3)]) for v, ss in SCORES.items()},
  )
  (root / "standard_folds.json").write_text(json.dumps({"train": ["v5", "v1"], "valid": ["v3"], "test": ["v2", "v4"]}))
  return feats, score


def test_fake_bclstm_split(tmp_path):
  feats, score = write_fake_mosi(tmp_path)
  ds = load_mosi_bclstm(tmp_path, valid_fraction=0.34, seed=0)
  assert ds.name == "mosi-bclstm" and not ds.synthetic and ds.dims == {"text": 100, "audio": 73, "vision": 100}
  vids = {s: sorted({i.rsplit("_", 1)[0] for i in sp.ids.tolist()}) for s, sp in ds.splits.items()}
  assert vids["test"] == ["v4", "v5"] and len(vids["valid"]) == 1
  assert sorted(vids["train"] + vids["valid"]) == ["v1", "v2", "v3"]
  for sp in ds.splits.values():
    for j, u in enumerate(sp.ids.tolist()):
      assert sp.labels["sentiment"][j] == pytest.approx(score[u])
      np.testing.assert_allclose(sp.features["vision"][j], feats[u]["vision"], rtol=1e-6)
      np.testing.assert_allclose(sp.features["audio"][j], feats[u]["audio"], rtol=1e-6)
  assert ds.splits["test"].ids.tolist() == ["v5_3", "v5_2", "v5_1", "v4_3", "v4_2", "v4_1"]  # file order


def test_fake_standard_split_and_leak_guard(tmp_path):
  feats, score = write_fake_mosi(tmp_path)
  ds = load_mosi_standard(tmp_path)
  assert ds.modalities == ("audio",) and ds.name == "mosi-standard"
  assert ds.splits["train"].ids.tolist() == ["v5_1", "v5_2", "v5_3", "v1_1", "v1_2", "v1_3"]
  np.testing.assert_allclose(ds.splits["test"].features["audio"][4], feats["v4_2"]["audio"], rtol=1e-6)
  for m in ("text", "vision"):
    with pytest.raises(ValueError, match=f"bc-LSTM {m} features leak test labels on the standard MOSI split"):
      load_mosi_standard(tmp_path, modalities=("audio", m))
  with pytest.warns(UserWarning, match="leak"):
    leaky = load_mosi_standard(tmp_path, modalities=("text", "audio"), allow_leaky=True)
  assert leaky.name == "mosi-standard-LEAKY" and "LEAKY" in leaky.source


def test_fake_standard_extra_features(tmp_path):
  write_fake_mosi(tmp_path)
  ids = [f"{v}_{i + 1}" for v in SCORES for i in range(3)]
  f = tmp_path / "minilm.npz"
  pooled = np.arange(len(ids) * 6, dtype=np.float32).reshape(-1, 6)
  local = np.ones((len(ids), 4, 6), np.float32)
  mask = np.arange(4)[None] < np.arange(1, len(ids) + 1)[:, None] % 4 + 1
  np.savez(f, ids=np.array(ids), pooled=pooled, local=local, mask=mask)
  ds = load_mosi_standard(tmp_path, extra_features={"text": f})
  assert ds.modalities == ("text", "audio") and ds.dims == {"text": 6, "audio": 73}
  np.testing.assert_array_equal(ds.splits["valid"].features["text"], pooled[6:9])  # v3
  seq = load_mosi_standard(tmp_path, modalities=(), extra_features={"text": f}, extra_key="local")
  assert seq.modalities == ("text",) and seq.splits["test"].features["text"].shape == (6, 4, 6)
  np.testing.assert_array_equal(seq.splits["test"].masks["text"], mask[[3, 4, 5, 9, 10, 11]])
  np.savez(f, ids=np.array(ids[:-1]), pooled=pooled[:-1])
  with pytest.raises(ValueError, match=r"minilm\.npz: no text features for 1 utterances of split 'train', e\.g\. v5_3"):
    load_mosi_standard(tmp_path, extra_features={"text": f})
  with pytest.raises(ValueError, match="both a bc-LSTM modality and in extra_features"):
    load_mosi_standard(tmp_path, extra_features={"audio": f})


def test_fake_misaligned_rows_detected(tmp_path):
  write_fake_mosi(tmp_path)
  p = tmp_path / "bclstm" / "audio" / "audio_test0.csv"
  lines = p.read_text().splitlines(keepends=True)
  p.write_text("".join(lines[1:] + lines[:1]))  # rotate rows: labels no longer line up
  with pytest.raises(ValueError, match=r"audio_test0\.csv: binary labels differ from the other modalities in \d+ rows"):
    read_bclstm(tmp_path / "bclstm")
  write_fake_mosi(tmp_path / "b")
  labels = tmp_path / "b" / "CMU_MOSI_Opinion_Labels.csd"
  bad = {v: ([[-s] for s in ss], [[i, i + 1.0] for i in range(3)]) for v, ss in SCORES.items()}
  write_csd(labels, "Opinion Segment Labels", bad)
  with pytest.raises(ValueError, match=r"binary label != \(score >= 0\) on \d+ rows"):
    load_mosi_bclstm(tmp_path / "b")


def test_bad_paths_and_formats(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope: no such MOSI directory"):
    load_mosi_bclstm(tmp_path / "nope")
  write_fake_mosi(tmp_path)
  (tmp_path / "bclstm" / "video" / "video_train0.csv").write_text('"a","b"\n')
  with pytest.raises(ValueError, match=r"video_train0\.csv: not a numeric bc-LSTM CSV"):
    load_mosi_bclstm(tmp_path)
  (tmp_path / "bclstm" / "video" / "video_train0.csv").unlink()
  with pytest.raises(FileNotFoundError, match=r"video_train0\.csv: no such bc-LSTM feature file"):
    load_mosi_bclstm(tmp_path)
  with pytest.raises(ValueError, match="valid_fraction must be in"):
    load_mosi_bclstm(tmp_path, valid_fraction=0.0)


def test_real_bclstm_files(mosi_dir):
  parts = read_bclstm(mosi_dir / "bclstm")
  assert {p: len(parts[p].ids) for p in parts} == {"train": 1447, "test": 752}
  assert {p: len({i.rsplit("_", 1)[0] for i in parts[p].ids.tolist()}) for p in parts} == {"train": 62, "test": 31}
  assert {m: x.shape[1] for m, x in parts["train"].features.items()} == {"text": 100, "audio": 73, "vision": 100}
  labels = load_mosi_labels(mosi_dir / "CMU_MOSI_Opinion_Labels.csd")
  for p in parts.values():
    score = np.array([labels[i] for i in p.ids.tolist()])
    assert np.array_equal(p.binary, (score >= 0).astype(int))  # on every row
  assert set(parts["train"].ids.tolist()) | set(parts["test"].ids.tolist()) == set(labels)


def test_real_load_mosi_bclstm(mosi_dir):
  ds = load_mosi_bclstm(mosi_dir)
  sizes = {s: len(sp) for s, sp in ds.splits.items()}
  assert sizes["test"] == 752 and sizes["train"] + sizes["valid"] == 1447
  vids = {s: {i.rsplit("_", 1)[0] for i in sp.ids.tolist()} for s, sp in ds.splits.items()}
  assert len(vids["train"]) + len(vids["valid"]) == 62 and len(vids["valid"]) == 9  # round(0.15 * 62)
  assert not (vids["train"] & vids["valid"]) and not (vids["test"] & (vids["train"] | vids["valid"]))
  assert sizes == {"train": 1231, "valid": 216, "test": 752}  # seed 0
  for sp in ds.splits.values():
    assert np.abs(sp.labels["sentiment"]).max() <= 3
  again = load_mosi_bclstm(mosi_dir)
  assert again.splits["valid"].ids.tolist() == ds.splits["valid"].ids.tolist()
  other = load_mosi_bclstm(mosi_dir, seed=1)
  assert other.splits["valid"].ids.tolist() != ds.splits["valid"].ids.tolist()
  # spot values: first transcript row and the official label
  j = ds.splits["test"].ids.tolist().index("03bSnISJMiM_1")
  assert ds.splits["test"].labels["sentiment"][j] == pytest.approx(2.4)
  assert ds.splits["test"].features["text"][j, 0] == pytest.approx(-0.571784, abs=1e-6)


def test_real_load_mosi_standard(mosi_dir):
  ds = load_mosi_standard(mosi_dir)
  assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
  assert ds.modalities == ("audio",) and ds.dims == {"audio": 73}
  # same utterance, same audio vector in both loaders
  bc = load_mosi_bclstm(mosi_dir, modalities=("audio",))
  table = {u: x for sp in bc.splits.values() for u, x in zip(sp.ids.tolist(), sp.features["audio"])}
  sp = ds.splits["test"]
  for j in (0, 100, 685):
    np.testing.assert_array_equal(sp.features["audio"][j], table[sp.ids[j]])
  with pytest.raises(ValueError, match="leak test labels"):
    load_mosi_standard(mosi_dir, modalities=("text", "audio"))
