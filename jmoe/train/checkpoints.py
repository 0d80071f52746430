"""Orbax checkpoints with "latest" (resume) and "best" (evaluate) kept apart.

With ``best_fn`` set, an orbax ``CheckpointManager`` keeps the best N checkpoints and may delete the newest, which
breaks resuming; so we use two managers in two directories, each keeping one checkpoint:
``<dir>/latest`` (saved every epoch, with the loop's bookkeeping as JSON) and ``<dir>/best`` (saved when the
validation metric improves). Saved trees are host-local, unreplicated numpy pytrees, so a checkpoint written on
P devices restores on any device count.

Crash consistency: re-saving a step that already exists (an epoch redone after an interruption) replaces it: the old
copy is first renamed aside (``.replaced-<step>``), and removed only once the new one is committed. What an
interrupted save leaves is not damage: opening a :class:`Checkpoints` removes unfinished orbax saves
(``<step>.orbax-checkpoint-tmp*``) and puts back an old copy whose replacement never committed, so a restore returns
the last complete step (or None if there is none) and a plain re-run resumes from there.
Damage: every save stores a SHA-256 of the saved arrays and metadata inside its own metadata (written in the same
orbax commit); a restore that fails, whose values do not hash to it, or that has no checksum at all raises
:class:`DamagedCheckpointError` naming the directory -- altered values are never returned.
Ctrl-C or SIGTERM during a save takes effect once the save has committed (:func:`signals_deferred`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

DIGEST_KEY = "_sha256"
TMP_MARK = ".orbax-checkpoint-tmp"  # orbax writes a step as <step><TMP_MARK>-<time> and renames it when committed
ASIDE_PREFIX = ".replaced-"  # a committed step being replaced by a re-save of the same step


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


def _rmtree(p: Path) -> None:
  if p.is_dir() and not p.is_symlink():
    shutil.rmtree(p)
  else:
    p.unlink(missing_ok=True)


def recover_interrupted(root: Path) -> list[str]:
  """Undo what an interrupted save left in one manager directory ``root`` (``latest`` or ``best``): unfinished orbax
  saves are removed; an old copy renamed aside is put back if its replacement never committed, else removed.
  Returns one note per thing done (empty if nothing was left)."""
  notes = []
  if not root.is_dir():
    return notes
  for p in sorted(root.iterdir()):
    if TMP_MARK in p.name:
      _rmtree(p)
      notes.append(f"{p}: unfinished save removed")
  for p in sorted(root.iterdir()):
    if p.name.startswith(ASIDE_PREFIX):
      target = root / p.name[len(ASIDE_PREFIX) :]
      if target.exists():
        _rmtree(p)
      else:
        os.rename(p, target)
        notes.append(f"{target}: its re-save was interrupted; the previous copy is kept")
  return notes


@contextlib.contextmanager
def signals_deferred():
  """Ctrl-C (SIGINT) and SIGTERM arriving inside the block take effect when it ends, so a checkpoint save is never
  cut in the middle (which left orbax's writer threads waiting and a KeyboardInterrupt traceback through them). A
  second signal while one is held acts at once (a save that hangs can still be stopped). Main thread only (elsewhere
  the block runs as is)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  held: list[int] = []
  kinds = (signal.SIGINT, signal.SIGTERM)
  previous = {s: signal.getsignal(s) for s in kinds}

  def deliver(signum: int) -> None:
    handler = previous[signum]
    if callable(handler):
      handler(signum, None)
    elif handler == signal.SIG_DFL:
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)

  def hold(signum, frame):
    if held:
      deliver(signum)
    held.append(signum)

  for s in kinds:
    if previous[s] not in (signal.SIG_IGN, None):
      signal.signal(s, hold)
  try:
    yield
  finally:
    for s in kinds:
      if previous[s] not in (signal.SIG_IGN, None):
        signal.signal(s, previous[s])
    if held:
      deliver(held[0])


class _AsyncNoise:
  """``sys.unraisablehook`` while orbax saves or restores: a failed one leaves I/O in flight whose callbacks, once
  orbax closed its event loop, each report an unraisable ``RuntimeError: Event loop is closed`` (a traceback on
  stderr). Those are dropped; anything else goes to the previous hook."""

  NOISE = "Event loop is closed"

  def __init__(self, previous):
    self.previous = previous
    self.last = time.monotonic()

  def __call__(self, unraisable) -> None:
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == self.NOISE:
      self.last = time.monotonic()
      return
    self.previous(unraisable)

  def settle(self, quiet: float = 0.5, limit: float = 5.0) -> None:
    """Wait until no such report came for ``quiet`` seconds (at most ``limit``): the failed restore's reads ended."""
    t0 = self.last = time.monotonic()
    while time.monotonic() - t0 < limit and time.monotonic() - self.last < quiet:
      time.sleep(quiet / 3)


class Checkpoints:
  def __init__(self, directory: Path):
    self.directory = directory = Path(directory).absolute()
    self.recovered = [n for name in ("latest", "best") for n in recover_interrupted(directory / name)]
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    self.latest = ocp.CheckpointManager(directory / "latest", options=opts)
    self.best = ocp.CheckpointManager(directory / "best", options=opts)

  @staticmethod
  def _save(mngr, step: int, tree, meta: dict[str, Any]):
    tree = jax.tree.map(np.asarray, jax.device_get(tree))
    meta = {**meta, DIGEST_KEY: digest(tree, meta)}
    # A failed write (e.g. a full disk) leaves writes in flight whose callbacks report 'Event loop is closed' once
    # orbax gives up: dropped here as in _restore, so the error is one line.
    noise = sys.unraisablehook = _AsyncNoise(sys.unraisablehook)
    try:
      with signals_deferred():  # an interrupt lands after the commit
        Checkpoints._commit(mngr, step, tree, meta)
    except Exception:
      noise.settle()
      raise
    finally:
      sys.unraisablehook = noise.previous

  @staticmethod
  def _commit(mngr, step: int, tree, meta: dict[str, Any]):
    root, aside = Path(mngr.directory), None
    if step in mngr.all_steps():  # an epoch redone after an interruption: replace what it wrote before
      aside = root / f"{ASIDE_PREFIX}{step}"  # kept until the new copy commits (see recover_interrupted)
      if aside.exists():
        _rmtree(aside)
      os.rename(root / str(step), aside)
      mngr.reload()
    mngr.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)), force=True
    )
    mngr.wait_until_finished()
    if aside is not None:
      _rmtree(aside)

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
    noise = sys.unraisablehook = _AsyncNoise(sys.unraisablehook)
    failed = None
    try:
      out = mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
      )
      state, meta = out["state"], dict(out["meta"])
    except Exception as e:  # noqa: BLE001 -- orbax / tensorstore raise many kinds for missing or truncated files
      msg = (str(e).splitlines() or [""])[0][:160]
      failed = f"{where / str(step)} cannot be read ({type(e).__name__}: {msg})"
      noise.settle()  # the reads still in flight end now, each reporting to ``noise``
    finally:
      sys.unraisablehook = noise.previous
    if failed is not None:
      raise DamagedCheckpointError(failed)
    want = meta.pop(DIGEST_KEY, None)
    if want is None:
      raise DamagedCheckpointError(f"{where / str(step)} has no checksum ({DIGEST_KEY} in its metadata): not trusted")
    if digest(state, meta) != want:
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
