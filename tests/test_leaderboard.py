"""experiments.leaderboard: every row gets the same budget (HAEMSA's population matched to the search), the DR-MoE
router row's search space parses, a subset of rows merges into the board an earlier run wrote, and the verdict lines
compare each paper row with the best baseline."""

import json

import pytest

from experiments import leaderboard as lb
from jmoe.train import cli, search


def _cfg(**kw):
  c = lb.get_config()
  c.update(kw)
  return c


def test_population_row_gets_the_search_budget():
  rows = {n: (p, c) for n, p, c in lb.row_configs(_cfg(dataset="mosi_bclstm", search_trials=6, epochs=10))}
  preset, haemsa = rows["haemsa"]
  assert preset == "haemsa_mosi" and haemsa.model_name == "haemsa"
  assert haemsa.search.trials == 0  # the evolution is its search
  assert haemsa.population.size == 6 and haemsa.population.generations * 2 == haemsa.optim.epochs == 10
  assert rows["paper"][1].search.trials == 6 and rows["linear"][1].model_name == "baseline"
  assert {c.optim.epochs for _, c in rows.values()} == {10}


def test_router_search_row_space_parses_and_holds_the_router_knobs():
  rows = {n: c for n, _, c in lb.row_configs(_cfg(dataset="ravdess4", search_trials=4))}
  dims = {d.key for d in search.parse_space(rows["drmoe_router_search"].search.space, rows["drmoe_router_search"])}
  assert {"model.router_temperature", "model.router_gumbel", "loss_weights.switch", "optim.lr"} <= dims
  assert rows["paper"].search.space == ""  # the paper row keeps the default space


def test_unknown_row_is_refused():
  with pytest.raises(ValueError, match="unknown rows"):
    lb.row_configs(_cfg(dataset="synthetic_mosi", rows="paper,nope"))


def test_verdicts_name_the_best_baseline_and_weigh_the_difference_against_the_noise():
  rows = {
    "paper": {"model": "euar", "test": {"Acc": (0.70, 0.02), "MAE": (0.8, 0.01)}},
    "linear": {"model": "baseline", "test": {"Acc": (0.75, 0.01), "MAE": (0.9, 0.01)}},
    "mlp": {"model": "baseline", "test": {"Acc": (0.72, 0.01), "MAE": (1.0, 0.01)}},
  }
  (line,) = lb.verdicts(rows, "Acc")
  assert "-0.0500" in line and "(linear," in line and line.endswith("below it")
  (line,) = lb.verdicts(rows, "MAE")  # lower is better: 0.8 vs the best baseline's 0.9
  assert "(linear," in line and line.endswith("beats it")
  rows["paper"]["test"]["Acc"] = (0.76, 0.02)  # +0.01 < hypot(0.02, 0.01)
  (line,) = lb.verdicts(rows, "Acc")
  assert line.endswith("within noise of it")
  rows["linear+ens"] = {"model": "baseline", "test": {"Acc": (0.90, 0.0)}}  # compared with ensemble rows only
  rows["paper+ens"] = {"model": "euar", "test": {"Acc": (0.91, 0.0)}}
  line, ens_line = lb.verdicts(rows, "Acc")
  assert (
    "(linear," in line
    and "(linear+ens," in ens_line
    and ens_line.endswith("ahead of it, one value each (no spread to judge by)")
  )
  del rows["linear+ens"], rows["paper+ens"]
  rows["paper"]["per_fold"], rows["linear"]["per_fold"] = [0.74, 0.76, 0.78], [0.73, 0.75, 0.78]  # the same folds
  (line,) = lb.verdicts(rows, "Acc")
  assert "paired over the 3 folds +0.0067 ± 0.0047, ahead on 2 of 3" in line


def test_row_is_reported_on_the_task_with_the_boards_metric():
  summary = {"binary": {"test": {"UA": (0.6, 0.0)}}, "sentiment": {"test": {"Non0_acc_2": (0.7, 0.0)}}}
  assert lb.main_task(summary, "Non0_acc_2") == "sentiment"
  assert lb.main_task(summary, "nothing") == "binary"


def _board(tmp_path, rows, **kw):
  base = {
    "dataset": "synthetic_mosi",
    "search_trials": 0,
    "seeds": 1,
    "smoke": True,
    "workdir": str(tmp_path / "board"),
  }
  assert cli.invoke(lb.get_config, lb.run, {**base, "rows": rows, **kw}) == 0
  return json.loads((tmp_path / "board" / "leaderboard.json").read_text()), (tmp_path / "board" / "leaderboard.md")


def test_subset_of_rows_merges_into_the_earlier_board(tmp_path):
  two = {"seeds": 2, "ensemble": 2, "smoke": False, "epochs": 2}  # smoke would train one seed
  _board(tmp_path, "late_linear", **two)
  board, md = _board(tmp_path, "linear", **two)
  assert list(board["rows"]) == ["linear", "linear+ens", "late_linear", "late_linear+ens"]  # the board's order
  linear = board["rows"]["linear"]
  assert linear["per_fold"] == [pytest.approx(linear["test"]["Non0_acc_2"][0])]  # one fold: its mean over seeds
  assert "SYNTHETIC" in md.read_text() and "| late_linear | baseline |" in md.read_text()
  bad = {**two, "dataset": "synthetic_mosi", "search_trials": 0, "workdir": str(tmp_path / "board")}
  with pytest.raises(ValueError, match="another budget"):
    lb.run(_cfg(**{**bad, "rows": "linear", "epochs": 3}))


@pytest.mark.slow
def test_haemsa_row_is_reported_on_sentiment(tmp_path):
  board, md = _board(tmp_path, "haemsa,linear")
  assert board["rows"]["haemsa"]["task"] == "sentiment" and "- haemsa: Non0_acc_2" in md.read_text()


def test_routed_local_counts_models_on_one_scale(tmp_path):
  import numpy as np

  for f, s, route in ((0, 0, [1, 1, 1]), (0, 1, [0, 1, 0]), (1, 0, [0, 0, 0])):
    d = tmp_path / f"fold_{f}" / f"seed_{s}"
    d.mkdir(parents=True)
    np.savez(d / "test_outputs.npz", **{"per_sample.scale_audio": np.array(route)})
  assert lb.routed_local(tmp_path) == {"share": 5 / 9, "collapsed": 2, "models": 3}
  (tmp_path / "config.json").write_text(json.dumps({"model": {"scales": "global"}}))
  assert lb.routed_local(tmp_path) is None  # a fixed scale routes nothing
