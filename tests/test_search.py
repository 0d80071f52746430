"""Hyperparameter search on the member axis (jmoe.train.search) and ensembles: a planted problem whose best learning
rate is known, test labels never influence the choice, search.json / search.png, the ensemble row against a numpy
recomputation from the saved test outputs."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import euar_mosi
from jmoe.data import sources
from jmoe.train import app, search


def _cfg(workdir, **over):
  c = euar_mosi.get_config()
  c.update_from_flattened_dict(
    {
      "workdir": str(workdir),
      "quiet": True,
      "seeds": 1,
      "optim.epochs": 3,
      "optim.patience": 3,
      "data.synthetic_sizes": (96, 32, 32),
      "model.width": 16,
      **over,
    }
  )
  return c


def test_space_parsing_and_reproducible_draws():
  cfg = euar_mosi.get_config()
  dims = search.parse_space("optim.lr=log:1e-4:1e-2; model.dropout=choice:0.0,0.1; loss_weights.kl=uniform:0:1", cfg)
  a, b = search.draw_trials(dims, 5, 0), search.draw_trials(dims, 5, 0)
  assert a == b and all(1e-4 <= t["optim.lr"] <= 1e-2 and t["model.dropout"] in (0.0, 0.1) for t in a)
  static, state = search.split_trial(a[0])
  assert set(static) == {"model.dropout"} and set(state) == {"learning_rate", "loss/kl"}
  for bad in ("optim.lrr=log:1:2", "optim.lr=log:0:1", "optim.lr=normal:0:1", "optim.lr"):
    with pytest.raises(ValueError, match="config.search.space entry"):
      search.parse_space(bad, cfg)
  assert "loss_weights.kl=log:" in search.default_space(cfg)


def test_search_finds_the_planted_learning_rate(tmp_path):
  """lr 1e-7 cannot learn in 3 epochs, 3e-3 can: validation must choose 3e-3 on every trial draw."""
  space = {"search.trials": 4, "search.space": "optim.lr=choice:1e-7,3e-3", "search.seed": 1}
  cfg = _cfg(tmp_path / "run", seeds=2, ensemble=2, **space)
  trials = search.draw_trials(search.parse_space(cfg.search.space, cfg), 4, 1)
  assert {t["optim.lr"] for t in trials} == {1e-7, 3e-3}, "the seed must draw both values"
  out = app.run(cfg, euar_mosi.smoke)
  book = json.loads((tmp_path / "run" / "search.json").read_text())
  assert book["chosen"]["0"]["overrides"]["optim.lr"] == 3e-3
  assert len(book["trials"]) == 4 and all("0" in t["valid"] for t in book["trials"])
  assert (tmp_path / "run" / "search.png").is_file()
  assert out["folds"][0]["seeds"][0]["trial"] == book["chosen"]["0"]["trial"]
  assert sorted(out["folds"][0]["ensemble"]["seeds"]) == [0, 1]  # the ensemble row of the chosen configuration
  assert not list((tmp_path / "run" / "search").rglob("test_outputs.npz")), "trials must never be scored on test"


def test_test_labels_never_influence_the_choice(tmp_path, monkeypatch):
  real = sources.load
  books = []
  for name, permute in (("a", False), ("b", True)):

    def load(cfg, permute=permute):
      ds = real(cfg)
      if not permute:
        return ds
      test = ds.splits["test"]
      y = np.random.default_rng(0).permutation(np.asarray(test.labels["sentiment"]))
      return dataclasses.replace(ds, splits={**ds.splits, "test": dataclasses.replace(test, labels={"sentiment": y})})

    monkeypatch.setattr(sources, "load", load)
    cfg = _cfg(tmp_path / name, **{"search.trials": 2, "optim.epochs": 2, "search.space": "optim.lr=log:1e-4:1e-2"})
    app.run(cfg, euar_mosi.smoke)
    books.append(json.loads((tmp_path / name / "search.json").read_text()))
  assert books[0]["chosen"] == books[1]["chosen"] and books[0]["trials"] == books[1]["trials"]


def test_ensemble_row_is_the_mean_prediction_of_the_best_seeds(tmp_path):
  cfg = _cfg(tmp_path / "run", seeds=3, ensemble=2, members="vmap")
  out = app.run(cfg, euar_mosi.smoke)
  fold = out["folds"][0]
  ens = fold["ensemble"]
  vals = {r["seed"]: r["valid"]["sentiment"]["MAE"] for r in fold["seeds"]}
  assert ens["seeds"] == sorted(vals, key=vals.get)[:2]  # MAE: lower is better
  preds, labels = [], None
  for s in ens["seeds"]:
    with np.load(tmp_path / "run" / "fold_0" / f"seed_{s}" / "test_outputs.npz") as z:
      preds.append(z["sentiment"])
      labels = z["label.sentiment"]
  mae = float(np.mean(np.abs(np.mean(preds, axis=0) - labels)))
  np.testing.assert_allclose(ens["test"]["sentiment"]["MAE"], mae, rtol=1e-5)
  assert "test_ensemble" in out["summary"]["sentiment"]
  assert "test_ensemble" in (tmp_path / "run" / "results.md").read_text()
  # the same finished run re-run with another K: no retraining (the config check ignores `ensemble`), a new row
  again = app.run(_cfg(tmp_path / "run", seeds=3, ensemble=3, members="vmap"), euar_mosi.smoke)
  assert again["folds"][0]["ensemble"]["seeds"] == sorted(vals, key=vals.get)
  assert [r["valid"] for r in again["folds"][0]["seeds"]] == [r["valid"] for r in fold["seeds"]]
