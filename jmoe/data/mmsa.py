"""Feature pickles from MMSA and from MAG/MIB, read through a restricted unpickler.

Two layouts are recognised by their top-level keys:

**MMSA** (``aligned_50.pkl`` / ``unaligned_50.pkl`` for MOSI, MOSEI, SIMS): a dict with
``'train'``, ``'valid'``, ``'test'``, each a dict of arrays::

    'text'              float [B, T, D]   BERT (or GloVe) token features -- used as 'text'
    'text_bert'         int   [B, 3, T]   token ids / attention mask / segment ids
    'audio'             float [B, T, Da]
    'vision'            float [B, T, Dv]  (35-d FACET on MOSEI, 20-d on MOSI)
    'regression_labels' float [B]
    'id'                str   [B]          '<video>$_$<clip>'  -> jmoe id '<video>_<clip>'
    'audio_lengths', 'vision_lengths'  int [B]   optional (unaligned pickles)

Masks: text uses the attention-mask row ``text_bert[:, 1, :]`` when present; audio and
vision use ``arange(T) < <m>_lengths`` when the lengths are present. Aligned pickles have
no lengths; there, as in MMSA's own loader, audio and vision take the text length (the
sum of the attention mask) when their ``T`` equals the text ``T``. Otherwise every step
counts as real. A pickle with only
``'text_bert'`` (token ids) has no text *features*: loading text from it is an error
that points to a BERT encoder (``tools/extract_features``); pass
``modalities=('audio', 'vision')`` to skip text.

**MAG / MIB** (``mosi.pkl``, ``mosei.pkl``): a dict with ``'train'``, ``'dev'``,
``'test'`` (``'dev'`` becomes ``'valid'``), each a list of
``((words, visual, acoustic), label, segment)`` with ``words`` a list/array of str,
``visual`` float ``[T, Dv]``, ``acoustic`` float ``[T, Da]``, ``label`` shape ``(1, 1)``
and ``segment`` a str id. These carry words, not text features, so the dataset has
modalities ``('audio', 'vision')`` -- unless ``text_features`` names an ``.npz``
(``'ids'`` ``[B]`` + ``'pooled'`` ``[B, D]``, as written by the feature tool) covering
every segment, which adds ``'text'`` as utterance vectors ``[B, D]``. Sequences are
zero-padded to the longest sample (or cut/padded to ``seq_len``) with masks.

Pickles can run arbitrary code when loaded. :func:`safe_load_pickle` admits only the
globals a numeric feature pickle needs (numpy array/dtype/scalar reconstruction and
plain builtin containers); any other reference (``os.system``, ``builtins.eval``,
``subprocess.Popen``, ...) is refused *before* anything is called. It also bounds memory by
the file's size: every array (or ``bytes(n)``, ``list(range(n))``...) the pickle asks for by
*shape* rather than by its literal contents counts against a budget of 8 x the file's size
+ 1 MiB (a numeric array's bytes are spelled out in the file; an object array costs 8
bytes per element and each element at least one pickle byte), so a tiny pickle cannot
allocate unbounded memory. An object array whose element list does not match its shape
is refused too (numpy would read past the list).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import importlib
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jmoe.data.format import (
  LABEL_RANGE,
  MODALITIES,
  SPLITS,
  Dataset,
  Split,
  canonical_modalities,
  load_feature_npz,
  validate,
)


class RefusedPickleError(pickle.UnpicklingError, ValueError):
  """A pickle referenced a global outside the allow-list (also a ValueError)."""


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
  # Python-2-compatible pickles (protocol <= 2) spell bytes as _codecs.encode(str, 'latin1').
  if encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
  return codecs.encode(obj, encoding, errors)


_NUMPY_GLOBALS = {
  # (module spellings) -> (canonical modules to try, name)
  ("numpy.core.multiarray", "_reconstruct"): (("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"): (("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct"),
  ("numpy.core.multiarray", "scalar"): (("numpy._core.multiarray", "numpy.core.multiarray"), "scalar"),
  ("numpy._core.multiarray", "scalar"): (("numpy._core.multiarray", "numpy.core.multiarray"), "scalar"),
  ("numpy.core.numeric", "_frombuffer"): (("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"),
  ("numpy._core.numeric", "_frombuffer"): (("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer"),
  ("numpy", "ndarray"): (("numpy",), "ndarray"),
  ("numpy", "dtype"): (("numpy",), "dtype"),
}
_BUILTINS = frozenset(
  {
    "list",
    "dict",
    "tuple",
    "set",
    "frozenset",
    "str",
    "int",
    "float",
    "complex",
    "bytes",
    "bytearray",
    "slice",
    "bool",
    "range",
  }
)


def _resolve_numpy(modules: tuple[str, ...], name: str):
  for mod in modules:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError):
      continue
  raise pickle.UnpicklingError(f"numpy has no {name}")


class _GuardedArray(np.ndarray):
  """What ``_reconstruct`` builds while unpickling: its ``__setstate__`` checks the state against the budget.

  Replaced by a plain ``ndarray`` view (:func:`_unguard`) before the unpickled object is returned.
  """

  _unpickler: "RestrictedUnpickler"

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise pickle.UnpicklingError("malformed ndarray state")
    shape, dtype, raw = state[-4], state[-3], state[-1]
    n = self._unpickler._charge(shape, dtype)
    if isinstance(dtype, np.dtype) and dtype.hasobject and (not isinstance(raw, list) or len(raw) != n):
      got = len(raw) if isinstance(raw, list) else type(raw).__name__
      raise pickle.UnpicklingError(f"object array of {n} elements has {got} values")
    super().__setstate__(state)


def _unguard(obj, depth: int = 0):
  """``obj`` with every :class:`_GuardedArray` inside (dict, list, tuple, object array) as a plain ndarray."""
  if depth > 200:
    raise pickle.UnpicklingError("containers nested deeper than 200")
  if isinstance(obj, _GuardedArray):
    out = obj.view(np.ndarray)
    if out.dtype.hasobject:
      flat = out.reshape(-1)
      for i, v in enumerate(flat):
        flat[i] = _unguard(v, depth + 1)
    return out
  if isinstance(obj, dict):
    for k in obj:
      obj[k] = _unguard(obj[k], depth + 1)
    return obj
  if isinstance(obj, list):
    for i, v in enumerate(obj):
      obj[i] = _unguard(v, depth + 1)
    return obj
  if isinstance(obj, tuple):
    return tuple(_unguard(v, depth + 1) for v in obj)
  return obj


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals a numeric feature pickle needs, within a memory budget.

  ``max_bytes`` bounds the memory the pickle may request by shape (arrays built by ``_reconstruct`` or
  ``ndarray(...)``, ``bytes(n)``, ``list(range(n))``...), in total; None = 8 x the file's size + 1 MiB (when the
  file has a size; unbounded otherwise).
  """

  def __init__(self, file, where: str, max_bytes: int | None = None):
    super().__init__(file, encoding="latin1")
    self._where = where
    if max_bytes is None:
      try:
        max_bytes = 8 * os.fstat(file.fileno()).st_size + (1 << 20)
      except (AttributeError, OSError, ValueError):
        max_bytes = None
    self._budget = max_bytes
    self._guards = self._make_guards()

  def _charge(self, shape, dtype) -> int:
    """Count an allocation of ``shape`` x ``dtype`` against the budget; return its number of elements."""
    if isinstance(shape, (int, np.integer)):
      shape = (shape,)
    if not isinstance(shape, tuple) or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
      raise pickle.UnpicklingError(f"malformed array shape {shape!r}")
    n = math.prod(int(d) for d in shape)
    itemsize = dtype.itemsize if isinstance(dtype, np.dtype) else 1
    self._spend(n * max(itemsize, 1))
    return n

  def _spend(self, nbytes: int) -> None:
    if self._budget is None:
      return
    if nbytes > self._budget:
      raise pickle.UnpicklingError(
        f"asks for {nbytes} bytes, more than the file's size allows (8 x size + 1 MiB; {self._budget} bytes left)"
      )
    self._budget -= nbytes

  def _make_guards(self) -> dict:
    """Budget-checking stand-ins for the admitted globals that allocate by size."""
    reconstruct = _resolve_numpy(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    unpickler = self
    guarded = type("_GuardedArray", (_GuardedArray,), {"_unpickler": unpickler})

    class ndarray_guard:  # stands for numpy.ndarray: as a _reconstruct argument, or called to allocate
      def __new__(cls, shape, dtype=float, *args, **kwargs):
        unpickler._charge(shape, np.dtype(dtype))
        return np.ndarray(shape, dtype, *args, **kwargs)

    def _reconstruct(subtype, shape, dtype):
      if subtype is not ndarray_guard and subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"_reconstruct of {subtype!r}, not a numpy.ndarray")
      unpickler._charge(shape, np.dtype(dtype) if not isinstance(dtype, (bytes, str)) else np.dtype("b"))
      return reconstruct(guarded, shape, dtype)

    def sized(kind):
      def make(*args):
        if args and isinstance(args[0], range):
          unpickler._spend(40 * len(args[0]))  # a list slot plus an int object per element
        elif args and kind in (bytes, bytearray) and isinstance(args[0], int):
          unpickler._spend(args[0])
        return kind(*args)

      return make

    guards = {"ndarray": ndarray_guard, "_reconstruct": _reconstruct}
    for kind in (bytes, bytearray, list, tuple, set, frozenset):
      guards[kind.__name__] = sized(kind)
    return guards

  def load(self):
    return _unguard(super().load())

  def find_class(self, module: str, name: str):
    if not all(part.isidentifier() for part in f"{module}.{name}".split(".")):
      raise pickle.UnpicklingError(f"global {module!r}.{name!r} is not a Python name (not a pickle file?)")
    # protocol 0-2 pickles spell Python 3 names the Python 2 way (none of which exist in Python 3)
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    if (module, name) in _NUMPY_GLOBALS:
      return self._guards.get(name) or _resolve_numpy(*_NUMPY_GLOBALS[(module, name)])
    if module == "builtins" and name in _BUILTINS:
      return self._guards.get(name) or getattr(__import__("builtins"), name)
    if module == "collections" and name == "OrderedDict":
      import collections

      return collections.OrderedDict
    if module == "_codecs" and name == "encode":
      return _latin1_encode
    raise RefusedPickleError(
      f"{self._where}: refused to load pickle: it references {module}.{name}, which a feature pickle never needs"
    )


