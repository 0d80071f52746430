"""Pure train/eval steps for the sentiment models: one per-device step, compiled under ``jax.pmap`` here and under
``jax.jit`` + ``jax.shard_map`` over a ``Mesh`` in :mod:`jmoe.train.parallel` (the multi-host path).

``train_step(state, batch, rng) -> (state, metrics)`` (:func:`train_step_fn`) runs on one device's shard of the
global batch. Its loss (:func:`_loss_terms`, shared by both paths) divides per-device *weighted sums* by the mean
per-device weight total (``lax.pmean`` of the padding mask's sums), so that ``lax.pmean`` over devices of the
per-device losses is exactly the loss of the whole unpadded global batch (weighted sums / global weight total), and
``lax.pmean`` of the per-device gradients is its gradient — no sample dropped or counted twice, whatever padding.
Batch statistics (the Switch aux loss) are computed per device and averaged (as in Switch/GShard, one routing group
per device), so that term depends on how the batch is split (it is the only one that does).
RNG: the step's key is ``fold_in(fold_in(rng, step), device index)`` — independent streams per device.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from flax.training import train_state

AXIS = "batch"


class TrainState(train_state.TrainState):
  pass


def total_loss(terms, loss_cfg) -> jax.Array:
  """EUAR eq. 12: task + alpha*KL + beta*aux + lambda*U (KL / U switched off by ``use_kl`` / ``use_uloss``)."""
  return (
    terms["task"]
    + loss_cfg["alpha"] * terms["kl"] * float(loss_cfg["use_kl"])
    + loss_cfg["beta"] * terms["aux"]
    + loss_cfg["lam"] * terms["uloss"] * float(loss_cfg["use_uloss"])
  )


def _loss_terms(model, params, batch, rng, train: bool, loss_cfg, axis_name: str = AXIS):
  """Per-device loss whose ``pmean`` over ``axis_name`` is the loss of the global batch -> (loss, (terms, stats, pred)).

  batch: one device's shard, leaves [B/P, ...] with ``weight`` [B/P] (0 for padding). Must run where
  ``axis_name`` is bound (``pmap``, ``shard_map``, or ``vmap(axis_name=...)``).
  """
  rngs = None
  if train:
    noise, dropout = jax.random.split(rng)
    rngs = {"noise": noise, "dropout": dropout}
  pred, aux = model.apply({"params": params}, batch, deterministic=not train, rngs=rngs)
  w = batch["weight"].astype(jnp.float32)
  mean_total = jax.lax.pmean(jnp.sum(w), axis_name)  # global weight total / P
  terms = {
    "task": jnp.sum(w * jnp.square(pred - batch["label"])) / mean_total,
    "kl": jnp.sum(w * aux["kl"]) / mean_total,
    "uloss": jnp.sum(w * aux["uloss"]) / mean_total,
    "aux": aux["aux"],
  }
  loss = total_loss(terms, loss_cfg)
  stats = {k: v for k, v in aux.items() if k.startswith(("load_", "entropy_", "dropped_"))}
  return loss, (terms, stats, pred)


def train_step_fn(model, loss_cfg: dict[str, Any], axis_name: str = AXIS):
  """The per-device train step ``(state, batch shard, rng) -> (state, metrics)``; gradients ``lax.pmean``-ed.

  Metrics are device-invariant (pmean-ed) scalars: loss terms, ``loss``, and per-modality router statistics.
  """
  loss_cfg = dict(loss_cfg)

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(axis_name))
    grad_fn = jax.grad(lambda p: _loss_terms(model, p, batch, rng, True, loss_cfg, axis_name), has_aux=True)
    grads, (terms, stats, _) = grad_fn(state.params)
    grads = jax.lax.pmean(grads, axis_name)
    terms = jax.lax.pmean(terms, axis_name)
    terms["loss"] = total_loss(terms, loss_cfg)
    terms.update(jax.lax.pmean(stats, axis_name))
    return state.apply_gradients(grads=grads), terms

  return train_step


def eval_step_fn(model):
  """``(params, batch shard) -> pred [B/P]`` (deterministic: z = mu, no dropout)."""

  def eval_step(params, batch):
    pred, _ = model.apply({"params": params}, batch, deterministic=True)
    return pred

  return eval_step


def make_steps(model, loss_cfg: dict[str, Any], tx: optax.GradientTransformation, devices=None):
  """Returns (p_train_step, p_eval_step), both ``jax.pmap``-ed over ``AXIS`` (single process, local devices).

  p_train_step(state [P, ...], batch [P, B/P, ...], rng) -> (state, metrics [P]);
  p_eval_step(params, batch) -> pred [P, B/P] (deterministic: z = mu, no dropout).
  ``tx`` is carried by the state; the argument is kept for the signature shared with :mod:`jmoe.train.parallel`.
  """
  del tx
  return (
    jax.pmap(
      train_step_fn(model, loss_cfg), axis_name=AXIS, in_axes=(0, 0, None), devices=devices, donate_argnums=(0,)
    ),
    jax.pmap(eval_step_fn(model), axis_name=AXIS, devices=devices),
  )


def make_optimizer(lr: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(lr, weight_decay=weight_decay))


def replicate(tree, devices):
  """Copy a host pytree to every device: leaves [P, ...] sharded over a 1-D mesh of ``devices`` (pmap layout)."""
  sharding = NamedSharding(Mesh(np.array(devices), ("d",)), PartitionSpec("d"))
  return jax.tree.map(
    lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (len(devices),) + np.shape(x)), sharding), tree
  )


def unreplicate(tree):
  """First device's copy of a replicated pytree, as host numpy arrays (no device computation)."""
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x))[0], tree)
