"""Robustness of a trained EUAR run under the EUAR paper's noise protocol (its Tables 2-3), on the TEST split.

Command (after ``python -m experiments.euar_mosi``; any run dir written by :func:`jmoe.train.sentiment.run`)::

  python -m experiments.euar_robustness --run runs/euar_mosi
  python -m experiments.euar_robustness --run runs/euar_mosi --noise-levels 0 0.25 0.5   # one list for all noises
  python -m experiments.euar_robustness --run runs/euar_mosi --gaussian-levels 0 1 2 --seeds-from-run

For every seed of the run, the BEST checkpoint (chosen on validation by the training app) is restored and the
test split is evaluated under each condition below. Nothing is tuned or selected here: the model, data and
batching are those of the run (``config.json``), so the all-modalities row reproduces the run's own test
metrics (``results.json``) exactly.

Conditions
----------
* **Fixed missing modalities** (paper Table 2): for each of the 7 non-empty subsets of {L, V, A}
  (:data:`jmoe.data.perturb.MISSING_COMBOS`), the features of every other modality are set to zero for all test
  samples (masks kept: :func:`jmoe.data.perturb.drop_modalities`). Combos that share no modality with the run
  are skipped (listed in ``robustness.json``).
* **Gaussian noise on vision** at levels ``g`` (default 0, 0.1, 0.3, 0.5, 1.0): ``N(0, (g * s_V)^2)`` is added to
  every real entry of the vision features, where ``s_V`` is the standard deviation of the vision features on the
  TRAIN split, pooled over all real entries (samples x real time steps x feature dims; one number per run,
  recorded as ``gaussian_scale``). So ``g = 1`` is noise as large as the features' own spread.
* **Salt-and-pepper on vision** at ratios ``r`` (default 0, 0.1, 0.2, 0.3, 0.5): each real entry is replaced
  with probability ``r`` by the min or the max (1/2 each) of the vision features of the test split
  (:func:`jmoe.data.perturb.salt_and_pepper`).
* **Text blanking** at ratios ``r`` (default 0, 0.1, 0.2, 0.3, 0.5): ``round(r * T)`` real time steps (sequence
  text) or ``round(r * D)`` entries (utterance vectors) of every sample's text are zeroed
  (:func:`jmoe.data.perturb.blank_text`).

Perturbations are deterministic: condition ``c`` uses seed ``perturb_seed * 1_000_003 + crc32(c)`` and the same
perturbed test split is fed to every model seed, so the ± std over seeds is model variance only.

Metrics per condition (fractions, as in ``results.md``): Non0_acc_2, Non0_F1, Has0_acc_2, Acc7, MAE — mean ±
sample std over the seeds (``robustness.json`` also keeps every seed's full :func:`sentiment_metrics`).

Outputs, in the run dir: ``robustness.json``, ``robustness.md`` (two tables: missing modalities, noise) and
``robustness.png`` (Non0_acc_2 vs intensity per noise type with ± std bands, and a bar chart of the 7 missing
combos). The tables are printed. Titles say SYNTHETIC when the run's data is synthetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPORT_KEYS = ("Non0_acc_2", "Non0_F1", "Has0_acc_2", "Acc7", "MAE")
GAUSSIAN_LEVELS = (0.0, 0.1, 0.3, 0.5, 1.0)
SP_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.5)
BLANK_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.5)
NOISE_KINDS = {  # kind -> (modality, label for tables / plots)
  "gaussian": ("vision", "Gaussian noise (V), std = level x train std"),
  "salt_pepper": ("vision", "salt-and-pepper (V), ratio"),
  "blank_text": ("text", "text blanking (L), ratio"),
}


class RunError(ValueError):
  """A run dir that cannot be evaluated; the message is one line naming the path."""


@dataclasses.dataclass(frozen=True)
class Condition:
  kind: str  # "missing" | "gaussian" | "salt_pepper" | "blank_text"
  level: float = 0.0  # noise level / ratio (unused for "missing")
  available: tuple[str, ...] = ()  # letters, for "missing"

  @property
  def group(self) -> str:
    return "missing" if self.kind == "missing" else "noise"

  @property
  def name(self) -> str:
    if self.kind == "missing":
      return "missing:" + "".join(self.available)
    return f"{self.kind}:{self.level:g}"

  def seed(self, perturb_seed: int) -> int:
    return perturb_seed * 1_000_003 + zlib.crc32(self.name.encode())


def combo_label(available: Sequence[str]) -> str:
  return "{" + ", ".join(available) + "}"


def _fail(msg: str):
  raise RunError(msg.replace("\n", " "))


# --------------------------------------------------------------------------- loading a run
def _has_checkpoint(directory: Path) -> bool:
  return directory.is_dir() and any(p.is_dir() and p.name.isdigit() for p in directory.iterdir())


def find_seeds(run_dir: Path, seeds_from_run: bool = False) -> list[int]:
  """Seeds to evaluate: every ``seed_<s>`` with a best checkpoint, or (``seeds_from_run``) those of results.json."""
  if seeds_from_run:
    res = run_dir / "results.json"
    if not res.is_file():
      _fail(f"{res}: no results.json (--seeds-from-run needs a finished run)")
    seeds = [int(r["seed"]) for r in json.loads(res.read_text())["seeds"]]
    for s in seeds:
      if not _has_checkpoint(run_dir / f"seed_{s}" / "best"):
        _fail(f"{run_dir / f'seed_{s}' / 'best'}: no best checkpoint for seed {s} listed in results.json")
    return seeds
  seeds = sorted(
    int(p.name[5:]) for p in run_dir.glob("seed_*") if p.name[5:].isdigit() and _has_checkpoint(p / "best")
  )
  if not seeds:
    _fail(f"{run_dir}: no checkpoints (expected seed_<s>/best/<step> written by the training app)")
  return seeds


@dataclasses.dataclass
class LoadedRun:
  """A run's config, data, model and best-checkpoint params (replicated over ``devices``) per seed."""

  run_dir: Path
  cfg: Any
  ds: Any
  modalities: tuple[str, ...]
  devices: list
  p_eval: Any
  params: dict[int, Any]
  best_epochs: dict[int, int]
  results: dict | None

  @property
  def seeds(self) -> list[int]:
    return list(self.params)

  @property
  def synthetic(self) -> bool:
    return bool(self.ds.synthetic or (self.results or {}).get("synthetic", False))

  def predict(self, seed: int, split) -> np.ndarray:
    """Deterministic predictions [N] of seed ``seed``'s best checkpoint on ``split`` (the training app's batching)."""
    from jmoe.train import sentiment

    return sentiment.predict(
      self.p_eval, self.params[seed], split, self.modalities, self.cfg.optim.batch_size, self.devices
    )


