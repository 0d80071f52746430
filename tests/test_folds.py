"""Tests for jmoe.data.folds: disjoint splits (samples, trials, held-out groups), every sample tested exactly once,
validation carved from training groups only, determinism, and one-line ValueErrors."""

from __future__ import annotations

import numpy as np
import pytest

from jmoe.data import folds as folds_lib
from jmoe.data.folds import Fold, check_fold, kfold, leave_one_group_out, predefined


def deap_like(subjects=4, trials=12, windows=5):
  """Sample -> (subject, global trial id); windows of a trial are consecutive samples."""
  subject = np.repeat(np.arange(subjects), trials * windows)
  trial = np.repeat(np.arange(subjects * trials), windows)
  return subject, trial


def assert_disjoint(fold: Fold, *group_arrays):
  parts = [fold.train, fold.valid, fold.test]
  for a in range(3):
    assert np.all(np.diff(parts[a]) > 0)  # sorted, unique
    for b in range(a + 1, 3):
      assert not set(parts[a].tolist()) & set(parts[b].tolist())
      for g in group_arrays:
        assert not set(g[parts[a]].tolist()) & set(g[parts[b]].tolist()), fold.name


# --------------------------------------------------------------------------- kfold
def test_kfold_samples_cover_once():
  fs = kfold(53, 5, seed=0)
  assert [f.name for f in fs] == [f"fold_{i}" for i in range(5)]
  tested = np.concatenate([f.test for f in fs])
  assert sorted(tested.tolist()) == list(range(53))
  for f in fs:
    assert_disjoint(f)
    assert len(f.train) + len(f.valid) + len(f.test) == 53
    assert len(f.test) in (10, 11)
    assert len(f.valid) == round(0.1 * (53 - len(f.test)))


def test_kfold_groups_within_subject_himoe_protocol():
  subject, trial = deap_like(subjects=4, trials=12, windows=5)
  fs = kfold(len(trial), 10, seed=3, groups=trial, within=subject)
  tested = np.concatenate([f.test for f in fs])
  assert sorted(tested.tolist()) == list(range(len(trial)))
  for f in fs:
    assert_disjoint(f, trial)  # windows of one trial never on two sides
    assert set(subject[f.test].tolist()) == {0, 1, 2, 3}  # every subject's trials spread over every fold
    assert set(subject[f.valid].tolist()) == {0, 1, 2, 3}  # valid carved per subject from the training trials
    # whole trials: a trial's 5 windows are all in the same split
    for part in (f.train, f.valid, f.test):
      assert np.all(np.bincount(trial[part], minlength=trial.max() + 1) % 5 == 0)
  # each subject's 12 trials: 1 or 2 per fold
  for s in range(4):
    per_fold = [len(set(trial[f.test][subject[f.test] == s].tolist())) for f in fs]
    assert sum(per_fold) == 12 and set(per_fold) <= {1, 2}


def test_kfold_stratify_balances_classes():
  rng = np.random.default_rng(0)
  trial = np.repeat(np.arange(40), 3)
  label = np.repeat((rng.random(40) < 0.3).astype(int), 3)  # high/low per trial, imbalanced
  fs = kfold(len(trial), 4, seed=1, groups=trial, stratify=label, valid_fraction=0.0)
  n_pos = int(label[::3].sum())
  for f in fs:
    assert_disjoint(f, trial)
    assert len(f.valid) == 0
    assert abs(len(set(trial[f.test][label[f.test] == 1].tolist())) - n_pos / 4) <= 1
  with pytest.raises(ValueError, match="stratify differs within group"):
    kfold(6, 2, seed=0, groups=[0, 0, 1, 1, 2, 2], stratify=[0, 1, 0, 0, 1, 1])


def test_kfold_deterministic_and_seed_dependent():
  subject, trial = deap_like(3, 10, 2)
  a = kfold(len(trial), 5, seed=7, groups=trial, within=subject)
  b = kfold(len(trial), 5, seed=7, groups=trial, within=subject)
  c = kfold(len(trial), 5, seed=8, groups=trial, within=subject)
  for x, y in zip(a, b):
    for s in ("train", "valid", "test"):
      np.testing.assert_array_equal(getattr(x, s), getattr(y, s))
      assert getattr(x, s).dtype == np.int64
  assert any(not np.array_equal(x.test, y.test) for x, y in zip(a, c))


@pytest.mark.parametrize(
  "kwargs,msg",
  [
    (dict(num_samples=10, k=1, seed=0), "k must be an int >= 2"),
    (dict(num_samples=10, k=11, seed=0), "k=11 folds but only 10 samples"),
    (dict(num_samples=6, k=4, seed=0, groups=[0, 0, 1, 1, 2, 2]), "only 3 groups"),
    (dict(num_samples=4, k=2, seed=0, groups=[0, 1, 2]), "groups must be 1-D with num_samples=4"),
    (dict(num_samples=10, k=2, seed=0, valid_fraction=1.0), "valid_fraction"),
    (dict(num_samples=4, k=2, seed=0, valid_fraction=0.9), "leaves no training samples"),
    (dict(num_samples=6, k=3, seed=0, within=[0, 0, 0, 0, 1, 1]), "within block 1 has 2 samples, fewer than k=3"),
    (dict(num_samples=4, k=2, seed=0, groups=[0, 0, 1, 1], within=[0, 1, 1, 1]), "within differs within group"),
  ],
)
def test_kfold_errors(kwargs, msg):
  with pytest.raises(ValueError, match=msg) as ei:
    kfold(**kwargs)
  assert "\n" not in str(ei.value)


