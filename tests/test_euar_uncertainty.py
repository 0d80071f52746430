"""The EUAR uncertainty diagnostic: AUROC / Spearman against hand-computed values, the planted truth, and (slow) the
diagnostic's files on a smoke run."""

import json

import ml_collections
import numpy as np
import pytest

from jmoe.evaluators import uncertainty as unc


def test_auroc_hand_computed():
  # positives {0.35, 0.8} vs negatives {0.1, 0.4}: 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4
  assert unc.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  # a tie counts 1/2: positive 1.0 vs negatives {1.0, 2.0} -> (0.5 + 0) / 2
  assert unc.auroc([1.0, 1.0, 2.0], [1, 0, 0]) == pytest.approx(0.25)
  assert unc.auroc([3.0, 2.0, 1.0], [1, 1, 0]) == 1.0
  assert unc.auroc([3.0, 2.0, 1.0], [0, 0, 1]) == 0.0
  assert np.isnan(unc.auroc([1.0, 2.0], [0, 0]))


def test_spearman_hand_computed():
  # rank differences (0, -1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
  assert unc.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
  assert unc.spearman([1, 2, 3], [9, 4, 1]) == pytest.approx(-1.0)
  # ties: average ranks (1.5, 1.5, 3) vs (1, 2, 3) -> Pearson of ranks
  assert unc.spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
  assert np.isnan(unc.spearman([1, 1, 1], [1, 2, 3]))


def _data_cfg(**kw):
  d = {"source": "synthetic", "synthetic_kind": "mosi", "synthetic_seed": 0, "synthetic_dims": (16, 5, 8), "seq_len": 0}
  d.update(kw)
  d["synthetic_sizes"] = (60, 30, 40)
  return ml_collections.ConfigDict(d)


def test_planted_truth_matches_the_source_and_refuses_real_data():
  from jmoe.data import sources

  cfg = _data_cfg(modalities="text,audio,vision", path="", text_features="", tfds_name="")
  ds = sources.load(cfg)
  truth, gen = unc.planted_truth(cfg, ds)
  assert set(truth["corrupted"]) == {"text", "audio", "vision"} and len(truth["latent"]) == 40
  assert gen["corrupt_scale"] == 3.0
  other = sources.load(_data_cfg(synthetic_seed=1, modalities="text,audio,vision"))
  with pytest.raises(unc.RunError, match="differs"):
    unc.planted_truth(cfg, other)
  with pytest.raises(unc.RunError, match="known truth"):
    unc.planted_truth(ml_collections.ConfigDict({"source": "bclstm"}))


def test_seed_diagnostic_perfect_and_inverted_detectors():
  rng = np.random.default_rng(0)
  bad = np.zeros(50, bool)
  bad[:5] = True
  noise = np.exp(rng.normal(0, 0.6, 50))
  truth = {"corrupted": {"a": bad}, "noise_scale": {"a": noise}}
  feats = {"a": rng.normal(size=(50, 3))}
  good = np.where(bad, 100.0, noise)  # corrupted highest, clean ordered like the noise
  d = unc.seed_diagnostic({"a": good}, truth, feats, np.abs(good), level=3.0)["modalities"]["a"]
  assert d["auroc_corrupt"] == 1.0 and d["rho_noise"] == pytest.approx(1.0) and d["n_corrupt"] == 5
  d = unc.seed_diagnostic({"a": -good}, truth, feats, np.abs(good), level=3.0)["modalities"]["a"]
  assert d["auroc_corrupt"] == 0.0 and d["rho_noise"] == pytest.approx(-1.0)


@pytest.mark.slow
def test_diagnostic_on_a_smoke_run_writes_its_files(tmp_path, monkeypatch):
  from experiments import euar_mosi, euar_uncertainty
  from jmoe.train import app, cli

  cfg = euar_mosi.get_config()
  cfg.smoke, cfg.quiet, cfg.workdir = True, True, str(tmp_path / "run")
  app.run(cfg, euar_mosi.smoke)
  assert cli.invoke(euar_uncertainty.get_config, euar_uncertainty.run, {"run": cfg.workdir}) == 0
  for name in ("uncertainty.json", "uncertainty.md", "uncertainty.png"):
    assert (tmp_path / "run" / name).is_file()
  out = json.loads((tmp_path / "run" / "uncertainty.json").read_text())
  assert set(out["summary"]) == {"text", "audio", "vision"}
  with np.load(tmp_path / "run" / "fold_0" / "seed_0" / "test_outputs.npz") as z:
    assert z["per_sample.sigma2_text"].shape == (32,)
  assert cli.invoke(euar_uncertainty.get_config, euar_uncertainty.run, {"run": str(tmp_path / "nothing")}) == 2