def load_run(run_dir, seeds_from_run: bool = False) -> LoadedRun:
  """Rebuild a run from ``run_dir/config.json`` and restore each seed's BEST checkpoint (params only are used)."""
  run_dir = Path(run_dir)
  if not run_dir.is_dir():
    _fail(f"{run_dir}: run dir not found")
  cfg_path = run_dir / "config.json"
  if not cfg_path.is_file():
    _fail(f"{cfg_path}: no config.json (not a run dir written by jmoe.train.sentiment)")
  seeds = find_seeds(run_dir, seeds_from_run)

  import jax
  import ml_collections
  from absl import logging
  from jmoe.train import batches as batches_lib
  from jmoe.train import sentiment
  from jmoe.train import steps as steps_lib
  from jmoe.train.checkpoints import Checkpoints

  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    cfg = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
  except (json.JSONDecodeError, TypeError, ValueError) as e:
    _fail(f"{cfg_path}: unreadable config ({e})")
  try:
    ds = sentiment.load_data(cfg.data)
  except (ValueError, OSError) as e:
    _fail(f"{cfg_path}: cannot load the run's data: {e}")
  mods = tuple(m for m in cfg.data.modalities.split(",") if m)
  devices = jax.local_devices()[: cfg.devices] if cfg.devices else jax.local_devices()
  if cfg.optim.batch_size % len(devices):
    _fail(f"{cfg_path}: optim.batch_size={cfg.optim.batch_size} is not divisible by the {len(devices)} devices")
  model = sentiment.build_model(cfg.model, mods)
  tx = steps_lib.make_optimizer(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip)
  _, p_eval = steps_lib.make_steps(model, dict(cfg.loss), tx, devices)

  # Abstract TrainState (what the training app saves) from model.init under eval_shape: no parameters are
  # computed. Checkpoints._restore reads shape/dtype off numpy leaves, so each ShapeDtypeStruct becomes a
  # zero-strided numpy view (no memory) of its shape and dtype.
  sample = next(batches_lib.iterate_batches(ds.splits["train"], mods, cfg.optim.batch_size, 1))
  sample = jax.tree.map(lambda a: a[0], sample)

  def _state():
    params = model.init(jax.random.key(0), sample)["params"]
    return steps_lib.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  abstract = jax.eval_shape(_state)
  like = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), abstract)

  params, best_epochs = {}, {}
  for s in seeds:
    ckpt = Checkpoints(run_dir / f"seed_{s}")
    try:
      restored = ckpt.restore_best(like)
    except Exception as e:  # orbax raises many kinds; keep the message to one line
      msg = " ".join(str(e).split())
      msg = msg if len(msg) <= 240 else msg[:240] + " ..."
      _fail(
        f"{run_dir / f'seed_{s}' / 'best'}: cannot restore the best checkpoint into the model built from "
        f"config.json (was the model code changed since training?): {type(e).__name__}: {msg}"
      )
    finally:
      ckpt.close()
    if restored is None:
      _fail(f"{run_dir / f'seed_{s}' / 'best'}: no checkpoints")
    state, meta = restored
    params[s] = steps_lib.replicate(state.params, devices)
    best_epochs[s] = int(meta.get("epoch", -1))
  res_path = run_dir / "results.json"
  results = json.loads(res_path.read_text()) if res_path.is_file() else None
  return LoadedRun(run_dir, cfg, ds, mods, devices, p_eval, params, best_epochs, results)


