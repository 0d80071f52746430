"""MMSA and MAG/MIB feature pickles through the restricted unpickler."""

import os
import pickle
import subprocess

import numpy as np
import pytest

from jmoe.data.mmsa import RefusedPickleError, load_mmsa_pickle, safe_load_pickle

SIZES = {"train": 6, "valid": 3, "test": 4}


def mmsa_split(rng, n, split, t_text=8, t_audio=10, t_vision=12, d_text=16, d_audio=5, d_vision=7, aligned=False):
  """One split of an MMSA pickle with the real keys, dtypes and (small) shapes."""
  if aligned:
    t_audio = t_vision = t_text
  lens_text = rng.integers(3, t_text + 1, n)
  text_bert = np.zeros((n, 3, t_text), np.float64)
  for i, k in enumerate(lens_text):
    text_bert[i, 0, :k] = rng.integers(100, 30000, k)  # token ids
    text_bert[i, 1, :k] = 1  # attention mask
  d = {
    "raw_text": np.array([f"utterance {split} {i}" for i in range(n)], dtype=object),
    "audio": rng.normal(size=(n, t_audio, d_audio)).astype(np.float32),
    "vision": rng.normal(size=(n, t_vision, d_vision)).astype(np.float32),
    "id": np.array([f"vid{split}{i // 2}$_${i % 2 + 1}" for i in range(n)], dtype=object),
    "text": rng.normal(size=(n, t_text, d_text)).astype(np.float32),
    "text_bert": text_bert,
    "annotations": np.array(["Positive"] * n, dtype=object),
    "classification_labels": rng.integers(0, 3, n).astype(np.float64),
    "regression_labels": np.round(rng.uniform(-3, 3, n) * 3) / 3,
  }
  if not aligned:
    d["audio_lengths"] = [int(x) for x in rng.integers(1, t_audio + 1, n)]  # MMSA stores lists
    d["vision_lengths"] = rng.integers(1, t_vision + 1, n)
  return d


def write_mmsa(path, seed=0, protocol=4, **kw):
  rng = np.random.default_rng(seed)
  data = {s: mmsa_split(rng, n, s, **kw) for s, n in SIZES.items()}
  path.write_bytes(pickle.dumps(data, protocol=protocol))
  return data


def write_mag(path, seed=0, protocol=4):
  rng = np.random.default_rng(seed)
  data = {}
  for s, n in {"train": 5, "dev": 2, "test": 3}.items():
    items = []
    for i in range(n):
      t = int(rng.integers(2, 7))
      words = np.array([f"w{j}" for j in range(t)])
      visual = rng.normal(size=(t, 47)).astype(np.float64)
      acoustic = rng.normal(size=(t, 74)).astype(np.float64)
      label = np.array([[rng.uniform(-3, 3)]], dtype=np.float32)
      items.append(((words, visual, acoustic), label, f"{s}video[{i}]"))
    data[s] = items
  path.write_bytes(pickle.dumps(data, protocol=protocol))
  return data


class Pwn:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (os.system, (f"touch {self.target}",))


class PwnSubprocess:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (subprocess.Popen, (["touch", str(self.target)],))


class PwnEval:
  def __init__(self, target):
    self.target = target

  def __reduce__(self):
    return (eval, (f"open({str(self.target)!r}, 'w')",))


@pytest.mark.parametrize(
  "cls,ref", [(Pwn, os.system.__module__ + ".system"), (PwnSubprocess, "subprocess.Popen"), (PwnEval, "builtins.eval")]
)
def test_malicious_pickle_refused_before_running(tmp_path, cls, ref):
  target = tmp_path / "pwned"
  # hide the payload inside an otherwise real-looking MMSA dict
  rng = np.random.default_rng(0)
  data = {s: mmsa_split(rng, n, s) for s, n in SIZES.items()}
  data["valid"]["audio_lengths"] = cls(target)
  p = tmp_path / "evil.pkl"
  p.write_bytes(pickle.dumps(data, protocol=2))
  with pytest.raises(pickle.UnpicklingError) as ei:
    load_mmsa_pickle(p)
  assert isinstance(ei.value, ValueError) and isinstance(ei.value, RefusedPickleError)
  msg = str(ei.value)
  assert msg == f"{p}: refused to load pickle: it references {ref}, which a feature pickle never needs"
  assert not target.exists()


