"""Probe round 3, area B: bad DEAP, DREAMER, RAVDESS and IEMOCAP inputs give one clear line (loaders direct)."""

import warnings

import ml_collections
import numpy as np
import pytest
import scipy.io
from test_data_iemocap import _write_feats, write_release
from test_data_physio_loaders import SMALL, deap_arrays, write_deap, write_dreamer
from test_data_ravdess import NAMES, _write_features

from jmoe.data import format as fmt
from jmoe.data import iemocap as iem
from jmoe.data import physio, sources
from jmoe.data import ravdess as rv
from jmoe.data.deap import read_deap_subject
from jmoe.data.dreamer import load_dreamer, read_dreamer


def _one_line(ei) -> str:
  msg = str(ei.value)
  assert "\n" not in msg
  return msg


# ------------------------------------------------------------------------------------------------------- DREAMER
def _dreamer_with_top(tmp_path, monkeypatch, **top):
  save = scipy.io.savemat

  def patched(path, d):
    d["DREAMER"].update(top)
    save(path, d)

  monkeypatch.setattr(scipy.io, "savemat", patched)
  p = write_dreamer(tmp_path / "DREAMER.mat", subjects=1, videos=2)
  monkeypatch.setattr(scipy.io, "savemat", save)
  return p


def test_dreamer_rate_too_low_names_file_and_field(tmp_path, monkeypatch):
  """n_dreamer_rate8: was scipy's `Wn[0] must be less than Wn[1]`."""
  p = _dreamer_with_top(tmp_path, monkeypatch, EEG_SamplingRate=8)
  with pytest.raises(ValueError) as ei:
    load_dreamer(p, baseline_samples=None)
  msg = _one_line(ei)
  assert msg.startswith(str(p)) and "DREAMER.EEG_SamplingRate = 8 Hz is too low" in msg
  p = _dreamer_with_top(tmp_path, monkeypatch, ECG_SamplingRate=10)
  with pytest.raises(ValueError, match=r"DREAMER.ECG_SamplingRate = 10 Hz is too low"):
    read_dreamer(p, baseline_samples=None)
  # the generic check of build_dataset names the source and the modality
  src = physio.PhysioSource("x", (physio.Modality("eeg", 8.0, ("C3",), "eeg"),), "vad", ("v",), (1, 5), True, "src")
  with pytest.raises(ValueError, match=r"^src: eeg sampled at 8 Hz is too low"):
    physio.build_dataset(src, [])


def test_dreamer_eeg_and_ecg_durations_cross_checked(tmp_path, monkeypatch):
  """n_dreamer_rate1000 / n_dreamer_ecg_shorter: was `trial 1 lasts 1.28 s, shorter than window_s=4`."""
  p = _dreamer_with_top(tmp_path, monkeypatch, EEG_SamplingRate=1000)
  with pytest.raises(ValueError) as ei:
    load_dreamer(p, baseline_samples=None)
  msg = _one_line(ei)
  assert msg.startswith(str(p)) and "DREAMER.Data[0].EEG.stimuli[0] lasts 1.28 s" in msg
  assert "EEG_SamplingRate = 1000 Hz" in msg and "ECG.stimuli[0] lasts 10 s" in msg

  def cut_ecg(s, subj):
    subj["ECG"]["stimuli"][1, 0] = subj["ECG"]["stimuli"][1, 0][: 3 * 256]

  p = write_dreamer(tmp_path / "cut.mat", subjects=1, videos=2, edit=cut_ecg)
  with pytest.raises(ValueError, match=r"EEG.stimuli\[1\] lasts 11 s .*ECG.stimuli\[1\] lasts 3 s"):
    read_dreamer(p, baseline_samples=None)
  assert len(read_dreamer(write_dreamer(tmp_path / "ok.mat"), baseline_samples=None)[1]) == 2  # control


# ---------------------------------------------------------------------------------------------------- DEAP cache
@pytest.fixture
def deap_src(tmp_path):
  for s in (1, 2):
    write_deap(tmp_path / "src" / "data_preprocessed_python" / f"s{s:02d}.dat", *deap_arrays(seed=s))
  return tmp_path / "src"


def test_deap_cache_unwritable_is_one_line_and_leaves_nothing(deap_src, tmp_path, monkeypatch):
  """n_ro_deap_data / n_df_deap_cache: were OSError tracebacks (read-only / full disk while writing the cache)."""
  blocker = tmp_path / "file"
  blocker.write_text("a file where the cache folder would go")
  with pytest.raises(ValueError) as ei:
    physio.load_or_build(deap_src, blocker / "cache", **SMALL)
  assert "set --config.data.cache_dir" in _one_line(ei)

  def full(*a, **k):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "save", full)  # fault injection: the disk fills while the cache's arrays are written
  with pytest.raises(ValueError, match=r"cannot write the preprocessed-data cache .*No space left on device"):
    physio.load_or_build(deap_src, tmp_path / "cache", **SMALL)
  assert list((tmp_path / "cache").iterdir()) == []  # no partial cache


