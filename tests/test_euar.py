"""EUAR: model terms against a float64 loop reference, strategy equivalence, training app smoke and exact resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import euar_mosi
from experiments.common import smoke
from jmoe.models.euar import EUAR, GaussianExpert
from jmoe.train import app
from jmoe.train import steps as steps_lib
from jmoe.train import tasks as tasks_lib
from jmoe.data import format as fmt


def run_experiment(cfg):
  return app.run(cfg, smoke)


B = 12


def _batch(seed=0, seq=False):
  rng = np.random.default_rng(seed)
  batch = {
    "text": rng.normal(size=(B, 7, 10) if seq else (B, 10)).astype(np.float32),
    "audio": rng.normal(size=(B, 5)).astype(np.float32),
    "vision": rng.normal(size=(B, 6)).astype(np.float32),
  }
  if seq:
    batch["text_mask"] = np.arange(7)[None, :] < rng.integers(1, 8, size=(B, 1))
  return batch


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _gelu(x):  # flax nn.gelu default: tanh approximation
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def reference_euar(p, batch, modalities, num_experts, k):
  """Float64 numpy EUAR forward in eval mode, one expert at a time: (pred [B], kl [B], uloss [B], aux)."""
  feats, kl, u, aux = [], np.zeros(B), np.zeros(B), 0.0
  for m in modalities:
    enc = p[f"enc_{m}"]
    h = _gelu(batch[m] @ enc["proj"]["kernel"] + enc["proj"]["bias"])
    if h.ndim == 3:
      mask = batch[f"{m}_mask"].astype(np.float64)
      h = (h * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
    mu_, var_ = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    x = (h - mu_) / np.sqrt(var_ + 1e-6) * enc["norm"]["scale"] + enc["norm"]["bias"]
    moe = p[f"moe_{m}"]
    gate_p = p[f"router_{m}"]["gate"]
    logits = x @ gate_p["kernel"] + gate_p["bias"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    gate = np.zeros_like(probs)
    np.put_along_axis(gate, top, np.take_along_axis(probs, top, -1), -1)
    z = np.zeros((B, x.shape[1]))
    stack = moe["experts"]["stack"]
    for j in range(num_experts):
      mu = x @ stack["mu"]["kernel"][j] + stack["mu"]["bias"][j]
      logvar = x @ stack["logvar"]["kernel"][j] + stack["logvar"]["bias"][j]
      z += gate[:, j : j + 1] * mu
      kl += gate[:, j] * np.mean(-0.5 * (1 + logvar - mu**2 - np.exp(logvar)), -1)  # eq. 4, gate-weighted
      u += gate[:, j] * np.mean(np.exp(logvar), -1) / num_experts  # eq. 10
    r = np.bincount(np.argmax(probs, -1), minlength=num_experts) / B  # eq. 8
    aux += np.sum(r * probs.mean(0)) / num_experts  # eq. 7 with P_j from eq. 9 (full softmax)
    feats.append(z)
  hcat = np.concatenate(feats, -1)
  hf = _gelu(hcat @ p["fuse"]["kernel"] + p["fuse"]["bias"])
  return (hf @ p["head"]["kernel"] + p["head"]["bias"])[:, 0], kl, u, aux


@pytest.mark.parametrize("seq", [False, True])
def test_euar_matches_float64_loop_reference(seq):
  batch = _batch(seq=seq)
  model = EUAR(width=16, num_experts=4, k=3)
  params = jax.jit(model.init)(jax.random.key(0), batch)
  # give logvar non-trivial weights so sigma^2 and KL vary per expert and sample
  params = jax.tree_util.tree_map_with_path(
    lambda path, a: (
      a + 0.1 * jax.random.normal(jax.random.key(len(path)), a.shape) if "logvar" in jax.tree_util.keystr(path) else a
    ),
    params,
  )
  out, aux = jax.jit(model.apply)(params, batch)
  want_pred, want_kl, want_u, want_aux = reference_euar(
    _np(params["params"]), _np(batch), ("text", "audio", "vision"), 4, 3
  )
  losses = aux["losses"]
  np.testing.assert_allclose(out["sentiment"], want_pred, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(losses["kl"], want_kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(losses["uloss"], want_u, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(losses["auxiliary_loss"], want_aux, rtol=1e-5)
  assert np.ptp(np.asarray(losses["uloss"])) > 0
  assert aux["per_sample"]["gate_text"].shape == (B, 4)


def test_gaussian_expert_reparameterises_in_training_only():
  x = jax.random.normal(jax.random.key(0), (5, 8))
  expert = GaussianExpert(8)
  params = expert.init(jax.random.key(1), x)
  ev = expert.apply(params, x)
  np.testing.assert_allclose(
    ev["z"], x @ params["params"]["mu"]["kernel"] + params["params"]["mu"]["bias"], rtol=1e-5, atol=1e-6
  )
  tr1 = expert.apply(params, x, deterministic=False, rngs={"noise": jax.random.key(2)})
  tr2 = expert.apply(params, x, deterministic=False, rngs={"noise": jax.random.key(3)})
  assert not np.allclose(tr1["z"], ev["z"]) and not np.allclose(tr1["z"], tr2["z"])
  # initial logvar bias -2 -> sigma^2 = e^-2 everywhere (zero kernel)
  np.testing.assert_allclose(ev["sigma2"], np.exp(-2.0), rtol=1e-6)


def test_euar_dispatch_strategies_agree():
  batch = _batch(1)
  preds = {}
  for strategy in ("dense", "sorted", "einsum", "ragged"):
    model = EUAR(width=16, dispatch=strategy)
    params = jax.jit(EUAR(width=16).init)(jax.random.key(0), batch)
    preds[strategy] = np.asarray(jax.jit(model.apply)(params, batch)[0]["sentiment"])
  for strategy, p in preds.items():
    np.testing.assert_allclose(p, preds["dense"], rtol=1e-5, atol=1e-6, err_msg=strategy)


def test_ablations_change_the_model():
  batch = _batch(2)
  mlp = EUAR(width=16, expert="mlp")
  params = jax.jit(mlp.init)(jax.random.key(0), batch)
  _, aux = jax.jit(mlp.apply)(params, batch)
  assert float(jnp.abs(aux["losses"]["kl"]).sum()) == 0 and float(jnp.abs(aux["losses"]["uloss"]).sum()) == 0
  late = EUAR(width=16, fusion="late")
  lp = jax.jit(late.init)(jax.random.key(0), batch)["params"]
  assert not any(k.startswith("moe_") for k in lp) and {"late_head_text", "late_head_audio"} <= set(lp)
  with pytest.raises(ValueError, match=r"expert must be one of \['gaussian', 'linear', 'mlp'\]"):
    EUAR(expert="nope").init(jax.random.key(0), batch)
  with pytest.raises(ValueError, match="batch has no modality 'vision'"):
    EUAR().init(jax.random.key(0), {k: v for k, v in batch.items() if k != "vision"})


def test_linear_ablation_is_the_gaussian_model_without_uncertainty():
  """expert='linear' given the Gaussian model's params minus the logvar heads predicts exactly what the Gaussian
  model predicts at evaluation (z = mu), and has no KL / U-loss."""
  batch = _batch(4)
  gauss = EUAR(width=16)
  params = jax.jit(gauss.init)(jax.random.key(0), batch)
  strip = lambda tree: {k: strip(v) for k, v in tree.items() if k != "logvar"} if isinstance(tree, dict) else tree
  linear = EUAR(width=16, expert="linear")
  lin_params = {"params": strip(params["params"])}
  assert jax.tree.structure(lin_params) == jax.tree.structure(jax.jit(linear.init)(jax.random.key(1), batch))
  pred_g, _ = jax.jit(gauss.apply)(params, batch)
  pred_l, aux = jax.jit(linear.apply)(lin_params, batch)
  np.testing.assert_allclose(pred_l["sentiment"], pred_g["sentiment"], rtol=1e-6, atol=1e-6)
  assert float(jnp.abs(aux["losses"]["kl"]).sum()) == 0 and float(jnp.abs(aux["losses"]["uloss"]).sum()) == 0


def test_padded_batch_gives_the_unpadded_loss_and_gradients():
  """Weight-0 padding rows must not change the loss or gradients (beta=0: the Switch statistic sees all rows)."""
  model = EUAR(width=16, dropout=0.0)
  batch = _batch(3)
  labels = np.linspace(-2, 2, B).astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  hparams = {"task/sentiment": 1.0, "loss/kl": 1e-3, "loss/auxiliary_loss": 0.0, "loss/uloss": 1e-3}
  tasks = tasks_lib.from_config({"sentiment": {"kind": "sentiment"}}, {"sentiment": fmt.SENTIMENT_SPEC})

  def loss(p, b):
    return steps_lib.objective(steps_lib.loss_terms(model, p, b, None, False, tasks)[0], hparams)

  def loss_grad(batch):
    f = jax.pmap(jax.value_and_grad(loss), axis_name=steps_lib.AXIS, in_axes=(None, 0))
    return jax.tree.map(lambda a: np.asarray(a[0]), f(params, jax.tree.map(lambda a: a[None], batch)))

  real = 9
  short = {k: v[:real] for k, v in batch.items()} | {
    "label/sentiment": labels[:real],
    "weight": np.ones(real, np.float32),
  }
  padded = dict(batch) | {"label/sentiment": labels, "weight": (np.arange(B) < real).astype(np.float32)}
  padded = {
    k: np.where(padded["weight"].reshape((-1,) + (1,) * (v.ndim - 1)) > 0, v, 7.0) if k not in ("weight",) else v
    for k, v in padded.items()
  }  # garbage in padding rows
  (l1, g1), (l2, g2) = loss_grad(short), loss_grad(padded)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _smoke_config(tmp_path, **over):
  cfg = euar_mosi.get_config()
  cfg.workdir = str(tmp_path)
  cfg.smoke = True
  cfg.quiet = True
  cfg.update_from_flattened_dict(over)
  return cfg


def test_smoke_run_writes_results_table_and_plots(tmp_path, capsys):
  out = run_experiment(_smoke_config(tmp_path))
  assert out["synthetic"] is True
  printed = capsys.readouterr()
  assert "SYNTHETIC" in printed.out and "Non0_acc_2" in printed.out
  assert "SYNTHETIC DATA" in printed.err
  files = ("results.json", "results.md", "curves.png", "expert_load.png", "config.json", "fold_0/seed_0/metrics.jsonl")
  for f in files + ("scatter_sentiment.png", "fold_0/seed_0/test_outputs.npz"):
    assert (tmp_path / f).exists(), f
  res = json.loads((tmp_path / "results.json").read_text())
  assert 0.0 <= res["folds"][0]["seeds"][0]["test"]["sentiment"]["Non0_acc_2"] <= 1.0
  with np.load(tmp_path / "fold_0/seed_0/test_outputs.npz") as z:
    assert z["sentiment"].shape == (32,) and z["per_sample.gate_text"].shape == (32, 4) and z["ids"].shape == (32,)
  lines = (tmp_path / "fold_0/seed_0/metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 and "load_text" in json.loads(lines[0])["train"]


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
  from jmoe.train import loop

  small = {"smoke": False, "seeds": 1, "optim.epochs": 4, "data.synthetic_sizes": (96, 32, 32)}
  full = run_experiment(_smoke_config(tmp_path / "full", **small))

  def interrupt(epoch):
    if epoch >= 2:
      raise KeyboardInterrupt("simulated interruption")

  with monkeypatch.context() as mp:
    mp.setattr(loop, "before_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
      run_experiment(_smoke_config(tmp_path / "cut", **small))
  assert len((tmp_path / "cut/fold_0/seed_0/metrics.jsonl").read_text().splitlines()) == 2
  resumed = run_experiment(_smoke_config(tmp_path / "cut", **small))
  assert resumed["folds"][0]["seeds"][0]["test"] == full["folds"][0]["seeds"][0]["test"]
  assert resumed["folds"][0]["seeds"][0]["best_epoch"] == full["folds"][0]["seeds"][0]["best_epoch"]
  assert len((tmp_path / "cut/fold_0/seed_0/metrics.jsonl").read_text().splitlines()) == 4


def test_bad_config_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown data.source"):
    run_experiment(_smoke_config(tmp_path, **{"data.source": "nowhere"}))
  with pytest.raises(FileNotFoundError):
    run_experiment(_smoke_config(tmp_path, **{"data.source": "dir", "data.path": str(tmp_path / "missing")}))
  for key, value, msg in [
    ("model.expert", "bogus", "config.model.expert='bogus' is invalid"),
    ("model.k", 5, "config.model.k=5 is invalid: use 1 <= k <= num_experts=4"),
    ("model.dropout", 1.5, "config.model.dropout=1.5 is invalid"),
    ("model.dispatch", "bogus", "config.model.dispatch='bogus' is invalid"),
    ("members", "parallel", "config.members='parallel' is invalid"),
    ("seeds", 0, "config.seeds=0 is invalid"),
    ("optim.epochs", 0, "config.optim.epochs=0 is invalid"),
    ("select", "sentiment/nope", "select metric 'nope'"),
  ]:
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
      run_experiment(_smoke_config(tmp_path / "bad", **{key: value}))
    assert not (tmp_path / "bad").exists(), f"{key}: something was written before the config was validated"


def test_resume_with_a_changed_config_is_refused(tmp_path):
  run_experiment(_smoke_config(tmp_path, **{"optim.epochs": 1}))
  with pytest.raises(ValueError, match=r"holds a run with another config \(optim.lr: 0.001 -> 0.01"):
    run_experiment(_smoke_config(tmp_path, **{"optim.epochs": 1, "optim.lr": 0.01}))
