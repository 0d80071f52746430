"""Named data sources: ``config.data.source`` -> a format-v2 :class:`~jmoe.data.format.Dataset`.

One registry for every experiment; each loader reads only the ``config.data`` fields it documents. Synthetic
sources return ``Dataset.synthetic = True`` and the app prints a banner saying so.
"""

from __future__ import annotations

from typing import Callable

import ml_collections

from jmoe.data import format as fmt


def _modalities(cfg) -> tuple[str, ...]:
  return tuple(m for m in str(cfg.get("modalities", "")).split(",") if m)


def _synthetic_mosi(cfg):
  from jmoe.data.synthetic import synthetic_mosei, synthetic_mosi

  dims = dict(zip(("text", "audio", "vision"), cfg.synthetic_dims))
  gen = synthetic_mosei if cfg.get("synthetic_kind", "mosi") == "mosei" else synthetic_mosi
  kwargs = {"seed": cfg.synthetic_seed, "dims": dims, "seq_len": cfg.get("seq_len") or None}
  if cfg.get("synthetic_sizes"):
    kwargs["sizes"] = tuple(cfg.synthetic_sizes)
  return gen(**kwargs)


def _bclstm(cfg):
  from jmoe.data.bclstm import load_mosi_bclstm

  return load_mosi_bclstm(cfg.path, valid_fraction=cfg.valid_fraction, seed=cfg.split_seed)


def _standard(cfg):
  from jmoe.data.bclstm import load_mosi_standard

  extra = {"text": cfg.text_features} if cfg.get("text_features") else None
  base = tuple(m for m in _modalities(cfg) if m != "text" or not extra)
  return load_mosi_standard(cfg.path, modalities=base, extra_features=extra)


def _dir(cfg):
  return fmt.load_dataset(cfg.path, mmap=bool(cfg.get("mmap", False)))


def _mmsa(cfg):
  """``data.nonfinite`` (if the experiment's config has it): 'error' (default) or 'zero' (NaN/Inf features -> 0)."""
  from jmoe.data.mmsa import load_mmsa_pickle

  try:
    return load_mmsa_pickle(cfg.path, nonfinite=cfg.get("nonfinite", "error"))
  except ValueError as e:
    if "nonfinite='zero'" not in str(e):
      raise
    how = (
      "--config.data.nonfinite=zero"
      if "nonfinite" in cfg
      else "data.nonfinite='zero' in the experiment's config.data (get_config)"
    )
    raise ValueError(str(e).replace("pass nonfinite='zero'", f"set {how}")) from None


def _tfds(cfg):
  from jmoe.data.tfds_builders import dataset_from_tfds

  return dataset_from_tfds(cfg.path, cfg.tfds_name)


SOURCES: dict[str, Callable[[ml_collections.ConfigDict], fmt.Dataset]] = {
  "synthetic": _synthetic_mosi,
  "bclstm": _bclstm,
  "standard": _standard,
  "dir": _dir,
  "mmsa": _mmsa,
  "tfds": _tfds,
}


def register(name: str, loader: Callable[[ml_collections.ConfigDict], fmt.Dataset]) -> None:
  """Add a source (used by the physiological and speech loaders)."""
  SOURCES[name] = loader


def load(cfg: ml_collections.ConfigDict) -> fmt.Dataset:
  """The dataset named by ``cfg.source``; checks that it has the modalities ``cfg.modalities`` asks for."""
  _register_builtin()
  if cfg.source not in SOURCES:
    raise ValueError(f"unknown data.source {cfg.source!r}; choose one of {sorted(SOURCES)}")
  ds = SOURCES[cfg.source](cfg)
  mods = _modalities(cfg)
  missing = [m for m in mods if m not in ds.modalities]
  if missing:
    raise ValueError(f"{ds.source}: dataset has modalities {ds.modalities}, config asks for {mods}")
  return ds


def _register_builtin() -> None:
  """Sources of the other papers' data modules (imported lazily: they pull in scipy / soundfile)."""
  import importlib

  for module in ("jmoe.data.physio_sources", "jmoe.data.speech_sources"):
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:
        raise
