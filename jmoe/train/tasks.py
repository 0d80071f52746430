"""Tasks: what a run learns and how it is judged. A task names an output head and its kind, loss, metrics and
selection rule; the one train step and the one evaluator of the platform read nothing else.

Kinds (``Task.kind``):

* ``sentiment``: regression of a [B] score (MOSI/MOSEI in [-3, 3]); loss ``mse`` | ``l1``; MMSA metrics
  (Has0/Non0 Acc2 and F1, Acc5, Acc7, MAE, Corr); selection ``MAE`` (min).
* ``regression``: [B] or [B, K] ratings (valence/arousal/dominance/liking); loss ``mse`` | ``l1`` | ``ccc``
  (1 - CCC from batch moments, exact under data parallelism); CCC, PCC, MAE per dimension and their means;
  selection ``CCC_mean`` (max).
* ``classification``: int [B] classes, logits [B, C]; loss ``xent``; WA, UA, weighted/macro F1, confusion matrix;
  selection ``UA`` (max).
* ``high_low``: binary high/low per dimension of a rating head (``label`` names it, ``threshold`` splits it:
  rating > threshold is high), logits [B, K, 2]; loss ``xent`` averaged over K; ACC and F1 per dimension and
  their means; selection ``ACC_mean`` (max).
* ``sentiment_class``: a classification view of a sentiment score head (``label`` names the [B] score head,
  ``num_classes`` 2 or 7): 7 classes = round(clip(score, -3, 3)) + 3 (the MMSA Acc7 binning), 2 classes =
  score >= 0 (the Has0 convention: negative vs non-negative); logits [B, C]; loss ``xent``; WA, UA, weighted/macro
  F1, confusion matrix; selection ``UA`` (max). (Added for HAEMSA's MOSI 2- and 7-class tasks.)

Label masks: a sample without a label for a task's head (``label_mask/<head>`` False) enters neither its loss nor
its metrics. A task's weight in the objective lives in the train state (``hparams['task/<name>']``), so members
of a population can differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jmoe import metrics as metrics_lib
from jmoe import objectives
from jmoe.data import format as fmt

KINDS = ("sentiment", "regression", "classification", "high_low", "sentiment_class")
LOSSES = {
  "sentiment": ("mse", "l1"),
  "regression": ("mse", "l1", "ccc"),
  "classification": ("xent",),
  "high_low": ("xent",),
  "sentiment_class": ("xent",),
}
SELECT = {"sentiment": ("MAE", "min"), "regression": ("CCC_mean", "max"), "classification": ("UA", "max")}
SELECT["high_low"] = ("ACC_mean", "max")
SELECT["sentiment_class"] = ("UA", "max")
SENTIMENT_CLASSES = {2: ("negative", "non-negative"), 7: ("-3", "-2", "-1", "0", "1", "2", "3")}
LOWER_IS_BETTER = ("MAE", "loss")


@dataclasses.dataclass(frozen=True)
class Task:
  """One task (see the module docstring).

  Attributes:
    name: the task's name (results key; its loss term is ``task/<name>``).
    kind: one of :data:`KINDS`.
    head: the model output head it reads.
    label: the dataset label head it is scored against (default: ``head``).
    loss: the objective (one of ``LOSSES[kind]``).
    weight: default weight in the objective (``hparams['task/<name>']``).
    names: dimension names ([B, K] regression / high_low); classes: class names (classification).
    threshold: the high/low split of a ``high_low`` task.
    select: the validation metric that picks the checkpoint; mode ``'min'`` or ``'max'``.
  """

  name: str
  kind: str
  head: str
  label: str
  loss: str
  weight: float = 1.0
  names: tuple[str, ...] | None = None
  classes: tuple[str, ...] | None = None
  threshold: float | None = None
  select: str = ""
  mode: str = "max"

  @property
  def num_outputs(self) -> tuple[int, ...]:
    """The trailing shape of the model's head: () score, (K,) ratings, (C,) logits, (K, 2) high/low logits."""
    if self.kind in ("classification", "sentiment_class"):
      return (len(self.classes),)
    if self.kind == "high_low":
      return (len(self.names or ("0",)), 2)
    if self.kind == "regression" and self.names:
      return (len(self.names),)
    return ()

  def better(self, a: float, b: float | None) -> bool:
    """Is validation value ``a`` better than ``b`` (None = nothing yet)?"""
    return b is None or (a < b if self.mode == "min" else a > b)


