"""Hi-MoE missing-rate sweep: the Table-3 / Figure-3 and Figure-4 analogues, on the shared platform.

For every variant (Hi-MoE, late fusion, the ablations) and missing rate r, one ``jmoe.train.app.run`` of the
``experiments/himoe_deap.py`` config (seeds on the member axis, ``members='vmap'``) in
``<workdir>/<variant>_r<r>``; missing modalities are masked per sample in training and evaluation
(``data.missing_rate``, :mod:`jmoe.data.missing`). Written next to the runs (``config.workdir``):

* ``sweep.csv`` -- one row per (variant, r, L, seed): test and valid ``CCC_mean`` of the regression head (each the
  mean over the run's folds of that seed's best-validation checkpoint), test PCC/MAE means;
* ``sweep.json`` -- the same plus mean ± std over seeds per (variant, r), and the routing tables below;
* ``fig3_ccc_vs_missing.png`` -- test CCC_mean vs r, mean ± std band over seeds, one line per variant;
* ``fig4a_routing_heatmap.png`` -- Hi-MoE's average soft-routing weight of every modality expert (columns
  ``<m>:k``) and its fusion attention per modality (columns ``fuse:<m>``), per modality combination present in the
  test samples (rows: bit strings in ``data.modalities`` order, 1 = present), pooled over the runs with r > 0;
* ``fig4b_ccc_vs_L.png`` -- test CCC_mean vs the number of emotion experts L at r = ``sweep.l_rate``.

Commands::

  python -m experiments.himoe_sweep                       # quick default (see below)
  python -m experiments.himoe_sweep --config.smoke=True   # seconds per run (the tests)
  python -m experiments.himoe_sweep --config.sweep.rates=0.0:0.4:0.05 \\
      --config.sweep.variants=himoe,late,no_emotion_bank,no_alignment,no_soft_routing \\
      --config.sweep.emotion_experts=1,2,4,8 --config.folds.max_folds=0 --config.seeds=5 \\
      --config.workdir=runs/himoe_sweep_full          # the full protocol (45 + 4 runs of 10 folds x 5 seeds)

Quick default: r in {0.0, 0.2, 0.4}, Hi-MoE vs late fusion and the three ablations, L in {1, 4} at r = 0, 3 seeds,
the first 2 of the 10 folds (``folds.max_folds=2``: a quick look; the results say so), 20 epochs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import ml_collections
import numpy as np

from experiments import himoe_deap
from jmoe.data import sources
from jmoe.train import app, cli

VARIANTS = {
  "himoe": {},
  "late": {"model.fusion": "late"},
  "no_emotion_bank": {"model.emotion_bank": False},
  "no_alignment": {"loss_weights.nt_xent": 0.0},
  "no_soft_routing": {"model.modality_routing": "uniform"},
}


def get_config():
  c = himoe_deap.get_config()
  c.name = "himoe_sweep"
  c.workdir = "runs/himoe_sweep"
  c.optim.epochs = 20
  c.folds.max_folds = 2
  c.sweep = ml_collections.ConfigDict(
    dict(
      rates="0.0,0.2,0.4",  # comma list or start:stop:step
      variants="himoe,late,no_emotion_bank,no_alignment,no_soft_routing",
      emotion_experts="1,4",  # the L curve (Hi-MoE), '' = off
      l_rate=0.0,
    )
  )
  return c


def smoke(cfg):
  """The sweep's smoke lists; every run is then a platform smoke run (``himoe_deap.smoke``: 1 seed, 2 epochs)."""
  cfg.sweep.rates = "0.4"
  cfg.sweep.variants = "himoe,late"
  cfg.sweep.emotion_experts = "2"
  cfg.sweep.l_rate = 0.4


def parse_rates(spec: str) -> list[float]:
  """'0.0,0.2' or 'start:stop:step' (stop included) -> rates."""
  spec = str(spec).strip()
  if ":" in spec:
    a, b, s = (float(x) for x in spec.split(":"))
    return [round(a + i * s, 6) for i in range(int(round((b - a) / s)) + 1)]
  return [float(x) for x in spec.split(",") if x.strip()]


