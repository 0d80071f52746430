"""The one command line of every runnable module: ``python -m <module> [--config.KEY=VALUE ...]``.

Every experiment, analysis, sweep and population run is a pair ``(get_config, run)``: ``get_config()`` returns the
module's ``ml_collections.ConfigDict`` and ``run(config)`` does the work. :func:`main` gives each the same
contract (vmoe's ``app.run(main)``):

* ``--help`` prints the config (nesting, defaults and the allowed values of every choice) and exits 0;
* an unknown ``--config.<key>`` is refused in one line with a did-you-mean, exit status 2;
* a user error (bad value, missing file, unwritable path, a live run in the same workdir, ...) is one line on
  stderr, exit status 2; ``--config.debug=True`` shows the traceback instead;
* Ctrl-C (SIGINT) and SIGTERM stop the run with one line saying how to resume (exit status 130 / 143);
* third-party warnings that repeat (orbax's per-save messages) are shown once.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import logging as py_logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

# The errors a user can cause and fix: printed as one line. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def leaves(cfg: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted key, value) of every leaf of ``cfg``, depth first, in the config's order."""
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def known_keys(cfg: ml_collections.ConfigDict) -> set[str]:
  """Every dotted key of ``cfg``: the leaves and the nodes above them."""
  names = [k for k, _ in leaves(cfg)]
  return set(names) | {k.rsplit(".", n)[0] for k in names for n in range(1, k.count(".") + 1)}


def unknown_key(argv: list[str], cfg: ml_collections.ConfigDict) -> str | None:
  """One line for the first ``--config.<key>`` of ``argv`` that ``cfg`` does not have (with a did-you-mean)."""
  names = [k for k, _ in leaves(cfg)]
  known = known_keys(cfg)
  for arg in argv:
    if arg == "--":
      break
    for lead in ("--config.", "--noconfig."):
      if arg.startswith(lead):
        key = arg[len(lead) :].split("=", 1)[0]
        if key not in known:
          close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
          return f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if (
      arg.startswith("-") and not arg.startswith(("--config.", "--noconfig.")) and arg not in HELP and not _number(arg)
    ):
      flag = arg.split("=", 1)[0]
      return f"unknown option {flag!r}: every setting is a --config.KEY=VALUE (--help lists them)"
  return None


