"""Physiological-signal preprocessing for Hi-MoE (DEAP, DREAMER, synthetic DEAP): raw trials -> a ``pool`` Dataset.

Loaders (:mod:`jmoe.data.deap`, :mod:`jmoe.data.dreamer`, :mod:`jmoe.data.synthetic_physio`) turn their files into
:class:`Recording` objects (one subject's raw trials); :func:`build_dataset` runs the same preprocessing on all of
them. Axis alphabet: B samples, T windows (time steps), C channels, N signal samples, D feature width, K label dims.

Pipeline per trial and modality (array functions, usable on their own):

1. **Windows** (:func:`window_starts`): ``window_s`` long, every ``stride_s`` seconds from stimulus onset, the same
   times for every modality (each at its own rate); a trial has as many windows as its shortest modality allows.
2. **Features per window**:

   * ``eeg`` (kind ``'eeg'``): differential entropy per channel and band (:data:`BANDS`: theta 4-8, alpha 8-14,
     beta 14-31, gamma 31-45 Hz), ``DE = 0.5 * log(2 pi e var)`` of the band-passed signal (4th-order Butterworth,
     zero-phase, filtered over the whole trial and then windowed). Layout channel-major: ``<ch>_<band>``.
   * ``peripheral`` (DEAP, kind ``'deap_peripheral'``, channels hEOG vEOG zEMG tEMG GSR respiration
     plethysmograph temperature): log power of hEOG, vEOG, zEMG, tEMG; GSR level (mean) and slope (per second);
     respiration amplitude (std) and rate (breaths/min); heart rate from the plethysmogram (beats/min); temperature
     mean and slope -- 11 features.
   * ``ecg`` (DREAMER, kind ``'ecg'``): per ECG channel heart rate (beats/min) and log power -- 4 features.

   Rates (heart, breathing) come from ``scipy.signal.find_peaks`` on the band-passed, standardised trial signal:
   each inter-peak interval gives an instantaneous rate at its second peak, linearly interpolated over the trial and
   averaged within the window (so a window shorter than a beat still gets a rate). Fewer than two peaks in a trial
   give rate 0.
3. **Baseline removal** (``baseline=``): ``'features'`` (default) computes the same features on the trial's baseline
   recording (DEAP: the first 3 s of the trial; DREAMER: its separate 61 s baseline recording; windows clipped to the
   baseline length) and subtracts their mean from every stimulus window -- this removes a subject's gains and levels
   from DE, powers, GSR level, heart rate. ``'mean'`` subtracts each channel's baseline mean from the stimulus signal
   (only level features change); ``'none'`` keeps raw features.
4. **Samples** (``per=``): ``'window'`` -> every window is a sample, features ``[B, D]``; ``'trial'`` -> every trial is
   a sample, features ``[B, T, D]`` zero-padded to the longest trial, masks ``[B, T]``. Labels are the trial's
   ratings either way.

Features are not normalised: statistics must come from training folds (computed later over the ``pool`` split).
The Dataset has one regression head (``vadl`` [B, 4] on 1-9 for DEAP, ``vad`` [B, 3] on 1-5 for DREAMER), groups
``subject`` and ``trial`` (``subject * 1000 + trial``, trial numbers from 1) and one split ``pool``. Every
modality's ``modality_meta`` holds ``rate_hz``, ``channels``, ``features`` (names) and ``preprocessing`` (the
parameters; :func:`load_or_build` compares them to reuse a cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal

from jmoe.data import format as fmt

BANDS: dict[str, tuple[float, float]] = {
  "theta": (4.0, 8.0),
  "alpha": (8.0, 14.0),
  "beta": (14.0, 31.0),
  "gamma": (31.0, 45.0),
}
PREPROC_DEFAULTS: dict[str, Any] = {"window_s": 4.0, "stride_s": 2.0, "per": "window", "baseline": "features"}
DEAP_PERIPHERAL_FEATURES = (
  "hEOG_logpow",
  "vEOG_logpow",
  "zEMG_logpow",
  "tEMG_logpow",
  "GSR_level",
  "GSR_slope",
  "resp_amplitude",
  "resp_rate",
  "heart_rate",
  "temp_mean",
  "temp_slope",
)
_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class Modality:
  """One recorded modality: its name in the Dataset, sampling rate, channel names and feature kind."""

  name: str
  rate_hz: float
  channels: tuple[str, ...]
  kind: str  # 'eeg' | 'deap_peripheral' | 'ecg'


@dataclasses.dataclass(frozen=True)
class PhysioSource:
  """What a dataset's recordings are: modalities, rating head, provenance."""

  name: str
  modalities: tuple[Modality, ...]
  head: str
  rating_names: tuple[str, ...]
  rating_range: tuple[float, float]
  synthetic: bool
  source: str