def test_unpickler_refuses_other_globals(tmp_path):
  p = tmp_path / "g.pkl"
  p.write_bytes(pickle.dumps({"f": getattr}))
  with pytest.raises(ValueError, match=r"references builtins\.getattr"):
    safe_load_pickle(p)
  p.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00rot_13\x86R.")
  with pytest.raises(ValueError, match=r"not a readable pickle .*'rot_13'"):
    safe_load_pickle(p)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_round_trip(tmp_path, protocol):
  p = tmp_path / "unaligned_50.pkl"
  raw = write_mmsa(p, protocol=protocol)
  ds = load_mmsa_pickle(p)
  assert ds.name == "mmsa-unaligned_50" and not ds.synthetic and "MMSA pickle" in ds.source
  assert ds.modalities == ("text", "audio", "vision") and ds.dims == {"text": 16, "audio": 5, "vision": 7}
  for s, n in SIZES.items():
    sp, r = ds.splits[s], raw[s]
    assert len(sp) == n
    np.testing.assert_array_equal(sp.features["audio"], r["audio"])
    np.testing.assert_array_equal(sp.features["text"], r["text"])
    np.testing.assert_allclose(sp.labels["sentiment"], r["regression_labels"].astype(np.float32))
    assert sp.ids[1] == f"vid{s}0_2"  # '$_$' -> '_'
    np.testing.assert_array_equal(sp.masks["text"], r["text_bert"][:, 1, :] > 0)
    np.testing.assert_array_equal(sp.masks["audio"].sum(1), r["audio_lengths"])
    np.testing.assert_array_equal(sp.masks["vision"].sum(1), r["vision_lengths"])
    assert sp.masks["audio"].shape == (n, 10) and sp.masks["vision"].shape == (n, 12)


def test_mmsa_aligned_masks_follow_text_length(tmp_path):
  p = tmp_path / "aligned_50.pkl"
  raw = write_mmsa(p, aligned=True)
  ds = load_mmsa_pickle(p)
  lens = raw["train"]["text_bert"][:, 1, :].sum(1)
  np.testing.assert_array_equal(ds.splits["train"].masks["audio"].sum(1), lens)
  np.testing.assert_array_equal(ds.splits["train"].masks["vision"], ds.splits["train"].masks["text"])


def test_mmsa_text_bert_only_needs_encoder(tmp_path):
  rng = np.random.default_rng(0)
  data = {s: mmsa_split(rng, n, s) for s, n in SIZES.items()}
  for s in data:
    del data[s]["text"]
  p = tmp_path / "bert_only.pkl"
  p.write_bytes(pickle.dumps(data))
  with pytest.raises(ValueError, match=r"only 'text_bert' .*tools/extract_features") as ei:
    load_mmsa_pickle(p)
  assert "\n" not in str(ei.value) and str(ei.value).startswith(str(p))
  ds = load_mmsa_pickle(p, modalities=("audio", "vision"))
  assert ds.modalities == ("audio", "vision")


def test_mmsa_nonfinite(tmp_path):
  rng = np.random.default_rng(0)
  data = {s: mmsa_split(rng, n, s) for s, n in SIZES.items()}
  data["test"]["audio"][0, :3, 0] = -np.inf
  p = tmp_path / "inf.pkl"
  p.write_bytes(pickle.dumps(data))
  with pytest.raises(ValueError, match=r"inf\.pkl: 3 NaN/Inf values in 'audio' of split 'test' .*nonfinite='zero'"):
    load_mmsa_pickle(p)
  ds = load_mmsa_pickle(p, nonfinite="zero")
  assert ds.splits["test"].features["audio"][0, :3, 0].tolist() == [0, 0, 0]
  assert "replaced by 0" in ds.source


