"""Tests for jmoe.metrics: hand-worked cases, an independent loop re-implementation,
sklearn cross-checks (skipped when sklearn is absent) and input validation."""

import json
import math

import numpy as np
import pytest

from jmoe.metrics import (
  classification_metrics,
  format_table,
  high_low,
  mean_std,
  regression_metrics,
  sentiment_metrics,
)


# --------------------------------------------------------------------------- hand-worked
def test_sentiment_hand_worked():
  preds = [0.4, -0.6, 1.5, 2.5, 0.0, -2.6, 0.2]
  labels = [0.0, -1.0, 2.0, 3.0, 0.5, -3.0, -0.4]
  m = sentiment_metrics(np.array(preds), np.array(labels))
  # Has0: pred>=0 = [T,F,T,T,T,F,T], label>=0 = [T,F,T,T,T,F,F] -> 6/7 correct.
  assert m["Has0_acc_2"] == pytest.approx(6 / 7)
  # Has0 F1: class T support 4, TP4 FP1 FN0 -> 8/9; class F support 3, TP2 FP0 FN1 -> 4/5.
  # weighted = (4*8/9 + 3*4/5) / 7 = 268/315.
  assert m["Has0_F1"] == pytest.approx(268 / 315)
  # Non0 drops idx0 (label 0.0). pred>0 = [F,T,T,F,F,T] (0.0 is not > 0),
  # label>0 = [F,T,T,T,F,F] -> 4/6.
  assert m["Non0_acc_2"] == pytest.approx(4 / 6)
  # Non0 F1: T support 3, TP2 FP1 FN1 -> 2/3; F support 3, TP2 FP1 FN1 -> 2/3 -> 2/3.
  assert m["Non0_F1"] == pytest.approx(2 / 3)
  # Acc7 (np.round = half-to-even): preds -> [0,-1,2,2,0,-3,0]; labels -> [0,-1,2,3,0,-3,-0]
  # (2.5 -> 2, 0.5 -> 0): only idx3 differs -> 6/7.
  assert m["Acc7"] == pytest.approx(6 / 7)
  # Acc5 clips to [-2,2]: preds -> [0,-1,2,2,0,-2,0], labels -> [0,-1,2,2,0,-2,-0] -> 1.
  assert m["Acc5"] == pytest.approx(1.0)
  # MAE = (0.4+0.4+0.5+0.5+0.5+0.4+0.6)/7 = 3.3/7.
  assert m["MAE"] == pytest.approx(3.3 / 7)
  assert m["Corr"] == pytest.approx(np.corrcoef(preds, labels)[0, 1])
  assert set(m) == {"Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc5", "Acc7", "MAE", "Corr"}
  assert all(type(v) is float for v in m.values())


def test_sentiment_bankers_rounding_ties():
  # np.round: 0.5->0, 1.5->2, 2.5->2, -0.5->-0, -2.5->-2: all equal the labels -> Acc7 = 1.
  # Round-half-away-from-zero would give [1,2,3,-1,-3] -> only 1/5 correct.
  preds = [0.5, 1.5, 2.5, -0.5, -2.5]
  labels = [0.0, 2.0, 2.0, 0.0, -2.0]
  m = sentiment_metrics(preds, labels)
  assert m["Acc7"] == 1.0
  assert m["Acc5"] == 1.0


def test_sentiment_degenerate_cases():
  # constant predictions: Corr defined as 0.0
  m = sentiment_metrics([1.0, 1.0, 1.0], [-1.0, 0.0, 2.0])
  assert m["Corr"] == 0.0
  # all-zero labels: Non0 subset empty -> nan
  m = sentiment_metrics([0.3, -0.2], [0.0, 0.0])
  assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1"])
  assert m["Has0_acc_2"] == 0.5
  # single sample, shapes squeezed
  m = sentiment_metrics(np.array([[0.7]]), np.array([1.0]))
  assert m["Has0_acc_2"] == 1.0 and m["Corr"] == 0.0
  # [B,1] columns are accepted
  m2 = sentiment_metrics(np.ones((4, 1)), np.arange(4.0)[:, None])
  assert m2["MAE"] == pytest.approx(np.mean(np.abs(1 - np.arange(4.0))))


