"""One process per workdir, and files that a kill or a full disk cannot leave half-written.

* :func:`lock`: an exclusive lock on a workdir (or on any output, e.g. a feature file) for the lifetime of a ``with``
  block. It is an ``fcntl.flock`` on a lock file holding the owner's pid and host, so the kernel releases it when
  the owner dies in any way (kill -9 included): a stale lock file is taken over without a word. A second live
  process gets a one-line ValueError naming the workdir and the other pid. Re-entering the lock in the process
  that holds it is allowed (a trainer that locks a workdir may call code that locks it again). The lock file is
  removed when the lock is released. Local file systems only (flock on a network file system may not exclude
  processes on other hosts).
* :func:`read_jsonl` / :func:`append_jsonl`: a JSONL log appended one record at a time. A torn last line (what a
  kill or a full disk during an append leaves) is dropped with a one-line warning and the file rewritten without
  it; a bad line anywhere else is a one-line ValueError naming the file and line number (that is not what an
  append leaves, so it is not silently skipped).
* :func:`write_atomic`: a tmp file beside the target and ``os.replace``, so readers see the old or the new text.
* :func:`jsonable`: nested metrics to JSON-safe values (non-finite floats to null).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # lock file -> nesting depth, for the locks this process holds


def jsonable(x):
  """Nested metrics -> JSON-safe values: numpy scalars to Python, non-finite floats to None (valid JSON)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(float(x)) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  return x


def _owner(path: Path) -> str:
  try:
    text = path.read_text().split()
  except OSError:
    text = []
  return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "a process that has not written its pid yet"


@contextlib.contextmanager
def lock(workdir: Path | str, what: str = "run", file: Path | str | None = None) -> Iterator[Path]:
  """Hold an exclusive lock on ``workdir`` for the ``with`` block; yields the lock file.

  The lock file is ``<workdir>/.lock`` unless ``file`` names another (an output file that is not a folder, e.g.
  ``features.npz``, is locked through ``features.npz.lock`` beside it). Its folder is created. ValueError (one line
  naming ``workdir``, ``what`` and the other process) if another live process holds it; OSError if the lock file
  cannot be created (a read-only or missing parent, reported by the caller)."""
  workdir = Path(workdir)
  path = Path(file) if file is not None else workdir / LOCK_NAME
  key = str(path.absolute())
  if key in _held:  # this process holds it already
    _held[key] += 1
    try:
      yield path
    finally:
      _held[key] -= 1
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise ValueError(
        f"{workdir} is in use by another {what} ({_owner(path)}); wait for it to end or use another output"
      ) from None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)  # the holder released and removed the file between our open and our flock: try the new one
  try:
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    _held[key] = 1
    try:
      yield path
    finally:
      del _held[key]
      with contextlib.suppress(OSError):
        path.unlink()  # while still locked: a waiter that opened this file finds it gone and retries
  finally:
    os.close(fd)


def write_atomic(path: Path | str, text: str) -> None:
  """Write ``text`` to ``path`` through ``<path>.tmp`` and ``os.replace`` (readers see the old or the new text)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    with tmp.open("w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
  """The records of a JSONL log ([] if the file does not exist). A torn last line is dropped with a one-line warning
  on stderr and the file rewritten without it (so later appends start on a fresh line); a last record whose newline
  is missing gets it. ValueError naming file and line for a bad line before the last, or a line that is not a JSON
  object."""
  path = Path(path)
  if not path.exists():
    return []
  try:
    text = path.read_text(encoding="utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 JSONL log ({e.reason} at byte {e.start})") from None
  lines = text.split("\n")
  complete = text.endswith("\n")
  if complete:
    lines.pop()  # the empty string after the last newline
  records, rewrite = [], not complete and text != ""
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except ValueError as e:
      if i == len(lines) - 1:
        print(
          f"warning: {path}: dropped a cut-off last line ({len(line)} characters; what an interrupted append leaves)",
          file=sys.stderr,
        )
        lines.pop()
        rewrite = True
        break
      raise ValueError(
        f"{path}:{i + 1}: not a JSON line ({e}); only the last line can be cut short by a kill"
      ) from None
    if not isinstance(rec, dict):
      raise ValueError(f"{path}:{i + 1}: a JSON {type(rec).__name__}, not an object")  # noqa: TRY004
    records.append(rec)
  if rewrite:
    write_atomic(path, "".join(line + "\n" for line in lines if line.strip()))
  return records


def append_jsonl(path: Path | str, record: dict[str, Any]) -> None:
  """Append one JSON-safe record (see :func:`jsonable`) as one line. If the file does not end with a newline (a torn
  append), it is repaired first through :func:`read_jsonl`, so the new record never joins a cut-off line."""
  path = Path(path)
  line = json.dumps(jsonable(record), allow_nan=False) + "\n"
  with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
    f.seek(0, os.SEEK_END)
    if f.tell() > 0:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        read_jsonl(path)
  with path.open("a", encoding="utf-8") as f:
    f.write(line)
