"""Orbax checkpoints with "latest" (resume) and "best" (evaluate) kept apart.

With ``best_fn`` set, an orbax ``CheckpointManager`` keeps the best N checkpoints and may delete the newest, which
breaks resuming; so we use two managers in two directories, each keeping one checkpoint:
``<dir>/latest`` (saved every epoch, with the loop's bookkeeping as JSON) and ``<dir>/best`` (saved when the
validation metric improves). Saved trees are host-local, unreplicated numpy pytrees, so a checkpoint written on
P devices restores on any device count.

Crash consistency: re-saving a step that already exists (an epoch redone after an interruption) replaces it.
Damage: every save stores a SHA-256 of the saved arrays and metadata inside its own metadata (written in the same
orbax commit); a restore that fails, or whose values do not hash to it, raises :class:`DamagedCheckpointError`
naming the directory -- altered values are never returned.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

DIGEST_KEY = "_sha256"


class DamagedCheckpointError(ValueError):
  """A checkpoint that cannot be read or does not match the checksum written with it (one-line message)."""


def digest(tree, meta: dict[str, Any]) -> str:
  """SHA-256 of a numpy pytree (paths, shapes, bytes) and of JSON metadata. Integer leaves count as int64: a restore
  may widen them (a step saved as int32 comes back as the int64 of a Python int in the target)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    a = np.ascontiguousarray(a.astype(np.int64) if a.dtype.kind in "biu" else a)
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  h.update(json.dumps(meta, sort_keys=True).encode())
  return h.hexdigest()


class Checkpoints:
  def __init__(self, directory: Path):
    self.directory = directory = Path(directory).absolute()
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(directory / "latest", options=opts)
    self.best = ocp.CheckpointManager(directory / "best", options=opts)

  @staticmethod
  def _save(mngr, step: int, tree, meta: dict[str, Any]):
    tree = jax.tree.map(np.asarray, jax.device_get(tree))
    meta = {**meta, DIGEST_KEY: digest(tree, meta)}
    if step in mngr.all_steps():  # an epoch redone after an interruption: replace what it wrote before
      mngr.delete(step)
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
    where = Path(mngr.directory)
    mngr.reload()
    step = mngr.latest_step()
    if step is None:
      if where.is_dir() and any(not p.name.startswith(".") for p in where.iterdir()):
        raise DamagedCheckpointError(f"{where} holds no readable checkpoint")
      return None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    try:
      out = mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
      )
      state, meta = out["state"], dict(out["meta"])
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore raise many kinds for missing or truncated files
      msg = (str(e).splitlines() or [""])[0][:160]
      raise DamagedCheckpointError(f"{where / str(step)} cannot be read ({type(e).__name__}: {msg})") from None
    want = meta.pop(DIGEST_KEY, None)
    if want is not None and digest(state, meta) != want:
      raise DamagedCheckpointError(f"{where / str(step)} does not match the checksum written with it")
    return state, meta

  def restore_latest(self, like):
    """(tree, meta) of the latest checkpoint, None if there is none; DamagedCheckpointError if it is damaged."""
    return self._restore(self.latest, like)

  def restore_best(self, like):
    return self._restore(self.best, like)

  def best_step(self) -> int | None:
    self.best.reload()
    return self.best.latest_step()

  def close(self):
    self.latest.close()
    self.best.close()
