"""The one benchmark harness: timing, interleaving, fresh-process medians, foreign-CPU accounting, targets, tables.

Each benchmark (``bench_routing``, ``bench_members``, ``bench_euar_train``, ``bench_parallel``, ``device_suite``)
is a file of *what is timed*; how it is timed, judged against ``tools/targets.json`` and tabulated lives here.
Only numpy is imported at module level: a parent process that leaves the accelerators to its children must not
start a JAX backend.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def add_malloc_flag(parser, default: str) -> None:
  parser.add_argument(
    "--malloc",
    choices=("retain", "default"),
    default=default,
    help=f"retain: glibc keeps freed memory in the process (jmoe.hostmem; faster for large layers, slower for "
    f"small multi-threaded steps); default: glibc's own policy. This benchmark's default: {default}",
  )


def apply_malloc(args) -> str:
  """Apply ``args.malloc`` (before the first JAX computation); returns the one-line status to print and store."""
  from jmoe import hostmem  # pylint: disable=import-outside-toplevel

  return hostmem.retain_freed_memory() if args.malloc == "retain" else "host memory: glibc default (--malloc default)"


def num_threads() -> int:
  """Cores this process may run on (what XLA's CPU thread pool sizes itself to)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - non-Linux
    return os.cpu_count() or 1


def import_torch(required: bool = False):
  """The torch module, or None when it is not installed (``required=True`` raises ImportError with a hint)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except (ImportError, OSError) as e:
    if required:
      raise ImportError("the PyTorch reference rows need torch: pip install torch==2.13.0 (CPU build)") from e
    return None
  return torch


def _cpu_model_and_flags() -> tuple[str, list[str]]:
  cpu = platform.processor() or "unknown"
  flags: list[str] = []
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
          cpu = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
          flags = [fl for fl in line.split(":", 1)[1].split() if fl.startswith(("avx", "fma", "amx"))]
  except OSError:
    pass
  return cpu, sorted(set(flags))


def machine_info(torch_mod=None, devices: bool = True) -> dict[str, Any]:
  """CPU model and SIMD flags, cores, versions, XLA flags; JAX backend and devices if ``devices`` (that starts
  a backend: a parent process that leaves the accelerators to its children passes False)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel

  cpu, flags = _cpu_model_and_flags()
  info = {"cpu_model": cpu, "cpu_simd_flags": flags, "cores": num_threads(), "os_cpu_count": os.cpu_count()}
  info.update(platform=platform.platform(), python=sys.version.split()[0], jax=jax.__version__)
  info.update(jaxlib=jaxlib.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""))
  info["backend"] = jax.default_backend() if devices else None
  info["devices"] = [f"{d.platform}:{d.device_kind}" for d in jax.devices()] if devices else None
  info["torch"] = None if torch_mod is None else torch_mod.__version__
  info["torch_threads"] = None if torch_mod is None else torch_mod.get_num_threads()
  return info


# ----------------------------------------------------------------------------------------------------------------
# Timing


def block(out):
  """Wait for a JAX result (``jax.block_until_ready``); other values pass through."""
  import jax  # pylint: disable=import-outside-toplevel

  return jax.block_until_ready(out)


def stats(times: Sequence[float]) -> dict[str, Any]:
  """Median, p10 and p90, fastest and mean (seconds) and count of a list of times."""
  arr = np.asarray(times, dtype=np.float64)
  return {
    "median_s": float(np.median(arr)),
    "p10_s": float(np.percentile(arr, 10)),
    "p90_s": float(np.percentile(arr, 90)),
    "min_s": float(arr.min()),
    "mean_s": float(arr.mean()),
    "n": len(arr),
  }


def time_fn(
  fn: Callable[[], Any],
  repeats: int,
  warmup: int = 2,
  max_seconds: float = float("inf"),
  min_repeats: int = 1,
  block_fn: Callable[[Any], Any] = block,
  inner: int = 1,
) -> dict[str, Any]:
  """Warm up (the first call compiles a jitted fn; its time is ``first_call_s``), then time up to ``repeats``
  chunks of ``inner`` back-to-back calls of fn(), each chunk blocked until its last result is ready; stats are
  per call (chunk time / inner). Stops early once ``max_seconds`` were spent and ``min_repeats`` chunks ran."""
  t0 = time.perf_counter()
  block_fn(fn())
  first = time.perf_counter() - t0
  for _ in range(max(0, warmup - 1)):
    block_fn(fn())
  times: list[float] = []
  spent = 0.0
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    out = None
    for _ in range(max(1, inner)):
      out = fn()
    block_fn(out)
    dt = time.perf_counter() - t0
    spent += dt
    times.append(dt / max(1, inner))
    if spent > max_seconds and len(times) >= min_repeats:
      break
  return dict(stats(times), first_call_s=first)


