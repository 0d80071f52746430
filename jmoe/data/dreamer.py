"""DREAMER ``DREAMER.mat`` -> raw :class:`~jmoe.data.physio.Recording` objects and a Dataset.

Read with ``scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)``: ``DREAMER.Data[s]`` per subject
with ``EEG.stimuli[t]`` (samples x 14 at 128 Hz, length varies by clip), ``EEG.baseline[t]`` (7808 x 14, 61 s),
``ECG.stimuli[t]`` / ``ECG.baseline[t]`` (samples x 2 at 256 Hz) and ``ScoreValence`` / ``ScoreArousal`` /
``ScoreDominance`` (one integer 1-5 per clip); top level ``EEG_SamplingRate``, ``ECG_SamplingRate``,
``EEG_Electrodes``, ``noOfSubjects``, ``noOfVideoSequences``. Counts are checked against each other (subjects vs
``noOfSubjects``, clips vs ``noOfVideoSequences``, EEG channels vs ``EEG_Electrodes``, 2 ECG channels), the EEG
baseline length against ``baseline_samples``, the sampling rates against the features' filters, and each clip's EEG
duration against its ECG duration (more than 1 s and 5 % apart: a rate field is wrong or a recording is cut).
Modalities ``eeg`` (128 Hz) and ``ecg`` (256 Hz), each trial's own baseline recording as its baseline; label head
``vad`` on 1-5. Signals are cast to float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from jmoe.data import format as fmt
from jmoe.data.physio import Modality, PhysioSource, Recording, build_dataset, min_rate_hz

DREAMER_RATINGS = ("valence", "arousal", "dominance")
_SCORES = ("ScoreValence", "ScoreArousal", "ScoreDominance")
_TOP = ("Data", "EEG_SamplingRate", "ECG_SamplingRate", "EEG_Electrodes", "noOfSubjects", "noOfVideoSequences")


def _cells(x) -> list:
  """A squeezed MATLAB cell/struct array as a list (squeeze_me turns a 1-element array into its element)."""
  if isinstance(x, np.ndarray) and x.dtype == object:
    return list(x.ravel())
  return [x]


def _get(obj, name: str, path: Path, where: str):
  if not hasattr(obj, name):
    raise ValueError(f"{path}: missing field {where}.{name}")
  return getattr(obj, name)


def _signals(part, path: Path, where: str, n_ch: int, n_trials: int) -> list[np.ndarray]:
  """The ``samples x channels`` arrays of a cell array -> float32 ``[C, N]`` per trial."""
  cells = _cells(part)
  if len(cells) != n_trials:
    raise ValueError(f"{path}: {where} has {len(cells)} clips, expected noOfVideoSequences = {n_trials}")
  out = []
  for t, x in enumerate(cells):
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.ndim != 2 or x.shape[1] != n_ch:
      raise ValueError(f"{path}: {where}[{t}] has shape {x.shape} ({x.dtype}), expected (samples, {n_ch})")
    out.append(np.ascontiguousarray(x.T, np.float32))
  return out


def read_dreamer(path, baseline_samples: int | None = 7808) -> tuple[PhysioSource, list[Recording]]:
  """Parse ``DREAMER.mat``; one-line ValueError naming the file and the field for anything malformed."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  try:
    mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
  except Exception as e:  # scipy raises many types for a non-MATLAB file
    raise ValueError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
  if "DREAMER" not in mat:
    raise ValueError(f"{path}: missing variable DREAMER (has {sorted(k for k in mat if not k.startswith('__'))})")
  top = mat["DREAMER"]
  vals = {k: _get(top, k, path, "DREAMER") for k in _TOP}
  try:
    eeg_rate, ecg_rate = float(vals["EEG_SamplingRate"]), float(vals["ECG_SamplingRate"])
    n_subj, n_vid = int(vals["noOfSubjects"]), int(vals["noOfVideoSequences"])
  except (TypeError, ValueError):
    raise ValueError(f"{path}: sampling rates and counts must be numbers") from None
  if eeg_rate <= 0 or ecg_rate <= 0:
    raise ValueError(f"{path}: sampling rates must be positive, got EEG {eeg_rate:g}, ECG {ecg_rate:g}")
  for field, rate, kind in (("EEG_SamplingRate", eeg_rate, "eeg"), ("ECG_SamplingRate", ecg_rate, "ecg")):
    need = min_rate_hz(kind)
    if rate <= need:
      raise ValueError(
        f"{path}: DREAMER.{field} = {rate:g} Hz is too low for the {kind.upper()} features (a band-pass filter from "
        f"{need * 0.95 / 2:g} Hz needs a rate above {need:.4g} Hz; DREAMER records EEG at 128 Hz, ECG at 256 Hz)"
      )
  electrodes = tuple(str(e) for e in np.atleast_1d(vals["EEG_Electrodes"]))
  subjects = _cells(vals["Data"])
  if len(subjects) != n_subj:
    raise ValueError(f"{path}: DREAMER.Data has {len(subjects)} subjects, noOfSubjects says {n_subj}")
  recs = []
  for s, subj in enumerate(subjects):
    w = f"DREAMER.Data[{s}]"
    eeg, ecg = _get(subj, "EEG", path, w), _get(subj, "ECG", path, w)
    stim = {
      "eeg": _signals(_get(eeg, "stimuli", path, f"{w}.EEG"), path, f"{w}.EEG.stimuli", len(electrodes), n_vid),
      "ecg": _signals(_get(ecg, "stimuli", path, f"{w}.ECG"), path, f"{w}.ECG.stimuli", 2, n_vid),
    }
    base = {
      "eeg": _signals(_get(eeg, "baseline", path, f"{w}.EEG"), path, f"{w}.EEG.baseline", len(electrodes), n_vid),
      "ecg": _signals(_get(ecg, "baseline", path, f"{w}.ECG"), path, f"{w}.ECG.baseline", 2, n_vid),
    }
    for part, arrays in (("stimuli", stim), ("baseline", base)):
      for t, (x, y) in enumerate(zip(arrays["eeg"], arrays["ecg"])):
        d_eeg, d_ecg = x.shape[1] / eeg_rate, y.shape[1] / ecg_rate
        if abs(d_eeg - d_ecg) > max(1.0, 0.05 * max(d_eeg, d_ecg)):
          raise ValueError(
            f"{path}: {w}.EEG.{part}[{t}] lasts {d_eeg:g} s ({x.shape[1]} samples at EEG_SamplingRate = "
            f"{eeg_rate:g} Hz) but {w}.ECG.{part}[{t}] lasts {d_ecg:g} s ({y.shape[1]} samples at ECG_SamplingRate = "
            f"{ecg_rate:g} Hz): a sampling-rate field is wrong or a recording is cut"
          )
    if baseline_samples is not None:
      bad = [t for t, x in enumerate(base["eeg"]) if x.shape[1] != baseline_samples]
      if bad:
        n = base["eeg"][bad[0]].shape[1]
        raise ValueError(f"{path}: {w}.EEG.baseline[{bad[0]}] has {n} samples, expected {baseline_samples}")
    scores = []
    for k in _SCORES:
      v = np.atleast_1d(np.asarray(_get(subj, k, path, w), np.float64)).ravel()
      if v.shape != (n_vid,):
        raise ValueError(f"{path}: {w}.{k} has {v.size} values, expected noOfVideoSequences = {n_vid}")
      off = (v != np.round(v)) | (v < 1) | (v > 5) | ~np.isfinite(v)
      if off.any():
        raise ValueError(f"{path}: {w}.{k} has {int(off.sum())} values off the integer 1-5 scale (e.g. {v[off][0]:g})")
      scores.append(v)
    recs.append(Recording(s + 1, stim, base, np.stack(scores, axis=1), f"{path} subject {s + 1}"))
  source = PhysioSource(
    name="dreamer",
    modalities=(Modality("eeg", eeg_rate, electrodes, "eeg"), Modality("ecg", ecg_rate, ("ECG1", "ECG2"), "ecg")),
    head="vad",
    rating_names=DREAMER_RATINGS,
    rating_range=(1.0, 5.0),
    synthetic=False,
    source=f"DREAMER ({path})",
  )
  return source, recs


def load_dreamer(path, baseline_samples: int | None = 7808, extra_meta: dict | None = None, **preproc) -> fmt.Dataset:
  """``DREAMER.mat`` -> a ``pool`` Dataset (``preproc``: :func:`physio.build_dataset` args).

  ``extra_meta``: the loader parameters recorded in the metadata (default ``baseline_samples``).
  """
  source, recs = read_dreamer(path, baseline_samples=baseline_samples)
  meta = {"baseline_samples": baseline_samples} if extra_meta is None else extra_meta
  return build_dataset(source, recs, extra_meta=meta, **preproc)
