"""The training loop of the platform: one fold, one or more seeds, as a linear function (no trainer class).

:func:`fit` trains the seeds of one fold, either one after another (``config.members='sequential'``) or as one
compiled program over a member axis (``'vmap'``: the states of all seeds stacked, each member with its own batch
order, RNG, early stopping and checkpoints; a stopped or diverged member stops updating). Per member:

* every epoch: train, evaluate every task on the validation split, select on ``config.select``
  (``'<task>/<metric>'``, default the first task's rule) -- validation only, never test;
* ``seed_<s>/latest`` (resume) and ``seed_<s>/best`` (evaluation) orbax checkpoints and one JSONL line, in the
  order best, JSONL line, latest: an interruption anywhere in between redoes the epoch from the previous latest
  (the JSONL lines after it are dropped, an existing best step is replaced), so a resumed run ends with the
  checkpoints and the JSONL of an uninterrupted one;
* a damaged checkpoint (unreadable, or not matching the checksum written with it; a best checkpoint that latest
  records but that is missing) stops the run with one line naming it; with ``config.discard_damaged=True`` that
  seed's checkpoints and JSONL are discarded and the seed is retrained;
* a non-finite (or, with ``optim.max_loss``, exploding) training loss stops the member as *diverged*: its best
  checkpoint is kept, it is reported as diverged, and a re-run never resumes training it;
* at the end: the best checkpoint is evaluated once on test, and the test outputs (every head, the model's
  per-sample diagnostics as ``per_sample.<name>``, the labels as ``label.<head>``, the sample ids) are saved in
  ``seed_<s>/test_outputs.npz`` for later analysis.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jmoe.data import format as fmt
from jmoe.train import batches as batches_lib
from jmoe.train import state as state_lib
from jmoe.train import tasks as tasks_lib
from jmoe.train import workdir
from jmoe.train.checkpoints import Checkpoints, DamagedCheckpointError


def log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg, file=sys.stderr)


jsonable = workdir.jsonable  # nested metrics -> JSON-safe values (NaN -> null)


@dataclasses.dataclass(frozen=True)
class FoldData:
  """One fold's splits (train / valid / test) and its name."""

  name: str
  train: fmt.Split
  valid: fmt.Split
  test: fmt.Split


@dataclasses.dataclass
class Setup:
  """Everything built once per run and shared by every fold and seed (compiled steps included)."""

  cfg: Any
  model: Any
  tasks: tuple
  tx: Any
  hparams: dict
  dp: Any
  steps: tuple  # (train, eval) without a member axis
  member_steps: tuple | None  # (train, eval) vmapped over members, or None
  select_task: tasks_lib.Task
  select_metric: str
  init_fn: Any = None  # jax.jit(model.init), compiled once per run

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.model.modalities)

  @property
  def heads(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t.label for t in self.tasks))


def _new_book() -> dict[str, Any]:
  return {
    "epoch": -1,
    "best_value": None,
    "best_epoch": -1,
    "bad_epochs": 0,
    "stopped": False,
    "diverged": False,
    "first_loss": None,
    "best_valid": None,
  }


def with_consts(batch: dict, consts: dict[str, np.ndarray] | None, members: bool) -> dict:
  """``batch`` plus every per-member constant of ``consts`` broadcast to the batch: [D, M, b] from [M] values
  (members) or [D, b] from a scalar. Constants are the ``gene/<name>`` hyperparameters (architecture genes) that a
  model reads from the batch (:mod:`jmoe.models.haemsa`)."""
  if not consts:
    return batch
  w = batch["weight"]
  out = dict(batch)
  for name, v in consts.items():
    v = np.asarray(v, np.float32)
    out[name] = np.broadcast_to(v[None, :, None] if members else v, w.shape).copy()
  return out


def consts_of(hparams: dict) -> dict[str, np.ndarray]:
  """The batch constants of a state's (or stacked states') hyperparameters: its ``gene/<name>`` entries."""
  return {k: np.asarray(v, np.float32) for k, v in hparams.items() if k.startswith("gene/")}


