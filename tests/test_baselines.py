"""tools.baselines: closed-form ridge, selection on validation only, app-style results that summarize_runs reads."""

import json

import ml_collections
import numpy as np
import pytest

from jmoe.data import format as fmt
from jmoe.train import loop
from jmoe.train.tasks import Task
from tools import baselines

TASK = Task(
  name="sentiment", kind="sentiment", head="sentiment", label="sentiment", loss="mse", select="MAE", mode="min"
)


def _split(feats, y):
  n = len(y)
  ids = np.asarray([f"s{i}" for i in range(n)])
  return fmt.Split(features=feats, masks={}, labels=np.clip(y, -3, 3).astype(np.float32), ids=ids)


def test_ridge_fit_matches_least_squares_and_dual_form():
  rng = np.random.default_rng(0)
  x, w0 = rng.normal(size=(40, 3)), np.array([1.0, -2.0, 0.5])
  y = x @ w0 + 0.7
  w, b = baselines.ridge_fit(x, y, 1e-9)
  np.testing.assert_allclose(w, w0, atol=1e-6)
  assert b == pytest.approx(0.7)
  wide = rng.normal(size=(5, 12))  # D > n: the dual form
  yw = rng.normal(size=5)
  w, b = baselines.ridge_fit(wide, yw, 2.0)
  xc, yc = wide - wide.mean(0), yw - yw.mean()
  np.testing.assert_allclose(w, np.linalg.solve(xc.T @ xc + 2.0 * np.eye(12), xc.T @ yc), atol=1e-10)


def test_selection_uses_validation_only():
  """Validation favours modality a and a small alpha; test favours b and a huge alpha: test must not decide."""
  rng = np.random.default_rng(1)

  def part(n, target):
    a, b = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    ya, yb = a @ np.ones(4) * 0.5, b @ np.ones(4) * 0.5
    return {"a": a, "b": b}, {"train": ya + yb, "valid": ya, "test": yb}[target]

  train, valid, test = (_split(*part(n, t)) for n, t in ((300, "train"), (100, "valid"), (100, "test")))
  fold = loop.FoldData("f", train, valid, test)
  r = baselines.fit_select(fold, (TASK,), TASK, {"a": ("a",), "b": ("b",)}, alphas=(0.01, 1e7))
  assert r["chosen"]["features"] == "a" and r["chosen"]["alpha"] == 0.01
  assert r["valid"]["sentiment"]["MAE"] < 0.5 < r["test"]["sentiment"]["MAE"]
  # the alpha alone: a constant test target is best fit by the huge alpha (the train mean); validation says small
  feats, _y = part(100, "valid")
  flat = _split(feats, np.full(100, float(np.clip(train.labels["sentiment"], -3, 3).mean())))
  fold = loop.FoldData("f", train, _split(*part(100, "train")), flat)
  r = baselines.fit_select(fold, (TASK,), TASK, {"a+b": ("a", "b")}, alphas=(0.01, 1e7))
  assert r["chosen"]["alpha"] == 0.01


def test_results_json_is_read_by_summarize_runs(tmp_path, capsys):
  from experiments import euar_mosi
  from tools import summarize_runs

  cfg = euar_mosi.get_config()
  cfg.data.synthetic_sizes = (96, 32, 32)
  out = baselines.run_baselines(cfg, tmp_path / "syn")
  assert set(out) == {"ridge", "single"}
  res = json.loads((tmp_path / "syn_single" / "results.json").read_text())
  seed = res["folds"][0]["seeds"][0]
  assert seed["chosen"]["features"] in ("text", "audio", "vision") and "Non0_acc_2" in seed["test"]["sentiment"]
  capsys.readouterr()
  assert summarize_runs.main([str(tmp_path / "syn_ridge"), str(tmp_path / "syn_single")]) == 0
  assert "syn_single" in capsys.readouterr().out


# --------------------------------------------------------------------------- label masks and labelled_only
def _with_masked(split: fmt.Split, head: str, n_extra: int, rng, garbage) -> fmt.Split:
  """``split`` plus ``n_extra`` samples unlabelled for ``head`` (label mask False), with wild features and a garbage
  placeholder label, in existing groups."""
  b = len(split)
  pick = rng.integers(0, b, size=n_extra)
  feats = {
    m: np.concatenate([x, (rng.normal(size=(n_extra, *x.shape[1:])) * 7 + 5).astype(x.dtype)])
    for m, x in split.features.items()
  }
  labels = {h: np.concatenate([y, garbage(n_extra).astype(y.dtype)]) for h, y in split.labels.items()}
  ids = np.concatenate([split.ids, np.array([f"masked{i}" for i in range(n_extra)])])
  groups = {g: np.concatenate([v, np.asarray(v)[pick]]) for g, v in split.groups.items()}
  lm = np.concatenate([split.label_mask(head), np.zeros(n_extra, bool)])
  return fmt.Split(features=feats, masks={}, labels=labels, ids=ids, label_masks={head: lm}, groups=groups)


