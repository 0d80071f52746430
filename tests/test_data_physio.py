"""Physio preprocessing (jmoe.data.physio), the synthetic DEAP generator, and the pickle memory bound."""

import dataclasses
import pickle

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct
from scipy import signal

from jmoe.data import format as fmt
from jmoe.data.deap import deap_source
from jmoe.data.mmsa import safe_load_pickle
from jmoe.data.physio import BANDS, build_dataset, differential_entropy, event_rate, window_starts
from jmoe.data.synthetic_physio import synthetic_deap, synthetic_deap_recordings

SMALL = dict(subjects=4, trials=10, seconds=12.0)


def _corr(a, b):
  return float(np.corrcoef(a, b)[0, 1])


@pytest.fixture(scope="module")
def small_ds():
  return synthetic_deap(**SMALL)


def test_window_starts():
  np.testing.assert_array_equal(window_starts(20 * 128, 128.0, 4.0, 2.0), np.arange(9) * 256)
  assert len(window_starts(3 * 128, 128.0, 4.0, 2.0)) == 0
  assert len(window_starts(7 * 128 - 1, 128.0, 4.0, 1.0)) == 3  # starts at 0, 1, 2 s fit; 3 s does not


def test_differential_entropy_of_white_noise():
  # white noise of std 3 at 128 Hz through the zero-phase band-pass (power gain |H|^4) holds variance
  # 9 / 64 * integral |H(f)|^4 df; DE = 0.5 log(2 pi e var)
  x = np.random.default_rng(0).normal(0, 3.0, (2, 128 * 60))
  de = differential_entropy(x, 128.0, window_starts(x.shape[1], 128.0, 10.0, 10.0), 1280)
  expect = []
  for band in BANDS.values():
    f, h = signal.sosfreqz(signal.butter(4, band, btype="bandpass", fs=128.0, output="sos"), worN=8192, fs=128.0)
    expect.append(0.5 * np.log(2 * np.pi * np.e * 9 / 64 * np.trapezoid(np.abs(h) ** 4, f)))
  np.testing.assert_allclose(de.reshape(de.shape[0], 2, 4).mean((0, 1)), expect, atol=0.03)
  assert expect[2] - expect[0] > 0.5  # the bands differ: a wrong band would fail


def test_event_rate_heart_and_ecg():
  rate = 128.0
  t = np.arange(int(30 * rate)) / rate
  pulse = np.exp(3 * (np.cos(2 * np.pi * 72 / 60 * t) - 1)) + np.random.default_rng(1).normal(0, 0.05, t.size)
  assert abs(np.median(event_rate(pulse, rate, (0.7, 3.0), 0.33)) - 72) < 1.0
  # ECG-like: narrow negative spikes at 90 bpm, 256 Hz (rectified detection finds either polarity)
  t2 = np.arange(int(30 * 256)) / 256
  ecg = -np.exp(-(((t2 % (60 / 90)) - 0.3) ** 2) / (2 * 0.01**2)) + np.random.default_rng(2).normal(0, 0.02, t2.size)
  assert abs(np.median(event_rate(ecg, 256.0, (5.0, 30.0), 0.33, rectify=True)) - 90) < 1.0
  assert not event_rate(np.zeros(1000) + 1.0, rate, (0.7, 3.0), 0.33).any()


