"""Resumable, never half-written feature files: shards in ``<output>.parts/``, checked output paths, one writer.

* :func:`prepare_output`: the output ``.npz`` path and its parts folder, refused in one line BEFORE anything is
  computed when it is a folder, already exists (without ``overwrite``) or its folder cannot be created or written.
* :func:`output_lock`: one extraction per output (``<output>.lock`` beside it, see :func:`jmoe.train.workdir.lock`).
* :func:`prepare_parts`: the parts folder's manifest pins the run's options; another run's shards are refused.
* :func:`todo_shards` / :func:`run_shards`: shards still to compute (a missing or unreadable shard -- what a kill or
  a full disk during a write leaves -- is computed again) and their computation, each written through a temp file.
* :func:`assemble`: the shards concatenated into the output (temp file + rename); a shard that cannot be read is
  removed and named in one line, so the re-run recomputes it.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
SHARD_KEYS = ("local", "mask", "global")
LOCK_PID_TRIES = 40
"""Tries (50 ms apart) to read the pid of an extraction that holds the output's lock but has not written it yet."""


def read_csv_rows(path: Path) -> list[list[str]]:
  """The non-blank rows of a UTF-8 CSV; a one-line SystemExit naming the file if it is not UTF-8 text."""
  try:
    with open(path, newline="", encoding="utf-8") as f:
      return [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  except UnicodeDecodeError as e:
    raise SystemExit(
      f"error: {path}: not UTF-8 text ({e.reason} at byte {e.start}); save the CSV as UTF-8 and re-run"
    ) from None


def sha1_file(path: Path) -> str:
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def shard_name(start: int, end: int) -> str:
  return f"shard_{start:08d}_{end:08d}.npz"


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
"""OSError numbers that mean the output's disk refused a write (full, read-only, no permission, failing)."""


def write_error(path, e: OSError) -> SystemExit:
  """One-line SystemExit for a write to ``path`` that the disk refused: the reason and what to do."""
  full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
  what = "free some space" if full else "make it writable (or pass another --output)"
  return SystemExit(
    f"error: cannot write {path} ({e.strerror or type(e).__name__}); {what} and re-run the same command "
    "(finished batches are kept and reused)"
  )


def save_npz_atomic(path: Path, **arrays) -> None:
  """Write ``arrays`` to ``path`` through ``<path>.tmp`` + rename; a write the disk refuses (full, read-only) is a
  one-line SystemExit naming the file, with no temp file left behind."""
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
      raise write_error(path, e) from None
    raise


def npz_path(output: str | Path) -> Path:
  """``--output``: a path ending in ``.npz`` is that file; any other path is a folder receiving ``features.npz``."""
  out = Path(output)
  return out if out.suffix == ".npz" else out / "features.npz"


def prepare_output(output: str | Path, overwrite: bool) -> tuple[Path, Path]:
  """(output .npz, its parts folder), checked before anything is computed: one-line SystemExit when the output is a
  folder, exists without ``overwrite``, or its folder cannot be created or written. Creates the folder."""
  out = npz_path(output)
  if out.is_dir():
    raise SystemExit(
      f"error: --output {out} is a folder, not a file; pass a .npz path or a folder to hold features.npz"
    )
  if out.exists() and not overwrite:
    raise SystemExit(f"error: {out} exists (pass --overwrite to replace it)")
  parts = out.with_name(out.name + ".parts")
  if parts.exists() and not parts.is_dir():
    raise SystemExit(f"error: {parts} is a file; remove it (the shards of {out} go into that folder)")
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise SystemExit(
      f"error: cannot create the output folder {out.parent} ({e.strerror or type(e).__name__})"
    ) from None
  if not os.access(out.parent, os.W_OK | os.X_OK):
    try:
      why = "read-only file system" if os.statvfs(out.parent).f_flag & os.ST_RDONLY else "no write permission"
    except OSError:
      why = "no write permission"
    raise SystemExit(f"error: cannot write to the output folder {out.parent} ({why})")
  return out, parts


@contextlib.contextmanager
def output_lock(out: Path):
  """Hold ``<out>.lock`` for one extraction; a second one into the same output gets a one-line SystemExit."""
  from jmoe.train import workdir

  with contextlib.ExitStack() as stack:
    for attempt in range(LOCK_PID_TRIES):
      try:
        stack.enter_context(workdir.lock(out, "feature extraction", file=out.with_name(out.name + ".lock")))
        break
      except ValueError as e:
        if "in use by another feature extraction" not in str(e):
          raise
        if "has not written its pid yet" in str(e) and attempt + 1 < LOCK_PID_TRIES:
          time.sleep(0.05)  # the holder locked a moment ago: ask again, to name it (or find the lock free)
          continue
        raise SystemExit(f"error: {e}") from None
      except OSError as e:
        if e.filename is None or not str(e.filename).endswith(".lock"):
          raise
        raise SystemExit(f"error: cannot write to the output folder {out.parent} ({e.strerror})") from None
    yield


def prepare_parts(parts: Path, manifest: dict) -> None:
  mpath = parts / MANIFEST
  if mpath.is_file():
    try:
      old = json.loads(mpath.read_text())
    except ValueError:
      old = None
    if old != manifest and any(parts.glob("shard_*.npz")):
      raise SystemExit(
        f"error: {parts} holds shards from a different run (model/input/batch-size/max-len "
        f"differ); delete that folder to start over"
      )
    if old == manifest:
      return
    # no shard yet (the last run stopped at its first batch, e.g. on a clip that has since been fixed): start over
  tmp = mpath.with_name(MANIFEST + ".tmp")
  try:
    parts.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, mpath)
  except OSError as e:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    if e.errno not in DISK_ERRNOS:
      raise
    raise write_error(mpath, e) from None


