"""Synthetic DEAP-shaped RAW recordings with planted emotion structure (the same preprocessing runs on them).

Per subject: own EEG channel gains, band levels, GSR level, heart and breathing rates, temperature. Per trial:
latent valence ``v`` and arousal ``a`` uniform on [-1, 1]; ratings (1-9, continuous like DEAP's) are noisy reports
(valence ``5 + 3.6 v``, arousal ``5 + 3.6 a``, dominance and liking follow valence), clipped to the scale.

Signals (``rate`` Hz, a ``baseline_s`` pre-trial baseline without emotion, then ``seconds`` of stimulus):

* EEG: per channel a sum of band-limited Gaussian noise in theta/alpha/beta/gamma plus a weak 1/f background,
  synthesised in the frequency domain. Log band amplitudes = subject gain + subject band level + trial jitter
  (partly shared with the trial's baseline) + the planted effect during the stimulus: **frontal alpha asymmetry**
  (alpha at F3/AF3 scaled by ``exp(-k v)``, at F4/AF4 by ``exp(+k v)``: higher valence, less left-frontal alpha)
  and **arousal** in beta and gamma on every channel (``exp(+k a)``), with ``k = 0.5 * effect``.
* Peripheral (hEOG vEOG zEMG tEMG GSR respiration plethysmograph temperature): respond to arousal with a lag: the
  response ``r(t) = 1 - exp(-(t - lag_s) / 2 s)`` after ``lag_s`` seconds from stimulus onset (0 before). GSR level
  rises by ``a * r(t)`` subject gains, heart rate (the plethysmogram's pulse rate) by ``8 a r(t)`` bpm, breathing
  rate by ``3 a r(t)`` per minute, temperature falls slightly; EOG/EMG are noise at subject levels.

``size='small'`` (default: 8 subjects x 12 trials x 20 s) keeps a whole experiment to minutes on 2 CPU cores;
``size='deap'`` is DEAP's protocol (32 x 40 x 60 s). Explicit ``subjects``/``trials``/``seconds`` override.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jmoe.data import format as fmt
from jmoe.data.deap import DEAP_EEG, deap_source, recording_from_arrays
from jmoe.data.physio import BANDS, Recording, build_dataset

SIZES = {"small": (8, 12, 20.0), "deap": (32, 40, 60.0)}
_LEFT, _RIGHT = ("F3", "AF3"), ("F4", "AF4")


def _eeg_channels(n: int) -> tuple[str, ...]:
  """``n`` DEAP (Geneva-order) channel names; fewer than 32 keep F3/F4/AF3/AF4 first, in Geneva order."""
  if not 4 <= n <= len(DEAP_EEG):
    raise ValueError(f"eeg_channels must be in [4, {len(DEAP_EEG)}], got {n}")
  keep = set(_LEFT + _RIGHT) | set([c for c in DEAP_EEG if c not in _LEFT + _RIGHT][: n - 4])
  return tuple(c for c in DEAP_EEG if c in keep)


def _band_noise(rng, log_amp: np.ndarray, n: int, rate: float) -> np.ndarray:
  """Gaussian noise [C, n] with band amplitudes ``exp(log_amp)`` [C, bands] and a weak 1/f background."""
  f = np.fft.rfftfreq(n, 1 / rate)
  spec = 0.05 / np.sqrt(np.maximum(f, 1.0))[None].repeat(len(log_amp), 0)
  for b, (lo, hi) in enumerate(BANDS.values()):
    spec = spec + np.exp(log_amp[:, b : b + 1]) * ((f >= lo) & (f < hi))[None] / np.sqrt(hi - lo)
  z = rng.standard_normal((len(log_amp), len(f))) + 1j * rng.standard_normal((len(log_amp), len(f)))
  return np.fft.irfft(z * spec, n=n, axis=-1) * np.sqrt(n)


def _subject(rng, s: int, trials: int, seconds: float, chans, rate, baseline_s, lag_s, effect, noise):
  """One subject's arrays: data [trials, C + 8, N] (DEAP layout, float32) and labels [trials, 4]."""
  n0, n1 = int(round(baseline_s * rate)), int(round(seconds * rate))
  c = len(chans)
  gain = rng.normal(0, 0.3, c)[:, None] + np.log(rng.uniform(5, 15))
  band_level = rng.normal(0, 0.2, len(BANDS))[None, :] + np.log([1.0, 1.5, 0.6, 0.3])[None, :]
  k = 0.5 * effect
  left = np.array([ch in _LEFT for ch in chans])[:, None]
  right = np.array([ch in _RIGHT for ch in chans])[:, None]
  alpha, fast = np.eye(len(BANDS))[1][None], np.eye(len(BANDS))[2][None] + np.eye(len(BANDS))[3][None]
  gsr0, gsr_gain = rng.uniform(2, 10), rng.uniform(0.5, 2.0)
  hr0, rr0, temp0 = rng.uniform(60, 80), rng.uniform(12, 18), rng.uniform(31, 34)
  eog, emg = np.exp(rng.normal(3, 0.3, 2)), np.exp(rng.normal(1, 0.3, 2))
  v, a = rng.uniform(-1, 1, trials), rng.uniform(-1, 1, trials)
  labels = np.stack(
    [5 + 3.6 * v, 5 + 3.6 * a, 5 + 2.5 * v + rng.normal(0, 1, trials), 5 + 3.0 * v + rng.normal(0, 1, trials)], 1
  )
  labels[:, :2] += rng.normal(0, 0.4 * noise, (trials, 2))
  labels = np.clip(labels, 1, 9)
  t = (np.arange(n0 + n1) - n0) / rate  # seconds from stimulus onset
  data = np.empty((trials, c + 8, n0 + n1), np.float32)
  for i in range(trials):
    shared = gain + band_level + rng.normal(0, 0.1 * noise, (c, len(BANDS)))
    emo = k * v[i] * (right.astype(float) - left) * alpha + k * a[i] * fast
    base = _band_noise(rng, shared + rng.normal(0, 0.1 * noise, shared.shape), n0, rate)
    stim = _band_noise(rng, shared + emo + rng.normal(0, 0.1 * noise, shared.shape), n1, rate)
    data[i, :c] = np.concatenate([base, stim], axis=1)
    r = np.where(t > lag_s, 1 - np.exp(-np.maximum(t - lag_s, 0) / 2.0), 0.0)
    hr = hr0 + 8 * a[i] * r + rng.normal(0, 1 * noise)
    rr = rr0 + 3 * a[i] * r
    pulse = np.exp(3 * (np.cos(2 * np.pi * np.cumsum(hr / 60) / rate) - 1))
    breath = np.sin(2 * np.pi * np.cumsum(rr / 60) / rate + rng.uniform(0, 2 * np.pi))
    white = rng.standard_normal((8, len(t)))
    data[i, c + 0 : c + 2] = eog[:, None] * white[:2]
    data[i, c + 2 : c + 4] = emg[:, None] * white[2:4]
    data[i, c + 4] = gsr0 + gsr_gain * a[i] * r + 0.05 * noise * np.cumsum(white[4]) / np.sqrt(rate) + 0.02 * white[5]
    data[i, c + 5] = rng.uniform(0.5, 1.5) * breath + 0.05 * noise * white[6]
    data[i, c + 6] = pulse + 0.05 * noise * white[7]
    data[i, c + 7] = temp0 - 0.2 * a[i] * r + 0.01 * noise * white[5]
  return data, labels


