"""HAEMSA model: heads and shapes, the KL transfer by hand, gene masks switch parts off exactly, the 2/7-class
sentiment task kind, config checks, and the experiment in smoke mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import haemsa_mosi
from jmoe.data import format as fmt
from jmoe.models import haemsa
from jmoe.train import tasks as tasks_lib


def _cfg():
  c = haemsa_mosi.get_config()
  c.model.width = 8
  return c


def _model(cfg=None):
  cfg = cfg or _cfg()
  specs = {"sentiment": fmt.SENTIMENT_SPEC}
  tasks = tasks_lib.from_config(cfg.tasks, specs)
  return haemsa.build(cfg, None, tasks), tasks


def _batch(b=5, seed=0):
  r = np.random.default_rng(seed)
  return {
    "text": jnp.asarray(r.normal(size=(b, 4, 6)), jnp.float32),
    "text_mask": jnp.asarray(np.arange(4)[None] < r.integers(1, 5, size=(b, 1))),
    "audio": jnp.asarray(r.normal(size=(b, 5)), jnp.float32),
    "vision": jnp.asarray(r.normal(size=(b, 3)), jnp.float32),
  }


def test_heads_and_shapes():
  model, _ = _model()
  batch = _batch()
  params = model.init(jax.random.key(0), batch)["params"]
  out, aux = model.apply({"params": params}, batch)
  assert out["sentiment"].shape == (5,)
  assert out["binary"].shape == (5, 2) and out["seven"].shape == (5, 7) and out["unified"].shape == (5, 7)
  assert aux["losses"]["kl"].shape == (5,) and np.all(np.asarray(aux["losses"]["kl"]) >= 0)
  assert aux["per_sample"]["gate_l1_audio"].shape == (5, 2)
  assert aux["per_sample"]["task_gate_seven"].shape == (5, 4)
  np.testing.assert_allclose(np.asarray(aux["per_sample"]["gate_l0_text"]).sum(-1), 1.0, rtol=1e-6)


def test_kl_by_hand_and_teacher_is_stop_gradient():
  t = jnp.array([[1.0, 0.0, -1.0], [0.3, 0.3, 0.3]])
  s = jnp.array([[0.0, 0.5, 0.0], [2.0, -1.0, 0.0]])
  p = np.exp(np.asarray(t)) / np.exp(np.asarray(t)).sum(-1, keepdims=True)
  q = np.exp(np.asarray(s)) / np.exp(np.asarray(s)).sum(-1, keepdims=True)
  want = (p * np.log(p / q)).sum(-1)
  np.testing.assert_allclose(np.asarray(haemsa.kl_divergence(t, s)), want, rtol=1e-5)
  assert float(haemsa.kl_divergence(t, t)[0]) == pytest.approx(0.0, abs=1e-6)
  g_t = jax.grad(lambda a: haemsa.kl_divergence(a, s).sum())(t)
  g_s = jax.grad(lambda a: haemsa.kl_divergence(t, a).sum())(s)
  assert np.all(np.asarray(g_t) == 0) and np.any(np.asarray(g_s) != 0)


def test_gene_masks_switch_parts_off_exactly():
  model, _ = _model()
  batch = _batch()
  params = model.init(jax.random.key(0), batch)["params"]
  off = {"gene/expert/audio": jnp.zeros(5), "gene/shared_in/audio": jnp.zeros(5)}
  other = dict(batch, audio=batch["audio"] * 3.0 + 1.0)
  a, aux_a = model.apply({"params": params}, {**batch, **off})
  b, _ = model.apply({"params": params}, {**other, **off})
  for k in a:  # audio switched off: nothing depends on it
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
  assert float(aux_a["stats"]["kl_audio"]) == 0.0
  c, _ = model.apply({"params": params}, other)  # on: it matters
  assert not np.allclose(np.asarray(a["sentiment"]), np.asarray(c["sentiment"]))
  # levels gene 1: level 1's parameters do not matter; the maximal shape (2) they do
  one = {"gene/levels": jnp.ones(5)}
  p2 = jax.tree_util.tree_map_with_path(lambda path, x: x + 1.0 if "g1_" in jax.tree_util.keystr(path) else x, params)
  x1, _ = model.apply({"params": params}, {**batch, **one})
  x2, _ = model.apply({"params": p2}, {**batch, **one})
  np.testing.assert_array_equal(np.asarray(x1["sentiment"]), np.asarray(x2["sentiment"]))
  y1, _ = model.apply({"params": params}, batch)
  y2, _ = model.apply({"params": p2}, batch)
  assert not np.allclose(np.asarray(y1["sentiment"]), np.asarray(y2["sentiment"]))


def test_genes_that_switch_off_every_modality_are_refused():
  genes = {f"gene/{k}/{m}": np.array([1.0, 0.0]) for k in ("expert", "shared_in") for m in ("text", "audio")}
  with pytest.raises(ValueError, match=r"switch off every modality .* for 1 individual"):
    haemsa.validate_genes(genes, ("text", "audio"))
  haemsa.validate_genes({**genes, "gene/shared_in/text": np.array([1.0, 1.0])}, ("text", "audio"))
  c = _cfg()
  for m in ("text", "audio", "vision"):
    c.population.genes[f"gene/expert/{m}"].init = (0.0, 0.2)
    c.population.genes[f"gene/shared_in/{m}"].init = (0.0, 0.2)
  with pytest.raises(ValueError, match="switch off every modality"):
    haemsa.validate_config(c)


def test_sentiment_class_task_kind():
  y = np.array([-3.2, -0.6, -0.4, 0.0, 0.5, 1.5, 2.6], np.float32)
  np.testing.assert_array_equal(tasks_lib.sentiment_classes(y, 7), [0, 2, 3, 3, 3, 5, 6])  # round half to even
  np.testing.assert_array_equal(tasks_lib.sentiment_classes(y, 2), [0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(np.asarray(tasks_lib.sentiment_classes(jnp.asarray(y), 7)), [0, 2, 3, 3, 3, 5, 6])
  specs = {"sentiment": fmt.SENTIMENT_SPEC}
  t = tasks_lib.make_task("seven", {"kind": "sentiment_class", "label": "sentiment", "num_classes": 7}, specs)
  assert t.num_outputs == (7,) and t.select == "UA" and t.head == "seven"
  with pytest.raises(ValueError, match="num_classes 2 or 7"):
    tasks_lib.make_task("x", {"kind": "sentiment_class", "label": "sentiment", "num_classes": 5}, specs)
  logits = jnp.asarray(np.eye(7)[[0, 2, 3, 3, 3, 5, 6]] * 5.0, jnp.float32)
  batch = {"label/sentiment": jnp.asarray(y), "weight": jnp.ones(7)}
  assert float(tasks_lib.task_loss(t, {"seven": logits}, batch, None)) < 0.05
  split = fmt.Split(features={}, masks={}, labels={"sentiment": y}, ids=np.arange(7).astype(str))
  assert tasks_lib.evaluate(t, np.asarray(logits), split)["WA"] == 1.0


def test_config_checks():
  c = _cfg()
  del c.tasks["unified"]
  with pytest.raises(ValueError, match="no task trains the shared expert"):
    haemsa.validate_config(c)
  c = _cfg()
  c.model.levels = -1
  with pytest.raises(ValueError, match="config.model.levels=-1"):
    haemsa.validate_config(c)


@pytest.mark.parametrize("ablation", ["no_hierarchy", "no_shared", "no_mtl"])
def test_ablations_build(ablation):
  c = _cfg()
  c.ablation = ablation
  haemsa_mosi.apply_ablation(c)
  haemsa.validate_config(c)
  model, _ = _model(c)
  batch = _batch(3)
  out, aux = model.apply(model.init(jax.random.key(0), batch), batch)
  assert out["sentiment"].shape == (3,)
  if ablation != "no_hierarchy":
    assert "unified" not in out and float(jnp.sum(aux["losses"]["kl"])) == 0.0


@pytest.mark.parametrize("ablation", haemsa_mosi.ABLATIONS)
def test_ablation_on_locked_config(ablation):
  """The CLI hands apply_ablation a locked ConfigDict (config_flags): deleting genes / tasks must still work."""
  c = haemsa_mosi.get_config()
  c.ablation = ablation
  c.lock()
  haemsa_mosi.apply_ablation(c)
  assert c.is_locked
  if ablation == "no_hierarchy":
    assert c.model.levels == 0 and "gene/levels" not in c.population.genes
  if ablation in ("no_shared", "no_mtl"):
    assert "unified" not in c.tasks and not any(k.startswith("gene/shared_in/") for k in c.population.genes)
  if ablation == "no_mtl":
    assert list(c.tasks) == ["sentiment"]


@pytest.mark.slow
@pytest.mark.parametrize("ablation", ["full", "no_evolution"])
def test_experiment_smoke(tmp_path, ablation):
  c = haemsa_mosi.get_config()
  c.smoke, c.quiet, c.workdir, c.ablation = True, True, str(tmp_path / ablation), ablation
  out = haemsa_mosi.run(c)
  assert np.isfinite(out["summary"]["sentiment"]["test"]["MAE"][0])
  assert set(out["summary"]) == {"sentiment", "binary", "seven", "unified"}
  if ablation == "full":
    assert (tmp_path / ablation / "fold_0" / "seed_0" / "fitness.png").exists()


@pytest.mark.slow
def test_iemocap_experiment_smoke(tmp_path):
  from experiments import haemsa_iemocap

  c = haemsa_iemocap.get_config()
  c.smoke, c.quiet, c.workdir = True, True, str(tmp_path / "iem")
  out = haemsa_iemocap.run(c)
  assert set(out["summary"]["emotion6"]["test"]) >= {"UA", "weighted_F1"}
