"""Evaluation metrics for jmoe (numpy in, python floats out; pure functions).

* :func:`sentiment_metrics` -- CMU-MOSI / MOSEI regression metrics following MMSA's
  ``metricsTop.py`` (``__eval_mosi_regression``), reported as fractions (not percent).
* :func:`classification_metrics` -- IEMOCAP-style WA / UA / weighted-F1 / macro-F1, per-class recall, confusion.
* :func:`high_low` -- binary high/low labels from ratings (DEAP threshold 5, DREAMER 3).
* :func:`regression_metrics` -- CCC / PCC / MAE per continuous dimension and their means (DEAP, DREAMER).
* :func:`mean_std` and :func:`format_table` -- small reporting helpers.

Undefined values. :func:`classification_metrics` and :func:`regression_metrics` report an undefined value (PCC of a
constant, CCC of 0/0, recall of a class absent from the labels) as ``None`` (JSON ``null``) with a
``RuntimeWarning``, never nan. :func:`sentiment_metrics` is unchanged and keeps its MMSA-compatible conventions
(``Corr`` 0.0 for a constant side, ``Non0_*`` nan when every label is 0): convert nan before writing strict JSON.

Nothing here depends on sklearn or JAX; the F1 computations re-implement sklearn's
``f1_score`` semantics (see :func:`_f1_per_class`) and are checked against sklearn in
``tests/test_metrics.py`` when it is installed.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
  "sentiment_metrics",
  "classification_metrics",
  "regression_metrics",
  "high_low",
  "weighted_f1",
  "macro_f1",
  "mean_std",
  "format_table",
]


# --------------------------------------------------------------------------- validation
def _as_1d(x: Any, name: str) -> np.ndarray:
  """Convert to a float64 1-D array (after squeeze); ValueError on anything else."""
  try:
    arr = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be numeric array-like ({e})") from None
  arr = np.squeeze(arr)
  if arr.ndim == 0:
    arr = arr.reshape(1)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D after squeeze, got shape {np.shape(x)}")
  if arr.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains non-finite values (nan or inf)")
  return arr


def _pair(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  p = _as_1d(preds, "preds")
  y = _as_1d(labels, "labels")
  if p.shape[0] != y.shape[0]:
    raise ValueError(f"preds and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
  return p, y


# --------------------------------------------------------------------------- building blocks
def _pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation; defined as 0.0 when either side has zero variance
  (np.corrcoef would return nan there)."""
  da = a - a.mean()
  db = b - b.mean()
  saa = float(np.dot(da, da))
  sbb = float(np.dot(db, db))
  if saa == 0.0 or sbb == 0.0:
    return 0.0
  r = float(np.dot(da, db)) / math.sqrt(saa * sbb)
  return float(min(1.0, max(-1.0, r)))


def _f1_per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray):
  """Per-class F1 and true support, sklearn semantics: F1 = 2TP / (2TP + FP + FN),
  and 0.0 for a class where that is 0/0 (sklearn's ``zero_division`` default result)."""
  f1 = np.zeros(len(classes), dtype=np.float64)
  support = np.zeros(len(classes), dtype=np.float64)
  for i, c in enumerate(classes):
    t = y_true == c
    p = y_pred == c
    tp = float(np.sum(t & p))
    fp = float(np.sum(~t & p))
    fn = float(np.sum(t & ~p))
    denom = 2.0 * tp + fp + fn
    f1[i] = 2.0 * tp / denom if denom > 0 else 0.0
    support[i] = float(np.sum(t))
  return f1, support


def weighted_f1(y_true: Any, y_pred: Any) -> float:
  """sklearn ``f1_score(y_true, y_pred, average='weighted')``: per-class F1 over the
  union of classes in ``y_true`` and ``y_pred``, weighted by true support."""
  y_true = np.asarray(y_true).reshape(-1)
  y_pred = np.asarray(y_pred).reshape(-1)
  classes = np.union1d(y_true, y_pred)
  f1, support = _f1_per_class(y_true, y_pred, classes)
  total = support.sum()
  if total == 0:
    return 0.0
  return float(np.dot(f1, support) / total)


def macro_f1(y_true: Any, y_pred: Any) -> float:
  """sklearn ``f1_score(y_true, y_pred, average='macro')``: unweighted mean of per-class
  F1 over the union of classes present in ``y_true`` or ``y_pred``."""
  y_true = np.asarray(y_true).reshape(-1)
  y_pred = np.asarray(y_pred).reshape(-1)
  classes = np.union1d(y_true, y_pred)
  f1, _ = _f1_per_class(y_true, y_pred, classes)
  return float(f1.mean()) if len(f1) else 0.0


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean(a == b)) if a.size else float("nan")