@dataclasses.dataclass(frozen=True)
class Recording:
  """One subject's raw trials.

  Attributes:
    subject: subject number (from 1).
    stimuli: modality -> one float ``[C, N]`` array per trial (N may differ between trials).
    baselines: modality -> one float ``[C, N0]`` array per trial.
    ratings: float ``[n_trials, K]``.
    where: the file (or generator) the recording came from; starts every error message.
  """

  subject: int
  stimuli: dict[str, list[np.ndarray]]
  baselines: dict[str, list[np.ndarray]]
  ratings: np.ndarray
  where: str


# ----------------------------------------------------------------------------------------------------- array functions
def window_starts(n: int, rate: float, window_s: float, stride_s: float) -> np.ndarray:
  """Start samples of the windows that fit in ``n`` samples at ``rate`` Hz: int ``[T]`` (possibly empty)."""
  wlen = int(round(window_s * rate))
  if n < wlen:
    return np.zeros(0, np.int64)
  count = int(np.floor((n / rate - window_s) / stride_s + 1e-9)) + 1
  return np.round(np.arange(count) * stride_s * rate).astype(np.int64)


def _windows(x: np.ndarray, starts: np.ndarray, wlen: int) -> np.ndarray:
  """``x`` [C, N] -> a view [C, T, wlen]."""
  return sliding_window_view(x, wlen, axis=-1)[:, starts, :]


def _filtfilt(sos: np.ndarray, x: np.ndarray) -> np.ndarray:
  padlen = min(3 * (2 * len(sos) + 1), x.shape[-1] - 1)
  return signal.sosfiltfilt(sos, x, axis=-1, padlen=max(padlen, 0))


def bandpass(x: np.ndarray, rate: float, low: float, high: float, order: int = 4) -> np.ndarray:
  """Zero-phase Butterworth band-pass of ``x`` [..., N] (``high`` clipped below Nyquist)."""
  high = min(high, 0.95 * rate / 2)
  sos = signal.butter(order, (low, high), btype="bandpass", fs=rate, output="sos")
  return _filtfilt(sos, np.asarray(x, np.float64))


def differential_entropy(x: np.ndarray, rate: float, starts: np.ndarray, wlen: int, bands=BANDS) -> np.ndarray:
  """DE per window, channel and band of ``x`` [C, N]: float ``[T, C * len(bands)]`` (channel-major)."""
  out = []
  for low, high in bands.values():
    var = _windows(bandpass(x, rate, low, high), starts, wlen).var(axis=-1)  # [C, T]
    out.append(0.5 * np.log(2 * np.pi * np.e * (var + _EPS)))
  return np.stack(out, axis=-1).transpose(1, 0, 2).reshape(len(starts), -1)


def log_power(x: np.ndarray, starts: np.ndarray, wlen: int) -> np.ndarray:
  """Log variance per window of ``x`` [C, N]: ``[T, C]``."""
  return np.log(_windows(x, starts, wlen).var(axis=-1) + _EPS).T


