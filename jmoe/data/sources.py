"""Named data sources: ``config.data.source`` -> a format-v2 :class:`~jmoe.data.format.Dataset`.

A source is one declared :class:`Source`: a name, the ``config.data`` fields it reads with their defaults (listed
by every command's ``--help`` and in the data docs), a one-line description and a loader. Registering a name twice
is an error, so a name always means one loader whatever was imported first. The sources of the physiological
and speech modules are registered when :func:`load` (or :func:`names`) first needs them (they pull in scipy).

Fields every source shares (:data:`COMMON_FIELDS`):

* ``modalities``: a comma list of the dataset's modalities to use ('' = all of them), parsed once by
  :func:`modalities`; the loaded dataset is narrowed to them, in that order (models read ``dataset.modalities``);
* ``labelled_only``: a label head; when set, samples without a label for it (``label_masks[head]`` False) are
  dropped before the folds are made, for every source (they would enter neither loss nor metrics).

Synthetic sources return ``Dataset.synthetic = True`` and the app prints a banner saying so.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from jmoe.data import format as fmt

COMMON_FIELDS = {"source": "", "path": "", "modalities": "", "labelled_only": ""}
# Modules whose import registers more sources (imported lazily: they pull in scipy / soundfile).
_LAZY_MODULES = ("jmoe.data.physio_sources", "jmoe.data.speech_sources")


@dataclasses.dataclass(frozen=True)
class Source:
  """A declared data source: ``loader(fields)`` gets a ConfigDict holding every declared field (the config's value
  where the config sets it, else the default here)."""

  name: str
  loader: Callable[[ml_collections.ConfigDict], fmt.Dataset]
  fields: Mapping[str, Any]
  doc: str
  synthetic: bool = False


_REGISTRY: dict[str, Source] = {}


def register(source: Source) -> Source:
  """Add ``source``; a second source under the same name is a one-line ValueError."""
  old = _REGISTRY.get(source.name)
  if old is not None and old is not source:
    raise ValueError(
      f"data source {source.name!r} is registered twice ({old.loader.__module__} and {source.loader.__module__})"
    )
  clash = set(source.fields) & set(COMMON_FIELDS)
  if clash:
    raise ValueError(f"data source {source.name!r} redeclares the common fields {sorted(clash)}")
  _REGISTRY[source.name] = source
  return source


def _register_builtin() -> None:
  for module in _LAZY_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise


def names() -> list[str]:
  """Every registered source name, sorted."""
  _register_builtin()
  return sorted(_REGISTRY)


def get(name: str) -> Source:
  _register_builtin()
  if name not in _REGISTRY:
    raise ValueError(f"unknown data.source {name!r}; choose one of {sorted(_REGISTRY)}")
  return _REGISTRY[name]


def describe() -> str:
  """One entry per source: its name, description and fields with defaults (for ``--help`` and the docs)."""
  out = [f"(every source) {', '.join(f'{k}={v!r}' for k, v in COMMON_FIELDS.items() if k != 'source')}"]
  for name in names():
    s = _REGISTRY[name]
    fields = ", ".join(f"{k}={v!r}" for k, v in s.fields.items()) or "no other fields"
    out.append(f"{name}{' (SYNTHETIC)' if s.synthetic else ''}: {s.doc}\n    fields: {fields}")
  return "\n".join(out)


def modalities(cfg) -> tuple[str, ...]:
  """``data.modalities`` ('a,b' or a sequence) -> ('a', 'b'); '' -> (): the one parser of that field."""
  raw = cfg.get("modalities", "") if hasattr(cfg, "get") else cfg
  items = raw.split(",") if isinstance(raw, str) else list(raw or ())
  mods = tuple(m.strip() for m in items if str(m).strip())
  dup = sorted({m for m in mods if mods.count(m) > 1})
  if dup:
    raise ValueError(f"data.modalities={raw!r} names {dup} twice")
  return mods


def fields_of(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ConfigDict a loader receives: every common and declared field of ``cfg.source``, from ``cfg`` or the
  default."""
  src = get(cfg.source)
  out = {}
  for k, default in {**COMMON_FIELDS, **src.fields}.items():
    out[k] = cfg.get(k, default) if hasattr(cfg, "get") else default
  out["source"] = src.name
  return ml_collections.ConfigDict(out)


def keep_labelled(ds: fmt.Dataset, head: str) -> fmt.Dataset:
  """The dataset with only the samples labelled for ``head`` (every split)."""
  if not head:
    return ds
  if head not in ds.label_specs:
    raise ValueError(f"data.labelled_only={head!r}: {ds.name} has label heads {sorted(ds.label_specs)}")
  splits = {k: sp.take(np.flatnonzero(sp.label_mask(head))) for k, sp in ds.splits.items()}
  dropped = sum(len(sp) for sp in ds.splits.values()) - sum(len(sp) for sp in splits.values())
  if not dropped:
    return ds
  kept = sum(len(sp) for sp in splits.values())
  src = f"{ds.source}; only the {kept} samples labelled for {head} ({dropped} unlabelled dropped)"
  return dataclasses.replace(ds, splits=splits, source=src)


