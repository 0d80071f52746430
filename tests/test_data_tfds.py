"""TFDS array_record builders, built and read back without TensorFlow."""

import importlib.util
import pickle
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from jmoe.data import tfds_builders as tb  # noqa: E402
from jmoe.data.bclstm import load_mosi_bclstm, load_mosi_standard  # noqa: E402
from jmoe.data.mmsa import load_mmsa_pickle  # noqa: E402


def assert_same(a, b):
  assert a.modalities == b.modalities and a.dims == b.dims and a.name == b.name and a.synthetic == b.synthetic
  for s in ("train", "valid", "test"):
    x, y = a.splits[s], b.splits[s]
    assert x.ids.tolist() == y.ids.tolist()
    np.testing.assert_array_equal(x.labels["sentiment"], y.labels["sentiment"])
    for m in a.modalities:
      np.testing.assert_array_equal(x.features[m], y.features[m])
    assert set(x.masks) == set(y.masks)
    for m in x.masks:
      np.testing.assert_array_equal(x.masks[m], y.masks[m])


def test_mosi_bclstm_from_real_files(mosi_dir, tmp_path):
  b = tb.prepare(tb.JmoeMosi, mosi_dir, tmp_path, config="bclstm")
  files = sorted(p.name for p in (tmp_path / "jmoe_mosi" / "bclstm" / "1.0.0").iterdir())
  assert "jmoe_mosi-train.array_record-00000-of-00001" in files
  src = b.as_data_source()
  assert {s: len(src[s]) for s in src} == {"train": 1231, "valid": 216, "test": 752}
  ex = tfds.data_source("jmoe_mosi/bclstm", data_dir=str(tmp_path))["test"][0]
  assert ex["audio"].shape == (73,) and ex["text"].dtype == np.float32 and isinstance(ex["id"], bytes)
  ds = tb.dataset_from_tfds(tmp_path, "jmoe_mosi/bclstm")
  assert_same(ds, load_mosi_bclstm(mosi_dir))
  assert "bc-LSTM split" in ds.source and ds.source.startswith("tfds ")


def write_fake_mmsa(path, seed=0):
  rng = np.random.default_rng(seed)
  data = {}
  for s, n in (("train", 7), ("valid", 3), ("test", 4)):
    tb_ = np.zeros((n, 3, 6))
    tb_[:, 1, :] = np.arange(6)[None] < rng.integers(2, 7, (n, 1))
    data[s] = {
      "text": rng.normal(size=(n, 6, 12)).astype(np.float32),
      "text_bert": tb_,
      "audio": rng.normal(size=(n, 9, 74)).astype(np.float32),
      "vision": rng.normal(size=(n, 8, 35)).astype(np.float32),
      "audio_lengths": rng.integers(1, 10, n),
      "vision_lengths": rng.integers(1, 9, n),
      "regression_labels": rng.uniform(-3, 3, n),
      "id": np.array([f"m{s}{i}$_$1" for i in range(n)]),
      "raw_text": np.array(["x"] * n),
    }
  data["train"]["audio"][0, 0, 0] = -np.inf  # MMSA MOSEI audio has -inf; MMSA zeroes it
  path.write_bytes(pickle.dumps(data, protocol=4))
  return data


def test_mosei_from_fake_mmsa_pickle(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  write_fake_mmsa(manual / "unaligned_50.pkl")
  tb.prepare(tb.JmoeMosei, manual, tmp_path / "data", config="unaligned")
  ds = tb.dataset_from_tfds(tmp_path / "data", "jmoe_mosei/unaligned")
  ref = load_mmsa_pickle(manual / "unaligned_50.pkl", nonfinite="zero", name="mosei-mmsa-unaligned")
  assert_same(ds, ref)
  assert ds.dims == {"text": 12, "audio": 74, "vision": 35}
  assert ds.splits["train"].features["audio"][0, 0, 0] == 0.0
  src = tfds.data_source("jmoe_mosei/unaligned", data_dir=str(tmp_path / "data"))
  assert src["valid"][2]["vision_mask"].dtype == np.bool_ and src["valid"][2]["vision"].shape == (8, 35)
  if importlib.util.find_spec("tensorflow") is None:  # the whole build + read ran without TensorFlow
    assert "tensorflow" not in sys.modules


def test_mosi_standard_from_real_files(mosi_dir, tmp_path):
  tb.prepare(tb.JmoeMosi, mosi_dir, tmp_path, config="standard")
  ds = tb.dataset_from_tfds(tmp_path, "jmoe_mosi/standard")
  assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
  assert_same(ds, load_mosi_standard(mosi_dir))


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such manual_dir"):
    tb.prepare(tb.JmoeMosei, tmp_path / "nope", tmp_path / "data")
  (tmp_path / "m").mkdir()
  with pytest.raises(FileNotFoundError, match="manual_dir is empty. Put the MMSA MOSEI pickle"):
    tb.prepare(tb.JmoeMosei, tmp_path / "m", tmp_path / "data")
  (tmp_path / "m" / "aligned_50.pkl").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"unaligned_50\.pkl: no such pickle file"):
    tb.prepare(tb.JmoeMosei, tmp_path / "m", tmp_path / "data")
  (tmp_path / "data").mkdir(exist_ok=True)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    tb.dataset_from_tfds(tmp_path / "data", "jmoe_mosi/standard")
  with pytest.raises(ValueError, match="cannot open TFDS dataset 'no_such_dataset_xyz'"):
    tb.dataset_from_tfds(tmp_path / "data", "no_such_dataset_xyz")
  with pytest.raises(FileNotFoundError, match="no such TFDS data_dir"):
    tb.dataset_from_tfds(tmp_path / "missing", "jmoe_mosi/bclstm")