def time_interleaved(
  entries: list[dict[str, Any]],
  key: str,
  repeats: int,
  warmup: int = 2,
  max_seconds: float = float("inf"),
  min_repeats: int = 1,
) -> None:
  """Time ``entries[i][key]()`` in rounds, every active row once per round (blocked with ``entries[i]['block']``,
  default :func:`block`). Each row is warmed up first: the first call (compilation) is stored in
  ``entries[i]['first_call_s'][key]``, then up to ``warmup - 1`` untimed calls (fewer once one takes over a
  second). A row leaves the rounds once it has spent ``max_seconds`` and run ``min_repeats`` times. Stores
  :func:`stats` under ``entries[i]['stats'][key]``.

  Rows of different runtimes (``entries[i]['runtime']``, e.g. 'jax' and 'torch') do not share thread pools: right
  after a PyTorch call its OpenMP threads keep spinning for tens of milliseconds and the *next* row's threads
  lose the CPU to them (on the 2-core box the first JAX call after torch/loop took ~7 ms longer, the second none;
  torch after JAX lost < 1 ms). So a row that follows a row of another runtime gets one untimed settle call
  first: each row is timed as it runs in a program of its own runtime."""
  for ent in entries:
    fn, blk = ent[key], ent.get("block", block)
    t0 = time.perf_counter()
    blk(fn())
    ent.setdefault("first_call_s", {})[key] = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
      t0 = time.perf_counter()
      blk(fn())
      if time.perf_counter() - t0 > 1.0:
        break
    ent.setdefault("times", {})[key] = []
  active = list(entries)
  previous_runtime = None
  for _ in range(max(1, repeats)):
    for ent in active:
      fn, blk = ent[key], ent.get("block", block)
      runtime = ent.get("runtime")
      if previous_runtime is not None and runtime != previous_runtime:
        blk(fn())  # settle: the other runtime's threads stop competing for the cores
      previous_runtime = runtime
      t0 = time.perf_counter()
      blk(fn())
      ent["times"][key].append(time.perf_counter() - t0)
    active = [e for e in active if not (sum(e["times"][key]) > max_seconds and len(e["times"][key]) >= min_repeats)]
    if not active:
      break
  for ent in entries:
    ent.setdefault("stats", {})[key] = stats(ent["times"][key])


# ----------------------------------------------------------------------------------------------------------------
# Load


def loadavg() -> float | None:
  """The 1-minute load average (None where unavailable). It counts this process's own threads too."""
  try:
    return os.getloadavg()[0]
  except OSError:  # pragma: no cover
    return None


class ForeignCpu:
  """Fraction of the machine's CPU time used by *other* processes between start() and stop().

  Busy ticks of all CPUs from /proc/stat minus this process's own user+system time (all its threads; with
  ``children=True`` also its waited-for child processes, for benchmarks that time subprocesses)."""

  def __init__(self, children: bool = False):
    self.children = children
    self.t0 = self.busy0 = self.own0 = None

  @staticmethod
  def _busy_s() -> float | None:
    try:
      with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    busy = sum(vals[:8]) - vals[3] - vals[4]  # user nice system idle iowait irq softirq steal: all but idle/iowait
    return busy / os.sysconf("SC_CLK_TCK")

  def _own_s(self) -> float:
    t = os.times()
    return t.user + t.system + ((t.children_user + t.children_system) if self.children else 0.0)

  def start(self) -> ForeignCpu:
    self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()
    return self

  def stop(self) -> float | None:
    busy = self._busy_s()
    if busy is None or self.busy0 is None:
      return None
    wall = time.perf_counter() - self.t0
    frac = ((busy - self.busy0) - (self._own_s() - self.own0)) / (wall * (os.cpu_count() or 1))
    return max(0.0, min(1.0, frac))


# ----------------------------------------------------------------------------------------------------------------
# Tables


