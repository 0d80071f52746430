"""Test-time perturbations for the EUAR robustness protocol.

Modalities may be named by letter -- ``L`` (language/text), ``A`` (audio), ``V``
(vision) -- or by their jmoe name. Every function is pure: it returns a new
:class:`~jmoe.data.format.Split` (inputs are never modified) and is deterministic given
``seed``. Only real steps (mask True) are perturbed; padding stays zero.

* :func:`drop_modalities` -- fixed missing modalities: the features of every modality
  not in ``available`` are set to zero for all samples. Masks are kept as they are, so
  a model sees a present-but-blank input (the zero-filling convention of the EUAR /
  MMSA robustness protocol) and masked means never divide by zero.
  :data:`MISSING_COMBOS` lists the seven non-empty subsets of ``{L, V, A}``.
* :func:`gaussian_noise` -- add ``N(0, std^2)`` to one modality.
* :func:`salt_and_pepper` -- set a ``ratio`` fraction of one modality's entries to that
  modality's minimum or maximum value in the split (each with probability 1/2).
* :func:`blank_text` -- for text sequences, zero ``round(ratio * length)`` randomly
  chosen real time steps of every sample; for text vectors ``[B, D]``, zero
  ``round(ratio * D)`` randomly chosen entries of every sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jmoe.data.format import MODALITIES, Split

LETTERS = {"L": "text", "A": "audio", "V": "vision"}
"""Modality letter -> jmoe modality name."""

MISSING_COMBOS: tuple[tuple[str, ...], ...] = (
  ("L",),
  ("V",),
  ("A",),
  ("L", "V"),
  ("L", "A"),
  ("V", "A"),
  ("L", "V", "A"),
)
"""The 7 non-empty subsets of {L, V, A}, as tuples of *available* modalities."""


def modality_name(m: str) -> str:
  """``'L'``/``'A'``/``'V'`` or a jmoe modality name -> the jmoe name; ValueError otherwise."""
  if m in LETTERS:
    return LETTERS[m]
  if m in MODALITIES:
    return m
  raise ValueError(f"unknown modality {m!r} (use L/A/V or one of {', '.join(MODALITIES)})")


def _present(split: Split, modality: str) -> str:
  m = modality_name(modality)
  if m not in split.features:
    raise ValueError(f"modality {m!r} is not in this split (it has {', '.join(split.features)})")
  return m


def _check_ratio(ratio: float) -> float:
  ratio = float(ratio)
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"ratio must be in [0, 1], got {ratio}")
  return ratio


def _real(split: Split, m: str) -> np.ndarray:
  """bool array broadcastable to ``features[m]``: True on entries of real steps."""
  x = split.features[m]
  if x.ndim == 3 and m in split.masks:
    return np.broadcast_to(split.masks[m][:, :, None], x.shape)
  return np.ones(x.shape, bool)


def _replace(split: Split, m: str, x: np.ndarray) -> Split:
  return dataclasses.replace(split, features={**split.features, m: x.astype(np.float32, copy=False)})


def drop_modalities(split: Split, available) -> Split:
  """Zero the features of every modality not in ``available`` (letters, names, or a string like ``'LV'``).

  ``available`` may name modalities the split lacks (e.g. L for an audio+vision
  dataset); they are simply absent. Masks are unchanged (see the module docstring).
  """
  if isinstance(available, str):
    # 'LV' -> ('L', 'V'); a single name such as 'text' stays one modality
    available = tuple(available) if available not in MODALITIES and set(available) <= set(LETTERS) else (available,)
  keep = {modality_name(a) for a in available}
  if not keep:
    raise ValueError("available must name at least one modality")
  feats = {m: (x if m in keep else np.zeros_like(x)) for m, x in split.features.items()}
  return dataclasses.replace(split, features=feats)


def gaussian_noise(split: Split, modality: str, std: float, seed: int) -> Split:
  """Add ``N(0, std^2)`` noise to the real steps of ``modality``; ``std >= 0``."""
  m = _present(split, modality)
  if not np.isfinite(std) or std < 0:
    raise ValueError(f"std must be a finite number >= 0, got {std}")
  x = split.features[m]
  rng = np.random.default_rng(seed)
  noise = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std)
  return _replace(split, m, np.where(_real(split, m), x + noise, x))


def salt_and_pepper(split: Split, modality: str, ratio: float, seed: int) -> Split:
  """Set each real entry of ``modality`` with probability ``ratio`` to its min or max.

  The min and max are taken over the real entries of that modality in ``split``.
  """
  m = _present(split, modality)
  ratio = _check_ratio(ratio)
  x = split.features[m]
  real = _real(split, m)
  vals = x[real]
  if vals.size == 0 or ratio == 0.0:
    return _replace(split, m, x.copy())
  lo, hi = vals.min(), vals.max()
  rng = np.random.default_rng(seed)
  hit = (rng.random(x.shape) < ratio) & real
  salt = rng.random(x.shape) < 0.5
  return _replace(split, m, np.where(hit, np.where(salt, hi, lo), x))


def blank_text(split: Split, ratio: float, seed: int) -> Split:
  """Zero a ``ratio`` fraction of the text of every sample (see the module docstring)."""
  ratio = _check_ratio(ratio)
  m = _present(split, "text")
  x = split.features[m].copy()
  rng = np.random.default_rng(seed)
  if x.ndim == 3:
    mask = split.masks.get(m, np.ones(x.shape[:2], bool))
    for i in range(x.shape[0]):
      steps = np.flatnonzero(mask[i])
      k = int(round(ratio * len(steps)))
      if k:
        x[i, rng.choice(steps, size=k, replace=False)] = 0.0
  else:
    d = x.shape[1]
    k = int(round(ratio * d))
    if k:
      # argsort of uniform noise = an independent random permutation per row
      cols = np.argsort(rng.random(x.shape), axis=1)[:, :k]
      np.put_along_axis(x, cols, 0.0, axis=1)
  return _replace(split, m, x)