def make_task(name: str, cfg: Mapping[str, Any], specs: Mapping[str, fmt.LabelSpec]) -> Task:
  """A Task from its config entry (``kind``, ``head``, optional ``label``, ``loss``, ``weight``, ``threshold``,
  ``select``) and the dataset's label specs; one-line ValueError for anything inconsistent."""
  cfg = dict(cfg)
  kind = cfg.get("kind", "")
  if kind not in KINDS:
    raise ValueError(f"task {name!r}: unknown kind {kind!r}; choose one of {KINDS}")
  head = cfg.get("head") or name
  label = cfg.get("label") or head
  if label not in specs:
    raise ValueError(f"task {name!r}: the dataset has no label head {label!r} (it has {sorted(specs)})")
  spec = specs[label]
  loss = cfg.get("loss") or LOSSES[kind][0]
  if loss not in LOSSES[kind]:
    raise ValueError(f"task {name!r}: loss {loss!r} is not one of {LOSSES[kind]} for kind {kind!r}")
  want = "classification" if kind == "classification" else "regression"
  if spec.kind != want:
    raise ValueError(f"task {name!r} ({kind}) needs a {want} label head, but {label!r} is {spec.kind}")
  classes = spec.classes
  if kind == "sentiment_class":
    num_classes = cfg.get("num_classes")
    if num_classes not in SENTIMENT_CLASSES:
      raise ValueError(f"task {name!r}: a sentiment_class task needs num_classes 2 or 7, got {num_classes!r}")
    classes = SENTIMENT_CLASSES[num_classes]
  threshold = cfg.get("threshold")
  if kind == "high_low" and threshold is None:
    raise ValueError(f"task {name!r}: a high_low task needs a threshold (e.g. 5 on a 1-9 scale)")
  select, mode = cfg.get("select") or SELECT[kind][0], SELECT[kind][1]
  if cfg.get("select"):
    mode = "min" if select.split("_")[0] in LOWER_IS_BETTER else "max"
  check_select(Task(name, kind, head, label, loss, names=spec.names, classes=classes), select)
  weight = float(cfg.get("weight", 1.0))
  if weight < 0:
    raise ValueError(f"task {name!r}: weight must be >= 0, got {weight}")
  return Task(
    name=name,
    kind=kind,
    head=head,
    label=label,
    loss=loss,
    weight=weight,
    names=spec.names,
    classes=classes,
    threshold=None if threshold is None else float(threshold),
    select=select,
    mode=mode,
  )


def from_config(tasks_cfg: Mapping[str, Any], specs: Mapping[str, fmt.LabelSpec]) -> tuple[Task, ...]:
  """All tasks of ``config.tasks`` ({name: entry}), checked against the dataset's label specs."""
  if not tasks_cfg:
    raise ValueError("config.tasks is empty: name at least one task")
  return tuple(make_task(name, entry, specs) for name, entry in tasks_cfg.items())


# --------------------------------------------------------------------------- training objective (traced)
def _labels(task: Task, batch) -> jax.Array:
  y = batch[f"label/{task.label}"]
  if task.kind == "high_low":
    return (y > task.threshold).astype(jnp.int32)
  if task.kind == "sentiment_class":
    return sentiment_classes(y, len(task.classes))
  return y


def sentiment_classes(y, num_classes: int):
  """Sentiment scores [B] -> int32 classes: 7 = round(clip(y, -3, 3)) + 3; 2 = (y >= 0). numpy or jax in/out."""
  xp = jnp if isinstance(y, jax.Array) else np
  if num_classes == 7:
    return (xp.round(xp.clip(y, -3.0, 3.0)) + 3).astype(xp.int32)
  return (y >= 0).astype(xp.int32)


