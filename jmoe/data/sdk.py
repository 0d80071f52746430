"""CMU-MultimodalSDK computational sequences (``.csd``) and the standard folds.

A ``.csd`` file is HDF5 with one root group named after the sequence (e.g.
``'Opinion Segment Labels'``) holding::

    <root>/data/<video_id>/features    float [k, d]   one row per interval
    <root>/data/<video_id>/intervals   float [k, 2]   (start, end) in seconds
    <root>/metadata/<key>              small string datasets (description, dims, ...)

Segment ids follow the SDK convention used by MOSI/MOSEI label files: row ``i``
(0-based, in *stored* order, which is not always time order) of video ``v`` is the
utterance ``f'{v}_{i+1}'``.

:func:`load_sdk_dataset` turns a label ``.csd`` plus feature ``.csd`` files (e.g.
COVAREP, FACET, GloVe word vectors) and a folds JSON into a jmoe
:class:`~jmoe.data.format.Dataset`: for every labelled segment it takes the feature
rows whose intervals lie inside the segment's interval, and either averages them
(an utterance vector ``[D]``) or keeps them in time order padded/truncated to ``T``
steps with a mask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from jmoe.data.format import LABEL_RANGE, SPLITS, Dataset, Split, canonical_modalities, validate


def _open_h5(path: Path) -> h5py.File:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such computational sequence file")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise ValueError(f"{path}: not a CMU-MultimodalSDK computational sequence (not HDF5: {e})") from None


def _root(f: h5py.File, path: Path) -> h5py.Group:
  groups = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
  if len(groups) != 1:
    raise ValueError(f"{path}: not a computational sequence (expected one root group, found {groups})")
  root = f[groups[0]]
  if "data" not in root or not isinstance(root["data"], h5py.Group):
    raise ValueError(f"{path}: not a computational sequence (root group '{groups[0]}' has no 'data' group)")
  return root


def read_csd(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Read every video of a ``.csd`` file.

  Returns video_id -> ``(features [k, d], intervals [k, 2])`` in stored row order
  (features keep their stored float dtype; intervals are float64 seconds).
  """
  path = Path(path)
  with _open_h5(path) as f:
    try:
      return _read_csd(f, path)
    except (RuntimeError, OSError, KeyError) as e:  # h5py on a damaged file (bad node/heap signature, ...)
      raise _damaged(path, e) from None


def _damaged(path: Path, e: BaseException) -> ValueError:
  why = str(e).strip().splitlines()
  return ValueError(
    f"{path}: damaged computational sequence file (HDF5: {why[0] if why else type(e).__name__}); "
    "replace it with an intact copy"
  )