def level_and_slope(x: np.ndarray, rate: float, starts: np.ndarray, wlen: int) -> tuple[np.ndarray, np.ndarray]:
  """Mean and least-squares slope (per second) per window of ``x`` [C, N]: two ``[T, C]``."""
  w = _windows(x, starts, wlen)
  t = (np.arange(wlen) - (wlen - 1) / 2) / rate
  slope = (w * t).sum(-1) / max(float((t * t).sum()), _EPS)
  return w.mean(-1).T, slope.T


def event_rate(x: np.ndarray, rate: float, band: tuple[float, float], min_interval_s: float, rectify: bool = False):
  """Instantaneous event rate (per minute) of the 1-d signal ``x`` [N] from its peaks: float ``[N]``.

  ``x`` is band-passed (2nd order) and standardised (``rectify``: its absolute value, for ECG R peaks of either
  polarity); peaks at least ``min_interval_s`` apart with prominence >= 1 std count as events. Each interval gives a
  rate at its second peak, linearly interpolated (held constant beyond the first/last). Fewer than 2 peaks -> 0.
  """
  y = bandpass(x, rate, *band, order=2)
  if rectify:
    y = np.abs(y)
  y = (y - y.mean()) / (y.std() + _EPS)
  peaks, _ = signal.find_peaks(y, distance=max(1, int(min_interval_s * rate)), prominence=1.0)
  if len(peaks) < 2:
    return np.zeros(len(x))
  inst = 60.0 * rate / np.diff(peaks)
  return np.interp(np.arange(len(x)), peaks[1:], inst)


def _mean_rate(series: np.ndarray, starts: np.ndarray, wlen: int) -> np.ndarray:
  return _windows(series[None], starts, wlen).mean(-1)[0]


def deap_peripheral_features(x: np.ndarray, rate: float, starts: np.ndarray, wlen: int) -> np.ndarray:
  """DEAP peripheral features (:data:`DEAP_PERIPHERAL_FEATURES`) of ``x`` [8, N]: ``[T, 11]``."""
  eog_emg = log_power(x[0:4], starts, wlen)
  gsr_level, gsr_slope = level_and_slope(x[4:5], rate, starts, wlen)
  resp = _windows(x[5:6], starts, wlen).std(-1).T
  resp_rate = _mean_rate(event_rate(x[5], rate, (0.1, 1.0), 1.5), starts, wlen)[:, None]
  hr = _mean_rate(event_rate(x[6], rate, (0.7, 3.0), 0.33), starts, wlen)[:, None]
  temp_mean, temp_slope = level_and_slope(x[7:8], rate, starts, wlen)
  return np.concatenate([eog_emg, gsr_level, gsr_slope, resp, resp_rate, hr, temp_mean, temp_slope], axis=1)


def ecg_features(x: np.ndarray, rate: float, starts: np.ndarray, wlen: int) -> np.ndarray:
  """Heart rate and log power per ECG channel of ``x`` [C, N]: ``[T, 2 C]`` (``hr_<c>`` then ``logpow_<c>``)."""
  hr = np.stack([_mean_rate(event_rate(c, rate, (5.0, 30.0), 0.33, rectify=True), starts, wlen) for c in x], 1)
  return np.concatenate([hr, log_power(x, starts, wlen)], axis=1)


def min_rate_hz(kind: str, bands=BANDS) -> float:
  """The lowest sampling rate (Hz) whose band-pass filters of modality kind ``kind`` exist: every pass band must
  start below the filter's upper edge, 0.95 x Nyquist (:func:`bandpass`)."""
  lows = {"eeg": [low for low, _ in bands.values()], "deap_peripheral": [0.7], "ecg": [5.0]}[kind]
  return 2 * max(lows) / 0.95


def check_rate(mod: Modality, where: str, bands=BANDS) -> None:
  """One-line ValueError naming ``where`` when ``mod``'s sampling rate is too low for its features' filters."""
  need = min_rate_hz(mod.kind, bands)
  if not mod.rate_hz > need:
    raise ValueError(
      f"{where}: {mod.name} sampled at {mod.rate_hz:g} Hz is too low for its features (a band-pass filter from "
      f"{need * 0.95 / 2:g} Hz needs a rate above {need:.4g} Hz): check the sampling rate"
    )


