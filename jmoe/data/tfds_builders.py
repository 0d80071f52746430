"""TFDS builders: THE way to prepare real MOSI / MOSEI data for jmoe.

Both builders are ``tfds.core.GeneratorBasedBuilder`` subclasses that read source files
from ``manual_dir`` through the jmoe loaders, write ``array_record`` files, and read back
with ``builder.as_data_source()`` / ``tfds.data_source`` -- no TensorFlow needed at
any step::

    import tensorflow_datasets as tfds
    from jmoe.data import tfds_builders

    b = tfds_builders.JmoeMosi(config='bclstm', data_dir=DATA, file_format='array_record')
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MOSI_DIR))
    source = b.as_data_source()                  # {'train': ArrayRecordDataSource, ...}
    ds = tfds_builders.dataset_from_tfds(DATA, 'jmoe_mosi/bclstm')   # -> jmoe Dataset

``JmoeMosi`` (``jmoe_mosi``) -- ``manual_dir`` is the MOSI folder: ``bclstm/``,
``CMU_MOSI_Opinion_Labels.csd`` and ``standard_folds.json`` (see
``../shared/data/mosi/README.md``). Configs:

* ``bclstm``: bc-LSTM split (train with 15% of its videos carved out as valid, seed 0),
  text 100 / audio 73 / vision 100 utterance vectors -- :func:`~jmoe.data.bclstm.load_mosi_bclstm`;
* ``standard``: SDK standard folds 1284 / 229 / 686 with the leak-free bc-LSTM audio
  only -- :func:`~jmoe.data.bclstm.load_mosi_standard`.

``JmoeMosei`` (``jmoe_mosei``) -- ``manual_dir`` holds an MMSA MOSEI pickle. Configs
``unaligned`` (``unaligned_50.pkl``) and ``aligned`` (``aligned_50.pkl``), text/audio/
vision sequences with masks via :func:`~jmoe.data.mmsa.load_mmsa_pickle`; NaN/Inf feature
values are replaced by 0 as MMSA's own loader does (recorded in the dataset source).
Other choices: pass ``config=MoseiConfig(name=..., filename=..., modalities=...)``.

Features per example: ``'<m>'`` float32 ``[D]`` or ``[T, D]`` per modality, ``'<m>_mask'``
bool ``[T]`` for sequences, ``'label'`` float32, ``'id'`` text. Examples keep the loaders'
order (shuffling is disabled), and the jmoe metadata (name, modalities, dims, synthetic,
source) is stored in the dataset's ``metadata.json``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jmoe.data import bclstm as _bclstm
from jmoe.data.format import SPLITS, Dataset, Split, canonical_modalities, validate
from jmoe.data.mmsa import load_mmsa_pickle

_MOSI_CITATION = """@article{zadeh2016multimodal,
  title={Multimodal sentiment intensity analysis in videos: Facial gestures and verbal messages},
  author={Zadeh, Amir and Zellers, Rowan and Pincus, Eli and Morency, Louis-Philippe},
  journal={IEEE Intelligent Systems}, volume={31}, number={6}, pages={82--88}, year={2016}}"""
_MOSEI_CITATION = """@inproceedings{zadeh2018multimodal,
  title={Multimodal language analysis in the wild: CMU-MOSEI dataset and interpretable dynamic fusion graph},
  author={Zadeh, AmirAli Bagher and Liang, Paul Pu and Poria, Soujanya and Cambria, Erik and Morency, Louis-Philippe},
  booktitle={ACL}, year={2018}}"""


# TFDS 4.9.x resolves a package builder's code_path through `importlib_resources`, which it
# only declares as a dependency for Python < 3.9; setting code_path directly avoids that
# import (the path is only used to look for an optional checksums file next to this module).
_CODE_PATH = epath.Path(__file__)


def _examples(split: Split, modalities):
  """Yield ``(key, example)`` for every row of ``split`` in order."""
  for i in range(len(split)):
    ex = {"label": np.float32(split.labels["sentiment"][i]), "id": str(split.ids[i])}
    for m in modalities:
      ex[m] = split.features[m][i]
      if m in split.masks:
        ex[f"{m}_mask"] = split.masks[m][i]
    yield f"{i:07d}", ex


def _jmoe_metadata(ds: Dataset) -> dict:
  return {
    "name": ds.name,
    "modalities": list(ds.modalities),
    "dims": dict(ds.dims),
    "synthetic": ds.synthetic,
    "source": ds.source,
    "sequence": [m for m in ds.modalities if ds.splits["train"].is_sequence(m)],
    "sizes": {s: len(ds.splits[s]) for s in SPLITS},
  }


@dataclasses.dataclass
class MosiConfig(tfds.core.BuilderConfig):
  """``split``: 'bclstm' or 'standard'; ``modalities`` of bc-LSTM features to keep."""

  split: str = "bclstm"
  modalities: tuple[str, ...] = ("text", "audio", "vision")
  valid_fraction: float = 0.15
  seed: int = 0


class JmoeMosi(tfds.core.GeneratorBasedBuilder):
  """CMU-MOSI with the bc-LSTM utterance features and the official real-valued labels."""

  name = "jmoe_mosi"
  code_path = _CODE_PATH
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "bc-LSTM features joined with CMU_MOSI_Opinion_Labels.csd."}
  BUILDER_CONFIGS = [
    MosiConfig(
      name="bclstm",
      description="bc-LSTM split; valid = 15% of train videos (seed 0); L/A/V vectors.",
      split="bclstm",
      modalities=("text", "audio", "vision"),
    ),
    MosiConfig(
      name="standard",
      description="SDK standard folds 1284/229/686; leak-free bc-LSTM audio only.",
      split="standard",
      modalities=("audio",),
    ),
  ]
  DEFAULT_CONFIG_NAME = "bclstm"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Set manual_dir to the MOSI folder holding bclstm/ (transcripts.csv, text_{train,test}.csv, "
    "{text,audio,video}/<m>_{train,test}0.csv), CMU_MOSI_Opinion_Labels.csd and standard_folds.json."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    feats = {m: tfds.features.Tensor(shape=(_bclstm.DIMS[m],), dtype=np.float32) for m in cfg.modalities}
    feats["label"] = tfds.features.Scalar(dtype=np.float32, doc="sentiment score in [-3, 3]")
    feats["id"] = tfds.features.Text(doc="utterance id <video>_<n>")
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__class__.__doc__,
      features=tfds.features.FeaturesDict(feats),
      homepage="https://github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK",
      citation=_MOSI_CITATION,
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _load(self, manual_dir) -> Dataset:
    cfg = self.builder_config
    if cfg.split == "bclstm":
      return _bclstm.load_mosi_bclstm(manual_dir, cfg.valid_fraction, cfg.seed, modalities=cfg.modalities)
    if cfg.split == "standard":
      return _bclstm.load_mosi_standard(manual_dir, modalities=cfg.modalities)
    raise ValueError(f"MosiConfig.split must be 'bclstm' or 'standard', got {cfg.split!r}")

  def _split_generators(self, dl_manager):
    ds = self._load(Path(dl_manager.manual_dir))
    self.info.metadata["jmoe"] = _jmoe_metadata(ds)
    return {s: self._generate_examples(ds.splits[s], ds.modalities) for s in SPLITS}

  def _generate_examples(self, split: Split, modalities):
    yield from _examples(split, modalities)


@dataclasses.dataclass
class MoseiConfig(tfds.core.BuilderConfig):
  """``filename``: the MMSA pickle inside manual_dir; ``nonfinite``: 'zero' (MMSA) or 'error'."""

  filename: str = "unaligned_50.pkl"
  modalities: tuple[str, ...] = ("text", "audio", "vision")
  nonfinite: str = "zero"


class JmoeMosei(tfds.core.GeneratorBasedBuilder):
  """CMU-MOSEI from an MMSA feature pickle (BERT text 768, COVAREP audio 74, FACET vision 35)."""

  name = "jmoe_mosei"
  code_path = _CODE_PATH
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "MMSA MOSEI pickles as masked sequences."}
  BUILDER_CONFIGS = [
    MoseiConfig(name="unaligned", description="MMSA unaligned_50.pkl", filename="unaligned_50.pkl"),
    MoseiConfig(name="aligned", description="MMSA aligned_50.pkl", filename="aligned_50.pkl"),
  ]
  DEFAULT_CONFIG_NAME = "unaligned"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put the MMSA MOSEI pickle (MOSEI/Processed/unaligned_50.pkl or aligned_50.pkl from the MMSA dataset "
    "release) in manual_dir."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    feats = {}
    for m in canonical_modalities(cfg.modalities, where="MoseiConfig.modalities"):
      feats[m] = tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB)
      feats[f"{m}_mask"] = tfds.features.Tensor(shape=(None,), dtype=np.bool_)
    feats["label"] = tfds.features.Scalar(dtype=np.float32, doc="sentiment score in [-3, 3]")
    feats["id"] = tfds.features.Text(doc="utterance id <video>_<clip>")
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.__class__.__doc__,
      features=tfds.features.FeaturesDict(feats),
      homepage="https://github.com/thuiar/MMSA",
      citation=_MOSEI_CITATION,
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    path = Path(dl_manager.manual_dir) / cfg.filename
    ds = load_mmsa_pickle(
      path,
      modalities=canonical_modalities(cfg.modalities, where="MoseiConfig.modalities"),
      name=f"mosei-mmsa-{self.builder_config.name}",
      nonfinite=cfg.nonfinite,
    )
    self.info.metadata["jmoe"] = _jmoe_metadata(ds)
    return {s: self._generate_examples(ds.splits[s], ds.modalities) for s in SPLITS}

  def _generate_examples(self, split: Split, modalities):
    yield from _examples(split, modalities)


def prepare(builder_cls, manual_dir, data_dir, config: str | tfds.core.BuilderConfig | None = None):
  """Build ``builder_cls`` from ``manual_dir`` into ``data_dir`` as array_record; return the builder."""
  manual_dir = Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"{manual_dir}: no such manual_dir")
  if not any(manual_dir.iterdir()):
    raise FileNotFoundError(f"{manual_dir}: manual_dir is empty. {builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  b = builder_cls(config=config, data_dir=str(data_dir), file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return b


def dataset_from_tfds(data_dir, name: str) -> Dataset:
  """Read a prepared jmoe TFDS dataset (e.g. ``'jmoe_mosi/bclstm'``) back as a jmoe Dataset.

  Uses ``builder.as_data_source()`` (array_record random access; no TensorFlow).
  """
  data_dir = Path(data_dir)
  if not data_dir.is_dir():
    raise FileNotFoundError(f"{data_dir}: no such TFDS data_dir")
  try:
    builder = tfds.builder(name, data_dir=str(data_dir))
  except Exception as e:  # TFDS raises several registry/config error types
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{data_dir}: cannot open TFDS dataset {name!r} ({type(e).__name__}: {msg})") from None
  where = Path(builder.data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(f"{where}: TFDS dataset {name!r} is not prepared there")
  meta = builder.info.metadata.get("jmoe") if builder.info.metadata else None
  if not meta:
    raise ValueError(f"{where}: not a jmoe TFDS dataset (no jmoe metadata)")
  mods = tuple(meta["modalities"])
  sources = builder.as_data_source()
  splits = {}
  for s in SPLITS:
    if s not in sources:
      raise ValueError(f"{where}: split {s!r} missing")
    src = sources[s]
    rows = src.__getitems__(list(range(len(src))))
    feats = {m: np.stack([r[m] for r in rows]).astype(np.float32) for m in mods}
    masks = {m: np.stack([r[f"{m}_mask"] for r in rows]).astype(bool) for m in meta["sequence"]}
    labels = np.asarray([r["label"] for r in rows], np.float32)
    ids = np.asarray([r["id"].decode() if isinstance(r["id"], bytes) else str(r["id"]) for r in rows], dtype=str)
    splits[s] = Split(features=feats, masks=masks, labels=labels, ids=ids)
  ds = Dataset(
    name=meta["name"],
    splits=splits,
    modalities=mods,
    dims={m: int(meta["dims"][m]) for m in mods},
    synthetic=bool(meta["synthetic"]),
    source=f"tfds {where} <- {meta['source']}",
  )
  return validate(ds, where)
