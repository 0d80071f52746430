"""Population evolution: tournament / crossover / mutation / elitism on tiny pytrees by hand, determinism, resume at
a generation boundary equals an uninterrupted run, and one-line errors for bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import haemsa_mosi
from jmoe.train import population as pop
from jmoe.train import state as state_lib


def test_tournament_by_hand():
  fitness = jnp.array([3.0, 1.0, 2.0, 0.0])
  cand = jnp.array([[0, 1], [2, 3], [0, 2], [1, 1]])
  np.testing.assert_array_equal(np.asarray(pop.tournament(fitness, cand)), [1, 3, 2, 1])


def test_crossover_by_hand():
  a = {"w": jnp.array([[4.0, 0.0], [1.0, 1.0]]), "n": jnp.array([7, 8])}
  b = {"w": jnp.array([[8.0, 4.0], [3.0, 5.0]]), "n": jnp.array([1, 2])}
  out = pop.crossover(a, b, jnp.array([0.25, 1.0]))
  np.testing.assert_allclose(np.asarray(out["w"]), [[7.0, 3.0], [1.0, 1.0]])
  np.testing.assert_array_equal(np.asarray(out["n"]), [7, 8])  # integer leaves from p_i


def test_mutation():
  tree = {"w": jnp.zeros((4000,)), "n": jnp.array([3])}
  same = pop.mutate(tree, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(np.asarray(same["w"]), 0.0)
  out = pop.mutate(tree, jax.random.key(0), 0.5)
  assert abs(float(jnp.std(out["w"])) - 0.5) < 0.03 and int(out["n"][0]) == 3
  again = pop.mutate(tree, jax.random.key(0), 0.5)
  np.testing.assert_array_equal(np.asarray(out["w"]), np.asarray(again["w"]))


def _states(p=4):
  tx = state_lib.make_optimizer(1e-3, 0.0, 1.0)
  states = []
  for i in range(p):
    params = {"w": jnp.full((2,), float(i))}
    hp = {"task/a": jnp.float32(1.0), "gene/levels": jnp.float32(i / 2)}
    states.append(state_lib.TrainState.create(apply_fn=None, params=params, tx=tx, hparams=hp))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def test_next_generation_elitism_bounds_determinism():
  states = _states()
  genes = (pop.Gene("gene/levels", (0, 2), 0.0, 2.0, 10.0), pop.Gene("lr", (1e-4, 1e-2), 1e-4, 1e-2, 5.0, log=True))
  fit = jnp.array([3.0, 0.5, 2.0, jnp.nan])
  new = pop.next_generation(states, fit, jax.random.key(1), genes, k=2, sigma=0.0, elite=1)
  np.testing.assert_array_equal(np.asarray(new.params["w"][0]), [1.0, 1.0])  # the elite: individual 1, unchanged
  assert float(new.hparams["gene/levels"][0]) == 0.5
  lv = np.asarray(new.hparams["gene/levels"])
  lr = np.asarray(new.opt_state.hyperparams["learning_rate"])
  assert np.all((lv >= 0) & (lv <= 2)) and np.all((lr >= 1e-4 * 0.999) & (lr <= 1e-2 * 1.001))
  w = np.asarray(new.params["w"])[:, 0]
  assert np.all((w >= 0) & (w <= 2))  # sigma=0: convex mixtures of parents; the NaN individual (3) never wins
  again = pop.next_generation(states, fit, jax.random.key(1), genes, k=2, sigma=0.0, elite=1)
  for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _cfg(tmp_path, name="run"):
  c = haemsa_mosi.get_config()
  c.smoke, c.quiet, c.workdir = True, True, str(tmp_path / name)
  c.data.synthetic_dims = (6, 5, 4)
  return c


@pytest.mark.parametrize(
  "key,value,msg",
  [
    ("size", 1, "P >= 2"),
    ("tournament", 20, "tournament <= size"),
    ("sigma", -0.1, "sigma must be >= 0"),
  ],
)
def test_bad_population_one_line(tmp_path, key, value, msg):
  c = _cfg(tmp_path)
  c.population[key] = value
  with pytest.raises(ValueError, match=msg) as e:
    pop.validate_population(c)
  assert "\n" not in str(e.value)


def test_population_refuses_a_learning_rate_schedule(tmp_path):
  c = _cfg(tmp_path)
  c.optim.schedule = "cosine"
  with pytest.raises(ValueError, match="optim.schedule='cosine' is invalid for a population run"):
    pop.validate_population(c)


def test_population_that_does_not_fit_memory(tmp_path):
  c = _cfg(tmp_path)
  c.population.memory_bytes = 1000
  with pytest.raises(ValueError, match="does not fit the device memory"):
    pop.validate_population(c, one_state_bytes=10_000)
  pop.validate_population(c, one_state_bytes=10)


def test_all_modalities_off_refused_before_training(tmp_path):
  c = _cfg(tmp_path)
  for m in ("text", "audio", "vision"):
    c.population.genes[f"gene/expert/{m}"].init = (0.0, 0.1)
    c.population.genes[f"gene/shared_in/{m}"].init = (0.0, 0.1)
  with pytest.raises(ValueError, match="switch off every modality"):
    haemsa_mosi.run(c)
  assert not (tmp_path / "run").exists()  # nothing written


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """One uninterrupted smoke population run, shared by the resume, chunk and evaluator tests."""
  root = tmp_path_factory.mktemp("population")
  return root, haemsa_mosi.run(_cfg(root, "full"))


@pytest.mark.slow
def test_resume_at_generation_boundary_equals_uninterrupted(full_run, tmp_path, monkeypatch):
  from jmoe.train import loop

  root, full = full_run

  def interrupt(epoch):  # smoke: 1 epoch per generation; epoch 1 opens generation 1
    if epoch >= 1:
      raise KeyboardInterrupt("simulated interruption")

  with monkeypatch.context() as mp:
    mp.setattr(loop, "before_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
      haemsa_mosi.run(_cfg(tmp_path, "cut"))
  lines = (tmp_path / "cut/fold_0/seed_0/fitness.jsonl").read_text().splitlines()
  assert {json.loads(l)["generation"] for l in lines} == {0}
  resumed = haemsa_mosi.run(_cfg(tmp_path, "cut"))
  assert resumed["folds"][0]["seeds"][0]["test"] == full["folds"][0]["seeds"][0]["test"]
  assert resumed["folds"][0]["seeds"][0]["chosen"] == full["folds"][0]["seeds"][0]["chosen"]
  a = (root / "full/fold_0/seed_0/fitness.jsonl").read_text()
  assert a == (tmp_path / "cut/fold_0/seed_0/fitness.jsonl").read_text()  # deterministic given the seed
  rows = [json.loads(l) for l in a.splitlines()]
  assert len(rows) == 2 * 4 and all("gene/levels" in r and "lr" in r for r in rows)


@pytest.mark.slow
def test_member_chunks_train_the_population_like_one_program(full_run, tmp_path):
  _, whole = full_run
  c = _cfg(tmp_path, "chunked")
  c.member_chunk = 3  # P=4 -> programs of 2 and 2
  chunked = haemsa_mosi.run(c)
  a, b = whole["folds"][0]["seeds"][0], chunked["folds"][0]["seeds"][0]
  assert a["chosen"]["individual"] == b["chosen"]["individual"]
  np.testing.assert_allclose(a["chosen"]["fitness"], b["chosen"]["fitness"], rtol=1e-4)
  np.testing.assert_allclose(a["test"]["sentiment"]["MAE"], b["test"]["sentiment"]["MAE"], rtol=1e-4)


def test_early_stopping_label_masks_and_the_evaluator_on_a_population_run(tmp_path, monkeypatch):
  c = _cfg(tmp_path)
  c.population.generations = 6
  c.optim.patience = 1  # one generation without a better best fitness stops it (smoke: 1 epoch per generation)
  monkeypatch.setattr(pop, "fitness", lambda setup, fn, params, split, consts, p: np.ones(p))  # never improves
  flag = "sentiment: constant predictions (std < 1e-3 x the label std)"
  monkeypatch.setattr(pop.loop, "prediction_flags", lambda setup, out, split: [flag])
  out = haemsa_mosi.run(c)
  # the chosen individual's prediction flags are kept in results.json and shown under the table (probe round 3)
  assert out["folds"][0]["seeds"][0]["flags"] == [flag]
  assert f"Flagged (in the means): predefined/seed 0: {flag}" in (tmp_path / "run/results.md").read_text()
  rows = [json.loads(l) for l in (tmp_path / "run/fold_0/seed_0/fitness.jsonl").read_text().splitlines()]
  assert max(r["generation"] for r in rows) < 5, "the evolution must stop before its last generation"
  assert out["folds"][0]["seeds"][0]["best_epoch"] == max(r["generation"] for r in rows)
  with np.load(tmp_path / "run/fold_0/seed_0/test_outputs.npz") as z:
    assert "label_mask.sentiment" in z and z["label_mask.sentiment"].all()
  # the robustness evaluator restores the chosen individual with its genes and reproduces its test metrics
  from jmoe.evaluators import robustness as rob

  run = rob.load_run(tmp_path / "run")
  assert any(k.startswith("gene/") for k in run.consts[(0, 0)])
  res = rob.evaluate(run, rob.missing_conditions(run.modalities)[:1], 0)
  assert res["conditions"][0]["per_run"]["0/0"] == out["folds"][0]["seeds"][0]["test"]
