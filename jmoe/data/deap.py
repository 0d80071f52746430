"""DEAP ``data_preprocessed_python/sXX.dat`` -> raw :class:`~jmoe.data.physio.Recording` objects and a Dataset.

Each ``sXX.dat`` is a Python-2 pickle (read with ``encoding='latin1'`` through :func:`jmoe.data.mmsa.safe_load_pickle`,
which admits numpy arrays and plain containers only and bounds allocations by the file's size) of a dict:
``'data'`` float ``[40 trials, 40 channels, 8064 samples]`` at 128 Hz (the first 3 s = 384 samples are the
pre-trial baseline, then 60 s of stimulus; channels 0-31 EEG in Geneva order, 32-39 hEOG, vEOG, zEMG, tEMG, GSR,
respiration, plethysmograph, temperature) and ``'labels'`` ``[40, 4]`` (valence, arousal, dominance, liking on
1-9). The subject is the file number. Signals are cast to float32. Modalities: ``eeg`` (32 channels) and
``peripheral`` (8 channels), both at 128 Hz; label head ``vadl``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np

from jmoe.data import format as fmt
from jmoe.data.mmsa import safe_load_pickle
from jmoe.data.physio import Modality, PhysioSource, Recording, build_dataset

DEAP_EEG = tuple(
  "Fp1 AF3 F3 F7 FC5 FC1 C3 T7 CP5 CP1 P3 P7 PO3 O1 Oz Pz "  # left hemisphere and midline
  "Fp2 AF4 Fz F4 F8 FC6 FC2 Cz C4 T8 CP6 CP2 P4 P8 PO4 O2".split()
)
DEAP_PERIPHERAL = ("hEOG", "vEOG", "zEMG", "tEMG", "GSR", "respiration", "plethysmograph", "temperature")
DEAP_RATINGS = ("valence", "arousal", "dominance", "liking")
DEAP_RATE = 128.0
_FILE = re.compile(r"^s(\d+)\.dat$")


def deap_source(rate: float = DEAP_RATE, source: str = "DEAP", synthetic: bool = False, eeg=DEAP_EEG) -> PhysioSource:
  """The DEAP layout: ``eeg`` + ``peripheral`` at ``rate`` Hz, head ``vadl`` on 1-9."""
  return PhysioSource(
    name="synthetic_deap" if synthetic else "deap",
    modalities=(
      Modality("eeg", rate, tuple(eeg), "eeg"),
      Modality("peripheral", rate, DEAP_PERIPHERAL, "deap_peripheral"),
    ),
    head="vadl",
    rating_names=DEAP_RATINGS,
    rating_range=(1.0, 9.0),
    synthetic=synthetic,
    source=source,
  )


def deap_files(src_dir) -> list[Path]:
  """The ``sXX.dat`` files of ``src_dir`` (or of its ``data_preprocessed_python`` folder), by subject number.
  Two files naming one subject (``s1.dat`` and ``s01.dat``) are a one-line ValueError naming both."""
  src = Path(src_dir)
  if (src / "data_preprocessed_python").is_dir():
    src = src / "data_preprocessed_python"
  files = sorted(
    (p for p in src.glob("s*.dat") if _FILE.match(p.name)), key=lambda p: (int(_FILE.match(p.name)[1]), p.name)
  )
  if not files:
    raise FileNotFoundError(f"{src}: no DEAP sXX.dat files")
  for a, b in zip(files, files[1:]):
    if int(_FILE.match(a.name)[1]) == int(_FILE.match(b.name)[1]):
      raise ValueError(
        f"{a} and {b} are both subject {int(_FILE.match(a.name)[1])}: keep one of them (a copy of one recording "
        "would be counted twice)"
      )
  return files


def split_trials(x: np.ndarray, n_baseline: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """``x`` [trials, C, N] -> (stimuli [C, N - n_baseline], baselines [C, n_baseline]) per trial."""
  return [t[:, n_baseline:] for t in x], [t[:, :n_baseline] for t in x]


def recording_from_arrays(data, labels, subject: int, where: str, rate: float = DEAP_RATE, baseline_s: float = 3.0):
  """A :class:`Recording` from DEAP-layout arrays ``data`` [trials, 32 + 8, N] and ``labels`` [trials, 4]."""
  nb = int(round(baseline_s * rate))
  n_eeg = data.shape[1] - len(DEAP_PERIPHERAL)
  eeg_s, eeg_b = split_trials(data[:, :n_eeg], nb)
  per_s, per_b = split_trials(data[:, n_eeg:], nb)
  return Recording(
    subject=subject,
    stimuli={"eeg": eeg_s, "peripheral": per_s},
    baselines={"eeg": eeg_b, "peripheral": per_b},
    ratings=np.asarray(labels, np.float64),
    where=where,
  )


def read_deap_subject(
  path, trials: int = 40, samples: int = 8064, rate: float = DEAP_RATE, baseline_s: float = 3.0
) -> Recording:
  """Read one ``sXX.dat``; one-line ValueError naming the file for anything that is not the DEAP dict.

  ``trials`` and ``samples`` are the expected counts (the real files: 40 and 8064; smaller for test files).
  """
  path = Path(path)
  m = _FILE.match(path.name)
  if not m:
    raise ValueError(f"{path}: not a DEAP subject file name (expected sXX.dat)")
  d = safe_load_pickle(path)
  if not isinstance(d, dict) or "data" not in d or "labels" not in d:
    what = f"a dict with keys {sorted(map(str, d))[:6]}" if isinstance(d, dict) else f"a {type(d).__name__}"
    raise ValueError(f"{path}: not a DEAP subject file (expected a dict with 'data' and 'labels', got {what})")
  data, labels = d["data"], d["labels"]
  for name, a in (("data", data), ("labels", labels)):
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
      raise ValueError(f"{path}: '{name}' is not a numeric array ({type(a).__name__} {getattr(a, 'dtype', '')})")
  n_ch = len(DEAP_EEG) + len(DEAP_PERIPHERAL)
  if data.ndim != 3:
    raise ValueError(f"{path}: 'data' has shape {data.shape}, expected [trials, {n_ch} channels, samples]")
  if data.shape[1] != n_ch:
    raise ValueError(f"{path}: 'data' has {data.shape[1]} channels, expected {n_ch} (32 EEG + 8 peripheral)")
  if data.shape[2] != samples:
    raise ValueError(f"{path}: 'data' has {data.shape[2]} samples per trial, expected {samples}")
  if data.shape[0] != trials:
    raise ValueError(f"{path}: 'data' has {data.shape[0]} trials, expected {trials}")
  if labels.shape != (trials, len(DEAP_RATINGS)):
    raise ValueError(f"{path}: 'labels' has shape {labels.shape}, expected ({trials}, {len(DEAP_RATINGS)})")
  if samples <= int(round(baseline_s * rate)):
    raise ValueError(f"{path}: {samples} samples leave no stimulus after the {baseline_s:g} s baseline")
  with np.errstate(invalid="ignore"):  # finite values the float32 cast would turn into inf (NaN/Inf: checked later)
    big = np.isfinite(data) & (np.abs(data) > np.finfo(np.float32).max)
  if big.any():
    t, c, i = np.argwhere(big)[0]
    raise ValueError(
      f"{path}: {int(big.sum())} values beyond the float32 range (trial {t + 1} channel "
      f"{(DEAP_EEG + DEAP_PERIPHERAL)[c]} = {data[t, c, i]:g} at {i / rate:.2f} s): not a DEAP signal"
    )
  return recording_from_arrays(data.astype(np.float32), labels, int(m[1]), str(path), rate, baseline_s)


def load_deap(
  src_dir,
  trials: int = 40,
  samples: int = 8064,
  subjects=None,
  extra_meta: dict | None = None,
  **preproc,
) -> fmt.Dataset:
  """DEAP ``sXX.dat`` files of ``src_dir`` -> a ``pool`` Dataset (``preproc``: :func:`physio.build_dataset` args).

  ``subjects``: subject numbers to keep (default all files). Files are read one at a time. ``extra_meta``: the
  loader parameters recorded in the metadata (default ``trials``, ``samples``, ``subjects``).
  """
  files = deap_files(src_dir)
  if subjects is not None:
    keep = {int(s) for s in subjects}
    files = [p for p in files if int(_FILE.match(p.name)[1]) in keep]

  def recordings() -> Iterator[Recording]:
    for p in files:
      yield read_deap_subject(p, trials=trials, samples=samples)

  meta = extra_meta
  if meta is None:
    meta = {"trials": trials, "samples": samples} | ({} if subjects is None else {"subjects": sorted(keep)})
  source = deap_source(source=f"DEAP data_preprocessed_python ({files[0].parent})")
  return build_dataset(source, recordings(), extra_meta=meta, **preproc)