def test_mmsa_bad_inputs(tmp_path):
  rng = np.random.default_rng(0)
  data = {s: mmsa_split(rng, n, s) for s, n in SIZES.items()}
  data["valid"]["vision"] = data["valid"]["vision"][:, :, :6]
  p = tmp_path / "dims.pkl"
  p.write_bytes(pickle.dumps(data))
  with pytest.raises(
    ValueError, match=r"dims\.pkl: modality 'vision' has D=6 in split 'valid' but dims metadata says 7"
  ):
    load_mmsa_pickle(p)
  data["valid"]["vision"] = data["valid"]["vision"][:0]
  p.write_bytes(pickle.dumps(data))
  with pytest.raises(ValueError, match=r"has shape \(0, 12, 6\), expected \[B=3, T, D\]"):
    load_mmsa_pickle(p)
  p.write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not an MMSA or MAG/MIB pickle"):
    load_mmsa_pickle(p)
  p.write_text("col1,col2\n1,2\n")
  with pytest.raises(ValueError, match=r"dims\.pkl: not a readable pickle"):
    load_mmsa_pickle(p)
  with pytest.raises(FileNotFoundError, match="nope.pkl: no such pickle file"):
    load_mmsa_pickle(tmp_path / "nope.pkl")


def test_mmsa_labels_out_of_range(tmp_path):
  rng = np.random.default_rng(0)
  data = {s: mmsa_split(rng, n, s) for s, n in SIZES.items()}
  data["train"]["regression_labels"][2] = 4.0
  p = tmp_path / "lab.pkl"
  p.write_bytes(pickle.dumps(data))
  with pytest.raises(ValueError, match=r"lab\.pkl: split 'train': 1 labels outside \[-3, 3\]"):
    load_mmsa_pickle(p)


@pytest.mark.parametrize("protocol", [2, 4])
def test_mag_round_trip(tmp_path, protocol):
  p = tmp_path / "mosi.pkl"
  raw = write_mag(p, protocol=protocol)
  ds = load_mmsa_pickle(p)
  assert ds.name == "mag-mosi" and ds.modalities == ("audio", "vision")
  assert ds.dims == {"audio": 74, "vision": 47}
  tmax = max(len(it[0][0]) for s in raw for it in raw[s])
  for src, dst in (("train", "train"), ("dev", "valid"), ("test", "test")):
    sp = ds.splits[dst]
    assert len(sp) == len(raw[src]) and sp.features["audio"].shape[1] == tmax
    for i, ((words, visual, acoustic), label, seg) in enumerate(raw[src]):
      t = len(words)
      assert sp.ids[i] == seg and sp.labels["sentiment"][i] == pytest.approx(float(label[0, 0]))
      assert sp.masks["vision"][i].sum() == t and sp.masks["audio"][i, :t].all()
      np.testing.assert_allclose(sp.features["vision"][i, :t], visual.astype(np.float32))
      np.testing.assert_allclose(sp.features["audio"][i, :t], acoustic.astype(np.float32))
      assert not sp.features["audio"][i, t:].any()


def test_mag_text_features_and_seq_len(tmp_path):
  p = tmp_path / "mosi.pkl"
  raw = write_mag(p)
  with pytest.raises(ValueError, match="hold words, not text features"):
    load_mmsa_pickle(p, modalities=("text", "audio"))
  segs = [seg for s in raw for (_, _, seg) in raw[s]]
  f = tmp_path / "text.npz"
  np.savez(f, ids=np.array(segs), pooled=np.arange(len(segs) * 4, dtype=np.float32).reshape(-1, 4))
  ds = load_mmsa_pickle(p, text_features=f, seq_len=3)
  assert ds.modalities == ("text", "audio", "vision") and ds.dims["text"] == 4
  assert ds.splits["train"].features["text"].shape == (5, 4)
  np.testing.assert_array_equal(ds.splits["valid"].features["text"][0], np.arange(20, 24))
  assert ds.splits["train"].features["audio"].shape == (5, 3, 74)
  np.savez(f, ids=np.array(segs[:-1]), pooled=np.zeros((len(segs) - 1, 4), np.float32))
  with pytest.raises(ValueError, match=r"text\.npz: no text features for 1 segments of split 'test'"):
    load_mmsa_pickle(p, text_features=f)


def test_mag_malformed_item(tmp_path):
  p = tmp_path / "bad.pkl"
  raw = write_mag(p)
  raw["dev"][1] = ((np.array(["x"]), np.zeros((1, 47))), np.zeros((1, 1)), "seg")
  p.write_bytes(pickle.dumps(raw))
  with pytest.raises(ValueError, match=r"bad\.pkl: not a MAG/MIB pickle \(split 'dev' item 1 is not"):
    load_mmsa_pickle(p)
