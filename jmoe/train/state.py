"""The train state: parameters, optimizer state and the run's hyperparameters, all arrays.

Hyperparameters that a population may vary are *in the state*, not Python constants closed over by the step:

* ``state.hparams``: the objective's weights, ``{'task/<name>': w, 'loss/<aux name>': w}`` (float32 scalars);
* the learning rate (and weight decay) inside ``opt_state`` via ``optax.inject_hyperparams``
  (:func:`with_overrides` sets them, and the objective weights, per member);
* ``lr_scale``, the learning-rate schedule's factor (AdamW steps with ``learning_rate * lr_scale``): the training
  loop sets it once per epoch (:func:`schedule_factor`, :func:`with_lr_scale`), so a schedule never overwrites a
  population's learning-rate gene.

So ``vmap`` over stacked states trains members with different weights and learning rates in one program.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax TrainState plus ``hparams`` (objective weights, float32 scalars)."""

  hparams: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


def make_optimizer(lr: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW, with ``learning_rate``, ``weight_decay`` and ``lr_scale`` (1 until a schedule
  sets it) injected into the state."""
  if not lr > 0:
    raise ValueError(f"optim.lr must be > 0, got {lr}")
  if weight_decay < 0 or grad_clip <= 0:
    raise ValueError(f"optim.weight_decay must be >= 0 and optim.grad_clip > 0, got {weight_decay}, {grad_clip}")

  @optax.inject_hyperparams
  def opt(learning_rate, weight_decay, lr_scale):
    return optax.chain(
      optax.clip_by_global_norm(grad_clip), optax.adamw(learning_rate * lr_scale, weight_decay=weight_decay)
    )

  return opt(learning_rate=lr, weight_decay=weight_decay, lr_scale=1.0)


SCHEDULES = ("constant", "cosine")


def schedule_factor(schedule: str, epoch: int, epochs: int) -> float:
  """The learning-rate factor of ``epoch`` (0-based) out of ``epochs``.

  ``constant``: 1. ``cosine``: 0.5 * (1 + cos(pi * epoch / epochs)), annealing from 1 towards 0 once over the run,
  stepped per epoch (PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=0)`` stepped after every epoch).
  """
  if schedule == "constant":
    return 1.0
  if schedule == "cosine":
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
  raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {schedule!r}")


def with_lr_scale(state: TrainState, factor: float) -> TrainState:
  """``state`` (host arrays, members stacked or not) with every ``lr_scale`` set to ``factor``."""
  old = state.opt_state.hyperparams["lr_scale"]
  hp = dict(state.opt_state.hyperparams, lr_scale=np.full(np.shape(old), factor, np.float32))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


OPTIMIZER_HPARAMS = ("learning_rate", "weight_decay")


def with_overrides(state: TrainState, overrides: Mapping[str, float]) -> TrainState:
  """``state`` with hyperparameters that live in it replaced: ``learning_rate`` / ``weight_decay`` (the injected
  optimizer hyperparameters) and ``task/<name>`` / ``loss/<name>`` (objective weights). One-line ValueError for any
  other key (it does not live in the state: it changes the compiled program)."""
  if not overrides:
    return state
  opt = dict(state.opt_state.hyperparams)
  hp = dict(state.hparams)
  for key, value in overrides.items():
    if key in OPTIMIZER_HPARAMS:
      opt[key] = jnp.asarray(value, jnp.float32)
    elif key in hp:
      hp[key] = jnp.asarray(value, jnp.float32)
    else:
      raise ValueError(f"{key!r} is not a hyperparameter of the state ({sorted(OPTIMIZER_HPARAMS)} or {sorted(hp)})")
  return state.replace(opt_state=state.opt_state._replace(hyperparams=opt), hparams=hp)


def default_hparams(tasks, loss_weights: Mapping[str, float]) -> dict[str, jax.Array]:
  """``{'task/<name>': task.weight, 'loss/<name>': loss_weights[name]}`` as float32 scalars."""
  hp = {f"task/{t.name}": jnp.float32(t.weight) for t in tasks}
  for name, w in loss_weights.items():
    if w < 0:
      raise ValueError(f"loss weight {name!r} must be >= 0, got {w}")
    hp[f"loss/{name}"] = jnp.float32(w)
  return hp


def create_state(
  model, tx: optax.GradientTransformation, sample, rng, hparams: Mapping[str, Any], init_fn=None
) -> TrainState:
  """Initialise the model on one sample batch (leaves [b, ...]) and build the state (host arrays).

  ``init_fn``: a compiled ``model.init`` to reuse (``jax.jit(model.init)`` compiles anew on every call).
  """
  params = (init_fn or jax.jit(model.init))(rng, sample)["params"]
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx, hparams=dict(hparams))
  return jax.device_get(state)