def test_synthetic_dataset_format(small_ds):
  ds = small_ds
  assert ds.synthetic and "synthetic" in ds.source and ds.is_pool
  sp = ds.splits["pool"]
  n_win = len(window_starts(12 * 128, 128.0, 4.0, 2.0))
  assert len(sp) == 4 * 10 * n_win
  assert sp.features["eeg"].shape == (len(sp), 32 * 4) and sp.features["peripheral"].shape == (len(sp), 11)
  assert ds.label_specs["vadl"].names == ("valence", "arousal", "dominance", "liking")
  y = sp.labels["vadl"]
  assert y.dtype == np.float32 and y.min() >= 1 and y.max() <= 9
  np.testing.assert_array_equal(sp.groups["trial"] // 1000, sp.groups["subject"])
  assert len(np.unique(sp.groups["trial"])) == 40 and len(set(sp.ids)) == len(sp)
  assert ds.modality_meta["eeg"]["preprocessing"]["window_s"] == 4.0


def test_synthetic_planted_structure_is_recoverable(small_ds):
  sp, meta = small_ds.splits["pool"], small_ds.modality_meta
  e, p, y = sp.features["eeg"], sp.features["peripheral"], sp.labels["vadl"]
  en, pn = meta["eeg"]["features"], meta["peripheral"]["features"]
  asym = e[:, en.index("F4_alpha")] - e[:, en.index("F3_alpha")]
  assert _corr(asym, y[:, 0]) > 0.6  # frontal alpha asymmetry <-> valence
  assert abs(_corr(asym, y[:, 1])) < 0.3  # ... and not arousal
  fast = e[:, [i for i, n in enumerate(en) if n.endswith(("_beta", "_gamma"))]].mean(1)
  assert _corr(fast, y[:, 1]) > 0.6 and abs(_corr(fast, y[:, 0])) < 0.3
  for f in ("GSR_level", "heart_rate"):
    assert _corr(p[:, pn.index(f)], y[:, 1]) > 0.5, f
  # peripheral responses lag the stimulus: the first window (0-4 s, lag 3 s) carries less of them than later ones
  w = np.array([int(i.split("_w")[1]) for i in sp.ids])
  hr = p[:, pn.index("heart_rate")]
  assert _corr(hr[w >= 3], y[w >= 3, 1]) > _corr(hr[w == 0], y[w == 0, 1]) + 0.2


def test_no_effect_no_structure():
  ds = synthetic_deap(subjects=3, trials=10, seconds=8.0, effect=0.0, eeg_channels=8)
  sp, en = ds.splits["pool"], ds.modality_meta["eeg"]["features"]
  asym = sp.features["eeg"][:, en.index("F4_alpha")] - sp.features["eeg"][:, en.index("F3_alpha")]
  assert abs(_corr(asym, sp.labels["vadl"][:, 0])) < 0.3


def test_per_trial_matches_per_window():
  kw = dict(subjects=2, trials=3, seconds=9.0, eeg_channels=4)
  win, tri = synthetic_deap(**kw), synthetic_deap(**kw, per="trial", stride_s=1.0)
  win1 = synthetic_deap(**kw, stride_s=1.0)
  st, sw = tri.splits["pool"], win1.splits["pool"]
  assert st.features["eeg"].shape == (6, 6, 16) and st.masks["eeg"].all()  # (9 - 4) / 1 + 1 windows
  assert st.masks["peripheral"].shape == (6, 6) and len(win.splits["pool"]) == 6 * 3
  np.testing.assert_allclose(st.features["eeg"].reshape(-1, 16), sw.features["eeg"], rtol=1e-6)
  np.testing.assert_array_equal(np.repeat(st.groups["trial"], 6), sw.groups["trial"])
  np.testing.assert_array_equal(np.repeat(st.labels["vadl"], 6, axis=0), sw.labels["vadl"])


def _recs(**kw):
  return list(synthetic_deap_recordings(subjects=1, trials=2, seconds=8.0, eeg_channels=4, **kw))


def _scaled(rec, factor):
  return dataclasses.replace(
    rec,
    stimuli={**rec.stimuli, "eeg": [x * factor for x in rec.stimuli["eeg"]]},
    baselines={**rec.baselines, "eeg": [x * factor for x in rec.baselines["eeg"]]},
  )


def test_baseline_removal_cancels_subject_gain():
  src = deap_source(eeg=("F3", "AF3", "AF4", "F4"), synthetic=True)
  (rec,) = _recs()
  for mode, shift in (("features", 0.0), ("none", np.log(10.0))):
    a = build_dataset(src, [rec], baseline=mode).splits["pool"].features["eeg"]
    b = build_dataset(src, [_scaled(rec, 10.0)], baseline=mode).splits["pool"].features["eeg"]
    np.testing.assert_allclose(b - a, shift, atol=1e-3)


def test_ragged_trials_padded_with_mask():
  src = deap_source(eeg=("F3", "AF3", "AF4", "F4"), synthetic=True)
  (rec,) = _recs()
  short = {m: [x[:, : 6 * 128] if t == 1 else x for t, x in enumerate(v)] for m, v in rec.stimuli.items()}
  ds = build_dataset(src, [dataclasses.replace(rec, stimuli=short)], per="trial")
  sp = ds.splits["pool"]
  np.testing.assert_array_equal(sp.masks["eeg"].sum(1), [3, 2])
  assert not sp.features["eeg"][1, 2:].any()


def test_bad_recordings_raise_one_line_errors():
  src = deap_source(eeg=("F3", "AF3", "AF4", "F4"), synthetic=True)
  (rec,) = _recs()
  stim = [x.copy() for x in rec.stimuli["peripheral"]]
  stim[1][4, 300:340] = np.nan
  with pytest.raises(
    ValueError, match=r"synthetic DEAP subject 1: .*trial 2: peripheral stimulus channel GSR has 40 NaN"
  ):
    build_dataset(src, [dataclasses.replace(rec, stimuli={**rec.stimuli, "peripheral": stim})])
  r = rec.ratings.copy()
  r[0, 3] = 9.5
  with pytest.raises(ValueError, match=r"ratings outside the 1-9 scale \(trial 1 liking = 9.5\)") as ei:
    build_dataset(src, [dataclasses.replace(rec, ratings=r)])
  assert "\n" not in str(ei.value)
  with pytest.raises(ValueError, match="shorter than window_s=10"):
    build_dataset(src, [rec], window_s=10.0)
  with pytest.raises(ValueError, match="per must be"):
    build_dataset(src, [rec], per="utterance")


class _Reduce:
  def __init__(self, *r):
    self.r = r

  def __reduce__(self):
    return self.r


@pytest.mark.parametrize(
  "obj, why",
  [
    (_Reduce(_reconstruct, (np.ndarray, (10**10,), b"b")), "more than the file's size allows"),
    (_Reduce(np.ndarray, ((10**9,), np.dtype("O"))), "more than the file's size allows"),
    (_Reduce(bytes, (10**11,)), "more than the file's size allows"),
    (_Reduce(list, (range(10**10),)), "more than the file's size allows"),
    (_Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (10,), np.dtype("O"), False, [1, 2])), "has 2 values"),
  ],
)
def test_pickle_allocation_bounded_by_file_size(tmp_path, obj, why):
  p = tmp_path / "s01.dat"
  p.write_bytes(pickle.dumps({"data": obj}, protocol=2))
  with pytest.raises(ValueError, match=why):
    safe_load_pickle(p)


def test_pickle_bound_admits_real_arrays(tmp_path):
  d = {"data": np.random.default_rng(0).normal(size=(3, 40, 500)), "ids": np.array(["a", "bb"], dtype=object)}
  p = tmp_path / "ok.pkl"
  p.write_bytes(pickle.dumps(d, protocol=2))
  out = safe_load_pickle(p)
  assert type(out["data"]) is np.ndarray and type(out["ids"]) is np.ndarray
  np.testing.assert_array_equal(out["data"], d["data"])
  assert out["ids"].tolist() == ["a", "bb"]


def test_dataset_validates():
  ds = synthetic_deap(subjects=1, trials=2, seconds=6.0, eeg_channels=4, per="trial")
  fmt.validate(ds, "synthetic")
  assert ds.dims == {"eeg": 16, "peripheral": 11}