_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_interrupted: list[int] = []  # signals seen inside :func:`interrupts_remembered`


@contextlib.contextmanager
def interrupts_remembered():
  """Ctrl-C (SIGINT) and SIGTERM act as before (the previous handler runs: KeyboardInterrupt) and are also
  remembered, so that one whose KeyboardInterrupt some library swallowed (raised inside a callback whose exceptions
  are only printed) still stops the run at the next epoch or generation (:func:`check_interrupted`). Main thread
  only."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.getsignal(s) for s in _SIGNALS}

  def remember(signum, frame):
    _interrupted.append(signum)
    handler = previous[signum]
    if callable(handler):
      handler(signum, frame)
    else:  # SIG_DFL: what the signal would have done
      signal.signal(signum, signal.SIG_DFL)
      signal.raise_signal(signum)

  mine = [s for s in _SIGNALS if callable(previous[s]) or previous[s] == signal.SIG_DFL]
  for s in mine:
    signal.signal(s, remember)
  try:
    yield
    check_interrupted()  # one swallowed in the last epoch stops the run before the next seed
  finally:
    for s in mine:
      signal.signal(s, previous[s])
    _interrupted.clear()


def check_interrupted() -> None:
  """KeyboardInterrupt if a signal was seen (see :func:`interrupts_remembered`) and its interrupt did not stop us."""
  if _interrupted:
    first = _interrupted[0]
    _interrupted.clear()  # delivered
    raise KeyboardInterrupt("SIGTERM" if first == signal.SIGTERM else "SIGINT")


def before_epoch(epoch: int) -> None:
  """Called at the start of every training epoch (a module function so that tests can interrupt a run here)."""


def predict(
  setup: Setup, eval_fn, params_r, split: fmt.Split, members: int | None, consts: dict | None = None
) -> list[dict[str, np.ndarray]]:
  """Deterministic outputs for every sample of ``split``, padding removed: one dict {key: [B, ...]} per member."""
  opt = setup.cfg.optim
  parts: list[dict[str, np.ndarray]] = []
  for batch in batches_lib.iterate_batches(split, setup.modalities, opt.batch_size, setup.dp.num_shards):
    batch = with_consts(batch, consts, members is not None)
    out = jax.device_get(eval_fn(params_r, batch))
    keep = batch["weight"].reshape(-1) > 0
    if members is None:
      parts.append({k: np.asarray(v).reshape((-1,) + np.shape(v)[2:])[keep] for k, v in out.items()})
    else:  # [P, M, b, ...] -> [M, P*b, ...]
      parts.append(
        {k: np.moveaxis(np.asarray(v), 1, 0).reshape((members, -1) + np.shape(v)[3:])[:, keep] for k, v in out.items()}
      )
  cat = {k: np.concatenate([p[k] for p in parts], axis=0 if members is None else 1) for k in parts[0]}
  if members is None:
    return [cat]
  return [{k: v[i] for k, v in cat.items()} for i in range(members)]


def evaluate(setup: Setup, outputs: dict[str, np.ndarray], split: fmt.Split) -> dict[str, dict[str, Any]]:
  """{task name: metrics} of one member's outputs on ``split``."""
  return {t.name: tasks_lib.evaluate(t, outputs[t.head], split) for t in setup.tasks}