# --------------------------------------------------------------------------- conditions
def gaussian_scale(split, modality: str = "vision") -> float:
  """Std of ``modality`` over the real entries of ``split`` (pooled over samples, real steps and dims)."""
  x = split.features[modality]
  if x.ndim == 3 and modality in split.masks:
    vals = x[split.masks[modality]]
  else:
    vals = x
  return float(np.std(vals.astype(np.float64)))


def make_conditions(
  modalities: Sequence[str], gaussian_levels=GAUSSIAN_LEVELS, sp_ratios=SP_RATIOS, blank_ratios=BLANK_RATIOS
) -> tuple[list[Condition], list[str]]:
  """(conditions, skipped) for a run with ``modalities`` (jmoe names)."""
  from jmoe.data import perturb

  conds, skipped = [], []
  for combo in perturb.MISSING_COMBOS:
    if any(perturb.LETTERS[a] in modalities for a in combo):
      conds.append(Condition("missing", available=tuple(combo)))
    else:
      skipped.append(f"missing {combo_label(combo)}: the run has none of these modalities")
  for kind, levels in (("gaussian", gaussian_levels), ("salt_pepper", sp_ratios), ("blank_text", blank_ratios)):
    m = NOISE_KINDS[kind][0]
    if m not in modalities:
      skipped.append(f"{kind}: the run has no {m} modality")
      continue
    conds += [Condition(kind, level=float(v)) for v in levels]
  return conds, skipped