def load(cfg: ml_collections.ConfigDict) -> fmt.Dataset:
  """The dataset named by ``cfg.source``, narrowed to ``cfg.modalities`` and, with ``cfg.labelled_only``, to the
  samples labelled for that head."""
  fields = fields_of(cfg)
  ds = get(cfg.source).loader(fields)
  mods = modalities(fields)
  missing = [m for m in mods if m not in ds.modalities]
  if missing:
    raise ValueError(f"{ds.source}: dataset has modalities {ds.modalities}, config.data.modalities asks for {mods}")
  if mods and mods != tuple(ds.modalities):
    ds = dataclasses.replace(ds, modalities=mods, dims={m: ds.dims[m] for m in mods})
  return keep_labelled(ds, fields.labelled_only)


# --------------------------------------------------------------------------- the MOSI-family sources
def _synthetic_mosi(cfg):
  from jmoe.data.synthetic import synthetic_mosei, synthetic_mosi

  dims = dict(zip(("text", "audio", "vision"), cfg.synthetic_dims))
  if cfg.synthetic_kind not in ("mosi", "mosei"):
    raise ValueError(f"data.synthetic_kind={cfg.synthetic_kind!r} is invalid: choose 'mosi' or 'mosei'")
  gen = synthetic_mosei if cfg.synthetic_kind == "mosei" else synthetic_mosi
  kwargs = {"seed": cfg.synthetic_seed, "dims": dims, "seq_len": cfg.seq_len or None}
  if cfg.synthetic_sizes:
    kwargs["sizes"] = tuple(cfg.synthetic_sizes)
  return gen(**kwargs)


def _bclstm(cfg):
  from jmoe.data.bclstm import load_mosi_bclstm

  return load_mosi_bclstm(_need_path(cfg), valid_fraction=cfg.valid_fraction, seed=cfg.split_seed)


def _standard(cfg):
  from jmoe.data.bclstm import load_mosi_standard

  extra = {"text": cfg.text_features} if cfg.text_features else None
  base = tuple(m for m in modalities(cfg) if m != "text" or not extra)
  return load_mosi_standard(_need_path(cfg), modalities=base, extra_features=extra)


def _dir(cfg):
  return fmt.load_dataset(_need_path(cfg), mmap=bool(cfg.mmap))


def _mmsa(cfg):
  from jmoe.data.mmsa import load_mmsa_pickle

  if cfg.nonfinite not in ("error", "zero"):
    raise ValueError(f"data.nonfinite={cfg.nonfinite!r} is invalid: choose 'error' or 'zero'")
  try:
    return load_mmsa_pickle(_need_path(cfg), nonfinite=cfg.nonfinite)
  except ValueError as e:
    if "nonfinite='zero'" not in str(e):
      raise
    raise ValueError(str(e).replace("pass nonfinite='zero'", "set --config.data.nonfinite=zero")) from None


def _tfds(cfg):
  from jmoe.data.tfds_builders import dataset_from_tfds

  return dataset_from_tfds(_need_path(cfg), cfg.tfds_name)


def _need_path(cfg) -> str:
  if not str(cfg.path).strip():
    raise ValueError(f"data.source={cfg.source!r} needs --config.data.path (the dataset's file or folder)")
  return str(cfg.path)


SYNTHETIC_MOSI_FIELDS = dict(
  synthetic_kind="mosi", synthetic_seed=0, synthetic_dims=(768, 5, 20), synthetic_sizes=(), seq_len=0
)
for _source in (
  Source(
    "synthetic",
    _synthetic_mosi,
    SYNTHETIC_MOSI_FIELDS,
    "MOSI/MOSEI-shaped text, audio, vision sequences with planted sentiment (jmoe.data.synthetic)",
    synthetic=True,
  ),
  Source(
    "bclstm",
    _bclstm,
    dict(valid_fraction=0.15, split_seed=0),
    "CMU-MOSI bc-LSTM utterance features (jmoe.data.bclstm); path = the folder",
  ),
  Source(
    "standard",
    _standard,
    dict(text_features=""),
    "CMU-MOSI on the standard SDK split (jmoe.data.bclstm.load_mosi_standard); text from text_features if given",
  ),
  Source("dir", _dir, dict(mmap=False), "a format-v2 dataset directory (jmoe.data.format; python -m jmoe.data.build)"),
  Source(
    "mmsa",
    _mmsa,
    dict(nonfinite="error"),
    "an MMSA / MAG unaligned_50.pkl (jmoe.data.mmsa); nonfinite: 'error' or 'zero' (NaN/Inf features -> 0)",
  ),
  Source("tfds", _tfds, dict(tfds_name=""), "a TFDS build (jmoe.data.tfds_builders) under path, named tfds_name"),
):
  register(_source)
