"""Tests for jmoe.data.synthetic_scale: shapes, the planted truth, and that the planting is where it says.

The planting checks use speaker-disjoint train/test halves and a plain logistic regression: local classes are at
chance from utterance means but separable from a max over time; global classes are separable from the means.
"""

import numpy as np
import pytest

from jmoe.data import format as fmt
from jmoe.data import synthetic_scale as ss


@pytest.fixture(scope="module")
def ds():
  return ss.synthetic_scale(n_speakers=12, per_speaker=40, seed=3)


def test_shapes_masks_truth(ds, tmp_path):
  sp = ds.splits["pool"]
  assert ds.synthetic and "synthetic_scale" in ds.source and "'angry': 'local'" in ds.source and ds.is_pool
  assert ds.modalities == ("audio_local", "audio_global", "text_local", "text_global")
  assert sp.features["audio_local"].shape == (480, 50, 16) and sp.features["text_local"].shape == (480, 20, 12)
  assert sp.features["audio_global"].shape == (480, 16) and sp.features["text_global"].shape == (480, 12)
  for m in ("audio", "text"):
    x, mask = sp.features[f"{m}_local"], sp.masks[f"{m}_local"]
    lengths = mask.sum(1)
    assert lengths.min() < lengths.max()  # variable lengths, prefix masks, zero padding
    assert all(row[:k].all() and not row[k:].any() for row, k in zip(mask, lengths))
    assert np.all(x[~mask] == 0)
    np.testing.assert_allclose(sp.features[f"{m}_global"], x.sum(1) / lengths[:, None], atol=1e-5)
    assert ds.modality_meta[f"{m}_local"] == {"view_of": m, "scale": "local", "encoder": "synthetic"}
  assert ss.planted_scales(ds) == {"angry": "local", "happy": "local", "neutral": "global", "sad": "global"}
  y = sp.labels["emotion4"]
  assert np.bincount(y).tolist() == [120] * 4
  assert ((sp.groups["burst_start_audio"] >= 0) == (y < 2)).all()
  assert np.unique(sp.groups["speaker"]).tolist() == list(range(12))
  back = fmt.load_dataset(fmt.save_dataset(ds, tmp_path / "d"))
  np.testing.assert_array_equal(back.splits["pool"].groups["planted_scale"], sp.groups["planted_scale"])
  custom = ss.synthetic_scale(n_speakers=2, per_speaker=8, scales=("global", "local", "local", "global"))
  assert ss.planted_scales(custom)["angry"] == "global"
  with pytest.raises(ValueError, match="scales must give"):
    ss.synthetic_scale(scales=("local", "frame", "global", "global"))


def test_bursts_leave_the_mean_untouched(ds):
  flat = ss.synthetic_scale(n_speakers=12, per_speaker=40, seed=3, burst_amp=0.0)
  a, b = ds.splits["pool"], flat.splits["pool"]
  loc = a.labels["emotion4"] < 2
  for m in ("audio", "text"):
    np.testing.assert_allclose(a.features[f"{m}_global"][loc], b.features[f"{m}_global"][loc], atol=1e-5)
    assert np.abs(a.features[f"{m}_local"][loc] - b.features[f"{m}_local"][loc]).max() > 2.0
    # at the planted position the frames differ by the burst
    i = int(np.flatnonzero(loc)[0])
    s = a.groups[f"burst_start_{m}"][i]
    diff = a.features[f"{m}_local"][i] - b.features[f"{m}_local"][i]
    n = int(a.masks[f"{m}_local"][i].sum())
    # burst frames: +A(1 - 3/n) u, other valid frames: -A 3/n u, padding: 0 (A = 5, burst_len = 3, |u| = 1)
    np.testing.assert_allclose(np.linalg.norm(diff[s : s + 3], axis=1), 5.0 * (1 - 3 / n), rtol=1e-4)
    other = np.setdiff1d(np.arange(n), np.arange(s, s + 3))
    np.testing.assert_allclose(np.linalg.norm(diff[other], axis=1), 5.0 * 3 / n, rtol=1e-3)
    assert np.all(diff[n:] == 0)


def _cv_accuracy(x, y, speakers):
  from sklearn.linear_model import LogisticRegression

  train = speakers < 6
  clf = LogisticRegression(max_iter=2000).fit(x[train], y[train])
  return float((clf.predict(x[~train]) == y[~train]).mean())


def test_planting_global_classifier_blind_to_local_classes(ds):
  pytest.importorskip("sklearn", reason="scikit-learn (test extra) trains the probe classifiers")
  sp = ds.splits["pool"]
  y, spk = sp.labels["emotion4"], sp.groups["speaker"]
  loc = y < 2  # angry vs happy: planted as frame bursts only
  glo = ~loc  # neutral vs sad: planted as utterance shifts only
  for m in ("audio", "text"):
    g = sp.features[f"{m}_global"]
    x, mask = sp.features[f"{m}_local"], sp.masks[f"{m}_local"]
    # max over the valid frames of each feature and of its negative (a burst direction has signed components)
    mx = np.concatenate([np.where(mask[..., None], x, -np.inf).max(1), -np.where(mask[..., None], x, np.inf).min(1)], 1)
    acc_global_on_local = _cv_accuracy(g[loc], y[loc], spk[loc])
    acc_max_on_local = _cv_accuracy(mx[loc], y[loc], spk[loc])
    acc_global_on_global = _cv_accuracy(g[glo], y[glo], spk[glo])
    # 240 test samples of two classes: chance 0.5, binomial std ~0.045
    assert acc_global_on_local < 0.62, (m, acc_global_on_local)
    assert acc_max_on_local > 0.8, (m, acc_max_on_local)
    assert acc_global_on_global > 0.85, (m, acc_global_on_global)