def format_rows(head: Sequence[str], lines: Sequence[Sequence[str]], markdown: bool = False) -> list[str]:
  """Column-aligned table lines: the header, a rule, one line per row (first column left-aligned, others
  right-aligned). ``markdown=True`` gives a GitHub table (outer pipes, ``---`` rule)."""
  widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
  cells = lambda row: [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
  if markdown:
    fmt = lambda row: "| " + " | ".join(cells(row)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  else:
    fmt = lambda row: " | ".join(cells(row))
    rule = "-+-".join("-" * w for w in widths)
  return [fmt(head), rule] + [fmt(line) for line in lines]


def foreign_line(foreign: float | None, loaded: float = 0.10) -> str:
  """One line on other processes' CPU share while a table was timed (a warning above ``loaded``)."""
  if foreign is None:
    return "   other processes' CPU share: unknown (/proc/stat unreadable)"
  warn = "  -- WARNING: shared machine; absolute times are inflated and noisy (interleaved ratios suffer less)"
  return f"   other processes used {100 * foreign:.0f}% of the CPU while this was timed" + (
    warn if foreign > loaded else ""
  )


def write_json(obj: Any, path: str | os.PathLike | None) -> None:
  """Write obj as JSON (parent folders created); no-op for path None."""
  if path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(obj, indent=1, default=str))
    print(f"wrote {path}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Targets: one data table (tools/targets.json), judged here

TARGETS_FILE = Path(__file__).with_name("targets.json")


def load_targets(bench: str, path: str | os.PathLike = TARGETS_FILE) -> dict[str, dict[str, Any]]:
  """{id: target} of one benchmark from the targets table; each target has ``id, bench, text, op ('<=' | '>='),
  value`` (and optional ``where``: on which machine it is meant to hold)."""
  try:
    table = json.loads(Path(path).read_text())
  except FileNotFoundError as e:
    raise FileNotFoundError(f"targets table {path} is missing; restore tools/targets.json from git") from e
  out = {}
  for t in table:
    missing = {"id", "bench", "text", "op", "value"} - set(t)
    if missing or t["op"] not in ("<=", ">="):
      raise ValueError(f"targets table {path}: entry {t.get('id')!r} needs id/bench/text/op ('<=' or '>=')/value")
    if t["bench"] == bench:
      out[t["id"]] = t
  return out


def judge(target: dict[str, Any], value: float | None, detail: str = "") -> dict[str, Any]:
  """The verdict of one measured value against its target: met is True/False, or None when not measured."""
  met = None if value is None else (value <= target["value"] if target["op"] == "<=" else value >= target["value"])
  shown = "not measured" if value is None else f"{detail}{value:.2f}"
  verdict = {None: "NOT MEASURED", True: "MET", False: "MISSED"}[met]
  line = f"target {target['text']} ({target['op']} {target['value']}): {shown} -> {verdict}"
  return {"id": target["id"], "value": value, "limit": target["value"], "op": target["op"], "met": met, "line": line}


# ----------------------------------------------------------------------------------------------------------------
# Fresh processes: the same benchmark P times, each row's median and range over them


def without_flags(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
  """argv minus each ``--flag value`` / ``--flag=value`` in flags."""
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a in flags:
      skip = True
    elif not any(a.startswith(f + "=") for f in flags):
      out.append(a)
  return out


def fresh_processes(module: str, argv: Sequence[str], processes: int) -> list[dict[str, Any]]:
  """Run ``python -m module *argv --processes 1 --json TMP`` P times, one after another; their JSON outputs."""
  child_argv = without_flags(argv, ("--processes", "--json"))
  root = Path(__file__).resolve().parents[1]
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(processes):
      path = os.path.join(tmp, f"run{i}.json")
      print(f"# process {i + 1} of {processes}", flush=True)
      cmd = [sys.executable, "-m", module, *child_argv, "--processes", "1", "--json", path]
      if subprocess.run(cmd, cwd=root, check=False).returncode != 0:
        raise SystemExit(f"{module}: process {i + 1} of {processes} failed: {' '.join(cmd)}")
      runs.append(json.loads(Path(path).read_text()))
  return runs


def median_over_runs(runs: list[list[dict[str, Any]]], key: Callable, values: Sequence[str]) -> list[dict[str, Any]]:
  """Rows of P runs (same rows in each) -> one row per ``key(row)``: the first run's row with each of ``values``
  (dotted paths into the row, e.g. 'x_floor.fwd') replaced by its median over the runs, plus ``spread`` {path:
  (min, max)} and ``processes`` P."""
  by_key: dict[Any, list[dict[str, Any]]] = {}
  for rows in runs:
    for r in rows:
      by_key.setdefault(key(r), []).append(r)
  out = []
  for rows in by_key.values():
    if len(rows) != len(runs):
      raise ValueError(f"row {rows[0].get('name')!r} is in {len(rows)} of {len(runs)} runs; the runs do not match")
    row = json.loads(json.dumps(rows[0]))
    row.update(processes=len(runs), spread={})
    for path in values:
      vals = [v for v in (get_path(r, path) for r in rows) if v is not None]
      set_path(row, path, statistics.median(vals) if vals else None)
      if vals:
        row["spread"][path] = (min(vals), max(vals))
    out.append(row)
  return out


def get_path(d: dict[str, Any], path: str):
  for part in path.split("."):
    if not isinstance(d, dict) or part not in d:
      return None
    d = d[part]
  return d


def set_path(d: dict[str, Any], path: str, value) -> None:
  *head, last = path.split(".")
  for part in head:
    d = d.setdefault(part, {})
  d[last] = value


def with_spread(row: dict[str, Any], path: str, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
  """A table cell: the value and, for a row over processes, its [min-max] range."""
  v = get_path(row, path)
  if v is None:
    return "-"
  cell = fmt.format(v * scale)
  if path in row.get("spread", {}):
    lo, hi = row["spread"][path]
    cell += f" [{fmt.format(lo * scale)}-{fmt.format(hi * scale)}]"
  return cell
