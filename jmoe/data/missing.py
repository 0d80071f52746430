"""Random missing modalities (Hi-MoE robustness protocol): zero the features and record presence.

``random_missing(split, rate, seed, per)`` marks exactly ``round(rate * n)`` units as *incomplete*, n = the number of
units: samples (``per='sample'``) or real time steps (``per='step'``; for per-window vectors [B, D] a step is the
sample). Each incomplete unit loses a random combination of modalities, drawn uniformly from the non-empty proper
subsets (at least one modality dropped, at least one kept: 2^M - 2 combinations; with M = 2 one of the two). So
``rate`` is the fraction of incomplete units (the paper's "missing rate r": arbitrary modality combinations masked
per sample); the fraction of (unit, modality) entries missing is ``rate * (mean dropped count) / M`` (``rate / 2``
for M = 2). A dropped modality's features are set to 0 on that unit and ``present[m]`` is False there (``[B]`` for
``per='sample'``, ``[B, T]`` for ``per='step'``; combined by AND with any presence the split already has).
Padding steps are never chosen. Pure: returns a new Split; deterministic given ``seed``.

:func:`apply_to_dataset` perturbs a ``pool`` dataset once, before the folds are cut, so that the same missingness
is seen in training, validation and test (the protocol "masking ... in both training and evaluation"); the data
sources apply it from ``config.data.missing_rate`` / ``missing_per`` / ``missing_seed``.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from jmoe.data import format as fmt

PER = ("sample", "step")


def combinations(modalities) -> list[tuple[str, ...]]:
  """The non-empty proper subsets of ``modalities`` (the combinations that may be dropped), in a fixed order."""
  mods = tuple(modalities)
  return [c for r in range(1, len(mods)) for c in itertools.combinations(mods, r)]


def random_missing(split: fmt.Split, rate: float, seed: int, per: str = "sample", modalities=None) -> fmt.Split:
  """Drop random modality combinations on ``round(rate * units)`` units (module docstring)."""
  rate = float(rate)
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"missing rate must be in [0, 1], got {rate}")
  if per not in PER:
    raise ValueError(f"missing per must be one of {PER}, got {per!r}")
  mods = tuple(modalities) if modalities is not None else tuple(split.features)
  unknown = [m for m in mods if m not in split.features]
  if unknown:
    raise ValueError(f"random_missing: modalities {unknown} are not in this split (it has {sorted(split.features)})")
  if rate == 0.0:
    return split
  if len(mods) < 2:
    raise ValueError(f"random_missing needs at least two modalities to drop one and keep one, got {mods}")
  n = len(split)
  seq = [m for m in mods if split.is_sequence(m)]
  steps = max((split.features[m].shape[1] for m in seq), default=1)
  if per == "step" and seq:
    real = np.zeros((n, steps), bool)
    for m in seq:
      mk = split.masks.get(m)
      real[:, : split.features[m].shape[1]] |= np.ones((n, split.features[m].shape[1]), bool) if mk is None else mk
  else:
    real = np.ones((n, 1), bool)
  units = np.flatnonzero(real.reshape(-1))
  rng = np.random.default_rng(seed)
  chosen = rng.choice(units, size=int(round(rate * len(units))), replace=False)
  combos = combinations(mods)
  pick = rng.integers(0, len(combos), size=len(chosen))
  drop = {m: np.zeros(real.size, bool) for m in mods}
  for c, unit in zip(pick, chosen):
    for m in combos[c]:
      drop[m][unit] = True
  feats, present = dict(split.features), dict(split.present)
  for m in mods:
    d = drop[m].reshape(real.shape)  # [B, 1] (per sample) or [B, T]
    x = np.array(split.features[m], copy=True)
    if x.ndim == 3:
      dd = d if d.shape[1] == 1 else d[:, : x.shape[1]]
      x[np.broadcast_to(dd[:, :, None], x.shape)] = 0.0
    else:
      x[d.any(axis=1)] = 0.0
    feats[m] = x.astype(np.float32, copy=False)
    keep = ~(d[:, 0] if per == "sample" or not seq else d)
    if m in present:
      old = np.asarray(present[m], bool)
      if old.ndim == 1 and keep.ndim == 2:
        old = np.broadcast_to(old[:, None], keep.shape)
      elif old.ndim == 2 and keep.ndim == 1:
        keep = np.broadcast_to(keep[:, None], old.shape)
      keep = old & keep
    present[m] = np.asarray(keep, bool)
  return dataclasses.replace(split, features=feats, present=present)


def apply_to_dataset(ds: fmt.Dataset, rate: float, seed: int, per: str = "sample", modalities=None) -> fmt.Dataset:
  """``random_missing`` on every split of ``ds`` (seed folded with the split's position); rate 0 returns ``ds``."""
  if float(rate) == 0.0:
    return ds
  splits = {
    name: random_missing(sp, rate, seed * 1000 + i, per, modalities) for i, (name, sp) in enumerate(ds.splits.items())
  }
  return dataclasses.replace(ds, splits=splits)