def _metric(result: dict, task: str, split: str, metric: str) -> dict[int, float]:
  """{seed: mean over the run's folds of that seed's metric} (diverged seeds left out)."""
  per: dict[int, list[float]] = {}
  for f in result["folds"]:
    for r in f["seeds"]:
      if r["status"] == "ok" and r[split] and r[split][task].get(metric) is not None:
        per.setdefault(r["seed"], []).append(r[split][task][metric])
  return {s: float(np.mean(v)) for s, v in per.items()}


def routing_table(run_dirs: list[Path], modalities: tuple[str, ...]) -> dict:
  """Average gate weights per modality expert and fusion attention per modality, by modality combination."""
  rows: dict[str, list[np.ndarray]] = {}
  cols: list[str] = []
  for d in run_dirs:
    for f in sorted(d.glob("fold_*/seed_*/test_outputs.npz")):
      z = np.load(f)
      if "per_sample.fusion" not in z:
        continue
      pres = np.stack([z[f"per_sample.present_{m}"] > 0.5 for m in modalities], axis=1)  # [B, M]
      parts = [z[f"per_sample.route_{m}"] for m in modalities] + [z["per_sample.fusion"]]
      vals = np.concatenate(parts, axis=1)  # [B, M*K + M]
      cols = [f"{m}:{k}" for m in modalities for k in range(z[f"per_sample.route_{m}"].shape[1])]
      cols += [f"fuse:{m}" for m in modalities]
      for combo, v in zip(pres, vals):
        rows.setdefault("".join("1" if p else "0" for p in combo), []).append(v)
  table = {c: np.mean(v, axis=0).tolist() for c, v in sorted(rows.items(), reverse=True)}
  return {"columns": cols, "rows": table, "counts": {c: len(v) for c, v in rows.items()}}


