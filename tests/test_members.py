"""The member axis through the app: seeds vmapped and folds x seeds vmapped in one program give the same results
as sequential training (fp32 tolerance), on a cross-validation pool with equal-size folds."""

import numpy as np
import pytest

from experiments import euar_mosi
from jmoe.data import format as fmt
from jmoe.train import app, loop


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
  chunked_cfg = _cfg(tmp_path, data, "vmap_folds", "vmap_folds_chunked")
  chunked_cfg.member_chunk = 4  # 6 members -> programs of 3 + 3
  chunked = app.run(chunked_cfg)
  assert len(seq["folds"]) == 3 and all(len(f["seeds"]) == 2 for f in seq["folds"])
  np.testing.assert_allclose(_tests(vm), _tests(seq), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_tests(vf), _tests(seq), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(_tests(chunked), _tests(seq), rtol=1e-4, atol=1e-5)
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


@pytest.mark.parametrize(
  "chunk,count,sizes",
  [
    (0, 7, [7]),
    (8, 7, [7]),
    (4, 7, [4, 3]),
    (4, 8, [4, 4]),
    (5, 16, [4, 4, 4, 4]),
    (1, 3, [1, 1, 1]),
    (6, 30, [6] * 5),
  ],
)
def test_member_chunks_cover_every_member_once_in_near_equal_programs(chunk, count, sizes):
  import ml_collections

  parts = loop.member_chunks(ml_collections.ConfigDict({"member_chunk": chunk}), count)
  assert [len(p) for p in parts] == sizes
  assert [i for p in parts for i in p] == list(range(count))


def test_negative_member_chunk_is_refused(tmp_path):
  cfg = euar_mosi.get_config()
  cfg.member_chunk = -1
  with pytest.raises(ValueError, match="config.member_chunk=-1 is invalid"):
    app.validate_config(cfg)
