"""Cross-validation folds: train / valid / test index sets into a pool of B samples (host side, numpy).

A :class:`Fold` holds three sorted int64 index arrays ``[n]`` into the pool. Protocols:

* :func:`predefined` -- one fold from given index arrays (MOSI standard split, bc-LSTM split).
* :func:`kfold` -- k folds over samples, or over whole *groups* (e.g. trial ids: Hi-MoE's subject-dependent
  10-fold on DEAP splits each subject's trials over the folds, so windows of one trial never sit on two sides);
  ``within`` (e.g. subject per sample) spreads each subject's groups over all k folds; ``stratify`` (a class per
  sample, constant within a group) balances classes over the folds. Every sample is in exactly one test set.
* :func:`leave_one_group_out` -- LOSO by subject, IEMOCAP leave-one-session-out, RAVDESS actor folds
  (``test_groups_per_fold`` groups held out per fold).

The validation set is always carved from the training part, in whole groups, never from the test part. Every fold
returned is checked by :func:`check_fold` (public): disjoint splits, non-empty train / valid / test (valid may be
empty only when asked for with ``valid_fraction=0`` / ``valid_groups=0``), no group on two sides. Everything is a
pure function of its arguments and ``seed``; bad input is one ``ValueError`` line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["Fold", "check_fold", "kfold", "leave_one_group_out", "predefined"]


@dataclasses.dataclass(frozen=True)
class Fold:
  """One fold: ``train``, ``valid``, ``test`` are sorted, unique int64 sample indices ``[n_split]``."""

  name: str
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray

  def sizes(self) -> dict[str, int]:
    return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _index_array(x: Any, what: str) -> np.ndarray:
  arr = np.asarray(x)
  if arr.ndim != 1:
    raise ValueError(f"{what} must be a 1-D index array, got shape {arr.shape}")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{what} must hold integers, got dtype {arr.dtype}")
  return arr.astype(np.int64)


def check_fold(fold: Fold, groups: Any = None, num_samples: int | None = None, allow_empty_valid: bool = False) -> Fold:
  """Validate ``fold`` and return it; ``ValueError`` (one line) naming the first problem.

  Checks: each split a 1-D int array, sorted and without repeats; ``train`` and ``test`` non-empty, ``valid``
  non-empty unless ``allow_empty_valid``; the three splits pairwise disjoint; indices in ``[0, num_samples)``
  (``num_samples`` defaults to ``len(groups)``); with ``groups [B]`` (e.g. trial or subject per sample) no group
  appears in two of train / valid / test.
  """
  splits = {}
  for split in ("train", "valid", "test"):
    arr = _index_array(getattr(fold, split), f"fold {fold.name!r}: {split}")
    if arr.size and np.any(np.diff(arr) <= 0):
      raise ValueError(f"fold {fold.name!r}: {split} indices must be sorted and unique")
    if arr.size == 0 and not (split == "valid" and allow_empty_valid):
      raise ValueError(f"fold {fold.name!r}: {split} split is empty")
    splits[split] = arr
  if groups is not None:
    groups = np.asarray(groups)
    if groups.ndim != 1:
      raise ValueError(f"groups must be 1-D [B], got shape {groups.shape}")
    if num_samples is None:
      num_samples = len(groups)
    elif num_samples != len(groups):
      raise ValueError(f"groups has {len(groups)} entries but num_samples={num_samples}")
  for split, arr in splits.items():
    if arr.size and (arr[0] < 0 or (num_samples is not None and arr[-1] >= num_samples)):
      raise ValueError(f"fold {fold.name!r}: {split} indices outside [0, {num_samples})")
  names = ("train", "valid", "test")
  for i, a in enumerate(names):
    for b in names[i + 1 :]:
      common = np.intersect1d(splits[a], splits[b])
      if common.size:
        raise ValueError(f"fold {fold.name!r}: sample {int(common[0])} is in both {a} and {b}")
      if groups is not None:
        shared = np.intersect1d(groups[splits[a]], groups[splits[b]])
        if shared.size:
          raise ValueError(f"fold {fold.name!r}: group {shared[0].item()!r} is in both {a} and {b}")
  return fold


def predefined(train: Any, valid: Any, test: Any, name: str = "predefined", groups: Any = None) -> Fold:
  """One fold from given index arrays (sorted here); checked with :func:`check_fold` (``groups`` optional)."""
  parts = [np.sort(_index_array(x, s)) for x, s in ((train, "train"), (valid, "valid"), (test, "test"))]
  return check_fold(Fold(name, *parts), groups=groups)


def _units(num_samples: int, groups: Any) -> tuple[np.ndarray, np.ndarray]:
  """-> (unit id per sample [B] in 0..U-1, unit labels [U]); each sample its own unit without groups."""
  if groups is None:
    return np.arange(num_samples), np.arange(num_samples)
  groups = np.asarray(groups)
  if groups.ndim != 1 or len(groups) != num_samples:
    raise ValueError(f"groups must be 1-D with num_samples={num_samples} entries, got shape {groups.shape}")
  labels, inv = np.unique(groups, return_inverse=True)
  return inv, labels


def _per_unit(values: Any, unit: np.ndarray, num_units: int, what: str) -> np.ndarray:
  """A per-sample array that must be constant within each unit -> its value per unit [U]."""
  values = np.asarray(values)
  if values.shape != unit.shape:
    raise ValueError(f"{what} must have one entry per sample ({unit.shape[0]}), got shape {values.shape}")
  first = np.zeros(num_units, np.int64)
  first[unit[::-1]] = np.arange(len(unit))[::-1]  # first sample of each unit
  per_unit = values[first]
  if np.any(per_unit[unit] != values):
    bad = int(unit[np.flatnonzero(per_unit[unit] != values)[0]])
    raise ValueError(f"{what} differs within group #{bad}: a group must lie within one {what} value")
  return per_unit


def _samples(unit: np.ndarray, chosen: np.ndarray) -> np.ndarray:
  return np.flatnonzero(np.isin(unit, chosen)).astype(np.int64)


def _carve(rng, units: np.ndarray, fraction: float, strata: np.ndarray | None) -> np.ndarray:
  """Pick round(fraction * n) units (at least 1 when fraction > 0) at random, per stratum when given."""
  if fraction <= 0:
    return units[:0]
  blocks = [units] if strata is None else [units[strata[units] == s] for s in np.unique(strata[units])]
  picked = [rng.permutation(b)[: int(round(fraction * len(b)))] for b in blocks]
  out = np.concatenate(picked) if picked else units[:0]
  if out.size == 0:  # too few units for the fraction in every stratum: take one
    out = rng.permutation(units)[:1]
  return np.sort(out)


def kfold(
  num_samples: int,
  k: int,
  seed: int,
  groups: Any = None,
  valid_fraction: float = 0.1,
  stratify: Any = None,
  within: Any = None,
) -> list[Fold]:
  """k folds: every sample (or whole group) in exactly one test set; valid carved from the rest.

  Args:
    num_samples: B, the pool size.
    k: number of folds, ``2 <= k <= number of units`` (units = groups, or samples without groups).
    seed: the only source of randomness (the shuffling of units, the validation pick).
    groups: ``[B]`` group per sample (e.g. trial id); whole groups go to one side of every split.
    valid_fraction: fraction of the k-1 training parts' units moved to ``valid`` (rounded, at least one unit when
      > 0; per ``within`` block when ``within`` is given). 0 gives an empty valid split.
    stratify: ``[B]`` class per sample (constant within a group): classes are spread evenly over the folds.
    within: ``[B]`` block per sample (e.g. subject; constant within a group): each block's units are spread over
      all k folds (so every block needs >= k units), Hi-MoE's subject-dependent protocol.

  Assignment: units are shuffled, ordered by (``within``, ``stratify``) block, and dealt round-robin to the
  folds (the deal continues across blocks, so fold sizes differ by at most one unit).
  Returns folds named ``"fold_0" ... "fold_{k-1}"``.
  """
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
  if not isinstance(k, (int, np.integer)) or k < 2:
    raise ValueError(f"k must be an int >= 2, got {k!r}")
  if not 0 <= valid_fraction < 1:
    raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
  unit, labels = _units(num_samples, groups)
  n_units = len(labels)
  what = "groups" if groups is not None else "samples"
  if k > n_units:
    raise ValueError(f"k={k} folds but only {n_units} {what}")
  within_u = None if within is None else _per_unit(within, unit, n_units, "within")
  strat_u = None if stratify is None else _per_unit(stratify, unit, n_units, "stratify")
  if within_u is not None:
    blocks, counts = np.unique(within_u, return_counts=True)
    if counts.min() < k:
      raise ValueError(f"within block {blocks[counts.argmin()].item()!r} has {counts.min()} {what}, fewer than k={k}")

  rng = np.random.default_rng(seed)
  order = rng.permutation(n_units)
  keys = [order * 0]
  if strat_u is not None:
    keys.insert(0, np.unique(strat_u, return_inverse=True)[1][order])
  if within_u is not None:
    keys.insert(0, np.unique(within_u, return_inverse=True)[1][order])
  order = order[np.lexsort(keys[::-1])] if len(keys) > 1 else order  # stable: shuffled order inside a block
  assign = np.empty(n_units, np.int64)
  assign[order] = np.arange(n_units) % k

  folds = []
  for f in range(k):
    test_u = np.flatnonzero(assign == f)
    rest = np.flatnonzero(assign != f)
    valid_u = _carve(rng, rest, valid_fraction, within_u)
    train_u = np.setdiff1d(rest, valid_u)
    if train_u.size == 0:
      raise ValueError(f"fold_{f}: valid_fraction={valid_fraction} leaves no training {what}")
    fold = Fold(f"fold_{f}", _samples(unit, train_u), _samples(unit, valid_u), _samples(unit, test_u))
    folds.append(check_fold(fold, groups=unit, allow_empty_valid=valid_fraction == 0))
  return folds


def leave_one_group_out(
  groups: Any,
  valid_groups: int | None = 1,
  seed: int = 0,
  test_groups_per_fold: int = 1,
  valid_fraction: float | None = None,
) -> list[Fold]:
  """Leave-group(s)-out folds: LOSO by subject, IEMOCAP by session, RAVDESS by actors.

  Args:
    groups: ``[B]`` group per sample (subject / session / actor).
    valid_groups: number of whole training groups moved to ``valid`` in each fold (picked at random with ``seed``;
      0 = empty valid). Ignored when ``valid_fraction`` is given.
    seed: the only source of randomness (the validation pick).
    test_groups_per_fold: groups held out together; the sorted distinct groups are cut into consecutive chunks of
      this size (e.g. RAVDESS actors (1, 2), (3, 4), ...: one male and one female each), which must divide the
      number of groups.
    valid_fraction: instead of ``valid_groups``, ``round(valid_fraction * training groups)`` groups (at least 1).

  Returns folds named ``"<group>"`` (or ``"<g1>+<g2>"``), in sorted group order; every sample is in exactly one
  test set.
  """
  groups = np.asarray(groups)
  if groups.ndim != 1 or groups.size == 0:
    raise ValueError(f"groups must be a non-empty 1-D array [B], got shape {groups.shape}")
  labels, unit = np.unique(groups, return_inverse=True)
  n = len(labels)
  t = test_groups_per_fold
  if not isinstance(t, (int, np.integer)) or t < 1:
    raise ValueError(f"test_groups_per_fold must be a positive int, got {t!r}")
  if n % t:
    raise ValueError(f"{n} groups cannot be cut into folds of test_groups_per_fold={t}")
  if n // t < 2:
    raise ValueError(f"{n} groups give fewer than 2 folds with test_groups_per_fold={t}")
  if valid_fraction is not None:
    if not 0 < valid_fraction < 1:
      raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    n_valid = max(1, int(round(valid_fraction * (n - t))))
  else:
    if not isinstance(valid_groups, (int, np.integer)) or valid_groups < 0:
      raise ValueError(f"valid_groups must be an int >= 0, got {valid_groups!r}")
    n_valid = int(valid_groups)
  if n_valid >= n - t:
    raise ValueError(f"{n_valid} validation groups leave no training group ({n} groups, {t} held out per fold)")

  rng = np.random.default_rng(seed)
  folds = []
  for f in range(n // t):
    test_u = np.arange(f * t, (f + 1) * t)
    rest = np.setdiff1d(np.arange(n), test_u)
    valid_u = np.sort(rng.permutation(rest)[:n_valid])
    train_u = np.setdiff1d(rest, valid_u)
    name = "+".join(str(g) for g in labels[test_u])
    fold = Fold(name, _samples(unit, train_u), _samples(unit, valid_u), _samples(unit, test_u))
    folds.append(check_fold(fold, groups=groups, allow_empty_valid=n_valid == 0))
  return folds