def feature_names(mod: Modality, bands=BANDS) -> tuple[str, ...]:
  if mod.kind == "eeg":
    return tuple(f"{c}_{b}" for c in mod.channels for b in bands)
  if mod.kind == "deap_peripheral":
    return DEAP_PERIPHERAL_FEATURES
  if mod.kind == "ecg":
    return tuple(f"hr_{c}" for c in mod.channels) + tuple(f"logpow_{c}" for c in mod.channels)
  raise ValueError(f"unknown modality kind {mod.kind!r}")


def window_features(mod: Modality, x: np.ndarray, starts: np.ndarray, wlen: int, bands=BANDS) -> np.ndarray:
  """Features ``[T, D]`` of one trial's signal ``x`` [C, N] of modality ``mod`` at the given windows."""
  x = np.asarray(x, np.float64)
  if mod.kind == "eeg":
    return differential_entropy(x, mod.rate_hz, starts, wlen, bands)
  if mod.kind == "deap_peripheral":
    return deap_peripheral_features(x, mod.rate_hz, starts, wlen)
  if mod.kind == "ecg":
    return ecg_features(x, mod.rate_hz, starts, wlen)
  raise ValueError(f"unknown modality kind {mod.kind!r}")


def trial_features(
  mods: tuple[Modality, ...],
  stimulus: dict[str, np.ndarray],
  baseline: dict[str, np.ndarray],
  window_s: float,
  stride_s: float,
  baseline_mode: str = "features",
  bands=BANDS,
) -> dict[str, np.ndarray]:
  """Baseline-corrected features of one trial: modality -> float ``[T, D]`` (T windows common to all modalities)."""
  count = min(len(window_starts(stimulus[m.name].shape[-1], m.rate_hz, window_s, stride_s)) for m in mods)
  if count == 0:
    return {m.name: np.zeros((0, len(feature_names(m, bands)))) for m in mods}
  out = {}
  for m in mods:
    x, x0 = np.asarray(stimulus[m.name], np.float64), np.asarray(baseline[m.name], np.float64)
    wlen = int(round(window_s * m.rate_hz))
    if baseline_mode == "mean":
      x = x - x0.mean(axis=-1, keepdims=True)
    f = window_features(m, x, window_starts(x.shape[-1], m.rate_hz, window_s, stride_s)[:count], wlen, bands)
    if baseline_mode == "features":
      w0 = min(wlen, x0.shape[-1])
      f0 = window_features(m, x0, window_starts(x0.shape[-1], m.rate_hz, w0 / m.rate_hz, stride_s), w0, bands)
      f = f - f0.mean(axis=0)
    out[m.name] = f
  return out


# ------------------------------------------------------------------------------------------------------ dataset
def _check_recording(rec: Recording, src: PhysioSource) -> None:
  """One-line ValueErrors (naming ``rec.where``) for NaN/Inf signal segments and ratings off the scale."""
  lo, hi = src.rating_range
  r = np.asarray(rec.ratings, np.float64)
  if r.ndim != 2 or r.shape[1] != len(src.rating_names):
    raise ValueError(f"{rec.where}: ratings have shape {r.shape}, expected [trials, {len(src.rating_names)}]")
  bad = ~np.isfinite(r) | (r < lo) | (r > hi)
  if bad.any():
    t, k = np.argwhere(bad)[0]
    raise ValueError(
      f"{rec.where}: {int(bad.sum())} ratings outside the {lo:g}-{hi:g} scale "
      f"(trial {t + 1} {src.rating_names[k]} = {r[t, k]:g})"
    )
  for m in src.modalities:
    for part, arrays in (("stimulus", rec.stimuli[m.name]), ("baseline", rec.baselines[m.name])):
      for t, x in enumerate(arrays):
        finite = np.isfinite(x)
        if not finite.all():
          c, i = np.argwhere(~finite)[0]
          raise ValueError(
            f"{rec.where}: subject {rec.subject} trial {t + 1}: {m.name} {part} channel {m.channels[c]} has "
            f"{int(x.size - finite.sum())} NaN/Inf samples (first at {i / m.rate_hz:.2f} s)"
          )


