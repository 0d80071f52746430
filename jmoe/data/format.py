"""The jmoe dataset format (version 2; reads version 1 unchanged): in-memory dataclasses and the on-disk layout.

Axis alphabet of ``jmoe.data`` (the package alphabet of :mod:`jmoe`): **B** samples (utterances, windows or trials
of a split), **T** time steps, **D** feature width, **K** dimensions of a multi-target label.

In memory
---------
A :class:`Dataset` holds named :class:`Split` objects -- exactly ``train``, ``valid``, ``test`` (a predefined split)
or a single ``pool`` (a cross-validation dataset: :mod:`jmoe.data.folds` computes index folds over it) -- plus
metadata. A split stores:

* ``features[m]``: float32 ``[B, D]`` (one vector per sample) or ``[B, T, D]`` (a zero-padded sequence) for every
  modality ``m`` of ``Dataset.modalities``. Modality names are free identifiers (``text``, ``eeg``,
  ``audio_local``...); several *views* of one modality (frames and an utterance vector) are separate modalities
  whose ``modality_meta[m]['view_of']`` names the modality they view;
* ``masks[m]``: bool ``[B, T]`` for sequence modalities only (True = real step);
* ``labels[head]``: one array per label head, described by ``Dataset.label_specs[head]`` (:class:`LabelSpec`):
  regression float32 ``[B]`` or ``[B, K]`` inside the spec's range, classification int32 ``[B]`` in ``[0, C)``;
* ``label_masks[head]``: bool ``[B]``, False where a sample lacks that head (its label value is then ignored;
  absent = every sample has it);
* ``groups[name]``: ``[B]`` int or str ids (``subject``, ``session``, ``speaker``, ``trial``, ``video``...) from
  which folds are built;
* ``present[m]``: bool ``[B]`` or ``[B, T]`` modality presence (absent = always present; a missing modality's
  features are zero);
* ``ids``: str ``[B]`` sample ids.

``Dataset.synthetic`` is True for generated data and ``Dataset.source`` says where the data came from.
A version-1 split (``labels`` a float array in [-3, 3]) is read as the single regression head ``sentiment``.

On disk (written by :func:`save_dataset`, read by :func:`load_dataset`)
----------------------------------------------------------------------
Version 2: ``<dir>/meta.json`` (``format_version`` 2, ``name``, ``modalities``, ``dims``, ``modality_meta``,
``label_specs``, ``synthetic``, ``source``, ``splits`` {name: B}) and one folder per split holding plain ``.npy``
files (``features.<m>``, ``mask.<m>``, ``label.<head>``, ``label_mask.<head>``, ``group.<name>``,
``present.<m>``, ``ids``), which :func:`load_dataset` can memory-map (``mmap=True``) so that a DEAP-sized
dataset is not held in RAM twice. :func:`save_dataset` writes into a temporary sibling folder and renames it into
place: a crash never leaves a half-written dataset that looks complete.
Version 1 (read only): ``meta.json`` plus ``<split>.npz`` with ``'<m>'``, ``'<m>_mask'``, ``'labels'``, ``'ids'``.

Files hold plain arrays only and are read with ``allow_pickle=False``. Every load goes through :func:`validate`,
which raises a one-line ``ValueError`` naming the file or directory and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
"""The format-1 modality set and its canonical order; letters L (text), A (audio), V (vision)."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")
POOL = "pool"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
LABEL_RANGE: tuple[float, float] = (-3.0, 3.0)
SENTIMENT = "sentiment"
MAX_ABS_FEATURE = 1e15
"""Largest feature magnitude :func:`validate` accepts: squares and sums of larger float32 values overflow to Inf in
training (a sign of broken or unscaled data, never of real features)."""
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """What a label head holds.

  Attributes:
    kind: ``'regression'`` (float32 ``[B]`` or ``[B, K]``) or ``'classification'`` (int32 ``[B]`` class ids).
    range: (low, high) of regression labels (inclusive), or None (any finite value).
    names: names of the K dimensions of a ``[B, K]`` regression head (e.g. valence, arousal, dominance).
    classes: class names of a classification head; labels are ids into it.
  """

  kind: str
  range: tuple[float, float] | None = None
  names: tuple[str, ...] | None = None
  classes: tuple[str, ...] | None = None

  def __post_init__(self):
    if self.kind not in ("regression", "classification"):
      raise ValueError(f"LabelSpec kind must be 'regression' or 'classification', got {self.kind!r}")
    if self.kind == "classification" and not self.classes:
      raise ValueError("a classification LabelSpec needs its class names")
    if self.range is not None:
      object.__setattr__(self, "range", (float(self.range[0]), float(self.range[1])))
    for f in ("names", "classes"):
      if getattr(self, f) is not None:
        object.__setattr__(self, f, tuple(str(x) for x in getattr(self, f)))

  @property
  def num_classes(self) -> int:
    return len(self.classes or ())

  def to_json(self) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items() if v is not None}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "LabelSpec":
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


