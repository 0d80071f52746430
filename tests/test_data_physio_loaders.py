"""DEAP sXX.dat and DREAMER.mat loaders, their errors, the load_or_build cache (files in the real formats)."""

import os
import pickle

import numpy as np
import pytest
import scipy.io

from jmoe.data import format as fmt
from jmoe.data import physio
from jmoe.data.deap import DEAP_EEG, load_deap, read_deap_subject
from jmoe.data.dreamer import load_dreamer
from jmoe.data.physio import load_or_build

RATE = 128


def write_deap(path, data, labels, protocol=2):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as fh:
    pickle.dump({"data": data, "labels": labels}, fh, protocol=protocol)
  return path


def deap_arrays(trials=3, seconds=8, seed=0):
  rng = np.random.default_rng(seed)
  data = rng.normal(0, 10, (trials, 40, (3 + seconds) * RATE))
  return data, rng.uniform(1, 9, (trials, 4))


@pytest.fixture
def deap_dir(tmp_path):
  src = tmp_path / "data_preprocessed_python"
  for s in (1, 2):
    write_deap(src / f"s{s:02d}.dat", *deap_arrays(seed=s))
  return tmp_path


SMALL = dict(trials=3, samples=11 * RATE)


def test_deap_real_shapes(tmp_path):
  data, labels = deap_arrays(trials=40, seconds=60)
  assert data.shape == (40, 40, 8064) and data.dtype == np.float64
  rec = read_deap_subject(write_deap(tmp_path / "s07.dat", data, labels))
  assert rec.subject == 7 and rec.ratings.shape == (40, 4)
  np.testing.assert_array_equal(rec.stimuli["eeg"][5], data[5, :32, 384:].astype(np.float32))
  np.testing.assert_array_equal(rec.baselines["peripheral"][39], data[39, 32:, :384].astype(np.float32))
  ds = load_deap(tmp_path, subjects=[7], per="trial")
  sp = ds.splits["pool"]
  assert sp.features["eeg"].shape == (40, 29, 128) and sp.features["peripheral"].shape == (40, 29, 11)
  np.testing.assert_allclose(sp.labels["vadl"], labels.astype(np.float32))
  assert ds.modality_meta["eeg"]["channels"] == list(DEAP_EEG)


def test_deap_small_dataset(deap_dir):
  ds = load_deap(deap_dir, **SMALL)
  sp = ds.splits["pool"]
  assert ds.name == "deap" and not ds.synthetic and ds.modalities == ("eeg", "peripheral")
  assert len(sp) == 2 * 3 * 3  # (8 s - 4) / 2 + 1 windows
  assert sorted(set(sp.groups["trial"].tolist())) == [1001, 1002, 1003, 2001, 2002, 2003]
  assert sp.ids[0] == "s01_t01_w000"


def test_two_deap_files_of_one_subject_are_refused_naming_both(deap_dir):
  src = deap_dir / "data_preprocessed_python"
  (src / "s1.dat").write_bytes((src / "s01.dat").read_bytes())
  with pytest.raises(ValueError) as e:
    load_deap(deap_dir, **SMALL)
  msg = str(e.value)
  assert "\n" not in msg and str(src / "s01.dat") in msg and str(src / "s1.dat") in msg and "subject 1" in msg, msg


