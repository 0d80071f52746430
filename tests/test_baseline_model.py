"""jmoe.models.baseline against a numpy reference: the linear head on the concatenated pooled vectors, the MLP and
late fusion shapes, and a platform run with it (the leaderboard's baseline rows)."""

import jax
import numpy as np

from jmoe.models.baseline import Baseline


def _batch(b=5):
  rng = np.random.default_rng(0)
  seq = rng.normal(size=(b, 4, 3)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0]] * b, bool)
  return {"a": seq, "a_mask": mask, "v": rng.normal(size=(b, 2)).astype(np.float32)}


def test_linear_is_a_dense_layer_on_the_concatenated_masked_means():
  batch = _batch()
  model = Baseline(modalities=("a", "v"), heads=(("score", (), 1.5), ("cls", (3,), 0.0)), kind="linear")
  params = model.init(jax.random.key(0), batch)
  out, _ = model.apply(params, batch)
  x = np.concatenate([batch["a"][:, :2].mean(1), batch["v"]], -1).astype(np.float64)
  p = params["params"]
  want = x @ np.asarray(p["head_score"]["kernel"], np.float64) + np.asarray(p["head_score"]["bias"]) + 1.5
  np.testing.assert_allclose(np.asarray(out["score"]), want[:, 0], rtol=1e-5, atol=1e-6)
  assert out["cls"].shape == (5, 3)


def test_mlp_and_late_fusion_shapes():
  batch = _batch()
  for kind, fusion in (("mlp", "early"), ("linear", "late"), ("mlp", "late")):
    model = Baseline(modalities=("a", "v"), heads=(("hl", (4, 2), 0.0),), kind=kind, fusion=fusion, width=8)
    out, _ = model.apply(model.init(jax.random.key(0), batch), batch)
    assert out["hl"].shape == (5, 4, 2)


def test_a_platform_run_with_the_baseline_model(tmp_path):
  import ml_collections

  from experiments import euar_mosi
  from jmoe.models import baseline
  from jmoe.train import app

  cfg = euar_mosi.get_config()
  cfg.update_from_flattened_dict(
    {"workdir": str(tmp_path), "quiet": True, "smoke": True, "data.synthetic_sizes": (96, 32, 32)}
  )
  cfg.model_name = "baseline"
  cfg.model = ml_collections.ConfigDict(baseline.default_model_config())
  cfg.loss_weights = ml_collections.ConfigDict()
  out = app.run(cfg, euar_mosi.smoke)
  assert out["folds"][0]["seeds"][0]["status"] == "ok"
