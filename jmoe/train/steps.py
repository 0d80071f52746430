"""The one train step and the one eval step of the platform (every model, every task), as pure per-device functions.

Model contract: ``model.apply({'params': p}, batch, deterministic=..., rngs=...) -> (outputs, aux)`` with
``outputs = {head: [B, ...]}`` and ``aux`` holding

* ``'losses'``: ``{name: [B] per-sample | scalar}``; a scalar is a batch statistic (the Switch loss of one routing
  group per device, or a model-computed exact global value such as NT-Xent over ``psum``-ed statistics);
* ``'per_sample'``: ``{name: [B, ...]}`` evaluation diagnostics (gate weights, routing choices);
* ``'stats'``: ``{name: scalar | [E]}`` training statistics (expert load, entropy, dropped fraction).

``train_step(state, batch shard, rng) -> (state, metrics)`` runs on one device's shard of the global batch. Each
task loss and each per-sample aux loss divides its device's *weighted sum* by the mean per-device weight total
(``lax.pmean`` of the padding mask's sums), so that ``lax.pmean`` over devices of the per-device losses is exactly
the loss of the whole unpadded global batch, and ``lax.pmean`` of the per-device gradients is its gradient -- no
sample dropped or counted twice, whatever the padding. The objective is ``sum_t hparams['task/t'] * task_t +
sum_l hparams['loss/l'] * loss_l`` with the weights read from the state (traced), so a vmapped population can vary
them. RNG: ``fold_in(fold_in(rng, step), device index)`` -- independent streams per device.

Members: :func:`members_train_step` vmaps the step over stacked states (a member axis M: seeds, folds, sweeps, a
HAEMSA population), each member with its own batch, RNG and ``active`` flag (a stopped or diverged member keeps
its state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmoe.train import tasks as tasks_lib
from jmoe.train.state import TrainState

AXIS = "batch"


def model_rngs(rng, train: bool):
  if not train:
    return None
  noise, dropout = jax.random.split(rng)
  return {"noise": noise, "dropout": dropout}


def loss_terms(model, params, batch, rng, train: bool, tasks, axis_name: str = AXIS):
  """Per-device loss terms whose ``pmean`` over ``axis_name`` are the global-batch terms -> (terms, stats, outputs).

  batch: one device's shard, leaves [b, ...], ``weight`` [b] (0 for padding), ``label/<head>`` and optional
  ``label_mask/<head>``. Must run where ``axis_name`` is bound (``pmap``, ``shard_map`` or a named ``vmap``).
  """
  outputs, aux = model.apply({"params": params}, batch, deterministic=not train, rngs=model_rngs(rng, train))
  terms = {f"task/{t.name}": tasks_lib.task_loss(t, outputs, batch, axis_name) for t in tasks}
  w = batch["weight"].astype(jnp.float32)
  mean_total = jax.lax.pmean(jnp.sum(w), axis_name)
  for name, value in aux.get("losses", {}).items():
    value = jnp.asarray(value)
    terms[f"loss/{name}"] = value if value.ndim == 0 else jnp.sum(w * value) / jnp.maximum(mean_total, 1e-12)
  return terms, aux.get("stats", {}), outputs


def objective(terms, hparams) -> jax.Array:
  """sum_k hparams[k] * terms[k] over the terms in order (a term without a weight in hparams is not optimised)."""
  total = None
  for name, value in terms.items():
    if name in hparams:
      part = hparams[name] * value
      total = part if total is None else total + part
  return jnp.zeros((), jnp.float32) if total is None else total


def train_step_fn(model, tasks, axis_name: str = AXIS):
  """The per-device train step ``(state, batch shard, rng) -> (state, metrics)``; gradients ``lax.pmean``-ed.

  Metrics are device-invariant (pmean-ed) scalars: every loss term, ``loss`` (the weighted objective) and the
  model's statistics.
  """
  tasks = tuple(tasks)

  def train_step(state: TrainState, batch, rng):
    rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(axis_name))

    def loss_fn(params):
      terms, stats, _ = loss_terms(model, params, batch, rng, True, tasks, axis_name)
      return objective(terms, state.hparams), (terms, stats)

    grads, (terms, stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, axis_name)
    terms = jax.lax.pmean(terms, axis_name)
    metrics = dict(terms)
    metrics["loss"] = objective(terms, state.hparams)
    metrics.update(jax.lax.pmean(stats, axis_name))
    return state.apply_gradients(grads=grads), metrics

  return train_step


def eval_step_fn(model):
  """``(params, batch shard) -> {head: [b, ...], 'per_sample/<name>': [b, ...]}`` (deterministic)."""

  def eval_step(params, batch):
    outputs, aux = model.apply({"params": params}, batch, deterministic=True)
    out = dict(outputs)
    out.update({f"per_sample/{k}": v for k, v in aux.get("per_sample", {}).items()})
    return out

  return eval_step


def members_train_step(train_step):
  """vmap a per-device train step over a member axis M: ``(states [M], batches [M, b, ...], rngs [M], active [M])``.

  An inactive member (early-stopped, diverged) keeps its state; its metrics are still computed (and ignored).
  """

  def one(state, batch, rng, active):
    new, metrics = train_step(state, batch, rng)
    return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state), metrics

  return jax.vmap(one)


def members_eval_step(eval_step):
  """vmap an eval step over member parameters [M] on one shared batch: ``(params [M], batch) -> outputs [M, b, ...]``."""
  return jax.vmap(eval_step, in_axes=(0, None))