def _read_csd(f: h5py.File, path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  out = {}
  data = _root(f, path)["data"]
  for vid, g in data.items():
    if not isinstance(g, h5py.Group) or "features" not in g or "intervals" not in g:
      raise ValueError(f"{path}: video '{vid}' lacks 'features'/'intervals' datasets")
    feats = np.asarray(g["features"][()])
    ivals = np.asarray(g["intervals"][()], dtype=np.float64)
    if feats.ndim == 1:
      feats = feats[:, None]
    if ivals.ndim != 2 or ivals.shape[1] != 2 or feats.ndim != 2 or feats.shape[0] != ivals.shape[0]:
      raise ValueError(
        f"{path}: video '{vid}' has features {feats.shape} and intervals {ivals.shape}; expected [k, d] and [k, 2]"
      )
    out[str(vid)] = (feats, ivals)
  return out


def read_csd_metadata(path) -> dict[str, str]:
  """The ``metadata`` entries of a ``.csd`` file as strings (plus ``'root group'``, the HDF5 root group name)."""
  path = Path(path)
  with _open_h5(path) as f:
    try:
      root = _root(f, path)
      meta = {"root group": root.name.lstrip("/")}
      if "metadata" in root:
        for k, v in root["metadata"].items():
          val = v[()]
          if isinstance(val, np.ndarray):
            val = val.ravel()[0] if val.size else ""
          meta[k] = val.decode() if isinstance(val, bytes) else str(val)
    except (RuntimeError, OSError, KeyError) as e:
      raise _damaged(path, e) from None
    return meta


def segment_id(video: str, row: int) -> str:
  """SDK utterance id of 0-based stored row ``row`` of ``video``: ``f'{video}_{row+1}'``."""
  return f"{video}_{row + 1}"


def load_mosi_labels(csd_path) -> dict[str, float]:
  """Segment id -> sentiment score from a MOSI/MOSEI-style label ``.csd`` ([k, 1] features)."""
  csd_path = Path(csd_path)
  labels = {}
  for vid, (feats, _) in read_csd(csd_path).items():
    if feats.shape[1] != 1:
      raise ValueError(f"{csd_path}: video '{vid}' has {feats.shape[1]} label columns, expected 1")
    for i, v in enumerate(feats[:, 0]):
      labels[segment_id(vid, i)] = float(v)
  return labels


def standard_folds(json_path) -> dict[str, list[str]]:
  """Split name -> list of video ids from a folds JSON ``{"train": [...], "valid": [...], "test": [...]}``."""
  json_path = Path(json_path)
  if not json_path.is_file():
    raise FileNotFoundError(f"{json_path}: no such folds file")
  try:
    folds = json.loads(json_path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{json_path}: not a folds JSON ({e})") from None
  if not isinstance(folds, dict) or set(folds) != set(SPLITS):
    keys = sorted(folds) if isinstance(folds, dict) else type(folds).__name__
    raise ValueError(f"{json_path}: not a folds JSON (expected keys {list(SPLITS)}, got {keys})")
  out = {}
  seen: dict[str, str] = {}
  for s in SPLITS:
    vids = folds[s]
    if not isinstance(vids, list) or not all(isinstance(v, str) for v in vids):
      raise ValueError(f"{json_path}: fold '{s}' is not a list of video id strings")
    for v in vids:
      if v in seen:
        raise ValueError(f"{json_path}: video '{v}' is in both '{seen[v]}' and '{s}'")
      seen[v] = s
    out[s] = list(vids)
  return out


def _inside(ivals: np.ndarray, start: float, end: float, tol: float) -> np.ndarray:
  return (ivals[:, 0] >= start - tol) & (ivals[:, 1] <= end + tol)


def load_sdk_dataset(
  label_csd,
  feature_csds: Mapping[str, object],
  folds_json,
  *,
  seq_len: int | None = None,
  name: str = "sdk",
  label_column: int = 0,
  tol: float = 1e-3,
  empty: str = "error",
  nonfinite: str = "error",
  label_range: tuple[float, float] = LABEL_RANGE,
) -> Dataset:
  """Build a Dataset from an SDK label sequence, feature sequences and folds.

  Args:
    label_csd: label ``.csd``, one row per segment: ``[k, 1]`` sentiment for MOSI, ``[k, 7]``
      for MOSEI's ``CMU_MOSEI_Labels.csd`` (sentiment, then six emotions).
    label_column: which label column is the target (default 0 = sentiment).
    feature_csds: modality (``'text'``/``'audio'``/``'vision'``) -> feature ``.csd``.
    folds_json: ``{"train": [videos], "valid": [...], "test": [...]}``.
    seq_len: None -> each modality is the mean of the segment's feature rows,
      float32 ``[B, D]``; int ``T`` -> the rows in time order, truncated to the first
      ``T`` and zero-padded, float32 ``[B, T, D]`` with bool mask ``[B, T]``.
    tol: seconds of slack when testing that a feature interval lies inside a segment.
    empty: what to do with a segment that has no feature rows in some modality:
      ``'error'`` (default) raises; ``'zeros'`` keeps it with zero features (all-False
      mask for sequences); ``'drop'`` removes the segment.
    nonfinite: ``'error'`` (default; validation reports counts) or ``'zero'``
      (replace NaN/Inf feature values by 0 before pooling, as SDK users commonly do
      with COVAREP's -inf).

  Rows of a split follow the folds' video order, then the label file's stored row order.
  """
  label_csd, folds_json = Path(label_csd), Path(folds_json)
  if empty not in ("error", "zeros", "drop"):
    raise ValueError(f"empty must be 'error', 'zeros' or 'drop', got {empty!r}")
  if nonfinite not in ("error", "zero"):
    raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
  if seq_len is not None and int(seq_len) < 1:
    raise ValueError(f"seq_len must be a positive int or None, got {seq_len!r}")
  mods = canonical_modalities(feature_csds, where="feature_csds")
  if not mods:
    raise ValueError("feature_csds: give at least one modality -> .csd path")
  labels = read_csd(label_csd)
  folds = standard_folds(folds_json)
  feats = {m: (Path(feature_csds[m]), read_csd(feature_csds[m])) for m in mods}
  dims = {}
  for m, (p, table) in feats.items():
    widths = {f.shape[1] for f, _ in table.values()}
    if len(widths) != 1:
      raise ValueError(f"{p}: videos have different feature widths {sorted(widths)}")
    dims[m] = widths.pop()

  splits = {}
  for s in SPLITS:
    rows: dict[str, list] = {m: [] for m in mods}
    lens: dict[str, list] = {m: [] for m in mods}
    ys, ids = [], []
    for vid in folds[s]:
      if vid not in labels:
        raise ValueError(f"{label_csd}: no labels for video '{vid}' listed in fold '{s}' of {folds_json}")
      lab, ivals = labels[vid]
      if not 0 <= label_column < lab.shape[1]:
        raise ValueError(
          f"{label_csd}: video '{vid}' has {lab.shape[1]} label columns, label_column={label_column} is out of range"
        )
      for i in range(lab.shape[0]):
        sid = segment_id(vid, i)
        start, end = ivals[i]
        picked = {}
        for m, (p, table) in feats.items():
          if vid not in table:
            raise ValueError(f"{p}: no features for video '{vid}' (needed by segment {sid} in split '{s}')")
          f, fi = table[vid]
          sel = np.flatnonzero(_inside(fi, start, end, tol))
          sel = sel[np.argsort(fi[sel, 0], kind="stable")]
          picked[m] = f[sel].astype(np.float32)
        if any(len(v) == 0 for v in picked.values()):
          if empty == "drop":
            continue
          if empty == "error":
            m = next(m for m, v in picked.items() if len(v) == 0)
            raise ValueError(
              f"{feats[m][0]}: no feature rows inside segment {sid} "
              f"[{start:.3f}, {end:.3f}] s (pass empty='zeros' or 'drop')"
            )
        for m, v in picked.items():
          if nonfinite == "zero":
            v = np.where(np.isfinite(v), v, 0.0).astype(np.float32)
          if seq_len is None:
            rows[m].append(v.mean(axis=0) if len(v) else np.zeros(dims[m], np.float32))
          else:
            v = v[:seq_len]
            pad = np.zeros((seq_len, dims[m]), np.float32)
            pad[: len(v)] = v
            rows[m].append(pad)
            lens[m].append(len(v))
        ys.append(float(lab[i, label_column]))
        ids.append(sid)
    features = {
      m: (
        np.stack(rows[m]).astype(np.float32)
        if rows[m]
        else np.zeros((0, dims[m]) if seq_len is None else (0, seq_len, dims[m]), np.float32)
      )
      for m in mods
    }
    for m in mods:
      bad = int(features[m].size - np.count_nonzero(np.isfinite(features[m])))
      if bad:
        raise ValueError(
          f"{feats[m][0]}: {bad} NaN/Inf values in '{m}' features of split '{s}' "
          f"(pass nonfinite='zero' to replace them by 0)"
        )
    masks = {}
    if seq_len is not None:
      for m in mods:
        masks[m] = np.arange(seq_len)[None, :] < np.asarray(lens[m], np.int64).reshape(-1, 1)
    splits[s] = Split(features=features, masks=masks, labels=np.asarray(ys, np.float32), ids=np.asarray(ids, dtype=str))
  source = (
    f"load_sdk_dataset(labels={label_csd}[:, {label_column}], folds={folds_json}, "
    + ", ".join(f"{m}={feats[m][0]}" for m in mods)
    + f", seq_len={seq_len})"
  )
  ds = Dataset(name=name, splits=splits, modalities=mods, dims=dims, synthetic=False, source=source)
  return validate(ds, label_csd, label_range=label_range)