# --------------------------------------------------------------------------- public metrics
def sentiment_metrics(preds: Any, labels: Any) -> dict[str, float]:
  """MOSI/MOSEI regression metrics, following MMSA ``__eval_mosi_regression``.

  Returns fractions in [0, 1] (MMSA multiplies nothing either; papers print percent):

  * ``Has0_acc_2`` / ``Has0_F1`` -- accuracy / weighted F1 of ``pred >= 0`` vs
    ``label >= 0`` over all samples (zero labels count as positive).
  * ``Non0_acc_2`` / ``Non0_F1`` -- accuracy / weighted F1 of ``pred > 0`` vs
    ``label > 0`` over the samples whose label is not exactly 0. If every label is
    0 these are ``nan``.
  * ``Acc7`` -- accuracy of ``np.round(np.clip(x, -3, 3))`` classes (7 classes).
  * ``Acc5`` -- accuracy of ``np.round(np.clip(x, -2, 2))`` classes (5 classes).
    Like MMSA this uses ``np.round``, i.e. round-half-to-even ("banker's rounding"):
    0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -1.5 -> -2.
  * ``MAE`` -- mean absolute error.
  * ``Corr`` -- Pearson correlation; defined as 0.0 when preds or labels have zero
    variance (MMSA's ``np.corrcoef`` would give nan).

  Inputs must be numeric, 1-D after ``squeeze``, the same length, non-empty and finite;
  otherwise a one-line ``ValueError`` names the problem.
  """
  p, y = _pair(preds, labels)

  has0_p, has0_y = p >= 0, y >= 0
  nz = y != 0
  non0_p, non0_y = p[nz] > 0, y[nz] > 0

  if nz.any():
    non0_acc = _accuracy(non0_p, non0_y)
    non0_f1 = weighted_f1(non0_y, non0_p)
  else:
    non0_acc = non0_f1 = float("nan")

  a7p, a7y = np.round(np.clip(p, -3.0, 3.0)), np.round(np.clip(y, -3.0, 3.0))
  a5p, a5y = np.round(np.clip(p, -2.0, 2.0)), np.round(np.clip(y, -2.0, 2.0))

  return {
    "Has0_acc_2": _accuracy(has0_p, has0_y),
    "Has0_F1": weighted_f1(has0_y, has0_p),
    "Non0_acc_2": non0_acc,
    "Non0_F1": non0_f1,
    "Acc5": _accuracy(a5p, a5y),
    "Acc7": _accuracy(a7p, a7y),
    "MAE": float(np.mean(np.abs(p - y))),
    "Corr": _pearson(p, y),
  }


def _undefined(what: str) -> None:
  """Report an undefined metric: the value becomes ``None`` (JSON ``null``), never nan, with this warning."""
  warnings.warn(f"jmoe.metrics: {what}; reported as None", RuntimeWarning, stacklevel=3)


def high_low(ratings: Any, threshold: float, *, equal_is_high: bool = False) -> np.ndarray:
  """Binary high/low labels from ratings: ``1`` (high) where ``rating > threshold``, else ``0`` (low).

  ``ratings`` any shape (e.g. ``[B]`` or ``[B, K]``) -> int64 of the same shape. A rating *equal* to the threshold is
  **low** by default (DEAP: threshold 5 on the 1-9 scale, "high" = rating > 5; DREAMER: threshold 3 on the integer
  1-5 scale, so 3 is low). ``equal_is_high=True`` gives ``rating >= threshold``, the rule of TorchEEG's
  ``transforms.Binary`` (``int(y >= threshold)``); on DREAMER's integer ratings the two rules differ for every 3,
  so name the rule with the results.
  """
  try:
    r = np.asarray(ratings, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"ratings must be numeric array-like ({e})") from None
  if not np.all(np.isfinite(r)):
    raise ValueError("ratings contain non-finite values (nan or inf)")
  high = r >= threshold if equal_is_high else r > threshold
  return high.astype(np.int64)


