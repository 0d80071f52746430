"""Data sources of the physiological datasets (imported by :func:`jmoe.data.sources.load` automatically).

* ``synthetic_deap``: :func:`jmoe.data.synthetic_physio.synthetic_deap` (raw signals -> the same preprocessing);
  fields ``synthetic_size`` ('small' | 'deap'), ``synthetic_subjects`` / ``synthetic_trials`` /
  ``synthetic_seconds`` (0 = the size's default), ``synthetic_seed``, ``synthetic_lag_s``, ``synthetic_effect``,
  ``synthetic_noise``. Built once per process for a given set of parameters (an in-memory cache: a sweep in one
  process preprocesses once).
* ``synthetic_dreamer``: DREAMER-shaped RAW recordings derived from the synthetic DEAP generator (same planted
  effects): its first 14 EEG channels at 128 Hz as ``eeg``; the plethysmogram's pulse resampled to 256 Hz, twice
  (the second with noise), as the 2-channel ``ecg``; ratings mapped from 1-9 to the integer 1-5 scale
  (round((r - 1) / 2) + 1) for valence, arousal, dominance; head ``vad``. Same fields as ``synthetic_deap``
  (``synthetic_size='small'`` = 8 subjects x 12 trials x 20 s; 'dreamer' = 23 x 18 x 60 s).
* ``deap``: a ``data_preprocessed_python`` folder (``path``); ``dreamer``: ``DREAMER.mat`` or its folder
  (``path``). Both through :func:`jmoe.data.physio.load_or_build`, cached under ``cache_dir`` (default
  ``jmoe_cache`` next to ``path``). Reduced files: ``deap_trials``, ``deap_samples``, ``dreamer_baseline_samples``
  (0 = the published sizes: 40 trials x 8064 samples; 7808 baseline samples).

Preprocessing fields (every source): ``per`` ('window' -> vectors [B, D]; 'trial' -> sequences [B, T, D] with
masks), ``window_s``, ``stride_s``, ``baseline`` ('features' | 'mean' | 'none').
Missing modalities (every source, :mod:`jmoe.data.missing`): ``missing_rate`` (0 = none), ``missing_per``
('sample' | 'step'), ``missing_seed``; applied to the pool before the folds, so training and evaluation see it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from jmoe.data import format as fmt
from jmoe.data import missing as missing_lib
from jmoe.data import sources


def _preproc(cfg) -> dict:
  return {
    "per": cfg.get("per", "window"),
    "window_s": float(cfg.get("window_s", 4.0)),
    "stride_s": float(cfg.get("stride_s", 2.0)),
    "baseline": cfg.get("baseline", "features"),
  }


def _modalities(cfg) -> tuple[str, ...] | None:
  return sources.modalities(cfg) or None


def _with_missing(ds: fmt.Dataset, cfg) -> fmt.Dataset:
  rate = float(cfg.get("missing_rate", 0.0) or 0.0)
  return missing_lib.apply_to_dataset(
    ds, rate, int(cfg.get("missing_seed", 0)), cfg.get("missing_per", "sample"), _modalities(cfg)
  )


@functools.lru_cache(maxsize=4)
def _synthetic_cached(key: tuple) -> fmt.Dataset:
  from jmoe.data.synthetic_physio import synthetic_deap

  kw = dict(key)
  return synthetic_deap(**kw)


def _synthetic_kwargs(cfg) -> dict:
  return dict(
    size=cfg.get("synthetic_size", "small"),
    subjects=int(cfg.get("synthetic_subjects", 0)) or None,
    trials=int(cfg.get("synthetic_trials", 0)) or None,
    seconds=float(cfg.get("synthetic_seconds", 0.0)) or None,
    seed=int(cfg.get("synthetic_seed", 0)),
    lag_s=float(cfg.get("synthetic_lag_s", 3.0)),
    effect=float(cfg.get("synthetic_effect", 1.0)),
    noise=float(cfg.get("synthetic_noise", 1.0)),
    **_preproc(cfg),
  )


def _synthetic_deap(cfg) -> fmt.Dataset:
  kw = _synthetic_kwargs(cfg)
  return _with_missing(_synthetic_cached(tuple(sorted(kw.items()))), cfg)


def _dreamer_like(size, subjects, trials, seconds, seed, lag_s, effect, noise, **preproc) -> fmt.Dataset:
  import numpy as np

  from jmoe.data.physio import Modality, PhysioSource, Recording, build_dataset
  from jmoe.data.synthetic_physio import SIZES, synthetic_deap_recordings

  d_subj, d_trials, d_sec = {"dreamer": (23, 18, 60.0)}.get(size) or SIZES[size]
  gen = dict(
    size="small", subjects=subjects or d_subj, trials=trials or d_trials, seconds=seconds or d_sec, eeg_channels=14
  )
  gen.update(seed=seed, lag_s=lag_s, effect=effect, noise=noise)
  rng = np.random.default_rng([seed, 99])
  pleth = 6  # DEAP peripheral order: hEOG vEOG zEMG tEMG GSR respiration plethysmograph temperature

  def ecg(x):  # [8, N] at 128 Hz -> [2, 2N] at 256 Hz
    up = np.interp(np.arange(2 * x.shape[1]) / 2.0, np.arange(x.shape[1]), x[pleth])
    return np.stack([up, up + 0.1 * np.std(up) * rng.standard_normal(up.shape)]).astype(np.float32)

  recs, chans = [], None
  for r in synthetic_deap_recordings(**gen):
    ratings = np.round((np.asarray(r.ratings)[:, :3] - 1.0) / 2.0) + 1.0
    recs.append(
      Recording(
        r.subject,
        {"eeg": r.stimuli["eeg"], "ecg": [ecg(x) for x in r.stimuli["peripheral"]]},
        {"eeg": r.baselines["eeg"], "ecg": [ecg(x) for x in r.baselines["peripheral"]]},
        ratings,
        f"synthetic DREAMER subject {r.subject}",
      )
    )
  from jmoe.data.synthetic_physio import _eeg_channels

  chans = _eeg_channels(14)
  source = PhysioSource(
    name="synthetic_dreamer",
    modalities=(Modality("eeg", 128.0, chans, "eeg"), Modality("ecg", 256.0, ("ECG1", "ECG2"), "ecg")),
    head="vad",
    rating_names=("valence", "arousal", "dominance"),
    rating_range=(1.0, 5.0),
    synthetic=True,
    source=f"synthetic DREAMER-shaped signals (jmoe.data.physio_sources, from the synthetic DEAP generator, {gen})",
  )
  return build_dataset(source, recs, extra_meta={"synthetic": gen}, **preproc)


@functools.lru_cache(maxsize=4)
def _synthetic_dreamer_cached(key: tuple) -> fmt.Dataset:
  return _dreamer_like(**dict(key))


def _synthetic_dreamer(cfg) -> fmt.Dataset:
  kw = _synthetic_kwargs(cfg)
  return _with_missing(_synthetic_dreamer_cached(tuple(sorted(kw.items()))), cfg)


def _real(cfg, kind: str) -> fmt.Dataset:
  from jmoe.data.physio import _source_files, load_or_build

  if not cfg.get("path"):
    raise ValueError(f"data.source={kind!r} needs --config.data.path (the {kind.upper()} files)")
  path = Path(cfg.path)
  if not path.exists():
    raise FileNotFoundError(f"data.path {path} does not exist")
  cache = cfg.get("cache_dir") or str(path.parent / "jmoe_cache")
  found = _source_files(path)[0] if path.is_dir() or path.suffix.lower() == ".mat" else kind
  if found != kind:
    raise ValueError(f"data.source={kind!r} but {path} holds {found.upper()} files; use data.source={found!r}")
  loader = {}
  if kind == "deap":  # reduced files (tests); 0 = DEAP's 40 trials x 8064 samples
    loader = {k: int(cfg.get(f"deap_{k}", 0)) for k in ("trials", "samples") if int(cfg.get(f"deap_{k}", 0) or 0)}
  elif int(cfg.get("dreamer_baseline_samples", 0) or 0):
    loader = {"baseline_samples": int(cfg.dreamer_baseline_samples)}
  ds = load_or_build(path, cache, **_preproc(cfg), **loader)
  return _with_missing(ds, cfg)


PREPROC_FIELDS = dict(per="window", window_s=4.0, stride_s=2.0, baseline="features")
MISSING_FIELDS = dict(missing_rate=0.0, missing_per="sample", missing_seed=0)
SYNTHETIC_FIELDS = dict(
  synthetic_size="small",
  synthetic_subjects=0,
  synthetic_trials=0,
  synthetic_seconds=0.0,
  synthetic_seed=0,
  synthetic_lag_s=3.0,
  synthetic_effect=1.0,
  synthetic_noise=1.0,
)
REAL_FIELDS = dict(cache_dir="")
for _source in (
  sources.Source(
    "synthetic_deap",
    _synthetic_deap,
    {**SYNTHETIC_FIELDS, **PREPROC_FIELDS, **MISSING_FIELDS},
    "DEAP-shaped raw EEG + peripheral signals with planted effects, through the DEAP preprocessing",
    synthetic=True,
  ),
  sources.Source(
    "synthetic_dreamer",
    _synthetic_dreamer,
    {**SYNTHETIC_FIELDS, **PREPROC_FIELDS, **MISSING_FIELDS},
    "DREAMER-shaped raw EEG + ECG derived from the synthetic DEAP generator, 1-5 ratings",
    synthetic=True,
  ),
  sources.Source(
    "deap",
    lambda cfg: _real(cfg, "deap"),
    {**REAL_FIELDS, "deap_trials": 0, "deap_samples": 0, **PREPROC_FIELDS, **MISSING_FIELDS},
    "DEAP data_preprocessed_python folder (path); cached under cache_dir (default jmoe_cache next to path)",
  ),
  sources.Source(
    "dreamer",
    lambda cfg: _real(cfg, "dreamer"),
    {**REAL_FIELDS, "dreamer_baseline_samples": 0, **PREPROC_FIELDS, **MISSING_FIELDS},
    "DREAMER.mat or its folder (path); cached under cache_dir (default jmoe_cache next to path)",
  ),
):
  sources.register(_source)