def safe_load_pickle(path) -> Any:
  """Unpickle ``path`` with :class:`RestrictedUnpickler`; one-line errors for anything else."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such pickle file")
  try:
    with open(path, "rb") as fh:  # streamed: MOSEI pickles are several GB
      return RestrictedUnpickler(fh, str(path)).load()
  except RefusedPickleError:
    raise
  except (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    UnicodeDecodeError,
    MemoryError,
    RecursionError,
    OverflowError,
  ) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {msg})") from None


def _check_nonfinite(x: np.ndarray, path: Path, m: str, split: str, nonfinite: str) -> np.ndarray:
  finite = np.isfinite(x)
  bad = int(x.size - np.count_nonzero(finite))
  if bad:
    if nonfinite == "error":
      raise ValueError(
        f"{path}: {bad} NaN/Inf values in '{m}' of split '{split}' (MMSA's own loader "
        f"zeroes -inf audio; pass nonfinite='zero' to do the same)"
      )
    x = np.where(finite, x, 0.0).astype(np.float32)
  return x


def _as_float(x, path: Path, what: str) -> np.ndarray:
  try:
    return np.asarray(x, dtype=np.float32)
  except (TypeError, ValueError):
    raise ValueError(f"{path}: {what} is not numeric") from None


def _length_mask(lengths, n: int, t: int, path: Path, what: str) -> np.ndarray:
  lengths = np.asarray(lengths).reshape(-1)
  if lengths.shape != (n,):
    raise ValueError(f"{path}: {what} has shape {lengths.shape}, expected ({n},)")
  return np.arange(t)[None, :] < np.minimum(lengths.astype(np.int64), t)[:, None]


def _mmsa_split(d: Mapping, path: Path, split: str, mods: tuple[str, ...], nonfinite: str) -> Split:
  where = f"split '{split}'"
  for k in ("regression_labels", "id"):
    if k not in d:
      raise ValueError(f"{path}: not an MMSA pickle ({where} lacks '{k}')")
  labels = _as_float(d["regression_labels"], path, f"{where} 'regression_labels'").reshape(-1)
  n = labels.shape[0]
  ids = np.asarray([str(i).replace("$_$", "_") for i in np.asarray(d["id"]).reshape(-1).tolist()], dtype=str)
  if ids.shape != (n,):
    raise ValueError(f"{path}: {where} has {ids.shape[0]} ids but {n} labels")
  tb = np.asarray(d["text_bert"]) if "text_bert" in d else None
  text_lengths = None  # (lengths [B], T) from the BERT attention mask
  if tb is not None and tb.ndim == 3 and tb.shape[0] == n and tb.shape[1] == 3:
    text_lengths = ((tb[:, 1, :] > 0).sum(axis=1), tb.shape[2])
  feats, masks = {}, {}
  for m in mods:
    if m == "text" and "text" not in d:
      if "text_bert" in d:
        raise ValueError(
          f"{path}: {where} has only 'text_bert' (BERT token ids/mask/segment ids), not text "
          f"features; encode them with a BERT model first (tools/extract_features) or load "
          f"modalities=('audio', 'vision')"
        )
      raise ValueError(f"{path}: not an MMSA pickle ({where} lacks 'text' and 'text_bert')")
    if m not in d:
      raise ValueError(f"{path}: not an MMSA pickle ({where} lacks '{m}')")
    x = _as_float(d[m], path, f"{where} '{m}'")
    if x.ndim != 3 or x.shape[0] != n:
      raise ValueError(f"{path}: {where} '{m}' has shape {x.shape}, expected [B={n}, T, D]")
    feats[m] = _check_nonfinite(x, path, m, split, nonfinite)
    t = x.shape[1]
    if m == "text":
      if text_lengths is not None and text_lengths[1] == t:
        masks[m] = tb[:, 1, :] > 0
      else:
        masks[m] = np.ones((n, t), bool)
    elif f"{m}_lengths" in d:
      masks[m] = _length_mask(d[f"{m}_lengths"], n, t, path, f"{where} '{m}_lengths'")
    elif text_lengths is not None and text_lengths[1] == t:
      # aligned pickle: MMSA takes the text (attention-mask) length for audio and vision
      masks[m] = _length_mask(text_lengths[0], n, t, path, f"{where} text_bert lengths")
    else:
      masks[m] = np.ones((n, t), bool)
  return Split(features=feats, masks=masks, labels=labels, ids=ids)


def _pad(seqs: list[np.ndarray], t: int, d: int) -> tuple[np.ndarray, np.ndarray]:
  out = np.zeros((len(seqs), t, d), np.float32)
  lens = np.zeros(len(seqs), np.int64)
  for i, s in enumerate(seqs):
    s = s[:t]
    out[i, : len(s)] = s
    lens[i] = len(s)
  return out, np.arange(t)[None, :] < lens[:, None]


def _mag_splits(
  raw: Mapping, path: Path, mods: tuple[str, ...], seq_len: int | None, nonfinite: str, text_features
) -> dict[str, Split]:
  names = {"train": "train", "dev": "valid", "test": "test"}
  seqs: dict[str, dict[str, list]] = {}
  labels: dict[str, list] = {}
  ids: dict[str, list] = {}
  for src, dst in names.items():
    items = raw[src]
    if not isinstance(items, (list, tuple)):
      raise ValueError(f"{path}: not a MAG/MIB pickle (split '{src}' is a {type(items).__name__}, not a list)")
    seqs[dst] = {"audio": [], "vision": []}
    labels[dst], ids[dst] = [], []
    for j, item in enumerate(items):
      try:
        (words, visual, acoustic), label, segment = item
      except (TypeError, ValueError):
        raise ValueError(
          f"{path}: not a MAG/MIB pickle (split '{src}' item {j} is not ((words, visual, acoustic), label, segment))"
        ) from None
      v = _as_float(visual, path, f"split '{src}' item {j} visual")
      a = _as_float(acoustic, path, f"split '{src}' item {j} acoustic")
      if v.ndim != 2 or a.ndim != 2:
        raise ValueError(f"{path}: split '{src}' item {j}: visual {v.shape} / acoustic {a.shape} must be [T, D]")
      lab = np.asarray(label, dtype=np.float64).reshape(-1)
      if lab.size != 1:
        raise ValueError(f"{path}: split '{src}' item {j}: label has {lab.size} values, expected 1")
      seqs[dst]["vision"].append(v)
      seqs[dst]["audio"].append(a)
      labels[dst].append(lab[0])
      ids[dst].append(str(segment))
  widths = {}
  for m in ("audio", "vision"):
    ws = {s.shape[1] for sp in seqs.values() for s in sp[m]}
    if len(ws) > 1:
      raise ValueError(f"{path}: '{m}' features have different widths {sorted(ws)} across samples")
    widths[m] = ws.pop() if ws else 0
  table = load_feature_npz(text_features) if text_features is not None else None
  splits = {}
  for s in SPLITS:
    feats, masks = {}, {}
    for m in mods:
      if m == "text":
        missing = [i for i in ids[s] if i not in table]
        if missing:
          raise ValueError(
            f"{text_features}: no text features for {len(missing)} segments of split '{s}', e.g. {missing[0]!r}"
          )
        feats[m] = np.stack([table[i] for i in ids[s]]) if ids[s] else np.zeros((0, 1), np.float32)
        continue
      t = seq_len or max((len(x) for sp in seqs.values() for x in sp[m]), default=1)
      x, mask = _pad(seqs[s][m], max(t, 1), widths[m])
      feats[m] = _check_nonfinite(x, path, m, s, nonfinite)
      masks[m] = mask
    splits[s] = Split(
      features=feats, masks=masks, labels=np.asarray(labels[s], np.float32), ids=np.asarray(ids[s], dtype=str)
    )
  return splits


def load_mmsa_pickle(
  path,
  *,
  modalities=None,
  name: str | None = None,
  nonfinite: str = "error",
  seq_len: int | None = None,
  text_features=None,
  label_range: tuple[float, float] = LABEL_RANGE,
) -> Dataset:
  """Load an MMSA or a MAG/MIB feature pickle (see the module docstring) as a Dataset.

  Args:
    modalities: which modalities to keep; default all the pickle offers
      (MMSA: text, audio, vision; MAG: audio, vision, plus text if ``text_features``).
    name: dataset name; default ``'mmsa-<file stem>'`` or ``'mag-<file stem>'``.
    nonfinite: ``'error'`` (default) or ``'zero'`` (replace NaN/Inf features by 0,
      as MMSA does for -inf audio; ``source`` then says so).
    seq_len: MAG only: pad/cut sequences to this many steps (default: longest sample).
    text_features: MAG only: ``.npz`` with ``'ids'`` and ``'pooled'`` ``[B, D]`` text vectors.

  All modalities are float32 ``[B, T, D]`` sequences with masks, except MAG text
  (``[B, D]``). Labels are float32 ``[B]``.
  """
  path = Path(path)
  if nonfinite not in ("error", "zero"):
    raise ValueError(f"nonfinite must be 'error' or 'zero', got {nonfinite!r}")
  raw = safe_load_pickle(path)
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: not an MMSA or MAG/MIB pickle (top level is a {type(raw).__name__}, not a dict)")
  keys = set(raw)
  if {"train", "valid", "test"} <= keys and all(isinstance(raw[s], dict) for s in SPLITS):
    kind = "mmsa"
    offered = tuple(m for m in MODALITIES if m in raw["train"] or (m == "text" and "text_bert" in raw["train"]))
    mods = canonical_modalities(modalities if modalities is not None else offered, where="modalities")
    if not mods:
      raise ValueError(f"{path}: MMSA pickle has none of the modalities {list(MODALITIES)}")
    splits = {s: _mmsa_split(raw[s], path, s, mods, nonfinite) for s in SPLITS}
  elif {"train", "dev", "test"} <= keys:
    kind = "mag"
    if text_features is not None:
      text_features = Path(text_features)
    offered = ("text", "audio", "vision") if text_features is not None else ("audio", "vision")
    mods = canonical_modalities(modalities if modalities is not None else offered, where="modalities")
    if "text" in mods and text_features is None:
      raise ValueError(
        f"{path}: MAG/MIB pickles hold words, not text features; pass text_features=<npz> "
        f"(from tools/extract_features) or modalities=('audio', 'vision')"
      )
    if not mods:
      raise ValueError(f"{path}: no modalities requested")
    splits = _mag_splits(raw, path, mods, seq_len, nonfinite, text_features)
  else:
    raise ValueError(
      f"{path}: not an MMSA or MAG/MIB pickle (top-level keys {sorted(map(str, keys))}; "
      f"expected train/valid/test dicts or train/dev/test lists)"
    )
  if kind == "mmsa" and (seq_len is not None or text_features is not None):
    raise ValueError(f"{path}: seq_len and text_features apply to MAG/MIB pickles only")
  dims = {m: int(splits["train"].features[m].shape[-1]) for m in mods}
  source = f"{path} ({'MMSA' if kind == 'mmsa' else 'MAG/MIB'} pickle"
  if text_features is not None and "text" in mods:
    source += f"; text from {text_features}"
  if nonfinite == "zero":
    source += "; NaN/Inf features replaced by 0"
  source += ")"
  ds = Dataset(
    name=name or f"{kind}-{path.stem}", splits=splits, modalities=mods, dims=dims, synthetic=False, source=source
  )
  return validate(ds, path, label_range=label_range)