def synthetic_deap_recordings(
  size: str = "small",
  subjects: int | None = None,
  trials: int | None = None,
  seconds: float | None = None,
  eeg_channels: int = 32,
  rate: float = 128.0,
  baseline_s: float = 3.0,
  lag_s: float = 3.0,
  effect: float = 1.0,
  noise: float = 1.0,
  seed: int = 0,
) -> Iterator[Recording]:
  """Raw DEAP-layout recordings, one subject at a time (generated lazily; subject ``s`` from ``seed`` and ``s``)."""
  if size not in SIZES:
    raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
  d_subj, d_trials, d_sec = SIZES[size]
  subjects, trials, seconds = subjects or d_subj, trials or d_trials, seconds or d_sec
  chans = _eeg_channels(eeg_channels)
  for s in range(1, subjects + 1):
    rng = np.random.default_rng([seed, s])
    data, labels = _subject(rng, s, trials, seconds, chans, rate, baseline_s, lag_s, effect, noise)
    yield recording_from_arrays(data, labels, s, f"synthetic DEAP subject {s}", rate, baseline_s)


def synthetic_deap(
  size: str = "small",
  subjects: int | None = None,
  trials: int | None = None,
  seconds: float | None = None,
  eeg_channels: int = 32,
  seed: int = 0,
  lag_s: float = 3.0,
  effect: float = 1.0,
  noise: float = 1.0,
  **preproc,
) -> fmt.Dataset:
  """A synthetic DEAP ``pool`` Dataset (``synthetic=True``); ``preproc``: :func:`physio.build_dataset` args."""
  gen = dict(size=size, subjects=subjects, trials=trials, seconds=seconds, eeg_channels=eeg_channels, seed=seed)
  gen.update(lag_s=lag_s, effect=effect, noise=noise)
  source = deap_source(
    source=f"synthetic DEAP-shaped signals (jmoe.data.synthetic_physio, {gen})",
    synthetic=True,
    eeg=_eeg_channels(eeg_channels),
  )
  return build_dataset(source, synthetic_deap_recordings(**gen), extra_meta={"synthetic": gen}, **preproc)