def classification_metrics(
  preds_or_logits: Any,
  labels: Any,
  num_classes: int | None = None,
  *,
  class_names: Sequence[str] | None = None,
  mask: Any = None,
) -> dict[str, Any]:
  """IEMOCAP-style classification metrics (host side, float64).

  Argument order is (predictions, labels), like every metric in this module (``sentiment_metrics``,
  ``regression_metrics``); pass them by keyword when in doubt.

  * ``preds_or_logits``: integer class predictions ``[B]`` or scores/logits ``[B, C]`` (argmax is taken).
  * ``labels``: integer classes ``[B]`` in ``[0, C)``.
  * ``num_classes`` (C) or ``class_names`` (C names; C = its length; both may be given if they agree).
  * ``mask``: optional ``[B]`` bool / 0-1 array; rows where it is false (padding, missing labels) are dropped.

  Returns:

  * ``WA`` -- weighted accuracy = overall accuracy.
  * ``UA`` -- unweighted accuracy = mean per-class recall over the classes **present in** ``labels`` (classes
    absent from ``labels`` are skipped, not counted as 0; equals sklearn ``balanced_accuracy_score``). A warning
    names the absent classes.
  * ``weighted_F1`` / ``macro_F1`` -- sklearn ``f1_score`` with ``average='weighted'`` / ``'macro'`` and default
    ``labels``, i.e. over the union of classes present in labels or predictions; a class with no predicted
    positives has F1 0 (sklearn's ``zero_division`` result).
  * ``recall`` -- ``{class name (or str(index)): recall}``; ``None`` for a class absent from ``labels``.
  * ``confusion`` -- C x C list of ints, ``confusion[true][pred]`` (rows = true class, as sklearn).
  """
  if class_names is not None:
    class_names = [str(c) for c in class_names]
    if num_classes is not None and num_classes != len(class_names):
      raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
    num_classes = len(class_names)
  if num_classes is None:
    raise ValueError("classification_metrics needs num_classes or class_names")
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  names = class_names if class_names is not None else [str(c) for c in range(num_classes)]
  try:
    x = np.asarray(preds_or_logits, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"preds_or_logits must be numeric array-like ({e})") from None
  if x.ndim == 2 and x.shape[1] != 1 and x.shape[1] != num_classes:
    raise ValueError(f"logits have {x.shape[1]} columns but num_classes={num_classes}")
  if x.ndim == 2 and x.shape[1] == num_classes and num_classes > 1:
    if x.shape[0] == 0:
      raise ValueError("preds_or_logits is empty")
    if not np.all(np.isfinite(x)):
      raise ValueError("preds_or_logits contains non-finite values (nan or inf)")
    pred = np.argmax(x, axis=1).astype(np.float64)
  else:
    pred = _as_1d(x, "preds_or_logits")
  y = _as_1d(labels, "labels")
  if pred.shape[0] != y.shape[0]:
    raise ValueError(f"preds and labels differ in length: {pred.shape[0]} vs {y.shape[0]}")
  if mask is not None:
    m = np.asarray(mask).reshape(-1)
    if m.shape[0] != y.shape[0]:
      raise ValueError(f"mask has {m.shape[0]} entries for {y.shape[0]} labels")
    m = m.astype(bool)
    if not m.any():
      raise ValueError("mask excludes every sample")
    pred, y = pred[m], y[m]
  for name, arr in (("preds", pred), ("labels", y)):
    if np.any(arr != np.round(arr)) or np.any(arr < 0) or np.any(arr >= num_classes):
      raise ValueError(f"{name} must be integer classes in [0, {num_classes})")
  pred = pred.astype(np.int64)
  y = y.astype(np.int64)

  confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(confusion, (y, pred), 1)
  support = confusion.sum(axis=1)
  recall: dict[str, float | None] = {}
  for c in range(num_classes):
    recall[names[c]] = float(confusion[c, c] / support[c]) if support[c] else None
  absent = [names[c] for c in range(num_classes) if not support[c]]
  if absent:
    _undefined(f"classes {absent} are absent from the labels: their recall is undefined and UA averages the other")
  present = [r for r in recall.values() if r is not None]
  return {
    "WA": _accuracy(pred, y),
    "UA": float(np.mean(present)),
    "weighted_F1": weighted_f1(y, pred),
    "macro_F1": macro_f1(y, pred),
    "recall": recall,
    "confusion": confusion.tolist(),
  }


def _as_2d(x: Any, name: str) -> np.ndarray:
  """float64 [B, K] from [B] or [B, K]; ValueError on anything else (empty, non-finite, other ranks)."""
  try:
    arr = np.asarray(x, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be numeric array-like ({e})") from None
  if arr.ndim == 1:
    arr = arr[:, None]
  if arr.ndim != 2:
    raise ValueError(f"{name} must be [B] or [B, K], got shape {arr.shape}")
  if arr.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} contains non-finite values (nan or inf)")
  return arr


def _ccc_pcc_mae(p: np.ndarray, y: np.ndarray, dim: str) -> dict[str, float | None]:
  mp, my = p.mean(), y.mean()
  vp = float(np.mean((p - mp) ** 2))
  vy = float(np.mean((y - my) ** 2))
  cov = float(np.mean((p - mp) * (y - my)))
  denom = vp + vy + float(mp - my) ** 2
  if denom > 0:
    ccc = 2.0 * cov / denom
  else:
    ccc = None
    _undefined(f"CCC of {dim}: predictions and targets are the same constant (0/0)")
  if vp > 0 and vy > 0:
    pcc = float(min(1.0, max(-1.0, cov / math.sqrt(vp * vy))))
  else:
    pcc = None
    side = "predictions" if vp == 0 else "targets"
    _undefined(f"PCC of {dim}: {side} have zero variance")
  return {"CCC": ccc, "PCC": pcc, "MAE": float(np.mean(np.abs(p - y)))}


