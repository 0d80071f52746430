"""CMU-MultimodalSDK .csd reading and SDK-aligned datasets (small files in the real layout + real labels)."""

import json

import h5py
import numpy as np
import pytest

from jmoe.data.sdk import load_mosi_labels, load_sdk_dataset, read_csd, read_csd_metadata, segment_id, standard_folds


def write_csd(path, root, videos, dim_names=("x",)):
  """Write a computational sequence exactly as CMU-MultimodalSDK does: <root>/data/<vid>/{features,intervals}
  plus <root>/metadata/<key> as one-element variable-length string datasets."""
  with h5py.File(path, "w") as f:
    g = f.create_group(root)
    data = g.create_group("data")
    for vid, (feats, ivals) in videos.items():
      v = data.create_group(vid)
      v.create_dataset("features", data=np.asarray(feats, np.float32))
      v.create_dataset("intervals", data=np.asarray(ivals, np.float32))
    meta = g.create_group("metadata")
    str_t = h5py.special_dtype(vlen=str)
    for k, val in {
      "root name": json.dumps(root),
      "dimension names": json.dumps(list(dim_names)),
      "computational sequence version": "1.0",
      "alignment compatible": "true",
    }.items():
      meta.create_dataset(k, (1,), dtype=str_t, data=[val])
  return path


@pytest.fixture
def sdk_files(tmp_path):
  # Two videos per split; label rows deliberately NOT in time order for video 'b' (as in the real file).
  label_videos = {
    "a": ([[1.0], [-2.0]], [[0.0, 2.0], [2.0, 4.0]]),
    "b": ([[0.5], [3.0], [-1.0]], [[4.0, 6.0], [0.0, 2.0], [2.0, 4.0]]),
    "c": ([[2.0]], [[1.0, 3.0]]),
    "d": ([[-3.0], [0.0]], [[0.0, 1.0], [1.0, 2.0]]),
  }
  write_csd(tmp_path / "labels.csd", "Opinion Segment Labels", label_videos, ("sentiment",))
  rng = np.random.default_rng(0)
  audio = {}
  for vid in label_videos:
    t = np.arange(0, 6.0, 0.5)  # 12 frames of 0.5 s, 2 features
    audio[vid] = (np.c_[t, rng.normal(size=12)], np.c_[t, t + 0.5])
  write_csd(tmp_path / "covarep.csd", "COVAREP", audio, ("t", "noise"))
  vision = {
    vid: (np.full((4, 4), i, np.float32), [[0.1, 0.9], [1.1, 1.9], [2.1, 2.9], [4.1, 5.0]])
    for i, vid in enumerate(label_videos)
  }
  write_csd(tmp_path / "facet.csd", "FACET 4.2", vision)
  folds = {"train": ["a", "b"], "valid": ["c"], "test": ["d"]}
  (tmp_path / "folds.json").write_text(json.dumps(folds))
  return tmp_path, label_videos, audio


def test_read_csd_layout(sdk_files):
  d, label_videos, _ = sdk_files
  table = read_csd(d / "labels.csd")
  assert sorted(table) == ["a", "b", "c", "d"]
  f, iv = table["b"]
  np.testing.assert_allclose(f[:, 0], [0.5, 3.0, -1.0])
  np.testing.assert_allclose(iv, [[4, 6], [0, 2], [2, 4]])
  meta = read_csd_metadata(d / "covarep.csd")
  assert meta["root group"] == "COVAREP" and meta["dimension names"] == '["t", "noise"]'


def test_segment_ids_follow_stored_row_order(sdk_files):
  d, _, _ = sdk_files
  labels = load_mosi_labels(d / "labels.csd")
  assert segment_id("b", 0) == "b_1"
  # row 0 of 'b' is the *last* segment in time, still 'b_1'
  assert labels == {"a_1": 1.0, "a_2": -2.0, "b_1": 0.5, "b_2": 3.0, "b_3": -1.0, "c_1": 2.0, "d_1": -3.0, "d_2": 0.0}


