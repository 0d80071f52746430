"""The train state: parameters, optimizer state and the run's hyperparameters, all arrays.

Hyperparameters that a population may vary are *in the state*, not Python constants closed over by the step:

* ``state.hparams``: the objective's weights, ``{'task/<name>': w, 'loss/<aux name>': w}`` (float32 scalars);
* the learning rate (and weight decay) inside ``opt_state`` via ``optax.inject_hyperparams``
  (:func:`learning_rate` reads it, :func:`with_learning_rate` sets it).

So ``vmap`` over stacked states trains members with different weights and learning rates in one program.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """flax TrainState plus ``hparams`` (objective weights, float32 scalars)."""

  hparams: dict[str, jax.Array] = flax.struct.field(default_factory=dict)


def make_optimizer(lr: float, weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  """Global-norm clipping then AdamW, with ``learning_rate`` and ``weight_decay`` injected into the state."""
  if not lr > 0:
    raise ValueError(f"optim.lr must be > 0, got {lr}")
  if weight_decay < 0 or grad_clip <= 0:
    raise ValueError(f"optim.weight_decay must be >= 0 and optim.grad_clip > 0, got {weight_decay}, {grad_clip}")

  @optax.inject_hyperparams
  def opt(learning_rate, weight_decay):
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(learning_rate, weight_decay=weight_decay))

  return opt(learning_rate=lr, weight_decay=weight_decay)


def learning_rate(state: TrainState) -> jax.Array:
  return state.opt_state.hyperparams["learning_rate"]


def with_learning_rate(state: TrainState, lr) -> TrainState:
  hp = dict(state.opt_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


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