def apply_condition(cond: Condition, split, perturb_seed: int, scale: float):
  """The test split under ``cond`` (``scale``: the train std of vision, for Gaussian noise)."""
  from jmoe.data import perturb

  seed = cond.seed(perturb_seed)
  if cond.kind == "missing":
    return perturb.drop_modalities(split, cond.available)
  if cond.kind == "gaussian":
    return perturb.gaussian_noise(split, "vision", cond.level * scale, seed)
  if cond.kind == "salt_pepper":
    return perturb.salt_and_pepper(split, "vision", cond.level, seed)
  if cond.kind == "blank_text":
    return perturb.blank_text(split, cond.level, seed)
  raise ValueError(f"unknown condition kind {cond.kind!r}")


def _check_levels(name: str, levels: Sequence[float], ratio: bool) -> tuple[float, ...]:
  levels = tuple(float(v) for v in levels)
  if not levels:
    raise RunError(f"{name}: give at least one level")
  bad = [v for v in levels if not np.isfinite(v) or v < 0 or (ratio and v > 1)]
  if bad:
    raise RunError(f"{name}: levels must be finite and >= 0{' and <= 1 (ratios)' if ratio else ''}, got {bad[0]:g}")
  return levels


# --------------------------------------------------------------------------- evaluation
def evaluate(
  run,
  gaussian_levels=GAUSSIAN_LEVELS,
  sp_ratios=SP_RATIOS,
  blank_ratios=BLANK_RATIOS,
  seeds_from_run: bool = False,
  perturb_seed: int = 0,
  quiet: bool = False,
) -> dict[str, Any]:
  """Evaluate every seed of ``run`` (a run dir or a :class:`LoadedRun`) under every condition; returns the
  ``robustness.json`` content (nothing is written)."""
  from tqdm.auto import tqdm
  from jmoe import metrics as metrics_lib
  from jmoe.train.sentiment import METRIC_KEYS

  gaussian_levels = _check_levels("gaussian levels", gaussian_levels, ratio=False)
  sp_ratios = _check_levels("salt-and-pepper ratios", sp_ratios, ratio=True)
  blank_ratios = _check_levels("text-blanking ratios", blank_ratios, ratio=True)
  t0 = time.time()
  if not isinstance(run, LoadedRun):
    run = load_run(run, seeds_from_run)
  ds = run.ds
  test = ds.splits["test"]
  scale = gaussian_scale(ds.splits["train"]) if "vision" in run.modalities else None
  conds, skipped = make_conditions(run.modalities, gaussian_levels, sp_ratios, blank_ratios)
  rows = []
  bar = tqdm(conds, desc="conditions", unit="cond", disable=quiet, file=sys.stderr)
  for cond in bar:
    bar.set_postfix_str(cond.name)
    split = apply_condition(cond, test, perturb_seed, scale)
    per_seed = {s: metrics_lib.sentiment_metrics(run.predict(s, split), split.labels["sentiment"]) for s in run.seeds}
    row = {
      "group": cond.group,
      "kind": cond.kind,
      "name": cond.name,
      "seed": cond.seed(perturb_seed),
      "per_seed": {str(s): m for s, m in per_seed.items()},
      "mean_std": {k: list(metrics_lib.mean_std([m[k] for m in per_seed.values()])) for k in METRIC_KEYS},
    }
    if cond.kind == "missing":
      row["available"] = list(cond.available)
    else:
      row["modality"] = NOISE_KINDS[cond.kind][0]
      row["level"] = cond.level
      if cond.kind == "gaussian":
        row["abs_std"] = cond.level * scale
    rows.append(row)
  bar.close()
  return {
    "run": str(run.run_dir),
    "name": run.cfg.get("name", ""),
    "dataset": ds.name,
    "synthetic": run.synthetic,
    "source": ds.source,
    "split": "test",
    "checkpoint": "best (selected on valid by the training app)",
    "seeds": run.seeds,
    "best_epochs": {str(s): e for s, e in run.best_epochs.items()},
    "modalities": list(run.modalities),
    "n_test": len(test),
    "perturb_seed": perturb_seed,
    "gaussian_scale": scale,
    "protocol": {
      "missing": "features of unavailable modalities set to 0 for all samples, masks kept",
      "gaussian": "vision += N(0, (level * gaussian_scale)^2) on real entries; gaussian_scale = std of "
      "train vision features pooled over real entries",
      "salt_pepper": "each real vision entry -> min or max of test vision features with prob. ratio",
      "blank_text": "round(ratio * T) real text steps (or round(ratio * D) entries of text vectors) zeroed",
      "seeds": "condition seed = perturb_seed * 1000003 + crc32(name); same perturbation for every model seed",
    },
    "levels": {"gaussian": list(gaussian_levels), "salt_pepper": list(sp_ratios), "blank_text": list(blank_ratios)},
    "skipped": skipped,
    "conditions": rows,
    "seconds": time.time() - t0,
  }