def run(cfg) -> dict:
  """Every (variant, rate) run and the L curve; writes sweep.csv / sweep.json / the figures; returns the summary."""
  if cfg.smoke:
    smoke(cfg)
  rates = parse_rates(cfg.sweep.rates)
  variants = [v for v in cfg.sweep.variants.split(",") if v]
  bad = [v for v in variants if v not in VARIANTS]
  if bad or not rates or any(not 0 <= r <= 1 for r in rates):
    raise ValueError(f"config.sweep: unknown variants {bad} (choose from {sorted(VARIANTS)}) or bad rates {rates}")
  ls = [int(x) for x in str(cfg.sweep.emotion_experts).split(",") if x.strip()]
  root = Path(cfg.workdir)
  jobs = [(v, r, None) for v in variants for r in rates] + [("himoe", float(cfg.sweep.l_rate), n) for n in ls]
  rows, runs = [], {}
  for variant, rate, n_experts in jobs:
    base = cfg.to_dict()
    base.pop("sweep")
    sub = ml_collections.ConfigDict(base)
    name = f"{variant}_r{rate:.2f}" + ("" if n_experts is None else f"_L{n_experts}")
    if n_experts is not None and n_experts == cfg.model.emotion_experts and rate in rates and "himoe" in variants:
      runs[name] = runs[f"himoe_r{rate:.2f}"]
    else:
      sub.workdir = str(root / name)
      sub.name = f"{cfg.name}/{name}"
      sub.data.missing_rate = rate
      sub.update_from_flattened_dict(VARIANTS[variant])
      if n_experts is not None:
        sub.model.emotion_experts = n_experts
      runs[name] = (app.run(sub, himoe_deap.smoke), sub.workdir)
    result, _ = runs[name]
    head = next(iter(cfg.tasks))
    ccc, vccc = _metric(result, head, "test", "CCC_mean"), _metric(result, head, "valid", "CCC_mean")
    pcc, mae = _metric(result, head, "test", "PCC_mean"), _metric(result, head, "test", "MAE_mean")
    for s in sorted(ccc):
      rows.append(
        {
          "variant": variant,
          "rate": rate,
          "L": n_experts if n_experts is not None else cfg.model.emotion_experts,
          "curve": "L" if n_experts is not None else "rate",
          "seed": s,
          "test_CCC_mean": ccc[s],
          "valid_CCC_mean": vccc.get(s),
          "test_PCC_mean": pcc.get(s),
          "test_MAE_mean": mae.get(s),
        }
      )
  summary: dict[str, dict] = {}
  for r in rows:
    key = f"{r['curve']}|{r['variant']}|{r['rate']:.2f}|L{r['L']}"
    summary.setdefault(key, []).append(r["test_CCC_mean"])
  summary = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for k, v in summary.items()}
  dirs = [Path(runs[f"himoe_r{r:.2f}"][1]) for r in rates if r > 0 and "himoe" in variants]
  first = next(iter(runs.values()))[0] if runs else {}
  routing = routing_table(dirs, tuple(first.get("modalities", ())) or sources.modalities(cfg.data))
  root.mkdir(parents=True, exist_ok=True)
  with (root / "sweep.csv").open("w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["variant"])
    w.writeheader()
    w.writerows(rows)
  out = {
    "synthetic": first.get("synthetic"),
    "dataset": first.get("dataset"),
    "protocol": {"folds": cfg.folds.to_dict(), "seeds": cfg.seeds, "epochs": cfg.optim.epochs, "smoke": cfg.smoke},
    "select": first.get("select"),
    "rows": rows,
    "summary": summary,
    "routing": routing,
    "seconds": {n: r[0]["seconds"] for n, r in runs.items()},
  }
  (root / "sweep.json").write_text(json.dumps(out, indent=2))
  _plots(root, rows, routing, variants, first.get("synthetic", False))
  print(f"sweep: {len(runs)} runs in {root} (sweep.csv, sweep.json, fig3/fig4 png)")
  return out


def _plots(root: Path, rows, routing, variants, synthetic: bool) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  tag = " (SYNTHETIC)" if synthetic else ""
  fig, ax = plt.subplots(figsize=(6, 4))
  for v in variants:
    pts = sorted({r["rate"] for r in rows if r["variant"] == v and r["curve"] == "rate"})
    vals = [
      [r["test_CCC_mean"] for r in rows if r["variant"] == v and r["curve"] == "rate" and r["rate"] == p] for p in pts
    ]
    m, s = np.array([np.mean(x) for x in vals]), np.array([np.std(x) for x in vals])
    ax.plot(pts, m, marker="o", label=v)
    ax.fill_between(pts, m - s, m + s, alpha=0.2)
  ax.set(xlabel="missing rate r", ylabel="test CCC (mean of dims)", title=f"CCC vs missing rate{tag}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(root / "fig3_ccc_vs_missing.png", dpi=120)
  plt.close(fig)
  if routing["rows"]:
    combos = list(routing["rows"])
    mat = np.array([routing["rows"][c] for c in combos])
    fig, ax = plt.subplots(figsize=(1 + 0.6 * mat.shape[1], 1 + 0.5 * len(combos)))
    im = ax.imshow(mat, cmap="viridis", aspect="auto")
    ax.set_xticks(range(mat.shape[1]), routing["columns"], rotation=60, fontsize=7)
    ax.set_yticks(range(len(combos)), [f"{c} (n={routing['counts'][c]})" for c in combos], fontsize=8)
    for i in range(mat.shape[0]):
      for j in range(mat.shape[1]):
        ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im)
    ax.set_title(f"soft-routing / fusion weights by modality combination{tag}", fontsize=9)
    fig.tight_layout()
    fig.savefig(root / "fig4a_routing_heatmap.png", dpi=120)
    plt.close(fig)
  lrows = [r for r in rows if r["curve"] == "L"]
  if lrows:
    ls = sorted({r["L"] for r in lrows})
    vals = [[r["test_CCC_mean"] for r in lrows if r["L"] == n] for n in ls]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ls, [np.mean(v) for v in vals], yerr=[np.std(v) for v in vals], marker="o", capsize=3)
    ax.set(xlabel="emotion experts L", ylabel="test CCC (mean of dims)", title=f"CCC vs L{tag}")
    fig.tight_layout()
    fig.savefig(root / "fig4b_ccc_vs_L.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
  cli.main(get_config, run)
