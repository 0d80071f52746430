"""Synthetic MOSI/MOSEI generator: determinism, shapes, and the planted structure."""

import time

import numpy as np
import pytest

from jmoe.data.format import validate
from jmoe.data.synthetic import MOSEI_DIMS, synthetic_mosei, synthetic_mosi, synthetic_mosi_with_truth


@pytest.fixture(scope="module")
def mosi():
  return synthetic_mosi_with_truth(seed=0)


def test_shapes_and_metadata(mosi):
  ds, _ = mosi
  assert ds.synthetic and ds.name == "synthetic-mosi" and ds.source.startswith("synthetic_mosi(seed=0,")
  assert ds.modalities == ("text", "audio", "vision") and ds.dims == {"text": 768, "audio": 5, "vision": 20}
  assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 1284, "valid": 229, "test": 686}
  assert ds.splits["test"].features["text"].shape == (686, 768)
  assert ds.splits["test"].features["text"].dtype == np.float32 and not ds.splits["test"].masks
  ids = np.concatenate([sp.ids for sp in ds.splits.values()])
  assert len(set(ids.tolist())) == 2199


def test_fast_and_deterministic():
  t = time.perf_counter()
  a = synthetic_mosi(seed=3)
  assert time.perf_counter() - t < 2.0
  b = synthetic_mosi(seed=3)
  c = synthetic_mosi(seed=4)
  for m in a.modalities:
    np.testing.assert_array_equal(a.splits["train"].features[m], b.splits["train"].features[m])
  np.testing.assert_array_equal(a.splits["test"].labels["sentiment"], b.splits["test"].labels["sentiment"])
  assert not np.array_equal(a.splits["test"].labels["sentiment"], c.splits["test"].labels["sentiment"])


def test_labels_like_mosi(mosi):
  ds, _ = mosi
  y = np.concatenate([sp.labels["sentiment"] for sp in ds.splits.values()])
  assert y.min() >= -3 and y.max() <= 3
  np.testing.assert_allclose(y * 3, np.round(y * 3), atol=1e-5)  # averages of 3 integer votes
  assert 0.04 < np.mean(y == 0) < 0.2  # some exact zeros
  assert 1.2 < y.std() < 1.8 and abs(y.mean()) < 0.15


def fit_ridge(x, y, lam=1.0):
  x = np.c_[x, np.ones(len(x))]
  return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)


def predict(w, x):
  return np.c_[x, np.ones(len(x))] @ w


def codes(split, truth):
  """The planted 3-d code read off each modality through its (known) projection: [B, 9]."""
  return np.concatenate([split.features[m] @ truth["projections"][m].T for m in ("text", "audio", "vision")], 1)


def test_modality_strength_is_uneven(mosi):
  ds, truth = mosi
  tr, te = ds.splits["train"], ds.splits["test"]
  corr = {}
  for m in ds.modalities:
    p = truth["projections"][m]
    w = fit_ridge(tr.features[m] @ p.T, tr.labels["sentiment"])
    corr[m] = np.corrcoef(predict(w, te.features[m] @ p.T), te.labels["sentiment"])[0, 1]
  assert corr["text"] > corr["vision"] > corr["audio"]
  assert corr["text"] > 0.6 and corr["audio"] < 0.2


def test_nonlinear_beats_linear(mosi):
  ds, truth = mosi
  tr, te = ds.splits["train"], ds.splits["test"]
  a, b = codes(tr, truth), codes(te, truth)
  lin_mae = np.abs(predict(fit_ridge(a, tr.labels["sentiment"]), b) - te.labels["sentiment"]).mean()
  mu, sd = a.mean(0), a.std(0)
  a, b = (a - mu) / sd, (b - mu) / sd
  d2 = (b**2).sum(1)[:, None] - 2 * b @ a.T + (a**2).sum(1)[None]
  knn = tr.labels["sentiment"][np.argsort(d2, axis=1)[:, :25]].mean(1)
  knn_mae = np.abs(knn - te.labels["sentiment"]).mean()
  assert knn_mae < lin_mae - 0.1, (knn_mae, lin_mae)


def test_heteroscedastic_noise_and_corruption(mosi):
  ds, truth = mosi
  t = truth["splits"]["train"]
  x = ds.splits["train"].features["vision"]
  p = truth["projections"]["vision"]
  resid = x - (x @ p.T) @ p  # the part orthogonal to the signal: pure noise
  resid -= resid[~np.any([t["corrupted"][m] for m in ds.modalities], 0)].mean(0)
  clean = ~t["corrupted"]["vision"]
  est = np.sqrt((resid[clean] ** 2).mean(1))
  assert np.corrcoef(est, t["noise_scale"]["vision"][clean])[0, 1] > 0.9
  s = t["noise_scale"]["vision"]
  assert np.quantile(s, 0.95) / np.quantile(s, 0.05) > 4  # wide spread
  total = sum(int(truth["splits"][s]["corrupted"][m].sum()) for s in truth["splits"] for m in ds.modalities)
  assert total == round(0.1 * 2199)  # one modality per corrupted sample
  both = np.sum([t["corrupted"][m] for m in ds.modalities], 0)
  assert both.max() == 1
  norms = np.linalg.norm(x, axis=1)
  assert np.median(norms[t["corrupted"]["vision"]]) > 2 * np.median(norms[clean])


def test_no_corruption():
  ds, truth = synthetic_mosi_with_truth(seed=0, corrupt_fraction=0.0, dims={"audio": 5}, sizes=(20, 5, 5))
  assert ds.modalities == ("audio",)
  assert not any(truth["splits"][s]["corrupted"]["audio"].any() for s in truth["splits"])


def test_sequences():
  ds = synthetic_mosi(seed=1, dims={"text": 16, "audio": 5, "vision": 20}, seq_len=12, sizes=(40, 10, 10))
  validate(ds, "seq")
  sp = ds.splits["train"]
  assert sp.features["audio"].shape == (40, 12, 5) and sp.masks["audio"].shape == (40, 12)
  lens = sp.masks["text"].sum(1)
  assert lens.min() >= 3 and lens.max() <= 12 and len(set(lens.tolist())) > 3
  np.testing.assert_array_equal(sp.masks["text"], sp.masks["vision"])
  assert not sp.features["vision"][~sp.masks["vision"]].any()  # padding is zero
  assert (sp.masks["text"][:, 0]).all()  # left-aligned


def test_mosei_shapes():
  ds = synthetic_mosei(seed=0, dims={"audio": 74, "vision": 35})
  assert ds.name == "synthetic-mosei" and ds.synthetic
  assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 16326, "valid": 1871, "test": 4659}
  assert ds.dims == {"audio": 74, "vision": 35}
  assert MOSEI_DIMS == {"text": 768, "audio": 74, "vision": 35}


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown modality"):
    synthetic_mosi(dims={"video": 3})
  with pytest.raises(ValueError, match="corrupt_fraction"):
    synthetic_mosi(corrupt_fraction=1.5)
  with pytest.raises(ValueError, match="sizes"):
    synthetic_mosi(sizes=(10, 0, 5))
