"""tools/bench_euar_train.py and its PyTorch reference tools/torch_euar.py.

* smoke: tiny sizes, a few steps, the JSON structure (torch rows only when torch is importable);
* the torch reference computes the same function as jmoe's EUAR: with the jmoe parameters copied in, the same
  forward loss terms (eval mode: z = mu, no dropout), the same gradients, and the same clipped AdamW step --
  so the benchmark compares the same computation.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmoe.train import state as state_lib
from jmoe.train import steps as steps_lib
from tools import bench_euar_train as bench

TINY_DIMS = (12, 3, 5)
TINY_WIDTH = 8


def _has_torch() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

    return True
  except ImportError:
    return False


def test_bench_smoke_json(tmp_path):
  """Tiny sizes, one modality, a sequence config (masks), the app's pmap row (+ torch rows when importable): a
  real run through the harness, its per-step arithmetic and the target verdict."""
  path = tmp_path / "bench.json"
  torch_args = ["--torch-dispatch", "loop,dense", "--torch-threads", "1"] if _has_torch() else ["--no-torch"]
  dims = ",".join(map(str, TINY_DIMS))
  argv = ["--batch-size", "4", "--chunk", "2", "--repeats", "3", "--warmup", "1", "--seq-len", "3", "--dims", dims]
  argv += ["--width", str(TINY_WIDTH), "--modalities", "text", "--dispatch", "dense", "--jax-variants", "pmap"]
  out = bench.main(argv + ["--num-batches", "2", "--json", str(path), *torch_args])
  data = json.loads(path.read_text())
  assert data["machine"]["backend"] == "cpu" and len(data["configs"]) == 1 == len(out["configs"])
  res = data["configs"][0]
  assert res["config"]["seq_len"] == 3 and res["config"]["batch_size"] == 4 and "text [4, 3, 12]" in res["label"]
  names = [r["name"] for r in res["rows"]]
  assert names == ["jmoe/pmap/dense"] + (["torch/loop", "torch/dense"] if _has_torch() else [])
  for r in res["rows"]:
    st = r["step"]
    assert st["n"] == 3 and 0 < st["p10_s"] <= st["median_s"] <= st["p90_s"]
    assert np.isclose(r["samples_per_s"], 4 / st["median_s"]) and np.isfinite(r["final_loss"])
  rt = res["ratio"]
  assert rt["app_row"] == "jmoe/pmap/dense"
  if _has_torch():
    row = {r["name"]: r for r in res["rows"]}
    assert row["torch/loop"]["num_params"] == row["jmoe/pmap/dense"]["num_params"]  # the same model
    best = row[rt["best_torch"]]
    assert np.isclose(rt["app_vs_best_torch"], row["jmoe/pmap/dense"]["samples_per_s"] / best["samples_per_s"])
    assert len(data["targets"]) == 1 and data["targets"][0].endswith(("-> MET", "-> MISSED"))
  else:
    assert rt["app_vs_best_torch"] is None and data["targets"] == []


# ----------------------------------------------------------------------------------------------------------------
# The torch reference computes the jmoe computation.


def _setup(seq_len: int, seed: int = 0):
  cfg = bench.BenchConfig(batch_size=6, seq_len=seq_len, dims=TINY_DIMS, width=TINY_WIDTH)
  c = bench.app_config(cfg)
  model = bench.build_model(c, bench.MODALITIES)
  batch = bench.make_batches(cfg, 1, seed)[0]
  batch["weight"][0, -1] = 0.0  # a padding row: weights must be honoured by both
  params = bench.init_params(model, batch, seed)
  # Perturb every leaf (the logvar kernels are zero at init) so that all terms and gradients are non-trivial.
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed + 1)
  params = jax.tree.unflatten(
    tree, [jnp.asarray(np.asarray(l) + 0.3 * rng.standard_normal(l.shape), jnp.float32) for l in leaves]
  )
  return cfg, c, model, batch, params


def _jax_eval_loss(model, params, batch, hp):
  """Loss terms through the library's own loss (steps.loss_terms), deterministic, one device (vmap'ed axis)."""

  def f(p, b):
    terms = steps_lib.loss_terms(model, p, b, None, False, bench.TASKS)[0]
    return steps_lib.objective(terms, hp), terms

  return jax.vmap(f, in_axes=(None, 0), axis_name=steps_lib.AXIS)(params, batch)


@pytest.mark.parametrize("seq_len", [0, 5])
def test_torch_reference_matches_jax(seq_len):
  torch = pytest.importorskip("torch")
  from tools import torch_euar  # pylint: disable=import-outside-toplevel

  cfg, c, model, batch, params = _setup(seq_len)
  loss_cfg = bench.torch_loss_cfg(c)
  dims = dict(zip(bench.MODALITIES, cfg.dims))
  hp = bench.hparams(c)

  (loss_j, terms_j), grads_j = jax.jit(
    jax.value_and_grad(lambda p: jax.tree.map(lambda a: a[0], _jax_eval_loss(model, p, batch, hp)), has_aux=True)
  )(params)
  names = {"task": "task/sentiment", "kl": "loss/kl", "uloss": "loss/uloss", "aux": "loss/auxiliary_loss"}
  terms_j = {k: terms_j[v] for k, v in names.items()}
  assert float(terms_j["aux"]) > 0 and float(terms_j["kl"]) > 0 and float(terms_j["uloss"]) > 0

  tb = torch_euar.to_torch_batch(batch)
  for dispatch in torch_euar.DISPATCHES:
    tm = torch_euar.make_model(dims, bench.MODALITIES, cfg.width, cfg.num_experts, cfg.k, cfg.dropout, dispatch)
    torch_euar.load_jax_params(tm, params)
    assert torch_euar.num_params(tm) == sum(np.size(x) for x in jax.tree.leaves(params))
    back = torch_euar.to_jax_tree(tm, params)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), params, back)  # same structure
    tm.eval()  # z = mu, no dropout
    loss_t, terms_t = torch_euar.loss_terms(tm, tb, loss_cfg)
    np.testing.assert_allclose(float(loss_t.detach()), float(loss_j), rtol=2e-5, err_msg=dispatch)
    for k in ("task", "kl", "uloss", "aux"):
      np.testing.assert_allclose(float(terms_t[k].detach()), float(terms_j[k]), rtol=2e-5, err_msg=f"{dispatch} {k}")
    tm.zero_grad()
    loss_t.backward()
    grads_t = torch_euar.to_jax_tree(tm, params, grads=True)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(b, np.asarray(a), rtol=2e-4, atol=2e-6, err_msg=dispatch),
      grads_j,
      grads_t,
    )


def test_torch_optimizer_step_matches_optax():
  """clip_grad_norm_ + torch AdamW == optax clip_by_global_norm + adamw (make_optimizer), two steps, same grads."""
  torch = pytest.importorskip("torch")
  from tools import torch_euar  # pylint: disable=import-outside-toplevel

  cfg, c, model, batch, params = _setup(0, seed=3)
  tm = torch_euar.make_model(
    dict(zip(bench.MODALITIES, cfg.dims)), bench.MODALITIES, cfg.width, cfg.num_experts, cfg.k, cfg.dropout, "loop"
  )
  torch_euar.load_jax_params(tm, params)
  tm.eval()
  loss, _ = torch_euar.loss_terms(tm, torch_euar.to_torch_batch(batch), bench.torch_loss_cfg(c))
  loss.backward()
  grads = jax.tree.map(jnp.asarray, torch_euar.to_jax_tree(tm, params, grads=True))
  saved = [q.grad.clone() for q in tm.parameters()]
  clip = 0.5 * float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))  # clipping active
  lr, wd = 1e-2, 0.1  # larger than the app's so that decay and the Adam update both move the weights visibly
  opt = torch_euar.make_optimizer(tm, lr, wd)
  tx = state_lib.make_optimizer(lr, wd, clip)
  state = state_lib.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  apply = jax.jit(lambda s, g: s.apply_gradients(grads=g))
  for _ in range(2):  # two steps with the same gradient: moments and bias correction both matter
    for q, g in zip(tm.parameters(), saved):
      q.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(tm.parameters(), clip)
    opt.step()
    state = apply(state, grads)
  after = torch_euar.to_jax_tree(tm, params)
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), state.params, params)
  assert min(jax.tree.leaves(moved)) > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, np.asarray(a), rtol=1e-5, atol=2e-6), state.params, after)