def _evil(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {tmp_path / 'pwned'}",))

  return Evil()


@pytest.mark.parametrize(
  "payload, match",
  [
    ([1, 2, 3], "not a DEAP subject file .*got a list"),
    (
      {"data": np.zeros((3, 40, 11 * RATE))},
      r"expected a dict with 'data' and 'labels', got a dict with keys \['data'\]",
    ),
    ({"data": np.zeros((3, 39, 11 * RATE)), "labels": np.ones((3, 4))}, "has 39 channels, expected 40"),
    ({"data": np.zeros((3, 40, 10 * RATE)), "labels": np.ones((3, 4))}, "has 1280 samples per trial, expected 1408"),
    ({"data": np.zeros((2, 40, 11 * RATE)), "labels": np.ones((2, 4))}, "has 2 trials, expected 3"),
    ({"data": np.zeros((3, 40, 11 * RATE)), "labels": np.ones((3, 3))}, r"'labels' has shape \(3, 3\)"),
    ({"data": "text", "labels": np.ones((3, 4))}, "'data' is not a numeric array"),
  ],
)
def test_deap_bad_files(tmp_path, payload, match):
  p = tmp_path / "s03.dat"
  p.write_bytes(pickle.dumps(payload, protocol=2))
  with pytest.raises(ValueError, match=match) as ei:
    read_deap_subject(p, **SMALL)
  assert str(ei.value).startswith(str(p)) and "\n" not in str(ei.value)


def test_deap_code_running_pickle_refused(tmp_path):
  p = tmp_path / "s01.dat"
  p.write_bytes(pickle.dumps({"data": _evil(tmp_path), "labels": np.ones((3, 4))}, protocol=2))
  with pytest.raises(ValueError, match=r"s01.dat: refused to load pickle: it references posix.system"):
    read_deap_subject(p, **SMALL)
  assert not (tmp_path / "pwned").exists()


def test_deap_bad_ratings_and_nan_name_the_file(deap_dir, tmp_path):
  data, labels = deap_arrays(seed=3)
  labels[1, 0] = 0.5
  bad = write_deap(deap_dir / "data_preprocessed_python" / "s03.dat", data, labels)
  with pytest.raises(ValueError, match=rf"{bad}: 1 ratings outside the 1-9 scale \(trial 2 valence = 0.5\)"):
    load_deap(deap_dir, **SMALL)
  data, labels = deap_arrays(seed=3)
  data[2, 5, 500:600] = np.nan
  write_deap(bad, data, labels)
  with pytest.raises(ValueError, match=rf"{bad}: subject 3 trial 3: eeg stimulus channel FC1 has 100 NaN/Inf"):
    load_deap(deap_dir, **SMALL)


# ------------------------------------------------------------------------------------------------------- DREAMER
ELECTRODES = ["AF3", "F7", "F3", "FC5", "T7", "P7", "O1", "O2", "P8", "T8", "FC6", "F4", "F8", "AF4"]


def _cell(arrays):
  c = np.empty((len(arrays), 1), dtype=object)
  for i, a in enumerate(arrays):
    c[i, 0] = a
  return c


def _ecg(seconds, bpm, rng):
  t = np.arange(int(seconds * 256)) / 256
  beat = np.exp(-(((t % (60 / bpm)) - 0.2) ** 2) / (2 * 0.01**2))
  return np.stack([beat, -beat], 1) * 1000 + rng.normal(0, 10, (t.size, 2))


def write_dreamer(path, subjects=2, videos=3, base_s=5, drop=None, edit=None):
  """A DREAMER.mat in the real layout (struct array Data, cell arrays of samples x channels), reduced sizes."""
  rng = np.random.default_rng(0)
  fields = ["Age", "Gender", "EEG", "ECG", "ScoreValence", "ScoreArousal", "ScoreDominance"]
  fields = [f for f in fields if f != drop]
  data = np.zeros((1, subjects), dtype=[(f, "O") for f in fields])
  for s in range(subjects):
    lengths = [10 + v for v in range(videos)]
    subj = {
      "Age": 25,
      "Gender": "male",
      "EEG": {
        "stimuli": _cell([rng.normal(0, 5, (n * 128, 14)) for n in lengths]),
        "baseline": _cell([rng.normal(0, 5, (base_s * 128, 14)) for _ in lengths]),
      },
      "ECG": {
        "stimuli": _cell([_ecg(n, 75, rng) for n in lengths]),
        "baseline": _cell([_ecg(base_s, 60, rng) for _ in lengths]),
      },
      "ScoreValence": rng.integers(1, 6, videos),
      "ScoreArousal": rng.integers(1, 6, videos),
      "ScoreDominance": rng.integers(1, 6, videos),
    }
    if edit:
      edit(s, subj)
    for f in fields:
      data[0, s][f] = subj[f]
  top = {
    "Data": data,
    "EEG_SamplingRate": 128,
    "ECG_SamplingRate": 256,
    "EEG_Electrodes": np.array(ELECTRODES, dtype=object),
    "noOfSubjects": subjects,
    "noOfVideoSequences": videos,
  }
  scipy.io.savemat(path, {"DREAMER": top})
  return path


def test_dreamer_round_trip(tmp_path):
  p = write_dreamer(tmp_path / "DREAMER.mat")
  raw = scipy.io.loadmat(p, struct_as_record=False, squeeze_me=True)["DREAMER"]
  ds = load_dreamer(p, baseline_samples=5 * 128)
  sp = ds.splits["pool"]
  assert ds.modalities == ("eeg", "ecg") and ds.dims == {"eeg": 56, "ecg": 4}
  assert ds.modality_meta["ecg"]["rate_hz"] == 256.0 and ds.modality_meta["eeg"]["channels"] == ELECTRODES
  assert ds.label_specs["vad"].range == (1.0, 5.0)
  assert len(sp) == 2 * (4 + 4 + 5)  # clips of 10, 11, 12 s -> 4, 4, 5 windows
  first = sp.groups["trial"] == 2003
  np.testing.assert_array_equal(
    sp.labels["vad"][first][0],
    [raw.Data[1].ScoreValence[2], raw.Data[1].ScoreArousal[2], raw.Data[1].ScoreDominance[2]],
  )
  hr = sp.features["ecg"][:, :2]  # stimulus 75 bpm minus baseline 60 bpm
  np.testing.assert_allclose(hr, 15.0, atol=1.0)


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(drop="ScoreArousal"), r"missing field DREAMER.Data\[0\].ScoreArousal"),
    (dict(edit=lambda s, d: d["ScoreValence"].__setitem__(1, 6)), r"Data\[0\].ScoreValence has 1 values off the"),
    (dict(edit=lambda s, d: d["EEG"].__setitem__("baseline", d["ECG"]["baseline"])), r"EEG.baseline\[0\] has shape"),
    (
      dict(edit=lambda s, d: d["ECG"].pop("stimuli") if s == 1 else None),
      r"missing field DREAMER.Data\[1\].ECG.stimuli",
    ),
    (dict(base_s=4), r"EEG.baseline\[0\] has 512 samples, expected 640"),
  ],
)
def test_dreamer_bad_files(tmp_path, kw, match):
  p = write_dreamer(tmp_path / "DREAMER.mat", **kw)
  with pytest.raises(ValueError, match=match) as ei:
    load_dreamer(p, baseline_samples=5 * 128)
  assert str(ei.value).startswith(str(p)) and "\n" not in str(ei.value)