# --------------------------------------------------------------------------- reporting
def _title(out: dict, what: str) -> str:
  syn = " (SYNTHETIC data: not CMU-MOSI/MOSEI results)" if out["synthetic"] else ""
  n = len(out["seeds"])
  return (
    f"{out['name']} robustness — {what}: {out['dataset']}{syn}, test split, best checkpoint, "
    f"{n} seed{'s' if n != 1 else ''}, mean ± std"
  )


def tables(out: dict) -> tuple[str, str]:
  """(missing-modalities table, noise table), markdown."""
  from jmoe import metrics as metrics_lib

  ms = lambda r: {k: tuple(r["mean_std"][k]) for k in REPORT_KEYS}
  miss = [{"available": combo_label(r["available"]), **ms(r)} for r in out["conditions"] if r["group"] == "missing"]
  noise = []
  for r in out["conditions"]:
    if r["group"] != "noise":
      continue
    level = f"{r['level']:g} x train std" if r["kind"] == "gaussian" else f"ratio {r['level']:g}"
    std = f"{r['abs_std']:.4g}" if r["kind"] == "gaussian" else ""
    noise.append({"noise": r["kind"], "modality": r["modality"], "level": level, "noise std": std, **ms(r)})
  t1 = metrics_lib.format_table(
    miss, ["available", *REPORT_KEYS], title=_title(out, "fixed missing modalities (others zero-filled)")
  )
  t2 = metrics_lib.format_table(
    noise,
    ["noise", "modality", "level", "noise std", *REPORT_KEYS],
    title=_title(out, "modality noise (Gaussian std in units of the train std of vision)"),
  )
  return t1, t2


