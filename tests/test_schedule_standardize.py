"""The platform's learning-rate schedule (optim.schedule) and per-fold feature standardisation (folds.standardize)."""

import json
import math

import numpy as np
import pytest

from experiments import euar_mosi
from jmoe.data import format as fmt
from jmoe.train import app
from jmoe.train import state as state_lib


def test_cosine_factor_anneals_per_epoch_like_pytorch_cosine_annealing():
  got = [state_lib.schedule_factor("cosine", e, 4) for e in range(4)]
  np.testing.assert_allclose(got, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
  assert state_lib.schedule_factor("constant", 3, 4) == 1.0
  with pytest.raises(ValueError, match="optim.schedule"):
    state_lib.schedule_factor("linear", 0, 4)


def test_lr_scale_scales_the_adamw_update_and_keeps_the_learning_rate_gene():
  import jax
  import jax.numpy as jnp

  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.array([1.0, -2.0, 0.5])}
  tx = state_lib.make_optimizer(1e-2, 1e-4, 1.0)
  full, _ = tx.update(grads, tx.init(params), params)
  opt_state = tx.init(params)
  hp = dict(opt_state.hyperparams, lr_scale=np.float32(0.25))
  quarter, new_state = tx.update(grads, opt_state._replace(hyperparams=hp), params)
  np.testing.assert_allclose(jax.device_get(quarter["w"]), 0.25 * jax.device_get(full["w"]), rtol=1e-6)
  assert float(new_state.hyperparams["learning_rate"]) == pytest.approx(1e-2)


def _cfg(tmp_path, name, **over):
  cfg = euar_mosi.get_config()
  cfg.workdir, cfg.quiet, cfg.seeds = str(tmp_path / name), True, 1
  cfg.optim.epochs = 2
  cfg.optim.patience = 5
  cfg.data.synthetic_sizes = (64, 32, 32)
  cfg.update_from_flattened_dict(over)
  return cfg


def _train_losses(workdir):
  lines = (workdir / "fold_0/seed_0/metrics.jsonl").read_text().splitlines()
  return [json.loads(l)["train"]["loss"] for l in lines]


def test_cosine_run_equals_constant_in_epoch_0_and_differs_after(tmp_path):
  app.run(_cfg(tmp_path, "const"))
  app.run(_cfg(tmp_path, "cos", **{"optim.schedule": "cosine", "optim.epochs": 2}))
  const, cos = _train_losses(tmp_path / "const"), _train_losses(tmp_path / "cos")
  assert const[0] == cos[0]  # factor 1 in the first epoch
  assert const[1] != cos[1]  # factor 0.5 in the second


def test_unknown_schedule_is_refused_in_one_line(tmp_path):
  with pytest.raises(ValueError, match=r"config.optim.schedule='step' is invalid"):
    app.validate_config(_cfg(tmp_path, "bad", **{"optim.schedule": "step"}))


def _split(x, mask=None, present=None):
  b = len(x)
  return fmt.Split(
    features={"eeg": np.asarray(x, np.float32)},
    masks={} if mask is None else {"eeg": np.asarray(mask, bool)},
    labels={"y": np.zeros(b, np.float32)},
    ids=np.array([str(i) for i in range(b)]),
    present={} if present is None else {"eeg": np.asarray(present, bool)},
  )


def test_standardisation_uses_train_statistics_of_real_units_only():
  rng = np.random.default_rng(0)
  x = rng.normal(3.0, 2.0, (6, 5, 4))
  mask = np.ones((6, 5), bool)
  mask[:, 3:] = False  # padding
  present = np.array([True, True, True, True, False, True])  # sample 4: modality missing
  x[~mask] = 0.0
  x[4] = 0.0
  x[0, 3:] = 1e6  # garbage under the mask must not leak into the statistics
  train = _split(x, mask, present)
  stats = fmt.feature_stats(train, ["eeg"])
  real = x[mask & present[:, None]]
  np.testing.assert_allclose(stats["eeg"][0], real.mean(0))
  np.testing.assert_allclose(stats["eeg"][1], real.std(0))
  z = fmt.standardize(train, stats).features["eeg"]
  zr = z[mask & present[:, None]]
  np.testing.assert_allclose(zr.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(zr.std(0), 1.0, atol=1e-5)
  assert np.all(z[~mask] == 0) and np.all(z[4] == 0)  # padding and the missing modality stay zero inputs
  other = _split(rng.normal(10.0, 1.0, (3, 5, 4)), np.ones((3, 5), bool))
  zo = fmt.standardize(other, stats).features["eeg"]
  np.testing.assert_allclose(zo, (other.features["eeg"] - stats["eeg"][0]) / stats["eeg"][1], rtol=1e-5)


def test_constant_feature_is_centred_not_divided_by_zero():
  x = np.ones((4, 3))
  x[:, 1] = np.arange(4)
  stats = fmt.feature_stats(_split(x), ["eeg"])
  z = fmt.standardize(_split(x), stats).features["eeg"]
  assert np.all(np.isfinite(z)) and np.all(z[:, 0] == 0)


def test_app_folds_are_standardised_per_fold_from_their_train_split(tmp_path):
  cfg = _cfg(tmp_path, "std", **{"folds.standardize": True})
  from jmoe.data import sources

  ds = sources.load(cfg.data)
  fold = app.make_folds(cfg.folds, ds)[0]
  raw = ds.splits["train"]
  for m in ds.modalities:
    stats = fmt.feature_stats(raw, [m])
    np.testing.assert_allclose(fold.train.features[m], fmt.standardize(raw, stats).features[m], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
      fold.test.features[m], fmt.standardize(ds.splits["test"], stats).features[m], rtol=1e-5, atol=1e-6
    )