def test_load_sdk_dataset_vectors(sdk_files):
  d, _, audio = sdk_files
  ds = load_sdk_dataset(
    d / "labels.csd", {"vision": d / "facet.csd", "audio": d / "covarep.csd"}, d / "folds.json", name="toy-sdk"
  )
  assert ds.modalities == ("audio", "vision") and ds.dims == {"audio": 2, "vision": 4}
  assert not ds.synthetic and "covarep.csd" in ds.source
  tr = ds.splits["train"]
  assert tr.ids.tolist() == ["a_1", "a_2", "b_1", "b_2", "b_3"]
  np.testing.assert_allclose(tr.labels["sentiment"], [1, -2, 0.5, 3, -1])
  # segment b_1 = [4, 6] s: audio frames starting at 4.0 .. 5.5 (4 frames) -> mean of column 0 = 4.75
  feats, ivals = audio["b"]
  inside = (ivals[:, 0] >= 4.0) & (ivals[:, 1] <= 6.0)
  assert inside.sum() == 4
  np.testing.assert_allclose(tr.features["audio"][2], feats[inside].mean(0), rtol=1e-6)
  assert tr.features["audio"][2, 0] == pytest.approx(4.75)
  np.testing.assert_allclose(tr.features["vision"][2], np.full(4, 1.0))  # video 'b' is index 1
  assert len(ds.splits["valid"]) == 1 and len(ds.splits["test"]) == 2


def test_load_sdk_dataset_sequences(sdk_files):
  d, _, audio = sdk_files
  ds = load_sdk_dataset(d / "labels.csd", {"audio": d / "covarep.csd"}, d / "folds.json", seq_len=3)
  tr = ds.splits["train"]
  assert tr.features["audio"].shape == (5, 3, 2) and tr.masks["audio"].shape == (5, 3)
  # a_1 = [0, 2] s has 4 frames -> truncated to the first 3 in time order
  np.testing.assert_allclose(tr.features["audio"][0, :, 0], [0.0, 0.5, 1.0])
  assert tr.masks["audio"].all()
  ds6 = load_sdk_dataset(d / "labels.csd", {"audio": d / "covarep.csd"}, d / "folds.json", seq_len=6)
  m = ds6.splits["test"].masks["audio"]
  assert m.sum(1).tolist() == [2, 2]  # d_1 = [0, 1] s -> 2 frames, padded to 6
  assert np.all(ds6.splits["test"].features["audio"][0, 2:] == 0)


def test_load_sdk_dataset_empty_segments(sdk_files, tmp_path):
  d, _, _ = sdk_files
  sparse = {vid: ([[1.0, 2.0]], [[1.0, 1.5]] if vid == "c" else [[0.0, 0.5]]) for vid in "abcd"}
  write_csd(tmp_path / "sparse.csd", "S", sparse)
  with pytest.raises(ValueError, match=r"sparse\.csd: no feature rows inside segment a_2 \[2\.000, 4\.000\] s"):
    load_sdk_dataset(d / "labels.csd", {"audio": tmp_path / "sparse.csd"}, d / "folds.json")
  dropped = load_sdk_dataset(d / "labels.csd", {"audio": tmp_path / "sparse.csd"}, d / "folds.json", empty="drop")
  assert dropped.splits["train"].ids.tolist() == ["a_1", "b_2"]
  # empty='zeros' keeps such segments as all-padding rows: with one modality they have no data at all, which the
  # format refuses (a sample with nothing to predict from must not be scored)
  with pytest.raises(ValueError, match=r"split 'train': 3 samples have no data in any modality \(first 'a_2'"):
    load_sdk_dataset(d / "labels.csd", {"audio": tmp_path / "sparse.csd"}, d / "folds.json", empty="zeros", seq_len=2)