SENTIMENT_SPEC = LabelSpec("regression", range=LABEL_RANGE)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset (see the module docstring for every field's shape).

  ``labels`` may be given as a single float array: it is read as the format-1 head ``sentiment``.
  """

  features: dict[str, np.ndarray]
  masks: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  ids: np.ndarray
  label_masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  present: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not isinstance(self.labels, Mapping):
      object.__setattr__(self, "labels", {SENTIMENT: self.labels})

  def __len__(self) -> int:
    return int(np.shape(self.ids)[0])

  def is_sequence(self, modality: str) -> bool:
    """True when ``features[modality]`` is ``[B, T, D]``."""
    return np.ndim(self.features[modality]) == 3

  def label_mask(self, head: str) -> np.ndarray:
    """bool [B]: which samples have a label for ``head``."""
    m = self.label_masks.get(head)
    return np.ones(len(self), bool) if m is None else np.asarray(m, bool)

  def take(self, indices) -> "Split":
    """A new split with the samples at ``indices`` (int ``[B']`` or bool ``[B]``)."""
    idx = np.asarray(indices)
    sub = lambda d: {k: np.asarray(v)[idx] for k, v in d.items()}
    return Split(
      features=sub(self.features),
      masks=sub(self.masks),
      labels=sub(self.labels),
      ids=np.asarray(self.ids)[idx],
      label_masks=sub(self.label_masks),
      groups=sub(self.groups),
      present=sub(self.present),
    )


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A named dataset: its splits plus metadata (see the module docstring)."""

  name: str
  splits: dict[str, Split]
  modalities: tuple[str, ...]
  dims: dict[str, int]
  synthetic: bool
  source: str
  label_specs: dict[str, LabelSpec] = dataclasses.field(default_factory=dict)
  modality_meta: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.label_specs:
      heads = {h for sp in self.splits.values() if isinstance(sp, Split) for h in sp.labels}
      if heads == {SENTIMENT}:
        object.__setattr__(self, "label_specs", {SENTIMENT: SENTIMENT_SPEC})

  @property
  def heads(self) -> tuple[str, ...]:
    return tuple(self.label_specs)

  @property
  def is_pool(self) -> bool:
    """True for a cross-validation dataset (one ``pool`` split)."""
    return set(self.splits) == {POOL}

  def view_of(self, modality: str) -> str:
    """The modality that ``modality`` is a view of (itself when it is not a view)."""
    return str(self.modality_meta.get(modality, {}).get("view_of") or modality)


def canonical_modalities(names, where: str = "modalities") -> tuple[str, ...]:
  """Format-1 modality names (text/audio/vision) in canonical order; ValueError for unknown or repeated names."""
  names = tuple(names)
  unknown = [m for m in names if m not in MODALITIES]
  if unknown:
    raise ValueError(f"{where}: unknown modality {unknown[0]!r} (known: {', '.join(MODALITIES)})")
  if len(set(names)) != len(names):
    raise ValueError(f"{where}: modality listed twice in {names}")
  return tuple(m for m in MODALITIES if m in names)


def _fail(where, msg: str):
  raise ValueError(f"{where}: {msg}".replace("\n", " "))


def _check_labels(where, sname: str, sp: Split, head: str, spec: LabelSpec, b: int) -> None:
  y = np.asarray(sp.labels[head])
  if y.shape[:1] != (b,):
    _fail(where, f"split '{sname}': labels['{head}'] have shape {y.shape}, expected [B={b}, ...]")
  mask = sp.label_mask(head)
  if mask.shape != (b,):
    _fail(where, f"split '{sname}': label_masks['{head}'] have shape {mask.shape}, expected [{b}]")
  y = y[mask]
  if spec.kind == "classification":
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
      _fail(where, f"split '{sname}': classification labels['{head}'] must be int [B], got {y.dtype} {y.shape}")
    bad = (y < 0) | (y >= spec.num_classes)
    if bad.any():
      _fail(
        where,
        f"split '{sname}': {int(bad.sum())} labels['{head}'] outside the {spec.num_classes} declared classes "
        f"{list(spec.classes)} (ids {sorted(set(y[bad].tolist()))[:5]})",
      )
    return
  if not np.issubdtype(y.dtype, np.floating):
    _fail(where, f"split '{sname}': labels must be float, got dtype {y.dtype}")
  if y.ndim not in (1, 2):
    _fail(where, f"labels of split '{sname}' have shape {y.shape}, expected [B] or [B, K]")
  if spec.names is not None and (y.ndim != 2 or y.shape[1] != len(spec.names)):
    _fail(where, f"split '{sname}': labels['{head}'] have shape {y.shape}, spec names {len(spec.names)} dimensions")
  bad = ~np.isfinite(y)
  if bad.any():
    _fail(where, f"split '{sname}': {int(bad.sum())} labels are NaN/Inf")
  if spec.range is not None and y.size:
    lo, hi = spec.range
    out = (y < lo) | (y > hi)
    if out.any():
      _fail(
        where,
        f"split '{sname}': {int(out.sum())} labels outside [{lo:g}, {hi:g}] (min {y.min():g}, max {y.max():g})",
      )


def _check_modality(where, sname: str, sp: Split, m: str, ds: Dataset, b: int, rank: dict) -> None:
  x = sp.features[m]
  if not isinstance(x, np.ndarray):
    _fail(where, f"split '{sname}': features['{m}'] is a {type(x).__name__}, not a numpy array")
  if x.dtype != np.float32:
    _fail(where, f"split '{sname}': features['{m}'] have dtype {x.dtype}, expected float32")
  if x.ndim not in (2, 3):
    _fail(where, f"split '{sname}': features['{m}'] have shape {x.shape}, expected [B, D] or [B, T, D]")
  if x.shape[0] != b:
    _fail(where, f"split '{sname}': features['{m}'] have B={x.shape[0]} but ids have B={b}")
  if x.shape[-1] != ds.dims[m]:
    prev = rank.get(m)
    other = f" (split '{prev[1]}' has D={ds.dims[m]})" if prev else ""
    _fail(where, f"modality '{m}' has D={x.shape[-1]} in split '{sname}' but dims metadata says {ds.dims[m]}{other}")
  if m in rank and rank[m][0] != x.ndim:
    _fail(where, f"modality '{m}' is rank {x.ndim} in split '{sname}' but rank {rank[m][0]} in split '{rank[m][1]}'")
  rank.setdefault(m, (x.ndim, sname))
  # Chunked so that a memory-mapped array is checked without loading it whole.
  chunks = np.array_split(x, max(1, b // 4096))
  nonfinite = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in chunks)
  if nonfinite:
    _fail(where, f"split '{sname}': {nonfinite} NaN/Inf values in '{m}' features")
  big = max((float(np.abs(c).max()) for c in chunks if c.size), default=0.0)
  if big > MAX_ABS_FEATURE:
    _fail(
      where,
      f"split '{sname}': '{m}' features reach {big:.3g} in magnitude (above {MAX_ABS_FEATURE:g}, where float32 "
      "arithmetic overflows); the data is broken or unscaled: rescale or standardize it",
    )
  if x.ndim == 3:
    if m not in sp.masks:
      _fail(where, f"split '{sname}': sequence modality '{m}' has no mask")
    mask = sp.masks[m]
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
      _fail(where, f"split '{sname}': mask of '{m}' must be a bool array")
    if mask.shape != x.shape[:2]:
      _fail(where, f"split '{sname}': mask of '{m}' has shape {mask.shape}, features have [B, T] = {x.shape[:2]}")
  if m in sp.present:
    p = np.asarray(sp.present[m])
    if p.dtype != np.bool_ or p.shape not in ((b,), x.shape[:2]):
      _fail(where, f"split '{sname}': present['{m}'] must be bool [B] or [B, T], got {p.dtype} {p.shape}")


def validate(ds: Dataset, where, label_range: tuple[float, float] | None = None) -> Dataset:
  """Check ``ds`` against the format; return it unchanged or raise a one-line ValueError.

  ``where`` names the file or directory the data came from and starts the message. Checks: splits are exactly
  train/valid/test or one ``pool``, none empty; modality names are identifiers, listed once, matching ``dims``
  (the format-1 set keeps its canonical order); every feature array is float32 ``[B, D]`` or ``[B, T, D]`` with
  ``D == dims[m]`` and the same rank in every split, finite; sequence modalities (and only they) have a bool
  ``[B, T]`` mask; every head of ``label_specs`` is in every split and its labels match the spec (kind, dtype,
  range, classes) where the label mask is set; groups, presence and ids agree on B; sample ids are unique within a
  split; every sample has data in at least one modality. ``label_range`` overrides the range of a format-1
  ``sentiment`` head. Split sizes are checked per fold, by :func:`check_split_sizes`.
  """
  if not isinstance(ds, Dataset):
    _fail(where, f"expected a jmoe Dataset, got {type(ds).__name__}")
  mods = tuple(ds.modalities)
  if not mods:
    _fail(where, "dataset has no modalities")
  bad_names = [m for m in mods if not isinstance(m, str) or not _NAME.match(m)]
  if bad_names:
    _fail(where, f"modality name {bad_names[0]!r} is not an identifier (letters, digits, '_')")
  if len(set(mods)) != len(mods):
    _fail(where, f"modality listed twice in {mods}")
  if set(mods) <= set(MODALITIES) and canonical_modalities(mods) != mods:
    _fail(where, f"modalities {mods} are not in canonical order {canonical_modalities(mods)}")
  if set(ds.dims) != set(mods):
    _fail(where, f"dims metadata covers {sorted(ds.dims)} but modalities are {list(mods)}")
  for m in mods:
    d = ds.dims[m]
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
      _fail(where, f"modality '{m}' has feature width dims['{m}']={d!r}; every modality needs D >= 1 features")
  names = set(ds.splits)
  if names != set(SPLITS) and names != {POOL}:
    missing = [s for s in SPLITS if s not in ds.splits]
    extra = [s for s in ds.splits if s not in SPLITS]
    _fail(where, f"splits must be exactly {list(SPLITS)} or one '{POOL}'; missing {missing}, unexpected {extra}")
  specs = dict(ds.label_specs)
  if not specs:
    _fail(where, "dataset declares no label heads (label_specs is empty)")
  if label_range is not None and specs.get(SENTIMENT) is not None:
    specs[SENTIMENT] = dataclasses.replace(specs[SENTIMENT], range=tuple(label_range))
  rank: dict[str, tuple[int, str]] = {}
  for sname, sp in ds.splits.items():
    if not isinstance(sp, Split):
      _fail(where, f"split '{sname}' is a {type(sp).__name__}, not a Split")
    ids = np.asarray(sp.ids)
    b = ids.shape[0] if ids.ndim == 1 else -1
    if b == 0:
      _fail(where, f"split '{sname}' is empty")
    if ids.ndim != 1:
      _fail(where, f"split '{sname}': ids have shape {ids.shape}, expected [B]")
    if ids.dtype.kind not in "UO":
      _fail(where, f"split '{sname}': ids must be strings, got dtype {ids.dtype}")
    missing_heads = [h for h in specs if h not in sp.labels]
    if missing_heads or set(sp.labels) - set(specs):
      _fail(where, f"split '{sname}' has label heads {sorted(sp.labels)} but label_specs declare {sorted(specs)}")
    for h, spec in specs.items():
      y = np.asarray(sp.labels[h])
      if y.shape[:1] != (b,):
        _fail(where, f"split '{sname}': ids have B={b} but labels['{h}'] have shape {y.shape}")
      _check_labels(where, sname, sp, h, spec, b)
    if set(sp.features) != set(mods):
      _fail(where, f"split '{sname}' has features for {sorted(sp.features)} but modalities are {list(mods)}")
    for m in mods:
      _check_modality(where, sname, sp, m, ds, b, rank)
    extra_masks = [m for m in sp.masks if m not in mods or np.ndim(sp.features[m]) != 3]
    if extra_masks:
      _fail(where, f"split '{sname}': masks given for non-sequence modalities {extra_masks}")
    extra_present = [m for m in sp.present if m not in mods]
    if extra_present:
      _fail(where, f"split '{sname}': presence given for unknown modalities {extra_present}")
    for g, v in sp.groups.items():
      if np.shape(v) != (b,):
        _fail(where, f"split '{sname}': groups['{g}'] have shape {np.shape(v)}, expected [{b}]")
    uniq, first, counts = np.unique(ids.astype(str), return_index=True, return_counts=True)
    if (counts > 1).any():
      dup = uniq[counts > 1]
      name = min(dup, key=lambda u: first[np.searchsorted(uniq, u)])
      _fail(
        where,
        f"split '{sname}': sample id {str(name)!r} occurs {int(counts[uniq == name][0])} times "
        f"({len(dup)} ids are duplicated); sample ids must be unique (two files for one recording?)",
      )
    empty = samples_without_data(sp, mods)
    if empty.size:
      _fail(
        where,
        f"split '{sname}': {empty.size} samples have no data in any modality (first {str(ids[empty[0]])!r}: "
        "every step masked or absent); drop them before training",
      )
  return ds


def samples_without_data(split: Split, modalities=None) -> np.ndarray:
  """int ``[n]``: indices of the samples of ``split`` that have no data in any of ``modalities`` (default: all of
  the split's): for each modality every step is padding (``masks``) or absent (``present``). Such a sample carries
  nothing to predict from; :func:`validate` refuses it for the dataset's modalities, and a run that uses a subset of
  them should refuse it for that subset (``check_split_sizes(..., modalities=...)``)."""
  mods = tuple(split.features) if modalities is None else tuple(modalities)
  b = len(split)
  has = np.zeros(b, bool)
  for m in mods:
    x = split.features[m]
    real = np.asarray(split.masks[m], bool) if np.ndim(x) == 3 and m in split.masks else np.ones((b, 1), bool)
    if m in split.present:
      p = np.asarray(split.present[m], bool)
      real = real & (p[:, None] if p.ndim == 1 else p)
    has |= real.any(axis=1)
  return np.flatnonzero(~has)


MIN_SPLIT = 2
"""Fewest labelled samples per head (and, for a classification head, fewest classes present) that a train, valid or
test split may have: one sample cannot select a model or define a correlation or a per-class score."""
WARN_SPLIT = 10
"""Below this many labelled samples per head, :func:`check_split_sizes` returns a warning (scores are noisy)."""


def check_split_sizes(
  train: Split,
  valid: Split,
  test: Split,
  where: str,
  heads=None,
  label_specs: Mapping[str, LabelSpec] | None = None,
  modalities=None,
) -> list[str]:
  """Refuse splits too small to train, select or score on; return warnings for small ones.

  For every label head in ``heads`` (default: the heads of ``train``), each split must have at least
  :data:`MIN_SPLIT` samples labelled for it, and for a classification head (``label_specs``, or integer labels when
  no spec is given) at least :data:`MIN_SPLIT` distinct classes among them; otherwise a one-line ValueError starting
  with ``where`` (e.g. ``'fold_2'``) names the split, the head and the minimum. With ``modalities``, a sample with no
  data in any of them is refused too (:func:`samples_without_data`). Returns one warning line per (split, head)
  with fewer than :data:`WARN_SPLIT` labelled samples, and one per (split, regression head) whose labels are all
  equal (a constant test split scores any model like a constant guess)."""
  named = {"train": train, "valid": valid, "test": test}
  heads = tuple(train.labels) if heads is None else tuple(heads)
  warnings = []
  for sname, sp in named.items():
    if modalities is not None:
      empty = samples_without_data(sp, modalities)
      if empty.size:
        raise ValueError(
          f"{where}: split '{sname}': {empty.size} samples have no data in any of {list(modalities)} "
          f"(first {str(np.asarray(sp.ids)[empty[0]])!r}); drop them or use other modalities"
        )
    for h in heads:
      if h not in sp.labels:
        raise ValueError(f"{where}: split '{sname}' has no labels for head '{h}' (it has {sorted(sp.labels)})")
      mask = sp.label_mask(h)
      n = int(mask.sum())
      if n < MIN_SPLIT:
        raise ValueError(
          f"{where}: split '{sname}' has {n} sample(s) labelled for '{h}'; at least {MIN_SPLIT} are needed to "
          "train, select a model and score it (use larger splits or fewer folds)"
        )
      y = np.asarray(sp.labels[h])[mask]
      spec = (label_specs or {}).get(h)
      is_class = spec.kind == "classification" if spec is not None else np.issubdtype(y.dtype, np.integer)
      if is_class:
        present = np.unique(y)
        if present.size < MIN_SPLIT:
          names = [spec.classes[int(c)] for c in present] if spec is not None and spec.classes else present.tolist()
          raise ValueError(
            f"{where}: split '{sname}' holds only class {names} of '{h}' ({n} samples); at least {MIN_SPLIT} "
            "classes are needed to train or score a classifier (use other folds or a stratified split)"
          )
      else:
        cols = np.asarray(y, np.float64).reshape(n, -1)
        const = [k for k in range(cols.shape[1]) if np.all(cols[:, k] == cols[0, k])]
        if const:
          dims = "" if cols.shape[1] == 1 else f" (dimension {', '.join(map(str, const))})"
          warnings.append(
            f"{where}: split '{sname}': every '{h}' label{dims} is {cols[0, const[0]]:g}: its correlation is "
            "undefined and its scores cannot tell a model from a constant guess"
          )
      if n < WARN_SPLIT:
        warnings.append(
          f"{where}: split '{sname}' has only {n} samples labelled for '{h}' (below {WARN_SPLIT}): its scores are noisy"
        )
  return warnings


def _split_arrays(split: Split, modalities) -> dict[str, np.ndarray]:
  """The arrays of a split under their on-disk (version 2) names."""
  arrays: dict[str, np.ndarray] = {"ids": np.asarray(split.ids).astype(str)}
  for m in modalities:
    arrays[f"features.{m}"] = split.features[m]
    if m in split.masks:
      arrays[f"mask.{m}"] = split.masks[m]
    if m in split.present:
      arrays[f"present.{m}"] = np.asarray(split.present[m], bool)
  for h, y in split.labels.items():
    arrays[f"label.{h}"] = np.asarray(y)
  for h, v in split.label_masks.items():
    arrays[f"label_mask.{h}"] = np.asarray(v, bool)
  for g, v in split.groups.items():
    v = np.asarray(v)
    arrays[f"group.{g}"] = v.astype(str) if v.dtype.kind in "UO" else v
  return arrays


def _replaceable(directory: Path) -> bool:
  """An existing folder may be replaced only if it is empty or a jmoe dataset (never a folder of user files)."""
  if not directory.exists():
    return True
  if not directory.is_dir():
    return False
  entries = {p.name for p in directory.iterdir()}
  return not entries or "meta.json" in entries


def save_dataset(ds: Dataset, directory) -> Path:
  """Validate ``ds`` and write it (format 2) to ``directory``; return the path.

  Written into a temporary sibling folder and renamed into place, so an interrupted save leaves either the old
  dataset or the new one, never a mixture. An existing ``directory`` is replaced only when it is empty or holds a
  jmoe dataset.
  """
  directory = Path(directory)
  validate(ds, directory)
  if not _replaceable(directory):
    raise FileExistsError(f"{directory}: exists and is not a jmoe dataset; refusing to overwrite it")
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
  try:
    for sname, sp in ds.splits.items():
      (tmp / sname).mkdir()
      for key, arr in _split_arrays(sp, ds.modalities).items():
        np.save(tmp / sname / f"{key}.npy", arr, allow_pickle=False)
    meta = {
      "format_version": FORMAT_VERSION,
      "name": ds.name,
      "modalities": list(ds.modalities),
      "dims": {m: int(ds.dims[m]) for m in ds.modalities},
      "modality_meta": {m: dict(v) for m, v in ds.modality_meta.items()},
      "label_specs": {h: s.to_json() for h, s in ds.label_specs.items()},
      "synthetic": bool(ds.synthetic),
      "source": ds.source,
      "splits": {s: len(sp) for s, sp in ds.splits.items()},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    if directory.exists():
      old = directory.with_name(f".{directory.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(directory, old)
      os.replace(tmp, directory)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.replace(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return directory


def _read_meta(directory: Path) -> dict:
  path = directory / "meta.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file (not a jmoe dataset directory)")
  try:
    meta = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a jmoe dataset (meta.json is not JSON: {e})") from None
  if not isinstance(meta, dict):
    raise ValueError(f"{path}: not a jmoe dataset (meta.json is not a JSON object)")
  need = ("format_version", "name", "modalities", "dims", "synthetic", "source", "splits")
  missing = [k for k in need if k not in meta]
  if missing:
    raise ValueError(f"{path}: not a jmoe dataset (meta.json lacks {', '.join(missing)})")
  if meta["format_version"] not in READ_VERSIONS:
    raise ValueError(
      f"{path}: format_version {meta['format_version']!r} is not supported (this jmoe reads versions "
      f"{', '.join(map(str, READ_VERSIONS))})"
    )
  if not isinstance(meta["splits"], dict):
    raise ValueError(f"{path}: not a jmoe dataset (splits must be an object of sizes)")
  for s, n in meta["splits"].items():
    if isinstance(n, bool) or not isinstance(n, int):
      raise ValueError(f"{path}: splits.{s} is {n!r}; split sizes must be JSON integers (e.g. {s!r}: 96)")
  mods = meta["modalities"]
  if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
    raise ValueError(f'{path}: modalities is {mods!r}; it must be a JSON list of names (e.g. ["text", "audio"])')
  if not isinstance(meta["dims"], dict):
    raise ValueError(f"{path}: dims is {meta['dims']!r}; it must be an object {{modality: feature width}}")
  return meta


def _read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
  """All arrays of an .npz (no pickles); ValueError 'not <what>' for anything else."""
  with open(path, "rb") as fh:
    head = fh.read(8)
  if head.startswith(b"\x93NUMPY"):
    raise ValueError(f"{path}: not {what} (a single .npy array, not an .npz archive)")
  if not head.startswith(b"PK"):
    raise ValueError(f"{path}: not {what} (not an .npz/zip archive; file starts with {head!r})")
  try:
    z = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path}: not {what} (cannot read as .npz: {msg})") from None
  if not isinstance(z, np.lib.npyio.NpzFile):
    raise ValueError(f"{path}: not {what} (a single .npy array, not an .npz archive)")
  try:
    with z:
      return {k: z[k] for k in z.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path}: not {what} (corrupt .npz member: {msg})") from None


def _read_split_v1(path: Path, modalities) -> Split:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file (every format-1 jmoe dataset has train/valid/test .npz)")
  arrays = _read_npz(path, "a jmoe dataset")
  missing = [k for k in (*modalities, "labels", "ids") if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a jmoe dataset (missing arrays {missing})")
  features = {m: arrays[m] for m in modalities}
  masks = {m: arrays[f"{m}_mask"] for m in modalities if f"{m}_mask" in arrays}
  return Split(features=features, masks=masks, labels=arrays["labels"], ids=arrays["ids"])


def _read_npy(path: Path, mmap: bool) -> np.ndarray:
  try:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path}: not a jmoe dataset array ({msg})") from None


def _read_split_v2(folder: Path, modalities, heads, mmap: bool) -> Split:
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: no such split folder (listed in meta.json)")
  files = {p.stem: p for p in folder.glob("*.npy")}
  missing = [
    k for k in ("ids", *(f"features.{m}" for m in modalities), *(f"label.{h}" for h in heads)) if k not in files
  ]
  if missing:
    raise ValueError(f"{folder}: not a jmoe dataset split (missing arrays {missing})")
  arr = {k: _read_npy(p, mmap) for k, p in files.items()}
  by = lambda prefix: {k[len(prefix) + 1 :]: v for k, v in arr.items() if k.startswith(prefix + ".")}
  return Split(
    features=by("features"),
    masks=by("mask"),
    labels=by("label"),
    ids=np.asarray(arr["ids"]),
    label_masks=by("label_mask"),
    groups=by("group"),
    present=by("present"),
  )


def load_dataset(directory, label_range: tuple[float, float] | None = None, mmap: bool = False) -> Dataset:
  """Read a dataset written by :func:`save_dataset` (format 2) or an earlier jmoe (format 1); validated.

  ``mmap=True`` memory-maps the feature arrays of a format-2 dataset (read-only). One-line errors.
  """
  directory = Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory}: no such dataset directory")
  meta = _read_meta(directory)
  mods = tuple(meta["modalities"])
  meta_path = directory / "meta.json"
  if meta["format_version"] == 1:
    try:
      canonical_modalities(mods, where=str(meta_path))
    except ValueError as e:
      raise ValueError(str(e)) from None
    splits = {s: _read_split_v1(directory / f"{s}.npz", mods) for s in SPLITS}
    specs = {SENTIMENT: SENTIMENT_SPEC}
    where_of = lambda s: directory / f"{s}.npz"
  else:
    try:
      specs = {h: LabelSpec.from_json(v) for h, v in dict(meta.get("label_specs") or {}).items()}
    except (TypeError, ValueError) as e:
      raise ValueError(f"{meta_path}: bad label_specs ({e})") from None
    splits = {s: _read_split_v2(directory / s, mods, tuple(specs), mmap) for s in meta["splits"]}
    where_of = lambda s: directory / s
  for s, sp in splits.items():
    want = meta["splits"].get(s)
    if want != len(sp):
      raise ValueError(f"{where_of(s)}: holds {len(sp)} samples but meta.json says {want}")
  try:
    dims = {m: int(meta["dims"][m]) for m in mods}
  except (KeyError, TypeError, ValueError):
    raise ValueError(f"{meta_path}: dims {meta['dims']!r} do not cover modalities {list(mods)}") from None
  ds = Dataset(
    name=str(meta["name"]),
    splits=splits,
    modalities=mods,
    dims=dims,
    synthetic=bool(meta["synthetic"]),
    source=str(meta["source"]),
    label_specs=specs,
    modality_meta=dict(meta.get("modality_meta") or {}),
  )
  return validate(ds, directory, label_range=label_range)


def read_feature_table(path, key: str = "pooled") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Read a feature table written by the offline feature tool (``tools/extract_features``).

  The ``.npz`` holds ``'ids'`` str ``[B]`` and ``key``: float ``[B, D]`` (e.g. ``'pooled'``)
  or float ``[B, T, D]`` (e.g. ``'local'``, which then needs ``'mask'`` bool ``[B, T]``).
  Returns ``(ids [B], features float32, mask [B, T] or None)``; one-line errors for a
  missing file, wrong format, duplicate ids or NaN/Inf values.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such feature file")
  arrays = _read_npz(path, "a feature .npz")
  if "ids" not in arrays or key not in arrays:
    raise ValueError(f"{path}: not a feature .npz (needs arrays 'ids' and '{key}', has {sorted(arrays)})")
  ids, feats = arrays["ids"], arrays[key]
  if ids.ndim != 1 or feats.ndim not in (2, 3) or feats.shape[0] != ids.shape[0]:
    raise ValueError(f"{path}: expected ids [B] and {key} [B, D] or [B, T, D], got {ids.shape} and {feats.shape}")
  if ids.dtype.kind not in "UO" or not np.issubdtype(feats.dtype, np.number):
    raise ValueError(f"{path}: ids must be strings and {key} numeric, got {ids.dtype} and {feats.dtype}")
  ids = ids.astype(str)
  if len(set(ids.tolist())) != len(ids):
    raise ValueError(f"{path}: duplicate ids in the feature table")
  feats = feats.astype(np.float32)
  bad = int(feats.size - np.count_nonzero(np.isfinite(feats)))
  if bad:
    raise ValueError(f"{path}: {bad} NaN/Inf values in '{key}'")
  mask = None
  if feats.ndim == 3:
    mask = arrays.get("mask")
    if mask is None or mask.shape != feats.shape[:2]:
      got = None if mask is None else mask.shape
      raise ValueError(f"{path}: sequence features '{key}' {feats.shape} need 'mask' [B, T], got {got}")
    mask = mask.astype(bool)
  return ids, feats, mask


def load_feature_npz(path, key: str = "pooled") -> dict[str, np.ndarray]:
  """Utterance vectors from a feature ``.npz`` (``'ids'`` ``[B]`` + ``key`` ``[B, D]``) as id -> float32 ``[D]``."""
  ids, feats, mask = read_feature_table(path, key)
  if mask is not None:
    raise ValueError(f"{path}: '{key}' is a sequence [B, T, D]; expected utterance vectors [B, D]")
  return dict(zip(ids.tolist(), feats))


def describe(ds: Dataset) -> str:
  """One line: name, synthetic flag, sizes, modality shapes and source."""
  parts = []
  tr = ds.splits.get("train", ds.splits.get(POOL))
  for m in ds.modalities:
    shape = "x".join(str(s) for s in tr.features[m].shape[1:]) if tr is not None else str(ds.dims[m])
    parts.append(f"{m}[{shape}]")
  sizes = "/".join(str(len(sp)) for sp in ds.splits.values())
  flag = "SYNTHETIC" if ds.synthetic else "real"
  return f"{ds.name} ({flag}) {sizes} {' '.join(parts)} from {ds.source}"


def _valid_units(split: Split, m: str) -> np.ndarray:
  """bool ``[B]`` or ``[B, T]``: the units of modality ``m`` that hold real features (mask and presence)."""
  x = split.features[m]
  valid = np.ones(x.shape[:-1], bool)
  if m in split.masks:
    valid &= np.asarray(split.masks[m], bool)
  if m in split.present:
    p = np.asarray(split.present[m], bool)
    valid &= p if p.ndim == valid.ndim else p.reshape(p.shape + (1,) * (valid.ndim - p.ndim))
  return valid


def feature_stats(train: Split, modalities, eps: float = 1e-6) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Per-feature mean and std ``[D]`` of every modality over the real units of ``train`` only (padding steps and
  missing modalities excluded; float64). A feature that is constant on train gets std 1 (it is only centred)."""
  stats = {}
  for m in modalities:
    x = np.asarray(train.features[m], np.float64)[_valid_units(train, m)]  # [units, D]
    if len(x) == 0:
      raise ValueError(f"feature standardisation: modality '{m}' has no real unit in the training split")
    std = x.std(axis=0)
    stats[m] = (x.mean(axis=0), np.where(std > eps, std, 1.0))
  return stats


def standardize(split: Split, stats: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Split:
  """``split`` with (x - mean) / std applied to the real units of each modality in ``stats``; padding and missing
  units stay exactly zero (so a missing modality is still a zero input)."""
  feats = dict(split.features)
  for m, (mean, std) in stats.items():
    x = np.asarray(split.features[m])
    valid = _valid_units(split, m)[..., None]
    feats[m] = np.where(valid, (x - mean) / std, 0.0).astype(x.dtype)
  return dataclasses.replace(split, features=feats)
