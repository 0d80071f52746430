"""Probe round 3, area A (config, data sources, format v2, pickles): each test reproduces a case of the reliability
probe (shared/design/reliability-probe-2.md) that was not a clear one-line refusal, on small fixtures written here."""

import dataclasses
import json

import numpy as np
import pytest
from test_data_sdk import write_csd

from jmoe.data import format as fmt
from jmoe.data.sdk import read_csd, read_csd_metadata
from jmoe.data.synthetic import synthetic_mosi


def one_line(exc_type, fn, *args, **kw) -> str:
  with pytest.raises(exc_type) as ei:
    fn(*args, **kw)
  msg = str(ei.value)
  assert "\n" not in msg, msg
  return msg


# --------------------------------------------------------------------------- damaged .csd (o_c09_zeroed_*)
@pytest.fixture
def csd(tmp_path):
  rng = np.random.default_rng(0)
  ivals = np.tile(np.arange(3.0)[:, None], (1, 2))
  vids = {f"v{i}": (rng.normal(size=(3, 1)), ivals) for i in range(40)}
  path = write_csd(tmp_path / "labels.csd", "Opinion Segment Labels", vids)
  assert len(read_csd(path)) == 40
  return path


@pytest.mark.parametrize("offset", [512, 2048, 8192])
def test_damaged_csd_is_one_line_naming_the_file(csd, offset):
  b = bytearray(csd.read_bytes())
  b[offset : offset + 512] = bytes(512)  # a zeroed block: bad symbol table node / local heap signature
  csd.write_bytes(bytes(b))
  msg = one_line(ValueError, read_csd, csd)
  assert msg.startswith(f"{csd}: damaged computational sequence file (HDF5: "), msg


def test_damaged_csd_metadata_is_one_line(csd):
  b = bytearray(csd.read_bytes())
  b[1024 : 1024 + 512] = bytes(512)
  csd.write_bytes(bytes(b))
  msg = one_line(ValueError, read_csd_metadata, csd)
  assert msg.startswith(f"{csd}: damaged computational sequence file"), msg


# --------------------------------------------------------------------------- format v2 meta.json and arrays
@pytest.fixture
def ds_dir(tmp_path):
  ds = synthetic_mosi(sizes=(12, 6, 6), dims={"text": 4, "audio": 3, "vision": 2}, seed=0)
  d = fmt.save_dataset(ds, tmp_path / "d")
  fmt.load_dataset(d)  # the intact dataset loads
  return d


def edit_meta(d, **changes):
  meta = json.loads((d / "meta.json").read_text())
  meta.update(changes)
  (d / "meta.json").write_text(json.dumps(meta))


def test_split_sizes_as_strings_refused(ds_dir):  # n_fmt_splits_as_strings: was 'holds 12 samples but says 12'
  edit_meta(ds_dir, splits={"train": "12", "valid": "6", "test": "6"})
  msg = one_line(ValueError, fmt.load_dataset, ds_dir)
  assert "meta.json: splits.train is '12'; split sizes must be JSON integers" in msg


def test_modalities_as_string_refused(ds_dir):  # n_fmt_modalities_as_string: was 'missing arrays [features.t, ...]'
  edit_meta(ds_dir, modalities="text")
  msg = one_line(ValueError, fmt.load_dataset, ds_dir)
  assert "meta.json: modalities is 'text'; it must be a JSON list of names" in msg


def test_dims_not_an_object_refused(ds_dir):
  edit_meta(ds_dir, dims=[4, 3, 2])
  assert "meta.json: dims is [4, 3, 2]" in one_line(ValueError, fmt.load_dataset, ds_dir)


def test_zero_width_modality_refused(ds_dir):  # n_fmt_dims_zero: was a ZeroDivisionError traceback in training
  for s, n in (("train", 12), ("valid", 6), ("test", 6)):
    np.save(ds_dir / s / "features.audio.npy", np.zeros((n, 0), np.float32))
  meta = json.loads((ds_dir / "meta.json").read_text())
  meta["dims"]["audio"] = 0
  (ds_dir / "meta.json").write_text(json.dumps(meta))
  msg = one_line(ValueError, fmt.load_dataset, ds_dir)
  assert "modality 'audio' has feature width dims['audio']=0; every modality needs D >= 1" in msg


