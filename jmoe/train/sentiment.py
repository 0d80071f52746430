"""Training app for the sentiment-regression models (EUAR on MOSI / MOSEI): seeds, early stopping, selection on
validation only, orbax latest/best checkpoints with exact resume, metrics JSONL, plots and a results table.

Run directory layout (``config.workdir``)::

  config.json          the resolved config
  results.json         per-seed test/valid metrics at the best-validation epoch, and mean / std
  results.md           the final table
  seed_<s>/metrics.jsonl  one line per epoch (train loss terms, per-expert load, validation metrics)
  seed_<s>/latest, seed_<s>/best   orbax checkpoints
  curves.png, expert_load.png
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from jmoe import metrics as metrics_lib
from jmoe.data import format as fmt
from jmoe.models.euar import EUAR
from jmoe.train import batches as batches_lib
from jmoe.train import parallel as parallel_lib
from jmoe.train import steps as steps_lib
from jmoe.train.checkpoints import Checkpoints

METRIC_KEYS = ("Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc5", "Acc7", "MAE", "Corr")


def log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg, file=sys.stderr)


def load_data(cfg: ml_collections.ConfigDict) -> fmt.Dataset:
  """Dataset named by ``cfg.source``: synthetic | bclstm | standard | dir | mmsa | tfds."""
  from jmoe import data as data_lib  # local: keeps TFDS out of import time unless asked for

  mods = tuple(m for m in cfg.modalities.split(",") if m)
  src = cfg.source
  if src == "synthetic":
    dims = {"text": cfg.synthetic_dims[0], "audio": cfg.synthetic_dims[1], "vision": cfg.synthetic_dims[2]}
    gen = data_lib.synthetic_mosei if cfg.get("synthetic_kind", "mosi") == "mosei" else data_lib.synthetic_mosi
    kwargs = {"seed": cfg.synthetic_seed, "dims": dims, "seq_len": cfg.seq_len or None}
    if cfg.get("synthetic_sizes"):
      kwargs["sizes"] = tuple(cfg.synthetic_sizes)
    ds = gen(**kwargs)
  elif src == "bclstm":
    ds = data_lib.load_mosi_bclstm(cfg.path, valid_fraction=cfg.valid_fraction, seed=cfg.split_seed)
  elif src == "standard":
    extra = {"text": cfg.text_features} if cfg.text_features else None
    base = tuple(m for m in mods if m != "text" or not extra)
    ds = data_lib.load_mosi_standard(cfg.path, modalities=base, extra_features=extra)
  elif src == "dir":
    ds = data_lib.load_dataset(cfg.path)
  elif src == "mmsa":
    ds = data_lib.load_mmsa_pickle(cfg.path)
  elif src == "tfds":
    from jmoe.data.tfds_builders import dataset_from_tfds

    ds = dataset_from_tfds(cfg.path, cfg.tfds_name)
  else:
    raise ValueError(f"unknown data.source {src!r}: use synthetic, bclstm, standard, dir, mmsa or tfds")
  missing = [m for m in mods if m not in ds.modalities]
  if missing:
    raise ValueError(f"{ds.source}: dataset has modalities {ds.modalities}, config asks for {mods}")
  return ds


def build_model(cfg: ml_collections.ConfigDict, modalities) -> EUAR:
  return EUAR(
    modalities=tuple(modalities),
    width=cfg.width,
    num_experts=cfg.num_experts,
    k=cfg.k,
    expert=cfg.expert,
    fusion=cfg.fusion,
    dispatch=cfg.dispatch,
    capacity_factor=cfg.capacity_factor or None,
    dropout=cfg.dropout,
  )


def predict(p_eval, params, split: fmt.Split, modalities, batch_size: int, devices) -> np.ndarray:
  """Deterministic predictions [N] for every sample of ``split`` (padding removed)."""
  out = []
  for batch in batches_lib.iterate_batches(split, modalities, batch_size, len(devices)):
    pred = np.asarray(p_eval(params, batch)).reshape(-1)
    out.append(pred[batch["weight"].reshape(-1) > 0])
  return np.concatenate(out)


def _selection_value(m: dict[str, float], metric: str) -> float:
  """Higher is better."""
  return -m[metric] if metric in ("MAE", "loss") else m[metric]


def train_seed(cfg, ds: fmt.Dataset, seed: int, run_dir: Path, devices, model, tx, p_train, p_eval):
  """Train one seed; resume from ``run_dir/latest`` if present. Returns the best-validation metrics."""
  mods = model.modalities
  opt = cfg.optim
  train, valid = ds.splits["train"], ds.splits["valid"]
  sample = next(batches_lib.iterate_batches(train, mods, opt.batch_size, 1))
  sample = jax.tree.map(lambda a: a[0], sample)
  params = jax.jit(model.init)(jax.random.key(seed), sample)["params"]
  state = steps_lib.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  ckpt = Checkpoints(run_dir)
  book = {"epoch": -1, "best_value": None, "best_epoch": -1, "bad_epochs": 0, "stopped": False}
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, book = restored
    log(f"  seed {seed}: resuming after epoch {book['epoch']} from {run_dir / 'latest'}")
  jsonl = run_dir / "metrics.jsonl"
  if jax.process_index() == 0:  # keep the epochs that the checkpoint covers, drop any written after it
    lines = jsonl.read_text().splitlines() if jsonl.exists() else []
    jsonl.write_text("".join(l + "\n" for l in lines if json.loads(l)["epoch"] <= book["epoch"]))
  state_r = devices.replicate(state)
  rng = jax.random.key(10_000 + seed)
  epochs_run = 0
  bar = tqdm(
    range(book["epoch"] + 1, opt.epochs),
    desc=f"seed {seed}",
    leave=False,
    disable=jax.process_index() != 0 or cfg.get("quiet", False),
  )
  for epoch in bar:
    if book["stopped"]:
      break
    if 0 <= cfg.get("stop_after_epochs", -1) <= epochs_run:
      ckpt.close()
      raise KeyboardInterrupt(f"stop_after_epochs={cfg.stop_after_epochs} (simulated interruption)")
    step_metrics = []
    for batch in batches_lib.iterate_batches(
      train, mods, opt.batch_size, len(devices), shuffle_seed=seed * 100_003 + epoch
    ):
      state_r, m = p_train(state_r, batch, rng)
      step_metrics.append(m)
    step_metrics = jax.device_get(step_metrics)  # one transfer per epoch; means on the host
    train_m = {k: np.mean([np.asarray(m[k][0]) for m in step_metrics], axis=0).tolist() for k in step_metrics[0]}
    if not np.isfinite(train_m["loss"]):
      raise FloatingPointError(f"seed {seed} epoch {epoch}: non-finite training loss {train_m['loss']}")
    val = metrics_lib.sentiment_metrics(
      predict(p_eval, state_r.params, valid, mods, opt.batch_size, devices), valid.labels["sentiment"]
    )
    value = _selection_value(val, cfg.select_metric)
    improved = book["best_value"] is None or value > book["best_value"]
    book.update(epoch=epoch, bad_epochs=0 if improved else book["bad_epochs"] + 1)
    state = devices.unreplicate(state_r)
    if improved:
      book.update(best_value=value, best_epoch=epoch)
      ckpt.save_best(epoch, state, {"epoch": epoch, "valid": val})
    book["stopped"] = book["bad_epochs"] >= opt.patience
    ckpt.save_latest(epoch, state, book)
    if jax.process_index() == 0:
      with jsonl.open("a") as f:
        f.write(json.dumps({"epoch": epoch, "train": train_m, "valid": val}) + "\n")
    bar.set_postfix(loss=f"{train_m['loss']:.3f}", val_mae=f"{val['MAE']:.3f}", best=book["best_epoch"])
    epochs_run += 1
  best = ckpt.restore_best(devices.unreplicate(state_r))
  ckpt.close()
  best_state, best_meta = best
  params_r = devices.replicate(best_state.params)
  test = metrics_lib.sentiment_metrics(
    predict(p_eval, params_r, ds.splits["test"], mods, opt.batch_size, devices), ds.splits["test"].labels["sentiment"]
  )
  return {"seed": seed, "best_epoch": best_meta["epoch"], "valid": best_meta["valid"], "test": test}


def _plots(workdir: Path, seeds) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  loads = None
  for s in seeds:
    rows = [json.loads(l) for l in (workdir / f"seed_{s}" / "metrics.jsonl").read_text().splitlines()]
    ep = [r["epoch"] for r in rows]
    axes[0].plot(ep, [r["train"]["loss"] for r in rows], label=f"seed {s}")
    axes[1].plot(ep, [r["valid"]["MAE"] for r in rows])
    axes[2].plot(ep, [r["valid"]["Non0_acc_2"] for r in rows])
    if loads is None:
      loads = {k[5:]: np.array([r["train"][k] for r in rows]) for k in rows[0]["train"] if k.startswith("load_")}
  for ax, t in zip(axes, ["train loss (eq. 12)", "valid MAE", "valid Non0_acc_2"]):
    ax.set_title(t)
    ax.set_xlabel("epoch")
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "curves.png", dpi=110)
  plt.close(fig)
  if loads:
    fig, axes = plt.subplots(1, len(loads), figsize=(4.5 * len(loads), 3.2), squeeze=False)
    for ax, (m, ld) in zip(axes[0], loads.items()):
      im = ax.imshow(ld.T, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-6, float(ld.max())))
      ax.set_title(f"{m}: expert load (seed {seeds[0]})")
      ax.set_xlabel("epoch")
      ax.set_ylabel("expert")
      ax.set_yticks(range(ld.shape[1]))
      fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(workdir / "expert_load.png", dpi=110)
    plt.close(fig)


def results_table(results: list[dict], title: str) -> tuple[str, dict]:
  summary = {}
  for split in ("valid", "test"):
    summary[split] = {k: metrics_lib.mean_std([r[split][k] for r in results]) for k in METRIC_KEYS}
  rows = [{"split": split, **{k: summary[split][k] for k in METRIC_KEYS}} for split in ("valid", "test")]
  table = metrics_lib.format_table(rows, ["split", *METRIC_KEYS], title=title)
  return table, summary


def run(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Train ``cfg.seeds`` seeds, select on validation, report test mean ± std. Re-running resumes."""
  t0 = time.time()
  parallel_lib.maybe_initialize_distributed(cfg.get("distributed", False))  # before anything touches a device
  ds = load_data(cfg.data)
  if ds.synthetic:
    log(
      f"*** SYNTHETIC DATA: {ds.name} ({ds.source}) — numbers are not CMU-MOSI results. "
      "Set --config.data.source=bclstm|standard|dir|mmsa|tfds for real data. ***"
    )
  log(f"data: {fmt.describe(ds)}")
  devices = parallel_lib.DataParallel.from_config(cfg)  # cfg.parallel: pmap | jit; batches padded to P rows
  workdir = Path(cfg.workdir)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(cfg.to_json()):
      log(f"note: {saved} differs from this config; resuming with the new config")
    saved.write_text(cfg.to_json(indent=2))
  log(f"model: {cfg.model.to_dict()} | devices: {devices.describe()}")
  seeds = [cfg.seed_offset + i for i in range(cfg.seeds)]
  mods = tuple(m for m in cfg.data.modalities.split(",") if m)
  model = build_model(cfg.model, mods)
  tx = steps_lib.make_optimizer(cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip)
  p_train, p_eval = devices.make_steps(model, dict(cfg.loss), tx)  # compiled once for all seeds
  results = []
  for s in tqdm(seeds, desc="seeds", disable=jax.process_index() != 0 or cfg.get("quiet", False)):
    results.append(train_seed(cfg, ds, s, workdir / f"seed_{s}", devices, model, tx, p_train, p_eval))
  title = (
    f"{cfg.name}: {ds.name}{' (SYNTHETIC)' if ds.synthetic else ''}, {len(seeds)} seeds, mean ± std, "
    f"best epoch on valid by {cfg.select_metric}"
  )
  table, summary = results_table(results, title)
  out = {
    "name": cfg.name,
    "dataset": ds.name,
    "synthetic": ds.synthetic,
    "source": ds.source,
    "seeds": results,
    "summary": {sp: {k: list(v) for k, v in d.items()} for sp, d in summary.items()},
    "seconds": time.time() - t0,
  }
  if jax.process_index() == 0:
    (workdir / "results.json").write_text(json.dumps(out, indent=2))
    (workdir / "results.md").write_text(table + "\n")
    _plots(workdir, seeds)
    print(table)
    print(f"\nrun dir: {workdir} (results.json, curves.png, expert_load.png); {out['seconds']:.0f} s")
  return out