def _regression_dirs(tmp_path):
  """(clean, dirty): a predefined-split sentiment dataset; dirty adds masked samples to every split."""
  rng = np.random.default_rng(3)
  w = {"text": rng.normal(size=4), "audio": rng.normal(size=3)}

  def split(n):
    f = {m: rng.normal(size=(n, len(v))).astype(np.float32) for m, v in w.items()}
    y = np.clip(sum(f[m] @ v for m, v in w.items()) * 0.5 + rng.normal(size=n) * 0.3, -3, 3).astype(np.float32)
    return fmt.Split(features=f, masks={}, labels={"sentiment": y}, ids=np.array([f"u{i}" for i in range(n)]))

  clean = {s: split(n) for s, n in (("train", 80), ("valid", 30), ("test", 30))}
  dirty = {s: _with_masked(sp, "sentiment", 15, rng, lambda k: np.full(k, 3.0)) for s, sp in clean.items()}
  out = []
  for name, splits in (("clean", clean), ("dirty", dirty)):
    ds = fmt.Dataset(
      name,
      splits,
      ("text", "audio"),
      {"text": 4, "audio": 3},
      False,
      "test",
      label_specs={"sentiment": fmt.SENTIMENT_SPEC},
    )
    out.append(fmt.save_dataset(ds, tmp_path / name))
  return out


@pytest.mark.parametrize("labelled_only", ["", "sentiment"])
def test_ridge_ignores_masked_samples(tmp_path, labelled_only):
  """Adding samples unlabelled for the head (garbage placeholder labels, wild features) changes nothing."""
  from experiments import euar_mosi

  clean, dirty = _regression_dirs(tmp_path)
  res = {}
  for name, path in (("clean", clean), ("dirty", dirty)):
    cfg = euar_mosi.get_config()
    cfg.data.source, cfg.data.path, cfg.data.modalities = "dir", str(path), "text,audio"
    if labelled_only:
      cfg.data.labelled_only = labelled_only
    res[name] = baselines.run_baselines(cfg, tmp_path / f"out_{name}", kinds=("ridge",))["ridge"]
  a, b = (res[k]["folds"][0]["seeds"][0] for k in ("clean", "dirty"))
  assert a["chosen"] == b["chosen"]
  for split in ("valid", "test"):
    for k, v in a[split]["sentiment"].items():
      assert b[split]["sentiment"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (split, k)
  sizes = res["dirty"]["folds"][0]["sizes"]
  assert sizes == ({"train": 80, "valid": 30, "test": 30} if labelled_only else {"train": 95, "valid": 45, "test": 45})


def _classification_dirs(tmp_path, n_actors=6, per_actor=24):
  """(clean, dirty): a RAVDESS-like pool (audio_global, actor groups, head emo); dirty adds masked samples."""
  rng = np.random.default_rng(5)
  b = n_actors * per_actor
  y = rng.integers(0, 3, size=b).astype(np.int32)
  centres = rng.normal(size=(3, 6)) * 1.2
  x = (centres[y] + rng.normal(size=(b, 6))).astype(np.float32)
  pool = fmt.Split(
    features={"audio_global": x},
    masks={},
    labels={"emo": y},
    ids=np.array([f"c{i}" for i in range(b)]),
    groups={"actor": np.repeat(np.arange(1, n_actors + 1), per_actor)},
  )
  dirty = _with_masked(pool, "emo", 40, rng, lambda k: rng.integers(0, 3, size=k))
  spec = {"emo": fmt.LabelSpec("classification", classes=("a", "b", "c"))}
  out = []
  for name, sp in (("clean", pool), ("dirty", dirty)):
    ds = fmt.Dataset(name, {"pool": sp}, ("audio_global",), {"audio_global": 6}, False, "test", label_specs=spec)
    out.append(fmt.save_dataset(ds, tmp_path / name))
  return out


def _drmoe_dir_config(path, labelled_only):
  from experiments import drmoe_ravdess

  cfg = drmoe_ravdess.get_config()
  cfg.head = "emo"
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # data.labelled_only is a reference to head: cut it
  cfg.data.source, cfg.data.path, cfg.data.modalities = "dir", str(path), "audio_global"
  cfg.data.labelled_only = labelled_only
  cfg.folds.max_folds = 2
  cfg.folds.test_groups_per_fold = 1
  cfg.folds.valid_groups = 1
  return cfg


@pytest.mark.parametrize("labelled_only", ["", "emo"])
def test_logreg_ignores_masked_samples(tmp_path, labelled_only):
  """drmoe_logreg: masked samples (garbage labels) enter neither fit, standardisation, selection nor test."""
  from experiments import drmoe_logreg

  clean, dirty = _classification_dirs(tmp_path)
  a = drmoe_logreg.logreg_baseline(_drmoe_dir_config(clean, labelled_only))
  b = drmoe_logreg.logreg_baseline(_drmoe_dir_config(dirty, labelled_only))
  assert [r["fold"] for r in a["folds"]] == [r["fold"] for r in b["folds"]]
  for ra, rb in zip(a["folds"], b["folds"]):
    assert ra["C"] == rb["C"] and ra["n_test"] == rb["n_test"]
    for k in ("valid_UA", "UA", "WA", "weighted_F1"):
      assert rb[k] == pytest.approx(ra[k], rel=1e-9), (k, ra, rb)


def test_logreg_uses_the_platform_folds(tmp_path):
  """The baseline's folds are the platform's (jmoe.train.app.make_folds over the labelled_only dataset)."""
  from experiments import drmoe_logreg
  from jmoe.data import sources
  from jmoe.train import app

  _, dirty = _classification_dirs(tmp_path)
  cfg = _drmoe_dir_config(dirty, "emo")
  res = drmoe_logreg.logreg_baseline(cfg)
  ds = sources.load(cfg.data)
  keep = ds.splits["pool"].label_mask("emo")
  folds = app.make_folds(cfg.folds, ds)
  assert [r["fold"] for r in res["folds"]] == [f.name for f in folds]
  assert [r["n_test"] for r in res["folds"]] == [int(f.test.label_mask("emo").sum()) for f in folds]
  assert sum(r["n_test"] for r in res["folds"]) < int(keep.sum())  # 2 of the 6 actor folds