def build_dataset(
  source: PhysioSource,
  recordings: Iterable[Recording],
  window_s: float = PREPROC_DEFAULTS["window_s"],
  stride_s: float = PREPROC_DEFAULTS["stride_s"],
  per: str = PREPROC_DEFAULTS["per"],
  baseline: str = PREPROC_DEFAULTS["baseline"],
  extra_meta: dict | None = None,
) -> fmt.Dataset:
  """Preprocess ``recordings`` into a validated ``pool`` Dataset (see the module docstring).

  Args:
    window_s, stride_s: window length and stride in seconds.
    per: ``'window'`` (features ``[B, D]``) or ``'trial'`` (features ``[B, T, D]`` with masks ``[B, T]``).
    baseline: ``'features'``, ``'mean'`` or ``'none'``.
    extra_meta: more entries for every modality's ``preprocessing`` metadata (loader parameters).
  """
  if per not in ("window", "trial"):
    raise ValueError(f"per must be 'window' or 'trial', got {per!r}")
  if baseline not in ("features", "mean", "none"):
    raise ValueError(f"baseline must be 'features', 'mean' or 'none', got {baseline!r}")
  if not (window_s > 0 and stride_s > 0):
    raise ValueError(f"window_s and stride_s must be positive, got {window_s}, {stride_s}")
  mods = source.modalities
  for m in mods:
    check_rate(m, source.source)
  feats: dict[str, list[np.ndarray]] = {m.name: [] for m in mods}
  ratings, subjects, trials = [], [], []
  for rec in recordings:
    _check_recording(rec, source)
    for t in range(len(rec.ratings)):
      stim = {m.name: rec.stimuli[m.name][t] for m in mods}
      f = trial_features(mods, stim, {m.name: rec.baselines[m.name][t] for m in mods}, window_s, stride_s, baseline)
      if len(f[mods[0].name]) == 0:
        shortest = min(stim[m.name].shape[-1] / m.rate_hz for m in mods)
        raise ValueError(
          f"{rec.where}: subject {rec.subject} trial {t + 1} lasts {shortest:g} s, shorter than window_s={window_s:g}"
        )
      for m in mods:
        feats[m.name].append(f[m.name].astype(np.float32))
      ratings.append(rec.ratings[t])
      subjects.append(rec.subject)
      trials.append(t + 1)
  if not ratings:
    raise ValueError(f"{source.source}: no trials")
  lengths = np.array([len(f) for f in feats[mods[0].name]])
  subjects, trials = np.array(subjects, np.int64), np.array(trials, np.int64)
  ratings = np.asarray(ratings, np.float32)
  tid = [f"s{s:02d}_t{t:02d}" for s, t in zip(subjects, trials)]
  if per == "window":
    rep = np.repeat(np.arange(len(lengths)), lengths)
    features = {m: np.concatenate(v) for m, v in feats.items()}
    masks = {}
    ids = np.array([f"{tid[i]}_w{w:03d}" for i, n in enumerate(lengths) for w in range(n)])
  else:
    rep = np.arange(len(lengths))
    t_max = int(lengths.max())
    features, masks = {}, {}
    for m, v in feats.items():
      x = np.zeros((len(v), t_max, v[0].shape[1]), np.float32)
      for i, f in enumerate(v):
        x[i, : len(f)] = f
      features[m] = x
      masks[m] = np.arange(t_max)[None, :] < lengths[:, None]
    ids = np.array(tid)
  split = fmt.Split(
    features=features,
    masks=masks,
    labels={source.head: ratings[rep]},
    ids=ids,
    groups={"subject": subjects[rep], "trial": subjects[rep] * 1000 + trials[rep]},
  )
  params = {"window_s": float(window_s), "stride_s": float(stride_s), "per": per, "baseline": baseline}
  params.update(extra_meta or {})
  ds = fmt.Dataset(
    name=source.name,
    splits={fmt.POOL: split},
    modalities=tuple(m.name for m in mods),
    dims={m: int(features[m].shape[-1]) for m in features},
    synthetic=source.synthetic,
    source=source.source,
    label_specs={
      source.head: fmt.LabelSpec("regression", range=source.rating_range, names=source.rating_names),
    },
    modality_meta={
      m.name: {
        "rate_hz": float(m.rate_hz),
        "channels": list(m.channels),
        "features": list(feature_names(m)),
        "preprocessing": params,
      }
      for m in mods
    },
  )
  return fmt.validate(ds, source.source)