def test_load_sdk_dataset_errors(sdk_files, tmp_path):
  d, _, audio = sdk_files
  write_csd(tmp_path / "partial.csd", "P", {k: v for k, v in audio.items() if k != "c"})
  with pytest.raises(
    ValueError, match=r"partial\.csd: no features for video 'c' \(needed by segment c_1 in split 'valid'\)"
  ):
    load_sdk_dataset(d / "labels.csd", {"audio": tmp_path / "partial.csd"}, d / "folds.json")
  # frame 0 (both columns) is NaN; it lies in a_1 and b_2 of train -> 2 segments x 2 columns = 4 values
  nan = {k: (np.where(np.arange(12)[:, None] == 0, np.nan, f), iv) for k, (f, iv) in audio.items()}
  write_csd(tmp_path / "nan.csd", "N", nan)
  with pytest.raises(ValueError, match=r"nan\.csd: 4 NaN/Inf values in 'audio' features of split 'train'"):
    load_sdk_dataset(d / "labels.csd", {"audio": tmp_path / "nan.csd"}, d / "folds.json")
  ok = load_sdk_dataset(d / "labels.csd", {"audio": tmp_path / "nan.csd"}, d / "folds.json", nonfinite="zero")
  assert np.isfinite(ok.splits["train"].features["audio"]).all()
  (tmp_path / "not.csd").write_text("plain text")
  with pytest.raises(ValueError, match=r"not\.csd: not a CMU-MultimodalSDK computational sequence \(not HDF5"):
    read_csd(tmp_path / "not.csd")
  with pytest.raises(FileNotFoundError, match="missing.csd: no such"):
    read_csd(tmp_path / "missing.csd")
  with pytest.raises(ValueError, match="unknown modality"):
    load_sdk_dataset(d / "labels.csd", {"covarep": d / "covarep.csd"}, d / "folds.json")
  out_of_range = {
    "a": ([[4.0]], [[0.0, 2.0]]),
    "b": ([[1.0]], [[0.0, 2.0]]),
    "c": ([[1.0]], [[0.0, 2.0]]),
    "d": ([[1.0]], [[0.0, 2.0]]),
  }
  write_csd(tmp_path / "bad_labels.csd", "L", out_of_range)
  with pytest.raises(ValueError, match=r"bad_labels\.csd: split 'train': 1 labels outside \[-3, 3\]"):
    load_sdk_dataset(tmp_path / "bad_labels.csd", {"audio": d / "covarep.csd"}, d / "folds.json")


def test_mosei_style_label_columns(sdk_files, tmp_path):
  d, label_videos, _ = sdk_files
  # MOSEI labels: [k, 7] = sentiment + six emotions; pick a column
  seven = {
    v: (np.c_[np.asarray(f), np.tile(np.arange(1, 7) / 2, (len(f), 1))], iv) for v, (f, iv) in label_videos.items()
  }
  write_csd(tmp_path / "mosei_labels.csd", "All Labels", seven)
  ds = load_sdk_dataset(tmp_path / "mosei_labels.csd", {"audio": d / "covarep.csd"}, d / "folds.json")
  np.testing.assert_allclose(ds.splits["train"].labels["sentiment"], [1, -2, 0.5, 3, -1])
  happy = load_sdk_dataset(
    tmp_path / "mosei_labels.csd", {"audio": d / "covarep.csd"}, d / "folds.json", label_column=1
  )
  assert (happy.splits["test"].labels["sentiment"] == 0.5).all()
  with pytest.raises(ValueError, match="label_column=7 is out of range"):
    load_sdk_dataset(tmp_path / "mosei_labels.csd", {"audio": d / "covarep.csd"}, d / "folds.json", label_column=7)


def test_standard_folds_errors(tmp_path):
  p = tmp_path / "f.json"
  p.write_text(json.dumps({"train": ["a"], "valid": ["a"], "test": []}))
  with pytest.raises(ValueError, match="video 'a' is in both 'train' and 'valid'"):
    standard_folds(p)
  p.write_text(json.dumps({"train": ["a"], "dev": [], "test": []}))
  with pytest.raises(ValueError, match="not a folds JSON"):
    standard_folds(p)


def test_real_mosi_labels(mosi_dir):
  labels = load_mosi_labels(mosi_dir / "CMU_MOSI_Opinion_Labels.csd")
  assert len(labels) == 2199
  assert len({k.rsplit("_", 1)[0] for k in labels}) == 93
  y = np.asarray(list(labels.values()))
  assert y.min() == -3.0 and y.max() == 3.0
  assert labels["03bSnISJMiM_1"] == pytest.approx(2.4) and labels["03bSnISJMiM_10"] == pytest.approx(-1.2)
  folds = standard_folds(mosi_dir / "standard_folds.json")
  assert {k: len(v) for k, v in folds.items()} == {"train": 52, "valid": 10, "test": 31}
  vid_of = {k: k.rsplit("_", 1)[0] for k in labels}
  sizes = {s: sum(vid_of[k] in set(v) for k in labels) for s, v in folds.items()}
  assert sizes == {"train": 1284, "valid": 229, "test": 686}
  meta = read_csd_metadata(mosi_dir / "CMU_MOSI_Opinion_Labels.csd")
  assert meta["root group"] == "Opinion Segment Labels"