def shard_ok(path: Path) -> bool:
  """True if ``path`` is a complete shard: a zip whose directory (written last) lists every array. A truncated file
  (a kill or a full disk mid-write on a file system without atomic rename) fails; its arrays are not decoded here."""
  try:
    with zipfile.ZipFile(path) as z:
      names = set(z.namelist())
  except (OSError, zipfile.BadZipFile, ValueError):
    return False
  return all(f"{k}.npy" in names for k in SHARD_KEYS)


def todo_shards(parts: Path, ranges) -> list[tuple[int, int]]:
  """The ranges whose shard is missing or incomplete (an incomplete one is removed, to be computed again)."""
  todo = []
  for r in ranges:
    p = parts / shard_name(*r)
    if p.is_file() and shard_ok(p):
      continue
    if p.exists():
      print(f"{p}: incomplete shard (interrupted write); computing it again", file=sys.stderr)
      p.unlink()
    todo.append(r)
  return todo


def run_shards(todo, ranges, parts, compute, unit, desc) -> None:
  """Compute and save the missing shards with a progress bar (an interruption keeps the finished ones)."""
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover - tqdm is a jmoe dependency
    tqdm = None
  done = len(ranges) - len(todo)
  if done:
    print(f"resuming: {done}/{len(ranges)} batches already done in {parts}", file=sys.stderr)
  bar = tqdm(total=len(ranges), initial=done, unit=unit, desc=desc) if tqdm else None
  try:
    for s, e in todo:
      local, mask, glob = compute(s, e)
      save_npz_atomic(parts / shard_name(s, e), local=local, mask=mask, **{"global": glob})
      if bar:
        bar.update(1)
  finally:
    if bar:
      bar.close()


def _read_shard(path: Path, rows: int):
  try:
    with np.load(path, allow_pickle=False) as z:
      local, mask, glob = (np.asarray(z[k]) for k in SHARD_KEYS)
  except Exception as e:  # noqa: BLE001 -- BadZipFile, zlib.error, EOFError, ValueError, KeyError for a damaged file
    why = (str(e).splitlines() or [type(e).__name__])[0][:120]
    path.unlink(missing_ok=True)
    raise SystemExit(
      f"error: shard {path} cannot be read ({type(e).__name__}: {why}); it was removed: re-run the same command "
      "to compute it again"
    ) from None
  if local.shape[0] != rows or mask.shape != local.shape[:2] or glob.shape[0] != rows:
    path.unlink(missing_ok=True)
    raise SystemExit(f"error: shard {path} has the wrong shape; it was removed: re-run the same command")
  return local, mask, glob


def assemble(parts: Path, ranges, out: Path, ids: list[str], meta: dict) -> tuple[int, int, int]:
  """Concatenate the shards (zero-padding T to the longest) into ``out`` atomically; return (B, T, D)."""
  shards = [_read_shard(parts / shard_name(*r), r[1] - r[0]) for r in ranges]
  t = max(loc.shape[1] for loc, _, _ in shards)
  d = shards[0][0].shape[2]
  local = np.zeros((len(ids), t, d), np.float32)
  mask = np.zeros((len(ids), t), bool)
  for (s, e), (loc, m, _) in zip(ranges, shards):
    local[s:e, : loc.shape[1]] = loc
    mask[s:e, : m.shape[1]] = m
  lengths = mask.sum(1)
  glob = np.concatenate([g for _, _, g in shards]).astype(np.float32)
  save_npz_atomic(
    out,
    ids=np.array(ids, dtype=str),
    local=local,
    mask=mask,
    pooled=glob,
    lengths=lengths.astype(np.int64),
    **{"global": glob},
    **{k: np.array(v) for k, v in meta.items()},
  )
  return len(ids), t, d