def test_classification_hand_worked():
  labels = [0, 0, 0, 1, 1, 2]
  preds = [0, 0, 1, 1, 0, 0]
  m = classification_metrics(preds, labels, num_classes=4)
  # WA: correct at idx 0,1,3 -> 3/6
  assert m["WA"] == pytest.approx(0.5)
  # UA: recalls class0 2/3, class1 1/2, class2 0/1 (class3 absent from labels, skipped) -> 7/18
  assert m["UA"] == pytest.approx(7 / 18)
  # F1: class0 TP2 FP2 FN1 -> 4/7; class1 TP1 FP1 FN1 -> 1/2; class2 -> 0.
  # weighted = (3*4/7 + 2*1/2 + 1*0)/6 = 19/42; macro = (4/7 + 1/2 + 0)/3 = 5/14.
  assert m["weighted_F1"] == pytest.approx(19 / 42)
  assert m["macro_F1"] == pytest.approx(5 / 14)
  # logits give the same result via argmax
  logits = np.eye(4)[preds] * 3.0 + 0.1
  assert classification_metrics(logits, labels, 4) == m


def test_regression_hand_worked():
  # preds [1,2,3] (mean 2, var 2/3), labels [2,4,6] (mean 4, var 8/3), cov 4/3.
  # CCC = 2*(4/3) / (2/3 + 8/3 + 4) = (8/3)/(22/3) = 4/11; PCC = 1; MAE = 2.
  m = regression_metrics([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
  assert m["CCC"] == pytest.approx(4 / 11)
  assert m["PCC"] == pytest.approx(1.0)
  assert m["MAE"] == pytest.approx(2.0)
  assert regression_metrics([1.0, 2.0], [1.0, 2.0])["CCC"] == pytest.approx(1.0)
  # both sides the same constant: CCC is 0/0 and PCC has zero variances -> None with warnings (was 0.0 before the
  # "undefined -> None, never nan or a made-up number" rule for results written to JSON)
  with pytest.warns(RuntimeWarning, match="PCC"):
    assert regression_metrics([1.0, 1.0], [1.0, 1.0]) == {"CCC": None, "PCC": None, "MAE": 0.0}


# --------------------------------------------------------------------------- reference impl
def _ref_f1(y_true, y_pred, average):
  classes = sorted(set(y_true) | set(y_pred))
  f1s, sup = [], []
  for c in classes:
    tp = fp = fn = 0
    for t, p in zip(y_true, y_pred):
      if t == c and p == c:
        tp += 1
      elif t != c and p == c:
        fp += 1
      elif t == c and p != c:
        fn += 1
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    sup.append(sum(1 for t in y_true if t == c))
  if average == "macro":
    return sum(f1s) / len(f1s)
  return sum(f * s for f, s in zip(f1s, sup)) / sum(sup)


def _ref_round_half_even(x):
  f = math.floor(x)
  d = x - f
  if d > 0.5:
    return f + 1
  if d < 0.5:
    return f
  return f if f % 2 == 0 else f + 1


def _ref_sentiment(preds, labels):
  p = [float(v) for v in preds]
  y = [float(v) for v in labels]
  n = len(p)
  out = {}
  bp = [v >= 0 for v in p]
  by = [v >= 0 for v in y]
  out["Has0_acc_2"] = sum(a == b for a, b in zip(bp, by)) / n
  out["Has0_F1"] = _ref_f1(by, bp, "weighted")
  idx = [i for i in range(n) if y[i] != 0]
  np_ = [p[i] > 0 for i in idx]
  ny = [y[i] > 0 for i in idx]
  out["Non0_acc_2"] = sum(a == b for a, b in zip(np_, ny)) / len(idx)
  out["Non0_F1"] = _ref_f1(ny, np_, "weighted")
  for key, lim in (("Acc7", 3.0), ("Acc5", 2.0)):
    c = lambda v: _ref_round_half_even(min(lim, max(-lim, v)))  # noqa: E731
    out[key] = sum(c(a) == c(b) for a, b in zip(p, y)) / n
  out["MAE"] = sum(abs(a - b) for a, b in zip(p, y)) / n
  mp, my = sum(p) / n, sum(y) / n
  sxy = sum((a - mp) * (b - my) for a, b in zip(p, y))
  sxx = sum((a - mp) ** 2 for a in p)
  syy = sum((b - my) ** 2 for b in y)
  out["Corr"] = sxy / math.sqrt(sxx * syy)
  return out


@pytest.mark.parametrize("seed", range(6))
def test_sentiment_matches_reference(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(20, 300))
  # MOSI-like labels: multiples of 1/3 in [-3, 3] (many exact zeros and x.5 never, but
  # rounding ties at +-0.5 multiples come from the predictions below)
  labels = np.round(rng.uniform(-3, 3, size=n) * 3) / 3
  labels[rng.random(n) < 0.1] = 0.0
  preds = rng.normal(0, 1.5, size=n)
  # inject exact zeros and exact .5 ties into predictions
  preds[rng.random(n) < 0.05] = 0.0
  ties = rng.random(n) < 0.1
  preds[ties] = rng.integers(-7, 7, size=ties.sum()) + 0.5
  got = sentiment_metrics(preds, labels)
  ref = _ref_sentiment(preds, labels)
  for k in ref:
    assert got[k] == pytest.approx(ref[k], abs=1e-12), k


@pytest.mark.parametrize("seed", range(4))
def test_classification_matches_reference(seed):
  rng = np.random.default_rng(100 + seed)
  k = int(rng.integers(2, 7))
  n = int(rng.integers(10, 200))
  labels = rng.integers(0, k, size=n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels] * rng.random((n, 1))
  preds = logits.argmax(1)
  m = classification_metrics(logits, labels, k)
  assert m["WA"] == pytest.approx(sum(int(a == b) for a, b in zip(preds, labels)) / n)
  recalls = []
  for c in sorted(set(labels.tolist())):
    idx = [i for i in range(n) if labels[i] == c]
    recalls.append(sum(int(preds[i] == c) for i in idx) / len(idx))
  assert m["UA"] == pytest.approx(sum(recalls) / len(recalls))
  assert m["weighted_F1"] == pytest.approx(_ref_f1(labels.tolist(), preds.tolist(), "weighted"))
  assert m["macro_F1"] == pytest.approx(_ref_f1(labels.tolist(), preds.tolist(), "macro"))


@pytest.mark.parametrize("seed", range(4))
def test_regression_matches_reference(seed):
  rng = np.random.default_rng(200 + seed)
  n = int(rng.integers(5, 200))
  y = rng.uniform(1, 9, size=n)
  p = 0.5 * y + rng.normal(0, 1, size=n) + rng.normal()
  m = regression_metrics(p, y)
  mp, my = sum(p) / n, sum(y) / n
  vp = sum((a - mp) ** 2 for a in p) / n
  vy = sum((b - my) ** 2 for b in y) / n
  cov = sum((a - mp) * (b - my) for a, b in zip(p, y)) / n
  assert m["CCC"] == pytest.approx(2 * cov / (vp + vy + (mp - my) ** 2))
  assert m["PCC"] == pytest.approx(cov / math.sqrt(vp * vy))
  assert m["MAE"] == pytest.approx(sum(abs(a - b) for a, b in zip(p, y)) / n)


# --------------------------------------------------------------------------- sklearn
@pytest.mark.parametrize("seed", range(5))
def test_against_sklearn(seed):
  skm = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(300 + seed)
  n = int(rng.integers(15, 300))
  labels = np.round(rng.uniform(-3, 3, size=n) * 3) / 3
  labels[rng.random(n) < 0.1] = 0.0
  preds = rng.normal(0.3, 1.5, size=n)
  m = sentiment_metrics(preds, labels)
  assert m["Has0_F1"] == pytest.approx(skm.f1_score(labels >= 0, preds >= 0, average="weighted"))
  assert m["Has0_acc_2"] == pytest.approx(skm.accuracy_score(labels >= 0, preds >= 0))
  nz = labels != 0
  assert m["Non0_F1"] == pytest.approx(skm.f1_score(labels[nz] > 0, preds[nz] > 0, average="weighted"))
  k = 4
  y = rng.integers(0, k, size=n)
  yp = np.where(rng.random(n) < 0.5, y, rng.integers(0, k - 1, size=n))  # class 3 rarely predicted
  c = classification_metrics(yp, y, k)
  assert c["weighted_F1"] == pytest.approx(skm.f1_score(y, yp, average="weighted", zero_division=0))
  assert c["macro_F1"] == pytest.approx(skm.f1_score(y, yp, average="macro", zero_division=0))
  assert c["UA"] == pytest.approx(skm.balanced_accuracy_score(y, yp))
  assert c["WA"] == pytest.approx(skm.accuracy_score(y, yp))


def test_f1_class_never_predicted_against_sklearn():
  skm = pytest.importorskip("sklearn.metrics")
  y = np.array([True, True, False, False, False])
  p = np.array([False] * 5)  # positive class never predicted -> its F1 is 0
  m = sentiment_metrics(np.where(p, 1.0, -1.0), np.where(y, 1.0, -1.0))
  assert m["Has0_F1"] == pytest.approx(skm.f1_score(y, p, average="weighted", zero_division=0))
  assert m["Has0_F1"] == pytest.approx(3 / 5 * (2 * 3 / (2 * 3 + 2)))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
  "preds,labels,msg",
  [
    ([1.0, 2.0], [1.0], "differ in length"),
    ([], [], "empty"),
    ([1.0, np.nan], [1.0, 2.0], "non-finite"),
    ([1.0, 2.0], [1.0, np.inf], "non-finite"),
    (np.zeros((2, 3)), np.zeros((2, 3)), "1-D"),
    (["a", "b"], [1.0, 2.0], "numeric"),
  ],
)
def test_bad_inputs(preds, labels, msg):
  for fn in (sentiment_metrics, regression_metrics):
    if fn is regression_metrics and msg == "1-D":  # regression_metrics takes [B, K]; see test_regression_bad_inputs
      continue
    with pytest.raises(ValueError, match=msg) as ei:
      fn(preds, labels)
    assert "\n" not in str(ei.value)


def test_classification_bad_inputs():
  with pytest.raises(ValueError, match=r"in \[0, 3\)"):
    classification_metrics([0, 3], [0, 1], 3)
  with pytest.raises(ValueError, match="integer"):
    classification_metrics([0.5, 1], [0, 1], 3)
  with pytest.raises(ValueError, match="columns"):
    classification_metrics(np.zeros((2, 4)), [0, 1], 3)
  with pytest.raises(ValueError, match="differ in length"):
    classification_metrics([0, 1, 2], [0, 1], 3)
  with pytest.raises(ValueError, match="num_classes"):
    classification_metrics([0], [0], 0)


# --------------------------------------------------------------------------- helpers
def test_mean_std_and_table():
  assert mean_std([2.0]) == (2.0, 0.0)
  m, s = mean_std([1.0, 2.0, 3.0, 4.0])
  assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
  with pytest.raises(ValueError):
    mean_std([])
  t = format_table(
    [{"model": "a|b", "Acc": 0.81234, "F1": (0.5, 0.01)}, {"model": "c", "Acc": 1}],
    columns=["model", "Acc", "F1"],
    title="MOSI",
  )
  lines = t.strip().split("\n")
  assert lines[0] == "### MOSI"
  assert lines[2] == "| model | Acc | F1 |"
  assert lines[3] == "|---|---|---|"
  assert lines[4] == "| a\\|b | 0.8123 | 0.5000 ± 0.0100 |"
  assert lines[5] == "| c | 1 |  |"


# --------------------------------------------------------------------------- classification: names, mask, confusion
def test_classification_confusion_recall_names_mask():
  labels = [0, 0, 0, 1, 1, 2, 2]
  preds = [0, 0, 1, 1, 0, 0, 1]
  mask = [1, 1, 1, 1, 1, 1, 0]  # the last row is padding: its (2 -> 1) error must not count
  names = ["neu", "hap", "ang", "sad"]
  with pytest.warns(RuntimeWarning, match=r"\['sad'\] are absent"):
    m = classification_metrics(preds, labels, class_names=names, mask=mask)
  # same numbers as test_classification_hand_worked (rows 0-5), plus:
  assert m["WA"] == pytest.approx(0.5) and m["UA"] == pytest.approx(7 / 18)
  assert m["weighted_F1"] == pytest.approx(19 / 42) and m["macro_F1"] == pytest.approx(5 / 14)
  # confusion[true][pred]: true 0 -> pred 0,0,1; true 1 -> 1,0; true 2 -> 0
  assert m["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
  assert all(type(v) is int for row in m["confusion"] for v in row)
  assert m["recall"] == {"neu": pytest.approx(2 / 3), "hap": 0.5, "ang": 0.0, "sad": None}
  json.dumps(m, allow_nan=False)  # JSON-safe: None, never nan
  # num_classes and class_names must agree; one of them is needed
  with pytest.raises(ValueError, match="class_names"):
    classification_metrics(preds, labels, 3, class_names=names)
  with pytest.raises(ValueError, match="num_classes or class_names"):
    classification_metrics(preds, labels)
  with pytest.raises(ValueError, match="mask"):
    classification_metrics(preds, labels, 4, mask=[1, 0])
  with pytest.raises(ValueError, match="every sample"):
    classification_metrics(preds, labels, 4, mask=np.zeros(7))


@pytest.mark.parametrize("seed", range(4))
def test_classification_confusion_against_sklearn(seed):
  skm = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(400 + seed)
  c, n = int(rng.integers(2, 6)), int(rng.integers(20, 200))
  y = rng.integers(0, c, size=n)
  logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y] * rng.random((n, 1))
  mask = rng.random(n) < 0.8
  m = classification_metrics(logits, y, c, mask=mask)
  yp = logits.argmax(1)
  assert m["confusion"] == skm.confusion_matrix(y[mask], yp[mask], labels=list(range(c))).tolist()
  assert m["WA"] == pytest.approx(skm.accuracy_score(y[mask], yp[mask]))
  assert m["UA"] == pytest.approx(skm.balanced_accuracy_score(y[mask], yp[mask]))
  assert m["weighted_F1"] == pytest.approx(skm.f1_score(y[mask], yp[mask], average="weighted", zero_division=0))
  assert m["macro_F1"] == pytest.approx(skm.f1_score(y[mask], yp[mask], average="macro", zero_division=0))
  rec = skm.recall_score(y[mask], yp[mask], average=None, labels=list(range(c)), zero_division=0)
  assert [m["recall"][str(i)] for i in range(c)] == pytest.approx(rec.tolist())


def test_high_low_thresholds():
  # DEAP: threshold 5 on 1-9, rating > 5 is high, exactly 5 is low
  np.testing.assert_array_equal(high_low([1.0, 4.99, 5.0, 5.01, 9.0], 5.0), [0, 0, 0, 1, 1])
  # DREAMER: threshold 3 on integers 1-5 -> 1,2,3 low; 4,5 high; TorchEEG's >= rule makes 3 high
  np.testing.assert_array_equal(high_low([1, 2, 3, 4, 5], 3), [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(high_low([1, 2, 3, 4, 5], 3, equal_is_high=True), [0, 0, 1, 1, 1])
  out = high_low(np.array([[6.0, 2.0], [5.0, 7.5]]), 5)
  assert out.dtype == np.int64 and out.tolist() == [[1, 0], [0, 1]]
  with pytest.raises(ValueError, match="non-finite"):
    high_low([np.nan], 5)


# --------------------------------------------------------------------------- regression: [B, K]
def test_regression_per_dimension_hand_worked():
  # valence: the hand-worked case above (CCC 4/11, PCC 1, MAE 2); arousal: p = -y + 4 (CCC -1, PCC -1, MAE 4/3)
  p = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
  y = np.array([[2.0, 1.0], [4.0, 2.0], [6.0, 3.0]])
  m = regression_metrics(p, y, names=["valence", "arousal"])
  assert m["CCC_valence"] == pytest.approx(4 / 11) and m["CCC_arousal"] == pytest.approx(-1.0)
  assert m["PCC_valence"] == pytest.approx(1.0) and m["PCC_arousal"] == pytest.approx(-1.0)
  assert m["MAE_valence"] == pytest.approx(2.0) and m["MAE_arousal"] == pytest.approx(4 / 3)
  assert m["CCC_mean"] == pytest.approx((4 / 11 - 1) / 2)
  assert m["PCC_mean"] == pytest.approx(0.0, abs=1e-12)
  assert m["MAE_mean"] == pytest.approx(5 / 3)
  assert len(m) == 9 and all(type(v) is float for v in m.values())
  # [B, K] without names -> "0", "1", ...; [B] with names -> per-dimension keys
  assert set(regression_metrics(p, y)) == {f"{a}_{b}" for a in ("CCC", "PCC", "MAE") for b in ("0", "1", "mean")}
  assert regression_metrics(p[:, 0], y[:, 0], names=["v"])["CCC_v"] == pytest.approx(4 / 11)


def test_regression_undefined_is_none_with_warning():
  p = np.array([[2.0, 1.0], [2.0, 2.0], [2.0, 3.0]])  # dimension "a": constant predictions
  y = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
  with pytest.warns(RuntimeWarning, match="PCC of a: predictions have zero variance"):
    m = regression_metrics(p, y, names=["a", "b"])
  assert m["PCC_a"] is None and m["PCC_mean"] is None
  assert m["CCC_a"] == 0.0  # defined: cov 0 over a non-zero denominator
  assert m["CCC_b"] == pytest.approx(1.0) and m["CCC_mean"] == pytest.approx(0.5)
  json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("seed", range(3))
def test_regression_per_dimension_against_sklearn_and_numpy(seed):
  skm = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(500 + seed)
  n, k = int(rng.integers(10, 200)), 3
  y = rng.uniform(1, 9, size=(n, k))
  p = 0.5 * y + rng.normal(size=(n, k)) + rng.normal(size=k)
  m = regression_metrics(p, y, names=["v", "a", "d"])
  for j, name in enumerate("vad"):
    assert m[f"MAE_{name}"] == pytest.approx(skm.mean_absolute_error(y[:, j], p[:, j]))
    assert m[f"PCC_{name}"] == pytest.approx(np.corrcoef(p[:, j], y[:, j])[0, 1])
    assert m[f"CCC_{name}"] == pytest.approx(regression_metrics(p[:, j], y[:, j])["CCC"])
  assert m["CCC_mean"] == pytest.approx(np.mean([m[f"CCC_{c}"] for c in "vad"]))


def test_regression_bad_inputs():
  with pytest.raises(ValueError, match=r"\[B\] or \[B, K\]"):
    regression_metrics(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)))
  with pytest.raises(ValueError, match="differ in shape"):
    regression_metrics(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="2 names for 3"):
    regression_metrics(np.zeros((4, 3)), np.zeros((4, 3)), names=["a", "b"])