def plot(out: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  key = "Non0_acc_2"
  kinds = [k for k in NOISE_KINDS if any(r["kind"] == k for r in out["conditions"])]
  miss = [r for r in out["conditions"] if r["group"] == "missing"]
  ncol = len(kinds) + (1 if miss else 0)
  fig, axes = plt.subplots(1, max(ncol, 1), figsize=(4.2 * max(ncol, 1), 3.6), squeeze=False, sharey=True)
  axes = list(axes[0])
  clean = [r["mean_std"][key][0] for r in miss if len(r["available"]) == 3]
  for ax, kind in zip(axes, kinds):
    rs = sorted((r for r in out["conditions"] if r["kind"] == kind), key=lambda r: r["level"])
    x = np.array([r["level"] for r in rs])
    mu = np.array([r["mean_std"][key][0] for r in rs])
    sd = np.array([r["mean_std"][key][1] for r in rs])
    ax.plot(x, mu, "o-")
    ax.fill_between(x, mu - sd, mu + sd, alpha=0.25, label="± std over seeds")
    if clean:
      ax.axhline(clean[0], color="gray", ls="--", lw=1, label="clean (L, V, A)")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(NOISE_KINDS[kind][1], fontsize=9)
    ax.set_xlabel("level (x train std)" if kind == "gaussian" else "ratio")
    ax.grid(alpha=0.3)
  if miss:
    ax = axes[len(kinds)]
    mu = [r["mean_std"][key][0] for r in miss]
    sd = [r["mean_std"][key][1] for r in miss]
    ax.bar(range(len(miss)), mu, yerr=sd, capsize=3, color="tab:orange")
    ax.set_xticks(range(len(miss)))
    ax.set_xticklabels(["".join(r["available"]) for r in miss])
    ax.set_title("fixed missing: available modalities", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
  axes[0].set_ylabel(f"{key} (test)")
  syn = " — SYNTHETIC DATA" if out["synthetic"] else ""
  n = len(out["seeds"])
  fig.suptitle(
    f"{out['name']} robustness on {out['dataset']}{syn} (test, best ckpt, {n} seed{'s' if n != 1 else ''}, mean ± std)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_outputs(out: dict, run_dir: Path) -> str:
  """Write robustness.json / .md / .png into ``run_dir``; return the markdown."""
  t1, t2 = tables(out)
  notes = [f"- {k}: {v}" for k, v in out["protocol"].items()]
  if out["gaussian_scale"] is not None:
    notes.append(f"- gaussian_scale (train std of vision) = {out['gaussian_scale']:.6g}")
  notes += [f"- skipped {s}" for s in out["skipped"]]
  md = t1 + "\n" + t2 + "\nProtocol (EUAR paper Tables 2-3; metrics are fractions):\n\n" + "\n".join(notes) + "\n"
  (run_dir / "robustness.json").write_text(json.dumps(out, indent=2))
  (run_dir / "robustness.md").write_text(md)
  plot(out, run_dir / "robustness.png")
  return md


def run_robustness(
  run_dir,
  gaussian_levels=GAUSSIAN_LEVELS,
  sp_ratios=SP_RATIOS,
  blank_ratios=BLANK_RATIOS,
  seeds_from_run: bool = False,
  perturb_seed: int = 0,
  quiet: bool = False,
) -> dict[str, Any]:
  """Evaluate, write the three files, print the tables; returns the robustness.json content."""
  run_dir = Path(run_dir)
  out = evaluate(run_dir, gaussian_levels, sp_ratios, blank_ratios, seeds_from_run, perturb_seed, quiet)
  t1, t2 = tables(out)
  write_outputs(out, run_dir)
  print(t1)
  print(t2)
  print(f"run dir: {run_dir} (robustness.json, robustness.md, robustness.png); {out['seconds']:.0f} s")
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m experiments.euar_robustness",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--run", required=True, help="run dir written by the training app (e.g. runs/euar_mosi)")
  p.add_argument(
    "--noise-levels",
    type=float,
    nargs="+",
    default=None,
    metavar="L",
    help="one list of levels for all three noise types (Gaussian: x train std; others: ratios)",
  )
  p.add_argument(
    "--gaussian-levels",
    type=float,
    nargs="+",
    default=None,
    metavar="L",
    help=f"Gaussian std on vision in units of its train std (default {GAUSSIAN_LEVELS})",
  )
  p.add_argument(
    "--sp-levels",
    type=float,
    nargs="+",
    default=None,
    metavar="L",
    help=f"salt-and-pepper ratios on vision (default {SP_RATIOS})",
  )
  p.add_argument(
    "--blank-levels",
    type=float,
    nargs="+",
    default=None,
    metavar="L",
    help=f"text-blanking ratios (default {BLANK_RATIOS})",
  )
  p.add_argument(
    "--seeds-from-run",
    action="store_true",
    help="evaluate exactly the seeds of results.json (default: every seed_<s> with a best checkpoint)",
  )
  p.add_argument("--perturb-seed", type=int, default=0, help="base seed of the perturbations (default 0)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  return p.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
  args = parse_args(argv)
  pick = lambda own, default: tuple(
    own if own is not None else (args.noise_levels if args.noise_levels is not None else default)
  )
  try:
    return run_robustness(
      args.run,
      pick(args.gaussian_levels, GAUSSIAN_LEVELS),
      pick(args.sp_levels, SP_RATIOS),
      pick(args.blank_levels, BLANK_RATIOS),
      args.seeds_from_run,
      args.perturb_seed,
      args.quiet,
    )
  except RunError as e:
    raise SystemExit(f"euar_robustness: error: {e}") from None


if __name__ == "__main__":
  main()