def test_dreamer_nan_and_not_matlab(tmp_path):
  def nan(s, d):
    d["EEG"]["stimuli"][1, 0][100:120, 3] = np.nan

  p = write_dreamer(tmp_path / "DREAMER.mat", edit=nan)
  with pytest.raises(ValueError, match=rf"{p} subject 1: subject 1 trial 2: eeg stimulus channel FC5 has 20 NaN"):
    load_dreamer(p, baseline_samples=5 * 128)
  junk = tmp_path / "junk" / "DREAMER.mat"
  junk.parent.mkdir()
  junk.write_bytes(b"not matlab at all" * 10)
  with pytest.raises(ValueError, match="not a readable MATLAB file"):
    load_dreamer(junk)


# --------------------------------------------------------------------------------------------------------- cache
def test_load_or_build_reuses_cache_only_for_same_params(deap_dir, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  ds = load_or_build(deap_dir, cache, **SMALL)
  (entry,) = cache.iterdir()
  assert ds.modality_meta["eeg"]["preprocessing"]["trials"] == 3

  import jmoe.data.deap

  calls = []
  real = jmoe.data.deap.load_deap
  monkeypatch.setattr(jmoe.data.deap, "load_deap", lambda *a, **k: calls.append(k) or real(*a, **k))
  again = load_or_build(deap_dir, cache, **SMALL)
  assert not calls  # reused
  np.testing.assert_array_equal(again.splits["pool"].features["eeg"], ds.splits["pool"].features["eeg"])
  other = load_or_build(deap_dir, cache, window_s=2.0, **SMALL)
  assert len(calls) == 1 and len(list(cache.iterdir())) == 2
  assert len(other.splits["pool"]) > len(ds.splits["pool"])


def test_load_or_build_error_leaves_no_cache(deap_dir, tmp_path):
  data, labels = deap_arrays(seed=5)
  data[0, 35, :50] = np.inf
  write_deap(deap_dir / "data_preprocessed_python" / "s05.dat", data, labels)
  cache = tmp_path / "cache"
  with pytest.raises(ValueError, match="s05.dat: subject 5 trial 1: peripheral baseline channel tEMG has 50"):
    load_or_build(deap_dir, cache, **SMALL)
  assert not cache.exists() or not any(cache.iterdir())


def test_load_or_build_dreamer(tmp_path):
  (tmp_path / "src").mkdir()
  p = write_dreamer(tmp_path / "src" / "DREAMER.mat")
  ds = load_or_build(p.parent, tmp_path / "cache", baseline_samples=5 * 128, per="trial")
  assert ds.name == "dreamer" and ds.splits["pool"].features["eeg"].shape == (6, 5, 56)
  assert physio.load_or_build(p, tmp_path / "cache", baseline_samples=5 * 128, per="trial").dims == ds.dims
  assert len(list((tmp_path / "cache").iterdir())) == 1
  fmt.validate(ds, "cache")