def regression_metrics(preds: Any, labels: Any, names: Sequence[str] | None = None) -> dict[str, float | None]:
  """Per-dimension regression metrics (DEAP / DREAMER valence, arousal, ...), float64.

  ``preds, labels``: ``[B]`` (one dimension) or ``[B, K]``; ``names``: K dimension names.

  * ``CCC`` -- Lin's concordance correlation coefficient with population (ddof=0) moments:
    ``2 cov / (var_p + var_y + (mean_p - mean_y)^2)``.
  * ``PCC`` -- Pearson correlation.
  * ``MAE`` -- mean absolute error.

  With ``[B]`` inputs and no ``names`` the result is ``{"CCC", "PCC", "MAE"}``. Otherwise (``[B, K]`` or
  ``names`` given) it is ``{"CCC_<name>", "PCC_<name>", "MAE_<name>"}`` per dimension (names default to
  ``"0" .. "K-1"``) plus ``"CCC_mean"``, ``"PCC_mean"``, ``"MAE_mean"`` (unweighted means over the K dimensions).

  Undefined values are ``None`` with a ``RuntimeWarning``, never nan: PCC when predictions or targets have zero
  variance, CCC when both are the same constant (0/0), and a ``*_mean`` whose dimensions include a ``None``.
  (``sentiment_metrics`` keeps MMSA's conventions instead: ``Corr`` 0.0 and ``Non0_*`` nan.)
  """
  p = _as_2d(preds, "preds")
  y = _as_2d(labels, "labels")
  if p.shape[0] != y.shape[0]:
    raise ValueError(f"preds and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
  if p.shape != y.shape:
    raise ValueError(f"preds and labels differ in shape: {p.shape} vs {y.shape}")
  k = p.shape[1]
  per_dim = names is not None or np.ndim(preds) == 2
  if names is None:
    names = [str(j) for j in range(k)]
  names = [str(n) for n in names]
  if len(names) != k:
    raise ValueError(f"{len(names)} names for {k} dimensions")
  if len(set(names)) != k:
    raise ValueError(f"names must be distinct, got {names}")
  dims = [_ccc_pcc_mae(p[:, j], y[:, j], names[j] if per_dim else "the predictions") for j in range(k)]
  if not per_dim:
    return dims[0]
  out: dict[str, float | None] = {}
  for metric in ("CCC", "PCC", "MAE"):
    vals = [d[metric] for d in dims]
    for n, v in zip(names, vals):
      out[f"{metric}_{n}"] = v
    if any(v is None for v in vals):
      out[f"{metric}_mean"] = None
      _undefined(f"{metric}_mean: {metric} is undefined for some dimension")
    else:
      out[f"{metric}_mean"] = float(np.mean(vals))
  return out


# --------------------------------------------------------------------------- reporting
def mean_std(values: Iterable[float]) -> tuple[float, float]:
  """Mean and *sample* standard deviation (ddof=1) of e.g. per-seed results.

  The std is 0.0 when there is a single value; an empty input is a ValueError.
  """
  v = np.asarray(list(values), dtype=np.float64).reshape(-1)
  if v.size == 0:
    raise ValueError("mean_std needs at least one value")
  mean = float(v.mean())
  std = float(v.std(ddof=1)) if v.size > 1 else 0.0
  return mean, std


def _fmt_cell(v: Any, float_fmt: str) -> str:
  if v is None:
    return ""
  if isinstance(v, tuple) and len(v) == 2 and all(isinstance(t, (float, np.floating)) for t in v):
    return f"{float_fmt.format(float(v[0]))} ± {float_fmt.format(float(v[1]))}"
  if isinstance(v, (float, np.floating)):
    return float_fmt.format(float(v))
  return str(v).replace("|", "\\|").replace("\n", " ")


def format_table(
  rows: Sequence[dict],
  columns: Sequence[str] | None = None,
  title: str | None = None,
  float_fmt: str = "{:.4f}",
) -> str:
  """Markdown table of ``rows`` (dicts) with the given ``columns`` (default: keys of the
  first row, in order). Floats use ``float_fmt``; a ``(mean, std)`` float pair prints as
  ``mean ± std``; missing keys print empty. ``title`` (if given) becomes a ``###`` heading.
  """
  rows = list(rows)
  if columns is None:
    columns = list(rows[0].keys()) if rows else []
  columns = list(columns)
  lines = []
  if title:
    lines += [f"### {title}", ""]
  lines.append("| " + " | ".join(str(c) for c in columns) + " |")
  lines.append("|" + "|".join("---" for _ in columns) + "|")
  for r in rows:
    lines.append("| " + " | ".join(_fmt_cell(r.get(c), float_fmt) for c in columns) + " |")
  return "\n".join(lines) + "\n"
