"""EUAR robustness perturbations: missing modalities, Gaussian / salt-and-pepper noise, blanked text."""

import dataclasses
import itertools

import numpy as np
import pytest

from jmoe.data.perturb import LETTERS, MISSING_COMBOS, blank_text, drop_modalities, gaussian_noise, salt_and_pepper
from jmoe.data.synthetic import synthetic_mosi


@pytest.fixture(scope="module")
def seq_split():
  return synthetic_mosi(
    seed=0, dims={"text": 6, "audio": 4, "vision": 5}, seq_len=10, sizes=(50, 5, 5), corrupt_fraction=0.0
  ).splits["train"]


@pytest.fixture(scope="module")
def vec_split():
  return synthetic_mosi(seed=0, dims={"text": 40, "audio": 4, "vision": 5}, sizes=(30, 5, 5)).splits["train"]


def copy_of(split):
  return {m: x.copy() for m, x in split.features.items()}


def test_missing_combos():
  assert len(MISSING_COMBOS) == 7 and len(set(map(frozenset, MISSING_COMBOS))) == 7
  expected = {frozenset(c) for r in (1, 2, 3) for c in itertools.combinations("LVA", r)}
  assert set(map(frozenset, MISSING_COMBOS)) == expected
  assert LETTERS == {"L": "text", "A": "audio", "V": "vision"}


@pytest.mark.parametrize("available", MISSING_COMBOS)
def test_drop_modalities(seq_split, available):
  before = copy_of(seq_split)
  out = drop_modalities(seq_split, available)
  keep = {LETTERS[a] for a in available}
  for m in ("text", "audio", "vision"):
    if m in keep:
      np.testing.assert_array_equal(out.features[m], seq_split.features[m])
    else:
      assert not out.features[m].any()
    np.testing.assert_array_equal(out.masks[m], seq_split.masks[m])  # masks kept
  np.testing.assert_array_equal(out.labels["sentiment"], seq_split.labels["sentiment"])
  for m, x in before.items():  # input untouched
    np.testing.assert_array_equal(seq_split.features[m], x)


def test_drop_modalities_names_and_errors(vec_split):
  out = drop_modalities(vec_split, ("text", "A"))
  assert not out.features["vision"].any() and out.features["text"].any()
  lv = drop_modalities(vec_split, "LV")
  assert not lv.features["audio"].any() and lv.features["text"].any() and lv.features["vision"].any()
  only_text = drop_modalities(vec_split, "text")
  assert only_text.features["text"].any() and not only_text.features["audio"].any()
  with pytest.raises(ValueError, match="unknown modality 'X'"):
    drop_modalities(vec_split, ("L", "X"))
  with pytest.raises(ValueError, match="at least one"):
    drop_modalities(vec_split, ())


def test_gaussian_noise(seq_split):
  out = gaussian_noise(seq_split, "A", std=0.5, seed=1)
  again = gaussian_noise(seq_split, "audio", std=0.5, seed=1)
  other = gaussian_noise(seq_split, "audio", std=0.5, seed=2)
  np.testing.assert_array_equal(out.features["audio"], again.features["audio"])
  assert not np.array_equal(out.features["audio"], other.features["audio"])
  diff = out.features["audio"] - seq_split.features["audio"]
  mask = seq_split.masks["audio"]
  assert not diff[~mask].any()  # padding untouched
  assert diff[mask].std() == pytest.approx(0.5, rel=0.1) and abs(diff[mask].mean()) < 0.05
  np.testing.assert_array_equal(out.features["text"], seq_split.features["text"])
  np.testing.assert_array_equal(gaussian_noise(seq_split, "V", 0.0, 0).features["vision"], seq_split.features["vision"])
  with pytest.raises(ValueError, match="unknown modality"):
    gaussian_noise(seq_split, "video", 0.1, 0)
  with pytest.raises(ValueError, match="std must be"):
    gaussian_noise(seq_split, "L", -1.0, 0)


def test_salt_and_pepper(vec_split):
  x = vec_split.features["vision"]
  out = salt_and_pepper(vec_split, "V", ratio=0.3, seed=0)
  y = out.features["vision"]
  changed = y != x
  assert 0.2 < changed.mean() < 0.4
  assert set(np.unique(y[changed]).tolist()) <= {float(x.min()), float(x.max())}
  assert (y[changed] == x.max()).any() and (y[changed] == x.min()).any()
  np.testing.assert_array_equal(salt_and_pepper(vec_split, "V", 0.3, 0).features["vision"], y)
  np.testing.assert_array_equal(salt_and_pepper(vec_split, "V", 0.0, 0).features["vision"], x)
  full = salt_and_pepper(vec_split, "vision", 1.0, 0).features["vision"]
  assert np.isin(full, [x.min(), x.max()]).all()
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\]"):
      salt_and_pepper(vec_split, "V", bad, 0)


def test_salt_and_pepper_respects_mask(seq_split):
  out = salt_and_pepper(seq_split, "L", 0.5, 3)
  mask = seq_split.masks["text"]
  assert not out.features["text"][~mask].any()
  real = seq_split.features["text"][mask]
  assert np.isin(out.features["text"][mask][out.features["text"][mask] != real], [real.min(), real.max()]).all()


def test_blank_text_sequences(seq_split):
  out = blank_text(seq_split, 0.5, seed=0)
  lens = seq_split.masks["text"].sum(1)
  zero_steps = (~out.features["text"].any(-1) & seq_split.masks["text"]).sum(1)
  np.testing.assert_array_equal(zero_steps, np.round(0.5 * lens).astype(int))
  kept = out.features["text"].any(-1)
  np.testing.assert_array_equal(out.features["text"][kept], seq_split.features["text"][kept])
  np.testing.assert_array_equal(out.features["audio"], seq_split.features["audio"])
  np.testing.assert_array_equal(blank_text(seq_split, 0.5, 0).features["text"], out.features["text"])
  assert not blank_text(seq_split, 1.0, 0).features["text"].any()


def test_blank_text_vectors(vec_split):
  out = blank_text(vec_split, 0.25, seed=0)
  zeros = (out.features["text"] == 0).sum(1)
  assert (zeros == 10).all()  # round(0.25 * 40) per sample
  assert len({tuple(np.flatnonzero(r == 0)) for r in out.features["text"]}) > 20  # different entries per sample
  with pytest.raises(ValueError, match="ratio"):
    blank_text(vec_split, 2.0, 0)


def test_blank_text_needs_text(vec_split):
  no_text = drop_modalities(vec_split, "A")
  assert "text" in no_text.features
  av = dataclasses.replace(vec_split, features={m: x for m, x in vec_split.features.items() if m != "text"})
  with pytest.raises(ValueError, match="modality 'text' is not in this split"):
    blank_text(av, 0.5, 0)
