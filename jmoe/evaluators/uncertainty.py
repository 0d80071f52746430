"""Does EUAR's learned uncertainty track anything? A diagnostic on synthetic data whose truth is known.

For a finished EUAR run on the synthetic MOSI source (``config.data.source='synthetic'``), per seed, test sample and
modality m: the gate-weighted variance of the selected experts, ``sigma2_m = sum_j G_j sigma_j^2`` (what the U-loss,
eq. 10, penalises; the model returns it as ``aux['per_sample']['sigma2_<m>']``, saved in ``test_outputs.npz``),
against the planted truth of :func:`jmoe.data.synthetic.synthetic_mosi_with_truth`, regenerated from the run's own
``config.data`` (the generator is a pure function of its arguments; the regenerated test features are checked to be
identical to the run's):

* ``auroc_corrupt``: AUROC of ``sigma2_m`` for detecting the samples whose modality m was replaced by pure noise
  (Mann-Whitney U / (n_pos n_neg), ties counted 1/2; 0.5 = chance, 1 = corrupted always above clean);
* ``rho_noise``: Spearman correlation of ``sigma2_m`` with the planted per-sample noise scale, on the clean samples
  (on the corrupted ones the signal is gone: their level is ``corrupt_scale * noise``);
* ``rho_noise_all``: the same over all samples, the corrupted ones at their effective level ``corrupt_scale * noise``;
* ``auroc_gate_mass`` / ``auroc_per_gate``: AUROC of the top-k gate mass ``sum_j G_j`` (the softmax scores are not
  renormalised) and of ``sigma2_m / sum_j G_j`` (the mean variance of the selected experts): which part detects;
* ``auroc_input_norm``: reference, no learning: AUROC of the input's L2 norm (how detectable the corruption is);
* ``rho_abs_error``: Spearman correlation of ``sum_m sigma2_m`` with the sample's absolute error.

Reported per modality as mean ± std over seeds; plot: histograms of log10 sigma2 (clean vs corrupted, all seeds
pooled) per modality. Nothing is trained or selected here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np
from scipy import stats

from jmoe import metrics as metrics_lib
from jmoe.data import format as fmt
from jmoe.data import sources

PER_MODALITY = (
  "auroc_corrupt",
  "rho_noise",
  "rho_noise_all",
  "auroc_gate_mass",
  "auroc_per_gate",
  "auroc_input_norm",
  "n_corrupt",
)


class RunError(ValueError):
  """A run dir the diagnostic cannot read; the message is one line naming the path."""


def auroc(scores, positive) -> float:
  """AUROC of ``scores`` for the bool labels ``positive`` = Mann-Whitney U / (n_pos n_neg) (ties count 1/2).

  NaN when either class is empty.
  """
  s, y = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = stats.rankdata(s)  # average ranks for ties
  u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def spearman(a, b) -> float:
  """Spearman rank correlation (Pearson of average ranks); NaN when either side is constant or has < 2 values."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  ra, rb = stats.rankdata(a), stats.rankdata(b)
  return float(np.corrcoef(ra, rb)[0, 1])


def planted_truth(data_cfg: ml_collections.ConfigDict, ds: fmt.Dataset | None = None) -> tuple[dict, dict]:
  """(test truth ``{'latent', 'noise_scale': {m}, 'corrupted': {m}}``, generator arguments) of a synthetic run.

  Regenerated with :func:`~jmoe.data.synthetic.synthetic_mosi_with_truth` from the same arguments as the
  ``'synthetic'`` source; if ``ds`` is given, its test split must equal the regenerated one (else RunError).
  """
  from jmoe.data.synthetic import synthetic_mosi_with_truth

  if data_cfg.source != "synthetic" or data_cfg.get("synthetic_kind", "mosi") != "mosi":
    raise RunError(
      f"data.source={data_cfg.source!r}, synthetic_kind={data_cfg.get('synthetic_kind', 'mosi')!r}: the diagnostic "
      "needs data with known truth (source 'synthetic', kind 'mosi')"
    )
  kwargs = {
    "seed": data_cfg.synthetic_seed,
    "dims": dict(zip(("text", "audio", "vision"), data_cfg.synthetic_dims)),
    "seq_len": data_cfg.get("seq_len") or None,
  }
  if data_cfg.get("synthetic_sizes"):
    kwargs["sizes"] = tuple(data_cfg.synthetic_sizes)
  gen, truth = synthetic_mosi_with_truth(**kwargs)
  if ds is not None:
    a, b = gen.splits["test"], ds.splits["test"]
    same = np.array_equal(a.ids, b.ids) and all(np.array_equal(a.features[m], b.features[m]) for m in b.features)
    if not same:
      raise RunError(f"{ds.source}: the regenerated synthetic test split differs from the run's dataset")
  src = gen.source
  return truth["splits"]["test"], {"kwargs": kwargs, "source": src, "corrupt_scale": _arg(src, "corrupt_scale")}


