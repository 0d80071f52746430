"""Baselines on the platform: a linear model or a one-hidden-layer MLP on the concatenated utterance vectors.

Every modality is pooled to one vector (the masked mean over time for a sequence; a vector as it is), the vectors
are concatenated (early fusion), and one head per task head reads them:

* ``kind='linear'``: one Dense per head -- logistic regression for class logits, linear regression for scores,
  with the L2 penalty of AdamW's decoupled weight decay (``optim.weight_decay``, searchable like every model's);
* ``kind='mlp'``: Dense(width) + GELU + dropout, then the heads;
* ``fusion='late'``: one such predictor per modality and the mean of their outputs (late fusion), instead of one
  predictor on the concatenation.

A score head starts at the middle of its label scale (its label spec's range; 0 without one).

They train with the same loop, losses, folds, selection rule, search and results layout as the paper models, so
a comparison differs only in the model. A closed-form ridge with its penalty chosen on validation is in
``tools/baselines.py`` (regression heads) for reference.

Axis alphabet (:mod:`jmoe`): B batch, T time steps, D feature width, W hidden width.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jmoe.models.layers import in_dtype, masked_mean

KINDS = ("linear", "mlp")
FUSIONS = ("early", "late")


def config_choices() -> dict[str, tuple]:
  return {"model.kind": KINDS, "model.fusion": FUSIONS}


def default_model_config() -> dict[str, Any]:
  """``config.model`` of a baseline run (what the leaderboard sets in place of a paper model's)."""
  return dict(kind="linear", fusion="early", width=64, dropout=0.1, dtype="float32")


class Baseline(nn.Module):
  modalities: tuple[str, ...]
  heads: tuple[tuple[str, tuple[int, ...], float], ...]  # (head, trailing output shape, offset)
  kind: str = "linear"
  fusion: str = "early"
  width: int = 64
  dropout: float = 0.1
  dtype: str = "float32"

  def __call__(self, batch: dict[str, Any], deterministic: bool = True):
    return in_dtype(self, type(self).forward, batch, deterministic)

  def _predict(self, x, name: str, deterministic: bool) -> dict[str, jnp.ndarray]:
    if self.kind == "mlp":
      x = nn.gelu(nn.Dense(self.width, name=f"{name}hidden")(x))
      x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    out = {}
    for head, shape, offset in self.heads:
      size = math.prod(shape) if shape else 1
      y = nn.Dense(size, name=f"{name}head_{head}")(x)
      out[head] = (y[:, 0] if not shape else y.reshape((y.shape[0],) + tuple(shape))) + offset
    return out

  @nn.compact
  def forward(self, batch: dict[str, Any], deterministic: bool = True):
    pooled = {}
    for m in self.modalities:
      x = batch[m]
      pooled[m] = masked_mean(x, batch.get(f"{m}_mask")) if x.ndim == 3 else x
    if self.fusion == "early":
      outputs = self._predict(jnp.concatenate([pooled[m] for m in self.modalities], -1), "", deterministic)
    else:
      per = [self._predict(pooled[m], f"{m}_", deterministic) for m in self.modalities]
      outputs = {head: jnp.mean(jnp.stack([p[head] for p in per]), axis=0) for head, *_ in self.heads}
    return outputs, {"losses": {}, "stats": {}, "per_sample": {}}


def validate_config(cfg) -> None:
  m = cfg.model
  checks = [
    ("kind", m.get("kind") in KINDS, f"choose one of {KINDS}"),
    ("fusion", m.get("fusion", "early") in FUSIONS, f"choose one of {FUSIONS}"),
    ("width", isinstance(m.get("width", 64), int) and m.get("width", 64) >= 1, "use an int >= 1"),
    ("dropout", 0.0 <= m.get("dropout", 0.0) < 1.0, "use 0 <= dropout < 1"),
  ]
  for key, ok, allowed in checks:
    if not ok:
      raise ValueError(f"config.model.{key}={m.get(key)!r} is invalid: {allowed}")


def _offset(ds, task) -> float:
  """A score head starts at the middle of its label scale (as Hi-MoE's heads do): 0 for logits and open scales."""
  if task.kind not in ("regression", "sentiment"):
    return 0.0
  spec = ds.label_specs.get(task.label)
  lo, hi = spec.range if spec is not None and spec.range else (0.0, 0.0)
  return float(lo + hi) / 2.0


def build(cfg, ds, tasks) -> Baseline:
  """The platform's model factory: one head per task head, over every modality of the (narrowed) dataset."""
  m = cfg.model
  heads = tuple(dict.fromkeys((t.head, tuple(t.num_outputs), _offset(ds, t)) for t in tasks))
  return Baseline(
    modalities=tuple(ds.modalities),
    heads=heads,
    kind=m.kind,
    fusion=m.get("fusion", "early"),
    width=m.get("width", 64),
    dropout=m.get("dropout", 0.1),
    dtype=m.get("dtype", "float32"),
  )
