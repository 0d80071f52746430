"""Results of a run: mean ± std over seeds and over folds per task (results.json / results.md), and plots chosen by
task (training curves with the selected epoch marked; a confusion matrix for classification; a prediction-vs-label
scatter per dimension for regression; expert load for routed models).

Aggregation: for one fold, mean ± std (sample std, ddof=1) over seeds. For k folds, each seed's metric is first
averaged within a fold over seeds; the table then reports mean ± std over the k fold means ("over folds"), and
results.json also keeps the per-fold tables. Diverged seeds are left out of the means and listed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jmoe import metrics as metrics_lib
from jmoe.train import tasks as tasks_lib
from jmoe.train import workdir as workdir_lib


def _mean_std(values) -> tuple[float, float] | None:
  vals = [v for v in values if v is not None and np.isfinite(v)]
  return metrics_lib.mean_std(vals) if vals else None


def summarize(tasks, folds: list[dict]) -> dict[str, Any]:
  """{task: {split: {metric: (mean, std)}}} over seeds (one fold) or over fold means (several folds)."""
  out: dict[str, Any] = {}
  for t in tasks:
    out[t.name] = {}
    for split in ("valid", "test"):
      per_metric: dict[str, Any] = {}
      for metric in tasks_lib.headline_metrics(t):
        per_fold = []
        for f in folds:
          vals = [r[split][t.name].get(metric) for r in f["seeds"] if r["status"] == "ok" and r[split]]
          per_fold.append(vals)
        if len(folds) == 1:
          per_metric[metric] = _mean_std(per_fold[0])
        else:
          means = [
            float(np.mean([v for v in vals if v is not None])) for vals in per_fold if any(v is not None for v in vals)
          ]
          per_metric[metric] = _mean_std(means)
      out[t.name][split] = per_metric
    ens = [f["ensemble"]["test"][t.name] for f in folds if f.get("ensemble")]
    if ens:  # the ensemble row: one value per fold (mean +- std over folds)
      out[t.name]["test_ensemble"] = {m: _mean_std([e.get(m) for e in ens]) for m in tasks_lib.headline_metrics(t)}
  return out


def table(tasks, summary, title: str) -> str:
  parts = []
  for t in tasks:
    cols = list(tasks_lib.headline_metrics(t))
    rows = [
      {"split": split, **{m: "undefined" if v is None else v for m, v in summary[t.name][split].items()}}
      for split in ("valid", "test", "test_ensemble")
      if split in summary[t.name]
    ]
    variant = {
      "sentiment": "MMSA metrics: Has0/Non0 Acc2 and weighted F1",
      "regression": "CCC/PCC/MAE per dimension",
      "classification": "UA = mean recall, WA = accuracy, weighted F1",
      "high_low": f"binary high (> {t.threshold}) vs low: accuracy and weighted F1",
      "sentiment_class": f"{len(t.classes or ())}-class view of the score: UA, WA = accuracy, weighted F1",
    }[t.kind]
    parts.append(metrics_lib.format_table(rows, ["split", *cols], title=f"{title} — task {t.name} ({variant})"))
    if any(v == "undefined" for r in rows for v in r.values()):
      parts.append(
        "undefined: no seed had a value (e.g. Non0 metrics with every label 0, or no seed with a selected checkpoint)\n"
      )
  return "\n".join(parts)


def plots(workdir: Path, tasks, folds: list[dict], synthetic: bool, select: str) -> list[str]:
  """Write the run's plots next to its checkpoints; returns their file names."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  tag = " (SYNTHETIC data)" if synthetic else ""
  task0, metric = select.split("/", 1) if "/" in select else (tasks[0].name, tasks[0].select)
  # curves: train loss and the selection metric per seed of the first fold, the selected epoch marked
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  f0 = folds[0]
  loads = {}
  for r in f0["seeds"]:
    path = workdir / f0["dir"] / f"seed_{r['seed']}" / "metrics.jsonl"
    if not path.exists():
      continue
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    if not rows:
      continue
    ep = [row["epoch"] for row in rows]
    axes[0].plot(ep, [row["train"]["loss"] for row in rows], label=f"seed {r['seed']}")
    axes[1].plot(ep, [(row["valid"][task0].get(metric) or np.nan) for row in rows])
    if r.get("best_epoch") is not None:
      axes[1].axvline(r["best_epoch"], color="grey", lw=0.6, ls=":")
    for k in rows[0]["train"]:
      if k.startswith("load_"):
        loads.setdefault(k[5:], []).append(np.array([row["train"][k] for row in rows]))
  axes[0].set_title(f"train loss{tag}")
  axes[1].set_title(f"valid {select} (dotted: selected epoch){tag}")
  for ax in axes:
    ax.set_xlabel("epoch")
  if axes[0].get_legend_handles_labels()[0]:  # no seed with a logged epoch (all diverged at once): no legend
    axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(workdir / "curves.png", dpi=110)
  plt.close(fig)
  written.append("curves.png")
  if loads:  # mean over seeds of the fraction of routed token-slots per expert
    fig, axes = plt.subplots(1, len(loads), figsize=(4.5 * len(loads), 3.2), squeeze=False)
    for ax, (m, lds) in zip(axes[0], loads.items()):
      n = min(len(x) for x in lds)
      ld = np.mean([x[:n] for x in lds], axis=0)
      im = ax.imshow(ld.T, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-6, float(ld.max())))
      ax.set_title(f"{m}: expert load, mean of {len(lds)} seeds{tag}", fontsize=9)
      ax.set_xlabel("epoch")
      ax.set_ylabel("expert")
      ax.set_yticks(range(ld.shape[1]))
      fig.colorbar(im, ax=ax, label="fraction of routed slots")
    fig.tight_layout()
    fig.savefig(workdir / "expert_load.png", dpi=110)
    plt.close(fig)
    written.append("expert_load.png")
  for t in tasks:
    outs = []
    for f in folds:
      for r in f["seeds"]:
        path = workdir / f["dir"] / f"seed_{r['seed']}" / "test_outputs.npz"
        if path.exists() and r["status"] == "ok":
          outs.append((f, r, path))
    if not outs:
      continue
    if t.kind in ("classification", "sentiment_class"):
      conf = sum(np.asarray(r["test"][t.name]["confusion"]) for _, r, _ in outs)
      fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(t.classes), 0.8 + 0.7 * len(t.classes)))
      norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
      ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
      for (a, b), v in np.ndenumerate(conf):
        ax.text(b, a, str(int(v)), ha="center", va="center", fontsize=7)
      ax.set_xticks(range(len(t.classes)), t.classes, rotation=45, ha="right", fontsize=8)
      ax.set_yticks(range(len(t.classes)), t.classes, fontsize=8)
      ax.set_xlabel("predicted")
      ax.set_ylabel("true")
      ax.set_title(f"{t.name}: test confusion, all folds x seeds{tag}", fontsize=9)
      fig.tight_layout()
      name = f"confusion_{t.name}.png"
      fig.savefig(workdir / name, dpi=110)
      plt.close(fig)
      written.append(name)
    elif t.kind in ("regression", "sentiment"):
      f, r, path = outs[0]
      with np.load(path) as z:
        pred, y = np.asarray(z[t.head]), np.asarray(z[f"label.{t.label}"])
      pred, y = pred.reshape(len(y), -1), y.reshape(len(y), -1)
      names = t.names or (t.name,)
      fig, axes = plt.subplots(1, len(names), figsize=(3.3 * len(names), 3.2), squeeze=False)
      for j, (ax, n) in enumerate(zip(axes[0], names)):
        ax.scatter(y[:, j], pred[:, j], s=5, alpha=0.5)
        lo, hi = float(min(y[:, j].min(), pred[:, j].min())), float(max(y[:, j].max(), pred[:, j].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.6)
        ax.set_xlabel(f"label {n}")
        ax.set_ylabel("prediction")
      fig.suptitle(f"{t.name}: test predictions, {f['name']} seed {r['seed']}{tag}", fontsize=9)
      fig.tight_layout()
      name = f"scatter_{t.name}.png"
      fig.savefig(workdir / name, dpi=110)
      plt.close(fig)
      written.append(name)
  return written


def plot_fitness(fold_dir: Path, seeds) -> list[Path]:
  """``fitness.png`` per seed: best / median / worst fitness per generation and the genes' distribution."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  for s in seeds:
    path = Path(fold_dir) / f"seed_{s}" / "fitness.jsonl"
    if not path.exists():
      continue
    rows = workdir_lib.read_jsonl(path)
    if not rows:
      continue
    gens = sorted({r["generation"] for r in rows})
    fit = {
      g: np.array([np.inf if r["fitness"] is None else r["fitness"] for r in rows if r["generation"] == g])
      for g in gens
    }
    gene_keys = [
      k for k in rows[0] if k.startswith("gene/") or k.startswith("task/") or k.startswith("loss/") or k == "lr"
    ]
    fig, axes = plt.subplots(1, 1 + max(1, len(gene_keys)), figsize=(4 * (1 + max(1, len(gene_keys))), 3.2))
    ax = axes[0]
    for label, fn in (("best", np.min), ("median", np.median), ("worst", np.max)):
      ax.plot(
        gens, [fn(fit[g][np.isfinite(fit[g])]) if np.isfinite(fit[g]).any() else np.nan for g in gens], label=label
      )
    ax.set_xlabel("generation")
    ax.set_ylabel("validation loss (fitness)")
    ax.legend(fontsize=8)
    for ax, k in zip(axes[1:], gene_keys):
      vals = [[r[k] for r in rows if r["generation"] == g] for g in gens]
      ax.violinplot(vals, positions=gens, showmedians=True) if len(vals[0]) > 1 else ax.plot(gens, vals)
      ax.set_title(k, fontsize=8)
      ax.set_xlabel("generation")
      if k == "lr":
        ax.set_yscale("log")
    fig.tight_layout()
    out = path.with_name("fitness.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    written.append(out)
  return written