def fit(
  setup: Setup,
  fold: FoldData,
  seeds: list[int],
  fold_dir: Path,
  dirs: list[Path] | None = None,
  hparams: list[dict] | None = None,
  test: bool = True,
) -> list[dict[str, Any]]:
  """Train ``seeds`` on ``fold`` (resuming where checkpoints exist); one result dict per member.

  ``dirs``: the members' directories (default ``fold_dir/seed_<s>``); ``hparams``: per member, hyperparameters that
  live in the state (:func:`jmoe.train.state.with_overrides`: a search's trials train as members of one program);
  ``test=False``: select on validation only and leave the test split untouched (a search's trials)."""
  dirs = dirs or [fold_dir / f"seed_{s}" for s in seeds]
  hparams = hparams or [{} for _ in seeds]
  if setup.cfg.members != "sequential" and len(seeds) > 1:
    parts = member_chunks(setup.cfg, len(seeds))
  else:
    parts = [range(i, i + 1) for i in range(len(seeds))]
  pick = lambda xs, part: [xs[i] for i in part]
  return [
    r
    for part in parts
    for r in _fit_group(
      setup, [fold] * len(part), pick(seeds, part), pick(dirs, part), len(part) > 1, pick(hparams, part), test
    )
  ]


def member_chunks(cfg, count: int) -> list[range]:
  """Index ranges of the vmapped programs for ``count`` members: one program, or programs of at most
  ``config.member_chunk`` members (0 = no limit) of near-equal sizes (at most two compiled shapes).

  On CPU a member axis pays only while the M members' parameters and optimizer states stay in the cache; beyond
  that it is slower than sequential training (docs/benchmarks.md), so a chunk limit keeps it where it pays."""
  limit = int(cfg.get("member_chunk", 0) or 0)
  if limit <= 0 or count <= limit:
    return [range(count)]
  n = -(-count // limit)  # number of programs
  bounds = [round(i * count / n) for i in range(n + 1)]
  return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def fit_members(setup: Setup, members: list[tuple[FoldData, int, Path]]) -> list[dict[str, Any]]:
  """Train (fold, seed, seed dir) members as ONE vmapped program: folds x seeds of equal split sizes
  (``config.members='vmap_folds'``); each member with its own data, batch order, RNG, early stopping and
  checkpoints. One result dict per member, in order."""
  sizes = {(len(f.train), len(f.valid), len(f.test)) for f, _, _ in members}
  if len(sizes) > 1:
    raise ValueError(
      f"members='vmap_folds' needs folds of equal train/valid/test sizes, got {sorted(sizes)}; "
      "use --config.members=vmap (seeds only)"
    )
  folds, seeds, dirs = (list(x) for x in zip(*members))
  return [
    r
    for part in member_chunks(setup.cfg, len(members))
    for r in _fit_group(
      setup, [folds[i] for i in part], [seeds[i] for i in part], [dirs[i] for i in part], vmapped=len(part) > 1
    )
  ]


def _fit_group(
  setup: Setup, folds: list[FoldData], seeds: list[int], dirs: list[Path], vmapped: bool, hparams=None, test=True
) -> list[dict]:
  sample = next(batches_lib.iterate_batches(folds[0].train, setup.modalities, setup.cfg.optim.batch_size, 1))
  sample = jax.tree.map(lambda a: a[0], sample)
  init = lambda s: state_lib.create_state(
    setup.model, setup.tx, sample, jax.random.key(s), setup.hparams, setup.init_fn
  )
  states = [state_lib.with_overrides(init(s), hp) for s, hp in zip(seeds, hparams or [{}] * len(seeds))]
  ckpts = [open_checkpoints(d) for d in dirs]
  try:
    with interrupts_remembered():
      return _train_group(setup, folds, seeds, vmapped, states, dirs, ckpts, test)
  finally:
    for ck in ckpts:
      ck.close()


def open_checkpoints(d: Path) -> Checkpoints:
  """The checkpoints of member directory ``d``; what an interrupted save left there is undone with a note each."""
  ck = Checkpoints(d)
  for note in ck.recovered:
    log(f"  note: {note} (an interrupted save; resuming from the last complete checkpoint)")
  return ck


def _predict_members(
  setup: Setup, eval_fn, params_r, splits: list, vmapped: bool, consts: dict | None = None
) -> list[dict[str, np.ndarray]]:
  """One output dict per member on its own split (members of one fold share one vmapped evaluation)."""
  if not vmapped:
    return predict(setup, eval_fn, params_r, splits[0], None, consts)
  if all(sp is splits[0] for sp in splits):
    return predict(setup, eval_fn, params_r, splits[0], len(splits), consts)
  host = setup.dp.unreplicate(params_r)  # members on different folds: each evaluated on its own split
  one = lambda i: {k: v[i] for k, v in (consts or {}).items()}
  return [
    predict(setup, setup.steps[1], setup.dp.replicate(jax.tree.map(lambda a: a[i], host)), sp, None, one(i))[0]
    for i, sp in enumerate(splits)
  ]


def _resume(setup: Setup, ckpts: list, i: int, d: Path, like, where: str) -> tuple[Any, dict]:
  """(state, book) of member ``i`` from its latest checkpoint (``like`` and a fresh book if none), its best
  checkpoint verified too; a damaged one raises a one-line error, or is discarded with config.discard_damaged."""
  ck = ckpts[i]
  try:
    restored = ck.restore_latest(like)
    if restored is None:
      return like, _new_book()
    state, book = restored[0], {**_new_book(), **restored[1]}
    best_step = ck.best_step()
    if book["best_epoch"] >= 0 and (
      best_step is None or (best_step != book["best_epoch"] and best_step <= book["epoch"])
    ):
      raise DamagedCheckpointError(
        f"{d / 'best'} lacks epoch {book['best_epoch']}, the best one {d / 'latest'} records"
      )
    if best_step is not None:
      ck.restore_best(like)  # verified now rather than after the other seeds have trained
  except DamagedCheckpointError as e:
    if not setup.cfg.get("discard_damaged", False):
      raise DamagedCheckpointError(
        f"damaged checkpoint: {e}; re-run with --config.discard_damaged=True to discard {d} and retrain {where}"
      ) from None
    log(f"  {where}: damaged checkpoint ({e}): discarded (config.discard_damaged=True), retraining from scratch")
    ck.close()
    for name in ("latest", "best"):
      shutil.rmtree(d / name, ignore_errors=True)
    for name in ("metrics.jsonl", "test_outputs.npz"):
      (d / name).unlink(missing_ok=True)
    ckpts[i] = open_checkpoints(d)
    return like, _new_book()
  log(f"  {where}: resuming after epoch {book['epoch']} from {d / 'latest'}")
  return state, book


write_atomic, read_jsonl = workdir.write_atomic, workdir.read_jsonl


def append_jsonl(path: Path, record: dict) -> None:
  """One JSONL line per epoch (a module function so that tests can interrupt the save sequence here)."""
  workdir.append_jsonl(path, record)


def evaluate_chosen(setup: Setup, fold: FoldData, state, member_dir: Path) -> tuple[dict, dict, list[str]]:
  """The chosen state (its batch constants included) evaluated on validation and, once, on test; the test outputs
  written to ``member_dir/test_outputs.npz``. -> (valid metrics, test metrics, :func:`prediction_flags`)."""
  consts = consts_of(state.hparams)
  params_r = setup.dp.replicate(state.params)
  val = jsonable(evaluate(setup, predict(setup, setup.steps[1], params_r, fold.valid, None, consts)[0], fold.valid))
  out = predict(setup, setup.steps[1], params_r, fold.test, None, consts)[0]
  flags = prediction_flags(setup, out, fold.test)
  if flags:
    log(f"  {fold.name} {member_dir.name}: warning: {'; '.join(flags)}")
  save_test_outputs(setup, fold, out, member_dir)
  return val, jsonable(evaluate(setup, out, fold.test)), flags


def train_epoch(setup: Setup, state_r, trains: list, shuffles: list, rngs, active, vmapped: bool, consts=None):
  """One epoch of a member group (or of one model): every member on its own train split and batch order
  (``shuffles``), with its RNG and batch constants; members not ``active`` keep their state. -> (state, one dict of
  mean training metrics per member)."""
  opt, dp = setup.cfg.optim, setup.dp
  train_fn = setup.member_steps[0] if vmapped else setup.steps[0]
  step_metrics = []
  if vmapped:
    it = batches_lib.iterate_member_batches(
      trains, setup.modalities, opt.batch_size, dp.num_shards, shuffles, setup.heads
    )
    for batch in it:
      state_r, m = train_fn(state_r, with_consts(batch, consts, True), rngs, active)
      step_metrics.append(m)
  else:
    it = batches_lib.iterate_batches(
      trains[0], setup.modalities, opt.batch_size, dp.num_shards, shuffles[0], setup.heads
    )
    for batch in it:
      state_r, m = train_fn(state_r, with_consts(batch, consts, False), rngs)
      step_metrics.append(m)
  step_metrics = jax.device_get(step_metrics)  # one transfer per epoch; means on the host
  train_ms = []
  for i in range(len(shuffles)):
    pick = (lambda a: np.asarray(a[0])[i]) if vmapped else (lambda a: np.asarray(a[0]))
    train_ms.append({k: np.mean([pick(m[k]) for m in step_metrics], axis=0).tolist() for k in step_metrics[0]})
  return state_r, train_ms


def _train_group(setup, folds, seeds, vmapped, states, dirs, ckpts, test=True) -> list[dict]:
  cfg, opt, dp = setup.cfg, setup.cfg.optim, setup.dp
  eval_fn = (setup.member_steps if vmapped else setup.steps)[1]
  books = []
  for i, s in enumerate(seeds):
    states[i], book = _resume(setup, ckpts, i, dirs[i], states[i], f"{folds[i].name} seed {s}")
    books.append(book)
  start = {b["epoch"] for b in books}
  if len(start) > 1:
    raise ValueError(
      f"{dirs[0].parent}: the members' checkpoints stop at different epochs {sorted(start)}; resume them with "
      "--config.members=sequential"
    )
  for d, b in zip(dirs, books):  # keep the epochs that the checkpoint covers, drop any written after it
    jsonl = d / "metrics.jsonl"
    if jax.process_index() == 0:
      keep = [r for r in read_jsonl(jsonl) if r["epoch"] <= b["epoch"]]
      write_atomic(jsonl, "".join(json.dumps(r) + "\n" for r in keep))
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  host_state = stack(states) if vmapped else states[0]
  consts = consts_of(host_state.hparams)
  state_r = dp.replicate(host_state)
  schedule = opt.get("schedule", "constant")
  rng_seeds = [jax.random.key(10_000 + s) for s in seeds]
  rngs = jax.random.wrap_key_data(np.stack([jax.random.key_data(k) for k in rng_seeds])) if vmapped else rng_seeds[0]
  bar = tqdm(
    range(books[0]["epoch"] + 1, opt.epochs),
    desc=f"{'+'.join(dict.fromkeys(f.name for f in folds))} seed{'s' if vmapped else ''} {','.join(map(str, seeds))}",
    leave=False,
    disable=jax.process_index() != 0 or cfg.get("quiet", False),
  )
  for epoch in bar:
    active = np.array([not b["stopped"] for b in books])
    if not active.any():
      break
    check_interrupted()
    before_epoch(epoch)
    if schedule != "constant":  # the epoch's learning-rate factor, set on the host copy (no recompilation)
      factor = state_lib.schedule_factor(schedule, epoch, opt.epochs)
      state_r = dp.replicate(state_lib.with_lr_scale(host_state, factor))
    shuffles = [s * 100_003 + epoch for s in seeds]
    state_r, train_ms = train_epoch(setup, state_r, [f.train for f in folds], shuffles, rngs, active, vmapped, consts)
    params_r = state_r.params
    val_outs = _predict_members(setup, eval_fn, params_r, [f.valid for f in folds], vmapped, consts)
    host_state = dp.unreplicate(state_r)
    for i, (s, book) in enumerate(zip(seeds, books)):
      if book["stopped"]:
        if vmapped:  # keep a stopped member's latest in step with the others (its state is unchanged)
          book["epoch"] = epoch
          ckpts[i].save_latest(epoch, jax.tree.map(lambda a: a[i], host_state), book)
        continue
      train_m = train_ms[i]
      loss = train_m["loss"]
      if book.get("first_loss") is None and math.isfinite(loss):
        book["first_loss"] = loss
      max_loss, rule = loss_limit(opt.get("max_loss", 0.0), book.get("first_loss"))
      if not math.isfinite(loss) or loss > max_loss:
        book.update(stopped=True, diverged=True, epoch=epoch)
        why = "non-finite" if not math.isfinite(loss) else f"above {rule}"
        kept = f"best checkpoint of epoch {book['best_epoch']} kept" if book["best_epoch"] >= 0 else "no checkpoint"
        log(
          f"  {folds[i].name} seed {s}: training loss {loss:.4g} is {why} at epoch {epoch}: stopped as diverged "
          f"({kept}; lower optim.lr)"
        )
        member_state = jax.tree.map(lambda a: a[i], host_state) if vmapped else host_state
        ckpts[i].save_latest(epoch, member_state, book)
        continue
      val = jsonable(evaluate(setup, val_outs[i], folds[i].valid))
      value = tasks_lib.selection_value(setup.select_task, val[setup.select_task.name])
      improved = value is not None and setup.select_task.better(value, book["best_value"])
      book.update(epoch=epoch, bad_epochs=0 if improved else book["bad_epochs"] + 1)
      member_state = jax.tree.map(lambda a: a[i], host_state) if vmapped else host_state
      if improved:
        book.update(best_value=value, best_epoch=epoch, best_valid=val)
        ckpts[i].save_best(epoch, member_state, {"epoch": epoch, "valid": val})
      book["stopped"] = book["bad_epochs"] >= opt.patience
      if jax.process_index() == 0:
        append_jsonl(dirs[i] / "metrics.jsonl", {"epoch": epoch, "train": train_m, "valid": val})
      ckpts[i].save_latest(epoch, member_state, book)  # last: it marks the epoch as done
    sel = f"{setup.select_task.name}/{setup.select_task.select}"
    bar.set_postfix(loss=f"{train_ms[0]['loss']:.3f}", best=books[0]["best_epoch"], sel=sel)
  if not test:  # validation only: the best epoch and its validation metrics, the test split untouched
    return [_valid_result(setup, folds[i], s, b, ckpts[i]) for i, (s, b) in enumerate(zip(seeds, books))]
  return _final_results(setup, folds, seeds, dirs, ckpts, books, states, vmapped)


def _valid_result(setup, fold, seed, book, ckpt) -> dict:
  """A member's result without its test evaluation: its best epoch and that epoch's validation metrics."""
  if book["best_epoch"] < 0 or book.get("best_valid") is None:
    status = "diverged" if book.get("diverged") else "no valid selection metric"
    return {"seed": seed, "status": status, "best_epoch": None, "valid": None, "test": None, "select": None}
  status = "diverged" if book.get("diverged") else "ok"
  return {
    "seed": seed,
    "status": status,
    "best_epoch": book["best_epoch"],
    "valid": book["best_valid"],
    "test": None,
    "select": book["best_value"],
  }


DIVERGENCE_FACTOR = 100.0


def loss_limit(max_loss: float, first_loss: float | None) -> tuple[float, str]:
  """(the training-loss limit above which a member is stopped as diverged, the rule in words).

  ``optim.max_loss`` > 0: that value. 0 (default): :data:`DIVERGENCE_FACTOR` x max(|first epoch's loss|, 1): a loss
  that grew a hundredfold is a run that diverged even while it stays finite."""
  if max_loss and max_loss > 0:
    return float(max_loss), f"optim.max_loss={max_loss:g}"
  if first_loss is None:
    return math.inf, "no limit yet"
  limit = DIVERGENCE_FACTOR * max(abs(first_loss), 1.0)
  return limit, f"{DIVERGENCE_FACTOR:g} x the first epoch's loss (limit {limit:.4g}; set optim.max_loss to change it)"


def prediction_flags(setup: Setup, outputs: dict[str, np.ndarray], split: fmt.Split) -> list[str]:
  """Warnings for a model's outputs on ``split``: a head whose predictions are constant (a collapsed model)."""
  flags = []
  for t in setup.tasks:
    out = np.asarray(outputs[t.head], np.float64)
    keep = split.label_mask(t.label)
    if out.ndim == 0 or keep.sum() < 2:
      continue
    out = out[keep]
    if t.kind in ("classification", "sentiment_class") and out.ndim == 2:
      if len(np.unique(out.argmax(-1))) == 1:
        flags.append(f"{t.name}: predicts one class for every sample")
      continue
    label_std = float(np.std(np.asarray(split.labels[t.label], np.float64)[keep]))
    if label_std > 0 and float(np.max(np.std(out.reshape(len(out), -1), axis=0))) < 1e-3 * label_std:
      flags.append(f"{t.name}: constant predictions (std < 1e-3 x the label std)")
  return flags


def save_test_outputs(setup: Setup, fold: FoldData, outputs: dict[str, np.ndarray], member_dir: Path) -> None:
  """``test_outputs.npz``: every head and per-sample diagnostic, ``label.<head>``, ``label_mask.<head>``, ids."""
  if jax.process_index() != 0:
    return
  arrays = {k.replace("/", "."): v for k, v in outputs.items()}
  arrays.update({f"label.{h}": np.asarray(fold.test.labels[h]) for h in setup.heads})
  arrays.update({f"label_mask.{h}": fold.test.label_mask(h) for h in setup.heads})
  np.savez(member_dir / "test_outputs.npz", ids=np.asarray(fold.test.ids).astype(str), **arrays)


def _final_results(setup, folds, seeds, dirs, ckpts, books, like_states, vmapped) -> list[dict]:
  """Restore each member's best checkpoint, evaluate it once on test, save its test outputs."""
  results, best_params, metas = [], [], []
  for i, s in enumerate(seeds):
    best = ckpts[i].restore_best(like_states[i])
    if best is None:  # diverged in its first epoch, or the selection metric was undefined at every epoch
      status = "diverged" if books[i].get("diverged") else "no valid selection metric"
      if status != "diverged":
        log(
          f"  {folds[i].name} seed {s}: valid {setup.select_task.name}/{setup.select_task.select} was undefined at every "
          "epoch: no checkpoint selected (choose another --config.select)"
        )
      results.append((i, {"seed": s, "status": status, "best_epoch": None, "valid": None, "test": None}))
      continue
    state, meta = best
    best_params.append((i, state))
    metas.append(meta)
  if best_params:
    idx = [i for i, _ in best_params]
    if vmapped:
      stacked = jax.tree.map(lambda *xs: np.stack(xs), *[st for _, st in best_params])
      tests = [folds[i].test for i in idx]
      outs = _predict_members(
        setup, setup.member_steps[1], setup.dp.replicate(stacked.params), tests, True, consts_of(stacked.hparams)
      )
    else:
      st = best_params[0][1]
      outs = predict(setup, setup.steps[1], setup.dp.replicate(st.params), folds[0].test, None, consts_of(st.hparams))
    for j, (i, meta) in enumerate(zip(idx, metas)):
      fold = folds[i]
      test = jsonable(evaluate(setup, outs[j], fold.test))
      status = "diverged" if books[i].get("diverged") else "ok"
      r = {"seed": seeds[i], "status": status, "best_epoch": meta["epoch"], "valid": meta["valid"], "test": test}
      flags = prediction_flags(setup, outs[j], fold.test)
      if flags:
        r["flags"] = flags
        log(f"  {fold.name} seed {seeds[i]}: warning: {'; '.join(flags)}")
      results.append((i, r))
      save_test_outputs(setup, fold, outs[j], dirs[i])
  return [r for _, r in sorted(results, key=lambda ir: ir[0])]  # member order