# --------------------------------------------------------------------------- leave one group out
def test_loso_subjects():
  subject, trial = deap_like(subjects=5, trials=4, windows=3)
  fs = leave_one_group_out(subject, valid_groups=1, seed=0)
  assert [f.name for f in fs] == ["0", "1", "2", "3", "4"]
  assert sorted(np.concatenate([f.test for f in fs]).tolist()) == list(range(len(subject)))
  for i, f in enumerate(fs):
    assert_disjoint(f, subject, trial)
    assert set(subject[f.test].tolist()) == {i}
    assert len(set(subject[f.valid].tolist())) == 1 and len(set(subject[f.train].tolist())) == 3


def test_ravdess_two_actors_per_fold_and_iemocap_sessions():
  actor = np.repeat(np.arange(1, 25), 6)  # RAVDESS actors 1..24
  fs = leave_one_group_out(actor, valid_groups=2, seed=4, test_groups_per_fold=2)
  assert len(fs) == 12 and fs[0].name == "1+2" and fs[-1].name == "23+24"
  for f in fs:
    assert_disjoint(f, actor)
    assert len(set(actor[f.test].tolist())) == 2 and len(set(actor[f.valid].tolist())) == 2
    assert len(set(actor[f.train].tolist())) == 20
  session = np.array(["Ses01", "Ses02", "Ses03", "Ses04", "Ses05"] * 7)
  fs = leave_one_group_out(session, valid_fraction=0.25, seed=0)
  assert [f.name for f in fs] == ["Ses01", "Ses02", "Ses03", "Ses04", "Ses05"]
  for f in fs:
    assert_disjoint(f, session)
    assert len(set(session[f.valid].tolist())) == 1  # round(0.25 * 4) = 1 session
  no_valid = leave_one_group_out(session, valid_groups=0)
  assert all(len(f.valid) == 0 and len(f.train) == 28 for f in no_valid)


def test_loso_deterministic():
  g = np.repeat(np.arange(6), 4)
  a, b = leave_one_group_out(g, seed=3), leave_one_group_out(g, seed=3)
  assert all(np.array_equal(x.valid, y.valid) and np.array_equal(x.train, y.train) for x, y in zip(a, b))


@pytest.mark.parametrize(
  "kwargs,msg",
  [
    (dict(groups=[0, 0, 0]), "fewer than 2 folds"),
    (dict(groups=[0, 1, 2], test_groups_per_fold=2), "3 groups cannot be cut"),
    (dict(groups=[0, 1, 2], valid_groups=2), "leave no training group"),
    (dict(groups=[0, 1, 2], valid_groups=-1), "valid_groups must be"),
    (dict(groups=[0, 1, 2, 3], valid_fraction=1.5), "valid_fraction"),
    (dict(groups=[]), "non-empty"),
  ],
)
def test_loso_errors(kwargs, msg):
  with pytest.raises(ValueError, match=msg) as ei:
    leave_one_group_out(**kwargs)
  assert "\n" not in str(ei.value)


# --------------------------------------------------------------------------- predefined / check_fold
def test_predefined_sorts_and_checks():
  f = predefined([5, 1, 3], [0], [2, 4], name="standard")
  assert f.train.tolist() == [1, 3, 5] and f.valid.tolist() == [0] and f.test.tolist() == [2, 4]
  assert f.sizes() == {"train": 3, "valid": 1, "test": 2}
  with pytest.raises(ValueError, match="sample 3 is in both train and test"):
    predefined([1, 3], [0], [3, 4])
  with pytest.raises(ValueError, match="group 'b' is in both train and test"):
    predefined([0, 1], [2], [3], groups=np.array(["a", "b", "c", "b"]))


def test_check_fold_catches_each_problem():
  a = np.array
  good = Fold("f", a([0, 1]), a([2]), a([3]))
  assert check_fold(good, groups=[0, 1, 2, 3]) is good
  cases = [
    (Fold("f", a([1, 0]), a([2]), a([3])), "sorted and unique"),
    (Fold("f", a([0, 0]), a([2]), a([3])), "sorted and unique"),
    (Fold("f", a([0, 1]), a([], np.int64), a([3])), "valid split is empty"),
    (Fold("f", a([0, 1]), a([2]), a([], np.int64)), "test split is empty"),
    (Fold("f", a([0, 1]), a([1]), a([3])), "sample 1 is in both train and valid"),
    (Fold("f", a([0, 1]), a([2]), a([4])), r"outside \[0, 4\)"),
    (Fold("f", a([0.0, 1.0]), a([2]), a([3])), "integers"),
  ]
  for fold, msg in cases:
    with pytest.raises(ValueError, match=msg):
      check_fold(fold, groups=[0, 1, 2, 3])
  with pytest.raises(ValueError, match="group 7 is in both valid and test"):
    check_fold(good, groups=[0, 1, 7, 7])
  assert check_fold(Fold("f", a([0]), a([], np.int64), a([1])), allow_empty_valid=True)


def test_public_api():
  assert set(folds_lib.__all__) == {"Fold", "check_fold", "kfold", "leave_one_group_out", "predefined"}
