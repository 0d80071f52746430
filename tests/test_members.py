"""The member axis through the app: seeds vmapped and folds x seeds vmapped in one program give the same results
as sequential training (fp32 tolerance), on a cross-validation pool with equal-size folds."""

import numpy as np
import pytest

from experiments import euar_mosi
from jmoe.data import format as fmt
from jmoe.train import app


def _pool(tmp_path):
  """6 subjects x 10 samples, two modalities, a [-3, 3] score planted in the text features."""
  rng = np.random.default_rng(0)
  b = 60
  y = rng.uniform(-3, 3, b).astype(np.float32)
  text = (np.outer(y, rng.normal(size=8)) + rng.normal(size=(b, 8))).astype(np.float32)
  audio = rng.normal(size=(b, 4)).astype(np.float32)
  sp = fmt.Split(
    features={"text": text, "audio": audio},
    masks={},
    labels={"sentiment": y},
    ids=np.asarray([f"s{i}" for i in range(b)]),
    groups={"subject": np.repeat(np.arange(6), 10)},
  )
  ds = fmt.Dataset("pool", {"pool": sp}, ("text", "audio"), {"text": 8, "audio": 4}, True, "test pool")
  return fmt.save_dataset(ds, tmp_path / "data")


def _cfg(tmp_path, data_dir, members, name):
  c = euar_mosi.get_config()
  c.workdir, c.quiet = str(tmp_path / name), True
  c.data.source, c.data.path, c.data.modalities = "dir", str(data_dir), "text,audio"
  c.folds.kind, c.folds.group, c.folds.valid_groups, c.folds.max_folds = "logo", "subject", 1, 3
  c.seeds, c.members = 2, members
  c.model.width, c.model.dropout = 8, 0.0
  c.optim.epochs, c.optim.batch_size = 3, 8
  return c


def _tests(out):
  return [[r["test"]["sentiment"]["MAE"] for r in f["seeds"]] for f in out["folds"]]


def test_vmapped_seeds_and_folds_equal_sequential(tmp_path):
  data = _pool(tmp_path)
  seq = app.run(_cfg(tmp_path, data, "sequential", "seq"))
  vm = app.run(_cfg(tmp_path, data, "vmap", "vmap"))
  vf = app.run(_cfg(tmp_path, data, "vmap_folds", "vmap_folds"))
  assert len(seq["folds"]) == 3 and all(len(f["seeds"]) == 2 for f in seq["folds"])
  np.testing.assert_allclose(_tests(vm), _tests(seq), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_tests(vf), _tests(seq), rtol=1e-4, atol=1e-5)
  assert [[r["best_epoch"] for r in f["seeds"]] for f in vf["folds"]] == [
    [r["best_epoch"] for r in f["seeds"]] for f in seq["folds"]
  ]
  assert (tmp_path / "vmap_folds" / "fold_2" / "seed_1" / "test_outputs.npz").exists()


def test_vmap_folds_refuses_unequal_folds(tmp_path):
  data = _pool(tmp_path)
  cfg = _cfg(tmp_path, data, "vmap_folds", "bad")
  cfg.folds.kind, cfg.folds.k, cfg.folds.group, cfg.folds.max_folds = "kfold", 7, "", 0  # 60 samples: unequal folds
  with pytest.raises(ValueError, match="needs folds of equal train/valid/test sizes"):
    app.run(cfg)