def task_loss(task: Task, outputs, batch, axis_name: str | None) -> jax.Array:
  """The task's loss on one device's shard, such that its mean over devices is the global-batch loss.

  Per-sample losses: sum_b w_b l_b / mean_P(sum w) (padding and label-masked rows have w_b = 0). Batch-statistic
  losses (CCC): the global value from psum-ed moments (equal on every device, so the mean is itself).
  """
  if task.head not in outputs:
    raise ValueError(f"task {task.name!r}: the model has no output head {task.head!r} (it has {sorted(outputs)})")
  pred = outputs[task.head]
  y = _labels(task, batch)
  w = batch["weight"].astype(jnp.float32)
  mask = batch.get(f"label_mask/{task.label}")
  if mask is not None:
    w = w * mask.astype(jnp.float32)
  if task.loss == "ccc":
    return objectives.ccc_loss(pred, y, w, axis_name)
  if task.loss == "xent":
    if task.kind == "high_low":  # [B, K, 2] logits, [B, K] labels: mean over K
      per = jnp.mean(objectives.softmax_xent(pred.reshape(-1, 2), y.reshape(-1)).reshape(y.shape), axis=-1)
    else:
      per = objectives.softmax_xent(pred, y)
  elif task.loss == "mse":
    per = objectives.mse(pred, y)
  else:
    per = objectives.l1(pred, y)
  total = jnp.sum(w)
  mean_total = total if axis_name is None else jax.lax.pmean(total, axis_name)
  return jnp.sum(w * per) / jnp.maximum(mean_total, 1e-12)


# --------------------------------------------------------------------------- evaluation (host, numpy)
def evaluate(task: Task, pred: np.ndarray, split: fmt.Split) -> dict[str, Any]:
  """Metrics of ``pred`` (the head's outputs [B, ...] for every sample of ``split``) on the labelled samples."""
  y = np.asarray(split.labels[task.label])
  keep = split.label_mask(task.label)
  pred, y = np.asarray(pred)[keep], y[keep]
  if len(y) == 0:
    raise ValueError(f"task {task.name!r}: no sample of this split has a {task.label!r} label")
  if task.kind == "sentiment":
    return metrics_lib.sentiment_metrics(pred, y)
  if task.kind == "regression":
    return metrics_lib.regression_metrics(pred, y, task.names)
  if task.kind == "classification":
    return metrics_lib.classification_metrics(pred, y, class_names=task.classes)
  if task.kind == "sentiment_class":
    return metrics_lib.classification_metrics(pred, sentiment_classes(y, len(task.classes)), class_names=task.classes)
  labels = metrics_lib.high_low(y, task.threshold)  # [B, K]
  names = task.names or ("0",)
  out: dict[str, Any] = {}
  for j, n in enumerate(names):
    m = metrics_lib.classification_metrics(pred[:, j], labels[:, j], 2)
    out[f"ACC_{n}"], out[f"F1_{n}"] = m["WA"], m["weighted_F1"]
  out["ACC_mean"] = float(np.mean([out[f"ACC_{n}"] for n in names]))
  out["F1_mean"] = float(np.mean([out[f"F1_{n}"] for n in names]))
  return out


def headline_metrics(task: Task) -> tuple[str, ...]:
  """The metric columns of the task's results table, the variant named (Non0/Has0 Acc2, weighted F1, ...)."""
  if task.kind == "sentiment":
    return ("Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc5", "Acc7", "MAE", "Corr")
  if task.kind == "regression":
    names = task.names or ()
    per = [f"CCC_{n}" for n in names]
    return (*per, "CCC_mean", "PCC_mean", "MAE_mean") if names else ("CCC", "PCC", "MAE")
  if task.kind in ("classification", "sentiment_class"):
    return ("UA", "WA", "weighted_F1", "macro_F1")
  return (*(f"ACC_{n}" for n in task.names or ("0",)), "ACC_mean", "F1_mean")


def metric_names(task: Task) -> tuple[str, ...]:
  """Every scalar metric :func:`evaluate` reports for ``task`` (what ``select`` may name)."""
  if task.kind in ("classification", "sentiment_class"):
    return ("UA", "WA", "weighted_F1", "macro_F1")
  if task.kind == "high_low":
    names = task.names or ("0",)
    return (*(f"ACC_{n}" for n in names), *(f"F1_{n}" for n in names), "ACC_mean", "F1_mean")
  if task.kind == "regression" and task.names:
    return tuple(f"{m}_{n}" for m in ("CCC", "PCC", "MAE") for n in (*task.names, "mean"))
  return headline_metrics(task)


def check_select(task: Task, metric: str) -> None:
  if metric not in metric_names(task):
    raise ValueError(f"task {task.name!r}: select metric {metric!r} is not one of {list(metric_names(task))}")


def selection_value(task: Task, metrics: Mapping[str, Any]) -> float | None:
  v = metrics.get(task.select)
  if task.select not in metrics:
    raise ValueError(f"task {task.name!r}: select metric {task.select!r} is not one of {sorted(metrics)}")
  return None if v is None or not np.isfinite(v) else float(v)