@pytest.mark.parametrize("mmap", [False, True])
def test_huge_features_refused_at_load(ds_dir, mmap):  # n_fmt_huge_feats: was 'diverged ... lower optim.lr'
  p = ds_dir / "valid" / "features.text.npy"
  x = np.load(p)
  x[2, 1] = 3e38  # finite in float32, overflows in any sum of squares
  np.save(p, x)
  msg = one_line(ValueError, fmt.load_dataset, ds_dir, mmap=mmap)
  assert "split 'valid': 'text' features reach 3e+38 in magnitude" in msg and "rescale or standardize" in msg


def test_large_but_sane_features_still_load(ds_dir):
  p = ds_dir / "train" / "features.audio.npy"
  np.save(p, np.load(p) * 1e6)  # e.g. raw energies: large, still far from overflow
  fmt.load_dataset(ds_dir)


# --------------------------------------------------------------------------- smoke mode and the user's values
def test_smoke_note_names_the_overridden_user_value(capsys):  # n_cfg_smoke_overrides_sizes, ..._haemsa_smoke_tournament
  from experiments import euar_mosi
  from experiments.common import smoke
  from jmoe.train import app

  cfg = euar_mosi.get_config()
  cfg.smoke, cfg.data.synthetic_sizes = True, (40, 20, 20)
  app.apply_smoke(cfg, smoke)
  err = capsys.readouterr().err
  assert "smoke mode overrides: " in err and "data.synthetic_sizes=(96, 32, 32) (was (40, 20, 20))" in err, err


# --------------------------------------------------------------------------- a refusal after config.json was written
def test_refusal_after_prepare_leaves_no_config_that_blocks_the_fixed_rerun(tmp_path, capsys):
  """n_cfg_haemsa_memory: population.size too large for the device is refused after prepare() wrote config.json;
  the corrected command must then run, not be refused as 'a run with another config'."""
  from experiments import euar_mosi
  from jmoe.train import app, cli

  def refused_after_prepare(cfg):  # what population.run does when P does not fit the device
    with app.prepared(cfg) as r:
      assert (r.workdir / "config.json").is_file()
      raise ValueError(f"config.population.size={cfg.optim.batch_size} does not fit")

  def ready(cfg):
    with app.prepared(cfg):
      return

  wd = tmp_path / "run"
  base = {"workdir": str(wd), "quiet": True, "seeds": 1, "data.synthetic_sizes": (8, 4, 4), "model.width": 8}
  assert cli.invoke(euar_mosi.get_config, refused_after_prepare, {**base, "optim.batch_size": 4}) == 2
  assert "does not fit" in capsys.readouterr().err
  assert not wd.exists()
  assert cli.invoke(euar_mosi.get_config, ready, {**base, "optim.batch_size": 2}) == 0, capsys.readouterr().err
  assert (wd / "config.json").is_file()
  # an existing run keeps its config.json when a later attempt is refused
  assert cli.invoke(euar_mosi.get_config, refused_after_prepare, {**base, "optim.batch_size": 2}) == 2
  assert (wd / "config.json").is_file()


def test_constant_regression_labels_are_warned():  # o_d16_const_labels residual: Corr printed 0.0 without a word
  ds = synthetic_mosi(sizes=(12, 6, 6), dims={"text": 4, "audio": 3, "vision": 2}, seed=0)
  tr, va, te = (ds.splits[s] for s in ("train", "valid", "test"))
  assert not [w for w in fmt.check_split_sizes(tr, va, te, "f") if "every" in w]
  te0 = dataclasses.replace(te, labels={"sentiment": np.zeros(len(te), np.float32)})
  warns = fmt.check_split_sizes(tr, va, te0, "predefined")
  assert "predefined: split 'test': every 'sentiment' label is 0: its correlation is undefined" in " ".join(warns)
  k2 = lambda n: {"vad": np.stack([np.full(n, 3.0), np.arange(n, dtype=float)], 1).astype(np.float32)}
  warns = fmt.check_split_sizes(*(dataclasses.replace(s, labels=k2(len(s))) for s in (tr, va, te)), "f")
  assert "f: split 'test': every 'vad' label (dimension 0) is 3" in " ".join(warns), warns