def _number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def config_choices(cfg: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{dotted key: allowed values} of the keys that take one of a fixed set of values."""
  from jmoe.data import sources
  from jmoe.train import app

  out: dict[str, tuple] = {}
  if "model_name" in cfg:
    out.update({"members": app.MEMBERS, "parallel": ("pmap", "jit"), "folds.kind": app.FOLD_KINDS})
    out["optim.schedule"] = app.state_lib.SCHEDULES
  if "data" in cfg and "source" in cfg.data:
    out["data.source"] = tuple(sources.names())
    if "nonfinite" in cfg.data:
      out["data.nonfinite"] = ("error", "zero")
  if "model" in cfg and "dtype" in cfg.model:
    out["model.dtype"] = ("float32", "bfloat16")
  if "model_name" in cfg:
    try:
      model = importlib.import_module(f"jmoe.models.{cfg.model_name}")
    except ModuleNotFoundError:
      return out
    out.update(getattr(model, "config_choices", dict)())
  return out


def help_text(cfg: ml_collections.ConfigDict, prog: str, doc: str = "") -> str:
  """``--help``: the module's first docstring line, usage, and the config with its nesting, defaults and choices."""
  from jmoe.data import sources

  choices = config_choices(cfg)
  lines = [doc.strip().splitlines()[0], ""] if doc.strip() else []
  training = "model_name" in cfg
  lines += [
    f"usage: {prog} [--config.KEY=VALUE ...]" + ("   (re-running the same command resumes)" if training else ""),
    "",
    "config (key: default  # allowed values)"
    + ("; e.g. --config.optim.lr=3e-4 --config.seeds=3" if training else "; e.g. --config.run=runs/NAME"),
  ]
  shown: set[str] = set()
  for key, value in leaves(cfg):
    parts = key.split(".")
    for depth in range(len(parts) - 1):
      node = ".".join(parts[: depth + 1])
      if node not in shown:
        shown.add(node)
        lines.append(f"{'  ' * (depth + 1)}{parts[depth]}:")
    note = f"  # one of {', '.join(map(str, choices[key]))}" if key in choices else ""
    lines.append(f"{'  ' * len(parts)}{parts[-1]}: {value!r}{note}")
  if "data" in cfg and "source" in cfg.data:
    lines += ["", "data sources (config.data.source) and the data.* fields each reads:"]
    lines += [f"  {line}" for line in sources.describe().splitlines()]
  lines += ["", "errors print one line and exit 2 (--config.debug=True shows the traceback)."]
  if training:
    lines += [
      "Ctrl-C stops the run and the same command resumes it; a damaged checkpoint stops the run:",
      "--config.discard_damaged=True retrains that seed.",
    ]
  return "\n".join(lines)


HELP = ("-h", "--help", "--helpshort", "--helpfull")


class _Once(py_logging.Filter):
  """Lets each distinct third-party warning through once (orbax repeats one per save)."""

  def __init__(self):
    super().__init__()
    self.seen: set[str] = set()

  def filter(self, record: py_logging.LogRecord) -> bool:
    key = f"{record.name}:{record.msg}"
    if key in self.seen:
      return False
    self.seen.add(key)
    return True


def quiet_third_party() -> None:
  """absl/orbax at WARNING, and each repeated warning shown once."""
  from absl import logging as absl_logging

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  once = _Once()
  for name in ("absl", "orbax", "jax", ""):
    py_logging.getLogger(name).addFilter(once)
  for handler in py_logging.getLogger().handlers:
    handler.addFilter(once)


def _prog(module: str | None) -> str:
  main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  module = module or (main_spec.name if main_spec is not None else Path(sys.argv[0]).stem)
  return f"python -m {module}"


def error_line(e: BaseException) -> str:
  """One line for a user error (an ``OSError`` names its file and what went wrong)."""
  if isinstance(e, OSError) and e.errno == errno.ENOSPC:
    return f"no space left on the device writing {e.filename or 'the run directory'}: free space and re-run to resume"
  if "No space left on device" in str(e) or "os_error_code='28'" in str(e):  # tensorstore's (orbax's) wording
    where = re.search(r'local file "([^"]+)"', str(e))
    return (
      f"no space left on the device writing {where.group(1) if where else 'the run directory'}: free space and "
      "re-run to resume"
    )
  if isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
    return f"cannot write {e.filename or 'the run directory'} ({e.strerror}): choose a writable --config.workdir"
  text = str(e).strip().splitlines()
  return text[0] if text else type(e).__name__


def execute(run: Callable[[ml_collections.ConfigDict], Any], cfg: ml_collections.ConfigDict) -> int:
  """Run ``run(cfg)`` under the error contract; the exit status (0 on success)."""

  def on_term(signum, frame):  # SIGTERM behaves like Ctrl-C: stop now, resume later
    raise KeyboardInterrupt("SIGTERM")

  previous = signal.signal(signal.SIGTERM, on_term)
  try:
    run(cfg)
    return 0
  except KeyboardInterrupt as e:
    if cfg.get("debug", False):
      raise
    term = "SIGTERM" in str(e)
    print(
      f"interrupted ({'SIGTERM' if term else 'Ctrl-C'}): the last finished epoch (or generation) is checkpointed; "
      "run the same command again to resume",
      file=sys.stderr,
    )
    return 143 if term else 130
  except USER_ERRORS + (OSError,) as e:
    if cfg.get("debug", False):
      raise
    print(f"error: {error_line(e)}", file=sys.stderr)
    print("(add --config.debug=True for the traceback)", file=sys.stderr)
    return 2
  finally:
    signal.signal(signal.SIGTERM, previous)


def invoke(get_config: Callable[[], ml_collections.ConfigDict], run, overrides: dict | None = None) -> int:
  """Programmatic twin of :func:`main`: ``get_config()`` with dotted ``overrides`` applied, run under the error
  contract; the exit status."""
  cfg = get_config()
  if overrides:
    bad = [k for k in overrides if k not in known_keys(cfg)]
    if bad:
      print(f"error: unknown config key {bad[0]!r}", file=sys.stderr)
      return 2
    cfg.update_from_flattened_dict(overrides)
  return execute(run, cfg)


def main(
  get_config: Callable[[], ml_collections.ConfigDict],
  run: Callable[[ml_collections.ConfigDict], Any],
  module: str | None = None,
  doc: str = "",
) -> None:
  """``python -m <module> [--config.key=value ...]``: parse, check and run; exits with the status."""
  from absl import app as absl_app
  from ml_collections import config_flags

  args = sys.argv[1:]
  doc = doc or getattr(sys.modules.get("__main__"), "__doc__", "") or ""
  try:
    base = get_config()
  except USER_ERRORS as e:
    print(f"error: {error_line(e)}", file=sys.stderr)
    sys.exit(2)
  if any(a in HELP for a in args):
    try:
      print(help_text(base, _prog(module), doc))
    except BrokenPipeError:  # --help | head
      pass
    sys.exit(0)
  bad = unknown_key(args, base)
  if bad:
    print(f"error: {bad}", file=sys.stderr)
    print("(--help lists every config key)", file=sys.stderr)
    sys.exit(2)
  flag = config_flags.DEFINE_config_dict("config", base)

  def absl_main(argv):
    del argv
    quiet_third_party()
    code = execute(run, flag.value)
    if code:  # after the one line, leave at once: background writer threads (orbax) would print at shutdown
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
    sys.exit(0)

  try:
    absl_app.run(absl_main, flags_parser=_parse_flags)
  except KeyboardInterrupt:
    print("interrupted: run the same command again to resume", file=sys.stderr)
    sys.exit(130)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a bad value reported in one line (e.g. ``--config.seeds=abc``), exit 2."""
  from absl import flags

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {error_line(e)}", file=sys.stderr)
    sys.exit(2)