def test_damaged_deap_cache_is_rebuilt(deap_src, tmp_path, capsys):
  """n_deap_cache_corrupt residual: a cut cache array failed every re-run."""
  ds = physio.load_or_build(deap_src, tmp_path / "cache", **SMALL)
  (f,) = (tmp_path / "cache").glob("*/pool/features.eeg.npy")
  f.write_bytes(f.read_bytes()[:200])
  again = physio.load_or_build(deap_src, tmp_path / "cache", **SMALL)
  assert "warning: rebuilding the damaged cache" in capsys.readouterr().out
  np.testing.assert_array_equal(again.splits["pool"].features["eeg"], ds.splits["pool"].features["eeg"])
  assert fmt.load_dataset(f.parents[1]).splits["pool"].features["eeg"].shape == ds.splits["pool"].features["eeg"].shape


# ------------------------------------------------------------------------------------------------------- RAVDESS
def test_ravdess_clip_without_frames_refused(tmp_path):
  """n_rav_zero_frames: a clip with mask all False was accepted and scored."""
  feats = tmp_path / "f.npz"
  _write_features(feats, NAMES)
  z = dict(np.load(feats))
  z["mask"][2] = False
  z["local"][2] = 0
  z["global"][2] = 0
  np.savez(feats, **z)
  with pytest.raises(ValueError) as ei:
    rv.build_dataset(feats)
  msg = _one_line(ei)
  assert msg.startswith(str(feats)) and "1 clip(s) have no valid frame" in msg and NAMES[2] in msg


def test_ravdess_no_clip_labelled_for_the_head(tmp_path):
  """n_rav_no_emotion4: was `groups must be a non-empty 1-D array [B], got shape (0,)` after the folds."""
  feats = tmp_path / "f.npz"
  _write_features(feats, [n for n in NAMES if n.split("-")[2] in ("02", "06")])  # calm and fearful only
  cfg = sources.fields_of(
    ml_collections.ConfigDict({"source": "ravdess", "features": str(feats), "labelled_only": "emotion4"})
  )
  with pytest.raises(ValueError) as ei:
    sources.load(cfg)
  msg = _one_line(ei)
  assert msg.startswith(str(feats)) and "no sample is labelled for emotion4" in msg
  cfg.labelled_only = "emotion8"
  assert len(sources.load(cfg).splits["pool"]) == 2  # control


# ------------------------------------------------------------------------------------------------------- IEMOCAP
def test_iemocap_file_without_evaluated_line_refused(tmp_path):
  """n_iem_empty_eval: Session2's only EmoEvaluation file had no evaluated line; the session silently vanished."""
  root = write_release(tmp_path / "rel", wav=False)
  ef = root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_impro03.txt"
  ef.write_text("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n")
  with pytest.raises(ValueError) as ei:
    iem.list_utterances(root, sessions=(1, 2), require_wav=False)
  assert _one_line(ei).startswith(f"{ef}: no evaluated utterance")
  ef.unlink()
  with pytest.raises(FileNotFoundError, match="no EmoEvaluation .txt files"):
    iem.list_utterances(root, sessions=(1, 2), require_wav=False)


def test_iemocap_utterance_without_frames_refused(tmp_path):
  root = write_release(tmp_path / "rel", wav=False)
  ids = [u.id for u in iem.list_utterances(root, sessions=(1, 2), require_wav=False)]
  feats = tmp_path / "a.npz"
  _write_feats(feats, ids, 4, 0)
  assert len(iem.build_dataset(root, feats, sessions=(1, 2)).splits["pool"]) == len(ids)  # control
  z = dict(np.load(feats))
  z["mask"][1] = False
  np.savez(feats, **z)
  with pytest.raises(ValueError, match=rf"no valid frame .*{ids[1]}"):
    iem.build_dataset(root, feats, sessions=(1, 2))


# ---------------------------------------------------------------------------------------------------------- DEAP
def test_deap_values_beyond_float32_named_without_overflow_warning(tmp_path):
  """n_deap_huge_values: was a numpy overflow RuntimeWarning and then `... has 1024 NaN/Inf samples`."""
  data, labels = deap_arrays()
  data[0, 36, :] = 1e200
  p = write_deap(tmp_path / "s03.dat", data, labels)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the overflow warning of the float32 cast would fail here
    with pytest.raises(ValueError) as ei:
      read_deap_subject(p, **SMALL)
  msg = _one_line(ei)
  assert msg.startswith(str(p)) and "1408 values beyond the float32 range (trial 1 channel GSR = 1e+200" in msg


def test_ravdess_bad_id_names_the_feature_file(tmp_path):
  """n_rav_bad_id residual: `foo-bar: file name does not parse ...` did not name the feature file."""
  feats = tmp_path / "f.npz"
  _write_features(feats, NAMES[:3] + ["foo-bar"])
  with pytest.raises(ValueError) as ei:
    rv.build_dataset(feats)
  assert _one_line(ei).startswith(f"{feats}: id foo-bar: file name does not parse")