def _arg(source: str, name: str) -> float:
  """A numeric argument of a ``synthetic_mosi(...)`` source string (the generator's defaults are recorded there)."""
  tail = source.split(f"{name}=", 1)[1]
  return float(tail.split(",")[0].split(")")[0])


def seed_diagnostic(sigma2, truth: dict, features: dict, abs_error, level: float, gate_mass=None) -> dict:
  """One seed: {modality: {metric: value}} and ``rho_abs_error``. ``level``: corrupt_scale * noise; ``gate_mass``:
  {m: sum_j G_j [B]} (optional)."""
  out: dict = {"modalities": {}}
  for m, s in sigma2.items():
    bad = np.asarray(truth["corrupted"][m], bool)
    noise = np.asarray(truth["noise_scale"][m], np.float64)
    x = np.asarray(features[m], np.float64)
    norm = np.sqrt((x.reshape(len(x), -1) ** 2).sum(axis=1))
    out["modalities"][m] = {
      "auroc_corrupt": auroc(s, bad),
      "rho_noise": spearman(s[~bad], noise[~bad]),
      "rho_noise_all": spearman(s, np.where(bad, level, noise)),
      "auroc_gate_mass": auroc(gate_mass[m], bad) if gate_mass else None,
      "auroc_per_gate": auroc(s / np.maximum(gate_mass[m], 1e-12), bad) if gate_mass else None,
      "auroc_input_norm": auroc(norm, bad),
      "n_corrupt": int(bad.sum()),
    }
  total = sum(np.asarray(v, np.float64) for v in sigma2.values())
  out["rho_abs_error"] = spearman(total, abs_error)
  return out


def _per_sample(outs, modalities: Sequence[str], sep: str) -> tuple[dict, dict] | None:
  """({m: sigma2 [B]}, {m: gate mass [B]}) from test outputs (keys ``per_sample<sep>sigma2_<m>``, ``..gate_<m>``)."""
  keys = [f"per_sample{sep}sigma2_{m}" for m in modalities]
  if not all(k in outs for k in keys):
    return None
  sigma2 = {m: np.asarray(outs[k], np.float64) for m, k in zip(modalities, keys)}
  mass = {m: np.asarray(outs[f"per_sample{sep}gate_{m}"], np.float64).sum(-1) for m in modalities}
  return sigma2, mass


def _mean_std(vals) -> list | None:
  vals = [v for v in vals if v is not None and np.isfinite(v)]
  return list(metrics_lib.mean_std(vals)) if vals else None


