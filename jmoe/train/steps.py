"""Pure train/eval steps for the sentiment models, compiled once under ``jax.pmap``.

``train_step(state, batch, rng) -> (state, metrics)``: per-device losses are *weighted sums* divided by the
global weight total (``lax.psum`` of the padding mask), and gradients are summed over devices — which equals
the gradient of the loss of the whole unpadded global batch. Batch statistics (the Switch aux loss) are computed
per device and averaged (as in Switch/GShard, one routing group per device).
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
  return (terms["task"] + loss_cfg["alpha"] * terms["kl"] * float(loss_cfg["use_kl"])
          + loss_cfg["beta"] * terms["aux"] + loss_cfg["lam"] * terms["uloss"] * float(loss_cfg["use_uloss"]))


def _loss_terms(model, params, batch, rng, train: bool, loss_cfg):
  rngs = None
  if train:
    noise, dropout = jax.random.split(rng)
    rngs = {"noise": noise, "dropout": dropout}
  pred, aux = model.apply({"params": params}, batch, deterministic=not train, rngs=rngs)
  w = batch["weight"].astype(jnp.float32)
  total = jax.lax.psum(jnp.sum(w), AXIS)
  devices = jax.lax.psum(1, AXIS)
  terms = {
      "task": jnp.sum(w * jnp.square(pred - batch["label"])) / total,
      "kl": jnp.sum(w * aux["kl"]) / total,
      "uloss": jnp.sum(w * aux["uloss"]) / total,
      "aux": aux["aux"] / devices,
  }
  loss = total_loss(terms, loss_cfg)
  stats = {k: v for k, v in aux.items() if k.startswith(("load_", "entropy_", "dropped_"))}
  return loss, (terms, stats, pred)


def make_steps(model, loss_cfg: dict[str, Any], tx: optax.GradientTransformation, devices=None):
  """Returns (p_train_step, p_eval_step), both ``jax.pmap``-ed over ``AXIS``.

  p_eval_step(params, batch) -> pred [P, B/P] (deterministic: z = mu, no dropout).
  """
  loss_cfg = dict(loss_cfg)

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    grad_fn = jax.grad(lambda p: _loss_terms(model, p, batch, rng, True, loss_cfg), has_aux=True)
    grads, (terms, stats, _) = grad_fn(state.params)
    grads = jax.lax.psum(grads, AXIS)
    terms = jax.lax.psum(terms, AXIS)
    terms["loss"] = total_loss(terms, loss_cfg)
    terms.update(jax.lax.pmean(stats, AXIS))
    return state.apply_gradients(grads=grads), terms

  def eval_step(params, batch):
    pred, _ = model.apply({"params": params}, batch, deterministic=True)
    return pred

  return (jax.pmap(train_step, axis_name=AXIS, in_axes=(0, 0, None), devices=devices, donate_argnums=(0,)),
          jax.pmap(eval_step, axis_name=AXIS, devices=devices))


def make_optimizer(lr: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(lr, weight_decay=weight_decay))


def replicate(tree, devices):
  """Copy a host pytree to every device: leaves [P, ...] sharded over a 1-D mesh of ``devices`` (pmap layout)."""
  sharding = NamedSharding(Mesh(np.array(devices), ("d",)), PartitionSpec("d"))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (len(devices),) + np.shape(x)), sharding), tree)


def unreplicate(tree):
  return jax.tree.map(lambda x: x[0], tree)