# --------------------------------------------------------------------------------------------------------- cache
def _source_files(src: Path) -> tuple[str, list[Path]]:
  """('deap' | 'dreamer', the source files) for a DEAP folder or a DREAMER.mat (or a folder holding one)."""
  if src.is_file() and src.suffix.lower() == ".mat":
    return "dreamer", [src]
  if (src / "DREAMER.mat").is_file():
    return "dreamer", [src / "DREAMER.mat"]
  from jmoe.data.deap import deap_files

  return "deap", deap_files(src)


def load_or_build(src_dir, cache_dir, **preproc) -> fmt.Dataset:
  """The DEAP or DREAMER Dataset of ``src_dir`` preprocessed with ``preproc``, cached under ``cache_dir``.

  ``src_dir``: a DEAP ``data_preprocessed_python`` folder (or its parent), or ``DREAMER.mat`` (or its folder).
  ``preproc``: :func:`build_dataset` parameters plus loader parameters (e.g. DEAP ``trials``/``samples``). The cache
  is ``cache_dir/<name>_<hash>`` (hash of the parameters and the source files' names, sizes, mtimes); it is reused
  when its stored parameters match, else rebuilt (also when it no longer loads: a printed warning names it). It is
  written with ``fmt.save_dataset`` (temporary folder, then rename), after the whole build succeeded, so an error
  leaves no cache behind; a cache that cannot be written (read-only folder, full disk) is a one-line ValueError that
  says to set ``data.cache_dir``.
  """
  src_dir, cache_dir = Path(src_dir), Path(cache_dir)
  kind, files = _source_files(src_dir)
  build_kw = {k: v for k, v in preproc.items() if k in PREPROC_DEFAULTS}
  loader_kw = {k: v for k, v in preproc.items() if k not in PREPROC_DEFAULTS}
  fingerprint = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
  extra = {**loader_kw, "source_files": fingerprint}
  expected = json.loads(json.dumps({**PREPROC_DEFAULTS, **build_kw, **extra}))  # as meta.json stores it
  key = hashlib.sha256(json.dumps([kind, expected], sort_keys=True).encode()).hexdigest()[:16]
  target = cache_dir / f"{kind}_{key}"
  if (target / "meta.json").is_file():
    try:
      ds = fmt.load_dataset(target)
    except (ValueError, OSError) as e:  # a damaged cache (cut or edited file) is rebuilt, with a note
      print(f"warning: rebuilding the damaged cache {target} ({str(e).splitlines()[0][:160]})", flush=True)
      ds = None
    if ds is not None and all(meta.get("preprocessing") == expected for meta in ds.modality_meta.values()):
      return ds
  if kind == "dreamer":
    from jmoe.data.dreamer import load_dreamer

    ds = load_dreamer(files[0], **preproc, extra_meta=extra)
  else:
    from jmoe.data.deap import load_deap

    ds = load_deap(src_dir, **preproc, extra_meta=extra)
  try:
    fmt.save_dataset(ds, target)  # a failed save removes its temporary folder: no partial cache
  except OSError as e:
    raise ValueError(
      f"cannot write the preprocessed-data cache {target} ({e.strerror or e}): set --config.data.cache_dir to a "
      "writable folder with free space"
    ) from None
  return fmt.load_dataset(target)
