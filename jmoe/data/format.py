"""The jmoe dataset format: in-memory dataclasses and the on-disk layout.

Axis alphabet used in every docstring of ``jmoe.data``: **N** samples (utterances),
**T** time steps, **D** feature width.

In memory
---------
A :class:`Dataset` holds three :class:`Split` objects (``'train'``, ``'valid'``,
``'test'``) plus metadata. A split stores, per modality ``m`` (a subset of
:data:`MODALITIES`, always listed in canonical order ``text, audio, vision`` --
letters L, A, V):

* ``features[m]``: float32 ``[N, D]`` (one vector per utterance) or float32
  ``[N, T, D]`` (a zero-padded sequence per utterance);
* ``masks[m]``: bool ``[N, T]``, present for sequence modalities only
  (``True`` = real time step, ``False`` = padding);
* ``labels``: float32 ``[N]`` sentiment score in ``[-3, 3]``;
* ``ids``: str ``[N]`` utterance ids such as ``'<video>_<n>'``.

``D`` of a modality is the same in every split and equals ``Dataset.dims[m]``;
``T`` may differ between splits. ``Dataset.synthetic`` is True for generated data,
and ``Dataset.source`` says where the data came from (paths, or generator and seed).

On disk (written by :func:`save_dataset`, read by :func:`load_dataset`)
----------------------------------------------------------------------
::

    <dir>/meta.json     {"format_version": 1, "name": ..., "modalities": [...],
                         "dims": {m: D}, "synthetic": bool, "source": str,
                         "splits": {"train": N_train, "valid": N_valid, "test": N_test}}
    <dir>/<split>.npz   one per split, keys:
                         '<m>'       float32 [N, D] or [N, T, D] for each modality m
                         '<m>_mask'  bool [N, T]  (sequence modalities only)
                         'labels'    float32 [N]
                         'ids'       unicode [N]

The ``.npz`` files hold plain arrays only and are read with ``allow_pickle=False``.
Every load goes through :func:`validate`, which raises a one-line ``ValueError``
naming the file or directory and the problem.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
"""Canonical modality order; letters L (text), A (audio), V (vision)."""

SPLITS: tuple[str, ...] = ("train", "valid", "test")
FORMAT_VERSION = 1
LABEL_RANGE: tuple[float, float] = (-3.0, 3.0)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset.

  Attributes:
    features: modality -> float32 ``[N, D]`` (utterance vectors) or ``[N, T, D]``
      (zero-padded sequences).
    masks: modality -> bool ``[N, T]`` for the sequence modalities only
      (True = real step).
    labels: float32 ``[N]`` sentiment in ``[-3, 3]``.
    ids: str ``[N]`` utterance ids, e.g. ``'<video>_<n>'``.
  """

  features: dict[str, np.ndarray]
  masks: dict[str, np.ndarray]
  labels: np.ndarray
  ids: np.ndarray

  def __len__(self) -> int:
    return int(np.shape(self.labels)[0])

  def is_sequence(self, modality: str) -> bool:
    """True when ``features[modality]`` is ``[N, T, D]``."""
    return np.ndim(self.features[modality]) == 3

  def take(self, indices) -> "Split":
    """A new split with the samples at ``indices`` (int ``[K]`` or bool ``[N]``)."""
    idx = np.asarray(indices)
    return Split(
      features={m: x[idx] for m, x in self.features.items()},
      masks={m: x[idx] for m, x in self.masks.items()},
      labels=self.labels[idx],
      ids=self.ids[idx],
    )


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A named dataset: three splits plus metadata (see the module docstring)."""

  name: str
  splits: dict[str, Split]
  modalities: tuple[str, ...]
  dims: dict[str, int]
  synthetic: bool
  source: str


def canonical_modalities(names, where: str = "modalities") -> tuple[str, ...]:
  """Sort modality names into canonical order; ValueError for unknown or repeated names."""
  names = tuple(names)
  unknown = [m for m in names if m not in MODALITIES]
  if unknown:
    raise ValueError(f"{where}: unknown modality {unknown[0]!r} (known: {', '.join(MODALITIES)})")
  if len(set(names)) != len(names):
    raise ValueError(f"{where}: modality listed twice in {names}")
  return tuple(m for m in MODALITIES if m in names)


def _fail(where, msg: str):
  raise ValueError(f"{where}: {msg}".replace("\n", " "))


def validate(ds: Dataset, where, label_range: tuple[float, float] = LABEL_RANGE) -> Dataset:
  """Check ``ds`` against the format; return it unchanged or raise a one-line ValueError.

  ``where`` names the file or directory the data came from and starts the message.
  Checks: the three splits exist and are non-empty; modalities are known, in canonical
  order and match ``dims``; every feature array is float32 ``[N, D]`` or ``[N, T, D]``
  with ``D == dims[m]`` and the same rank in every split; sequence modalities (and only
  they) have a bool ``[N, T]`` mask; features, labels and ids agree on N; features are
  finite; labels are finite and inside ``label_range``.
  """
  if not isinstance(ds, Dataset):
    _fail(where, f"expected a jmoe Dataset, got {type(ds).__name__}")
  mods = tuple(ds.modalities)
  if not mods:
    _fail(where, "dataset has no modalities")
  try:
    canon = canonical_modalities(mods, where=str(where))
  except ValueError as e:
    raise ValueError(str(e)) from None
  if canon != mods:
    _fail(where, f"modalities {mods} are not in canonical order {canon}")
  if set(ds.dims) != set(mods):
    _fail(where, f"dims metadata covers {sorted(ds.dims)} but modalities are {list(mods)}")
  if set(ds.splits) != set(SPLITS):
    missing = [s for s in SPLITS if s not in ds.splits]
    extra = [s for s in ds.splits if s not in SPLITS]
    _fail(where, f"splits must be exactly {list(SPLITS)}; missing {missing}, unexpected {extra}")
  lo, hi = label_range
  rank: dict[str, tuple[int, str]] = {}
  for sname in SPLITS:
    sp = ds.splits[sname]
    if not isinstance(sp, Split):
      _fail(where, f"split '{sname}' is a {type(sp).__name__}, not a Split")
    labels = np.asarray(sp.labels)
    if labels.ndim != 1:
      _fail(where, f"labels of split '{sname}' have shape {labels.shape}, expected [N]")
    n = labels.shape[0]
    if n == 0:
      _fail(where, f"split '{sname}' is empty")
    if set(sp.features) != set(mods):
      _fail(where, f"split '{sname}' has features for {sorted(sp.features)} but modalities are {list(mods)}")
    ids = np.asarray(sp.ids)
    if ids.shape != (n,):
      _fail(where, f"split '{sname}': ids have shape {ids.shape} but labels have N={n}")
    if ids.dtype.kind not in "UO":
      _fail(where, f"split '{sname}': ids must be strings, got dtype {ids.dtype}")
    if not np.issubdtype(labels.dtype, np.floating):
      _fail(where, f"split '{sname}': labels must be float, got dtype {labels.dtype}")
    bad = ~np.isfinite(labels)
    if bad.any():
      _fail(where, f"split '{sname}': {int(bad.sum())} labels are NaN/Inf")
    out = (labels < lo) | (labels > hi)
    if out.any():
      _fail(
        where,
        f"split '{sname}': {int(out.sum())} labels outside [{lo:g}, {hi:g}] "
        f"(min {labels.min():g}, max {labels.max():g})",
      )
    for m in mods:
      x = sp.features[m]
      if not isinstance(x, np.ndarray):
        _fail(where, f"split '{sname}': features['{m}'] is a {type(x).__name__}, not a numpy array")
      if x.dtype != np.float32:
        _fail(where, f"split '{sname}': features['{m}'] have dtype {x.dtype}, expected float32")
      if x.ndim not in (2, 3):
        _fail(where, f"split '{sname}': features['{m}'] have shape {x.shape}, expected [N, D] or [N, T, D]")
      if x.shape[0] != n:
        _fail(where, f"split '{sname}': features['{m}'] have N={x.shape[0]} but labels have N={n}")
      if x.shape[-1] != ds.dims[m]:
        prev = rank.get(m)
        other = f" (split '{prev[1]}' has D={ds.dims[m]})" if prev else ""
        _fail(
          where, f"modality '{m}' has D={x.shape[-1]} in split '{sname}' but dims metadata says {ds.dims[m]}{other}"
        )
      if m in rank and rank[m][0] != x.ndim:
        _fail(
          where, f"modality '{m}' is rank {x.ndim} in split '{sname}' but rank {rank[m][0]} in split '{rank[m][1]}'"
        )
      rank.setdefault(m, (x.ndim, sname))
      nonfinite = int(x.size - np.count_nonzero(np.isfinite(x)))
      if nonfinite:
        _fail(where, f"split '{sname}': {nonfinite} NaN/Inf values in '{m}' features")
      if x.ndim == 3:
        if m not in sp.masks:
          _fail(where, f"split '{sname}': sequence modality '{m}' has no mask")
        mask = sp.masks[m]
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
          _fail(where, f"split '{sname}': mask of '{m}' must be a bool array")
        if mask.shape != x.shape[:2]:
          _fail(where, f"split '{sname}': mask of '{m}' has shape {mask.shape}, features have [N, T] = {x.shape[:2]}")
    extra_masks = [m for m in sp.masks if m not in mods or np.ndim(sp.features[m]) != 3]
    if extra_masks:
      _fail(where, f"split '{sname}': masks given for non-sequence modalities {extra_masks}")
  return ds


def _npz_arrays(split: Split, modalities) -> dict[str, np.ndarray]:
  arrays = {}
  for m in modalities:
    arrays[m] = split.features[m]
    if m in split.masks:
      arrays[f"{m}_mask"] = split.masks[m]
  arrays["labels"] = np.asarray(split.labels, np.float32)
  arrays["ids"] = np.asarray(split.ids).astype(str)
  return arrays


def save_dataset(ds: Dataset, directory) -> Path:
  """Validate ``ds`` and write it to ``directory`` (created if needed); return the path."""
  directory = Path(directory)
  validate(ds, directory)
  directory.mkdir(parents=True, exist_ok=True)
  for sname in SPLITS:
    np.savez(directory / f"{sname}.npz", **_npz_arrays(ds.splits[sname], ds.modalities))
  meta = {
    "format_version": FORMAT_VERSION,
    "name": ds.name,
    "modalities": list(ds.modalities),
    "dims": {m: int(ds.dims[m]) for m in ds.modalities},
    "synthetic": bool(ds.synthetic),
    "source": ds.source,
    "splits": {s: len(ds.splits[s]) for s in SPLITS},
  }
  (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
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
  if meta["format_version"] != FORMAT_VERSION:
    raise ValueError(
      f"{path}: format_version {meta['format_version']!r} is not supported (this jmoe reads version {FORMAT_VERSION})"
    )
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


def _read_split(path: Path, modalities) -> Split:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file (every jmoe dataset has train/valid/test .npz)")
  arrays = _read_npz(path, "a jmoe dataset")
  missing = [k for k in (*modalities, "labels", "ids") if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a jmoe dataset (missing arrays {missing})")
  features = {m: arrays[m] for m in modalities}
  masks = {m: arrays[f"{m}_mask"] for m in modalities if f"{m}_mask" in arrays}
  return Split(features=features, masks=masks, labels=arrays["labels"], ids=arrays["ids"])


def load_dataset(directory, label_range: tuple[float, float] = LABEL_RANGE) -> Dataset:
  """Read a dataset written by :func:`save_dataset`; validated, with one-line errors."""
  directory = Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory}: no such dataset directory")
  meta = _read_meta(directory)
  mods = tuple(meta["modalities"])
  meta_path = directory / "meta.json"
  try:
    canonical_modalities(mods, where=str(meta_path))
  except ValueError as e:
    raise ValueError(str(e)) from None
  splits = {s: _read_split(directory / f"{s}.npz", mods) for s in SPLITS}
  for s in SPLITS:
    want = meta["splits"].get(s) if isinstance(meta["splits"], dict) else None
    if want != len(splits[s]):
      raise ValueError(f"{directory / (s + '.npz')}: holds {len(splits[s])} samples but meta.json says {want}")
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
  )
  return validate(ds, directory, label_range=label_range)


def read_feature_table(path, key: str = "pooled") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """Read a feature table written by the offline feature tool (``tools/extract_features``).

  The ``.npz`` holds ``'ids'`` str ``[N]`` and ``key``: float ``[N, D]`` (e.g. ``'pooled'``)
  or float ``[N, T, D]`` (e.g. ``'local'``, which then needs ``'mask'`` bool ``[N, T]``).
  Returns ``(ids [N], features float32, mask [N, T] or None)``; one-line errors for a
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
    raise ValueError(f"{path}: expected ids [N] and {key} [N, D] or [N, T, D], got {ids.shape} and {feats.shape}")
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
      raise ValueError(f"{path}: sequence features '{key}' {feats.shape} need 'mask' [N, T], got {got}")
    mask = mask.astype(bool)
  return ids, feats, mask


def load_feature_npz(path, key: str = "pooled") -> dict[str, np.ndarray]:
  """Utterance vectors from a feature ``.npz`` (``'ids'`` ``[N]`` + ``key`` ``[N, D]``) as id -> float32 ``[D]``."""
  ids, feats, mask = read_feature_table(path, key)
  if mask is not None:
    raise ValueError(f"{path}: '{key}' is a sequence [N, T, D]; expected utterance vectors [N, D]")
  return dict(zip(ids.tolist(), feats))


def describe(ds: Dataset) -> str:
  """One line: name, synthetic flag, sizes, modality shapes and source."""
  parts = []
  tr = ds.splits.get("train")
  for m in ds.modalities:
    shape = "x".join(str(s) for s in tr.features[m].shape[1:]) if tr is not None else str(ds.dims[m])
    parts.append(f"{m}[{shape}]")
  sizes = "/".join(str(len(ds.splits[s])) for s in SPLITS if s in ds.splits)
  flag = "SYNTHETIC" if ds.synthetic else "real"
  return f"{ds.name} ({flag}) {sizes} {' '.join(parts)} from {ds.source}"
