"""Orbax checkpoints with "latest" (resume) and "best" (evaluate) kept apart.

With ``best_fn`` set, an orbax ``CheckpointManager`` keeps the best N checkpoints and may delete the newest, which
breaks resuming; so we use two managers in two directories, each keeping one checkpoint:
``<dir>/latest`` (saved every epoch, with the loop's bookkeeping as JSON) and ``<dir>/best`` (saved when the
validation metric improves). Saved trees are host-local, unreplicated numpy pytrees, so a checkpoint written on
P devices restores on any device count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
  def __init__(self, directory: Path):
    directory = Path(directory).absolute()
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(directory / "latest", options=opts)
    self.best = ocp.CheckpointManager(directory / "best", options=opts)

  @staticmethod
  def _save(mngr, step: int, tree, meta: dict[str, Any]):
    tree = jax.tree.map(np.asarray, jax.device_get(tree))
    mngr.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True
    )
    mngr.wait_until_finished()

  def save_latest(self, step: int, tree, meta: dict[str, Any]):
    self._save(self.latest, step, tree, meta)

  def save_best(self, step: int, tree, meta: dict[str, Any]):
    self._save(self.best, step, tree, meta)

  @staticmethod
  def _restore(mngr, like):
    step = mngr.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    out = mngr.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]

  def restore_latest(self, like):
    """(tree, meta) of the latest checkpoint, or None."""
    return self._restore(self.latest, like)

  def restore_best(self, like):
    return self._restore(self.best, like)

  def close(self):
    self.latest.close()
    self.best.close()