def diagnose(run_dir) -> dict:
  """The diagnostic of a finished run (see the module docstring); also returns the pooled sigma2 for the plot."""
  run_dir = Path(run_dir)
  for name in ("config.json", "results.json"):
    if not (run_dir / name).is_file():
      raise RunError(f"{run_dir}: no {name} (not a finished jmoe run)")
  cfg = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
  if cfg.get("model_name") != "euar":
    raise RunError(f"{run_dir}: model_name={cfg.get('model_name')!r}; the diagnostic reads EUAR's sigma^2")
  if cfg.model.expert != "gaussian" or cfg.model.fusion != "moe":
    raise RunError(f"{run_dir}: expert={cfg.model.expert!r}, fusion={cfg.model.fusion!r} has no sigma^2 to diagnose")
  ds = sources.load(cfg.data)
  truth, gen = planted_truth(cfg.data, ds)
  level = gen["corrupt_scale"] * _arg(gen["source"], "noise")
  test = ds.splits["test"]
  mods = tuple(m for m in cfg.data.modalities.split(",") if m)
  results = json.loads((run_dir / "results.json").read_text())
  task = next(iter(results["tasks"]))
  head, label = results["tasks"][task]["head"], results["tasks"][task]["label"]
  per_seed, pooled, loaded = [], {m: [] for m in mods}, None
  for r in results["folds"][0]["seeds"]:
    if r["status"] != "ok":
      continue
    path = run_dir / results["folds"][0]["dir"] / f"seed_{r['seed']}" / "test_outputs.npz"
    if not path.is_file():
      raise RunError(f"{path}: missing (damaged run?)")
    with np.load(path) as z:
      if not np.array_equal(np.asarray(z["ids"]).astype(str), np.asarray(test.ids).astype(str)):
        raise RunError(f"{path}: its sample ids are not the dataset's test split")
      pred, y = np.asarray(z[head], np.float64), np.asarray(z[f"label.{label}"], np.float64)
    with np.load(path) as z:
      got = _per_sample(z, mods, ".")
    if got is None:  # a run trained before the model returned sigma2_<m>: evaluate its best checkpoint
      if loaded is None:
        from jmoe.evaluators.robustness import load_run

        loaded = load_run(run_dir)
      from jmoe.train import loop

      st = loaded.setup
      params = st.dp.replicate(loaded.params[(0, r["seed"])])
      outs = loop.predict(st, st.steps[1], params, loaded.folds[0].test, None)[0]
      got = _per_sample(outs, mods, "/")
    sigma2, mass = got
    d = seed_diagnostic(sigma2, truth, test.features, np.abs(pred - y), level, mass)
    d["seed"] = r["seed"]
    d["test"] = r["test"][task]
    d["sigma2_range"] = {m: [float(v.min()), float(v.max())] for m, v in sigma2.items()}
    per_seed.append(d)
    for m in mods:
      pooled[m].append(sigma2[m])
  if not per_seed:
    raise RunError(f"{run_dir}: no seed finished training")
  summary = {
    m: {k: _mean_std([d["modalities"][m][k] for d in per_seed]) for k in PER_MODALITY if k != "n_corrupt"} for m in mods
  }
  for m in mods:
    summary[m]["n_corrupt"] = per_seed[0]["modalities"][m]["n_corrupt"]
  out = {
    "run": str(run_dir),
    "source": gen["source"],
    "loss_weights": dict(cfg.get("loss_weights", {})),
    "seeds": [d["seed"] for d in per_seed],
    "summary": summary,
    "rho_abs_error": _mean_std([d["rho_abs_error"] for d in per_seed]),
    "per_seed": per_seed,
  }
  corrupted = {m: np.tile(np.asarray(truth["corrupted"][m], bool), len(per_seed)) for m in mods}
  return out, {m: np.concatenate(pooled[m]) for m in mods}, corrupted


def table(out: dict) -> str:
  rows = [
    {"modality": m, **{k: tuple(v) for k, v in s.items() if k != "n_corrupt" and v}} for m, s in out["summary"].items()
  ]
  for row, (m, s) in zip(rows, out["summary"].items()):
    row["n_corrupt"] = s["n_corrupt"]
  cols = ["modality", "n_corrupt", "auroc_corrupt", "auroc_per_gate", "auroc_gate_mass", "auroc_input_norm"]
  cols += ["rho_noise", "rho_noise_all"]
  for row in rows:
    for c in cols:
      row.setdefault(c, (float("nan"), float("nan")))
  title = (
    f"EUAR sigma^2 = sum_j G_j sigma_j^2 vs planted truth, test split, mean ± std over {len(out['seeds'])} seeds "
    f"(SYNTHETIC: {out['source']})"
  )
  text = metrics_lib.format_table(rows, cols, title=title)
  r = out["rho_abs_error"]
  text += (
    f"\nSpearman(sum_m sigma2_m, |error|): {r[0]:.3f} ± {r[1]:.3f}\n" if r else "\nSpearman(sum sigma2, |error|): n/a\n"
  )
  return text


def plot(pooled: dict, corrupted: dict, path: Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(pooled), figsize=(3.8 * len(pooled), 3.2), squeeze=False)
  for ax, (m, s) in zip(axes[0], pooled.items()):
    v = np.log10(np.maximum(s, 1e-30))
    bad = corrupted[m]
    bins = np.linspace(v.min(), v.max() + 1e-9, 40)
    ax.hist(v[~bad], bins=bins, density=True, alpha=0.6, label=f"clean ({int((~bad).sum())})")
    ax.hist(v[bad], bins=bins, density=True, alpha=0.6, label=f"corrupted ({int(bad.sum())})")
    ax.set_xlabel(f"log10 sigma2_{m} (gate-weighted)")
    ax.set_title(m, fontsize=9)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(run_dir) -> tuple[dict, str, list[Path]]:
  """Run the diagnostic; write ``uncertainty.json``, ``uncertainty.md``, ``uncertainty.png`` into the run dir."""
  run_dir = Path(run_dir)
  out, pooled, corrupted = diagnose(run_dir)
  text = table(out)
  paths = [run_dir / "uncertainty.json", run_dir / "uncertainty.md", run_dir / "uncertainty.png"]
  paths[0].write_text(json.dumps(out, indent=2))
  paths[1].write_text(text)
  plot(
    pooled,
    corrupted,
    paths[2],
    f"{run_dir.name}: test sigma^2, clean vs corrupted, {len(out['seeds'])} seeds pooled (SYNTHETIC)",
  )
  return out, text, paths
