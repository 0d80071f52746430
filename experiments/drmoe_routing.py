"""DR-MoE routing analysis: which scale (local frames/tokens vs the global utterance vector) each emotion is routed to.

  python -m experiments.drmoe_routing --run runs/drmoe_ravdess [--run runs/drmoe_synthetic ...]

Reads ``<run>/config.json`` and every ``<run>/fold_<f>/seed_<s>/test_outputs.npz`` (``per_sample.scale_<m>``: 0 local,
1 global; ``label.<head>``); pools the test samples of all folds x seeds (each test sample once per seed) and writes
``<run>/routing.md`` (table), ``<run>/routing.json`` and ``<run>/routing.png`` (fraction routed to local per class and
modality). On ``synthetic_scale`` data it also states the agreement with the planted scale of each class (per
sample, and whether each class's majority route is its planted scale). On RAVDESS / IEMOCAP it states whether anger
leans local and the low-arousal classes (sad, calm, neutral) lean global, the abstract's claim: "leans" = routed to
that scale more often than the modality's average sample.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LOW_AROUSAL = ("sad", "calm", "neutral")


def class_names(cfg: dict) -> tuple[str, ...]:
  """The class names of the run's head (from the data source named in its config)."""
  source, head = cfg["data"]["source"], cfg["tasks"][next(iter(cfg["tasks"]))]["label"]
  if source == "synthetic_scale":
    from jmoe.data.synthetic_scale import CLASSES

    return CLASSES
  if source == "ravdess":
    from jmoe.data.ravdess import EMOTIONS4, EMOTIONS8

    return EMOTIONS8 if head == "emotion8" else EMOTIONS4
  if source == "iemocap":
    from jmoe.data.iemocap import EMOTIONS4, EMOTIONS6

    return EMOTIONS6 if head == "emotion6" else EMOTIONS4
  raise ValueError(f"drmoe_routing: no class names known for data.source={source!r}")


def load_outputs(run: str | Path) -> tuple[dict, list[dict[str, np.ndarray]]]:
  """(config, [test outputs of every fold x seed]); one-line errors for a run without them."""
  run = Path(run)
  if not (run / "config.json").is_file():
    raise FileNotFoundError(f"{run}: no config.json (not a run directory)")
  cfg = json.loads((run / "config.json").read_text())
  files = sorted(run.glob("fold_*/seed_*/test_outputs.npz"))
  if not files:
    raise FileNotFoundError(f"{run}: no fold_*/seed_*/test_outputs.npz (has the run finished?)")
  outs = []
  for f in files:
    with np.load(f) as z:
      outs.append({k: z[k] for k in z.files} | {"file": str(f)})
  return cfg, outs


def analyze(run: str | Path, planted: dict[str, str] | None = None) -> dict:
  """Per modality and class: n, fraction local, fraction global; plus planted agreement (synthetic) or the
  abstract's claims (real data). ``planted`` (class -> scale) defaults to the synthetic source's truth."""
  cfg, outs = load_outputs(run)
  head = cfg["tasks"][next(iter(cfg["tasks"]))]["label"]
  names = class_names(cfg)
  mods = sorted({k[len("per_sample.scale_") :] for o in outs for k in o if k.startswith("per_sample.scale_")})
  if not mods:
    raise ValueError(f"{run}: test outputs have no per_sample.scale_<m> (not a DR-MoE run?)")
  # Samples without a label for the head (``label_mask.<head>``, saved by the platform since it has existed;
  # older runs lack it: every sample counts) are left out of the per-class tables.
  keep = [o.get(f"label_mask.{head}", np.ones(len(o[f"label.{head}"]), bool)).astype(bool) for o in outs]
  y = np.concatenate([o[f"label.{head}"][k] for o, k in zip(outs, keep)])
  res: dict = {"run": str(run), "head": head, "classes": list(names), "files": len(outs), "modalities": {}}
  if cfg["data"]["source"] == "synthetic_scale" and planted is None:
    from jmoe.data import speech_sources  # noqa: F401  (registers the source)
    from jmoe.data import sources
    from jmoe.data.synthetic_scale import planted_scales

    import ml_collections

    planted = planted_scales(sources.load(ml_collections.ConfigDict(cfg["data"])))
  for m in mods:
    s = np.concatenate([o[f"per_sample.scale_{m}"][k] for o, k in zip(outs, keep)]).astype(int)
    per = {}
    for c, name in enumerate(names):
      sel = y == c
      if sel.any():
        per[name] = {"n": int(sel.sum()), "local": float(np.mean(s[sel] == 0)), "global": float(np.mean(s[sel] == 1))}
    entry = {"overall_local": float(np.mean(s == 0)), "classes": per}
    if planted:
      truth = np.array([0 if planted[names[c]] == "local" else 1 for c in y])
      entry["planted_agreement"] = float(np.mean(s == truth))
      entry["class_majority_agrees"] = {
        n: (v["local"] > 0.5) == (planted[n] == "local") for n, v in per.items() if n in planted
      }
    else:
      base = entry["overall_local"]
      claims = {}
      if "angry" in per:
        claims["angry_leans_local"] = per["angry"]["local"] > base
      for n in LOW_AROUSAL:
        if n in per:
          claims[f"{n}_leans_global"] = per[n]["global"] > 1 - base
      entry["claims"] = claims
    res["modalities"][m] = entry
  res["planted"] = planted
  return res


def table(res: dict) -> str:
  """Markdown: one row per class, a column pair per modality (% local / % global, n)."""
  mods = list(res["modalities"])
  lines = [
    f"Routing of {res['run']} ({res['files']} fold x seed test sets pooled; head {res['head']})",
    "",
    "| class | n | "
    + " | ".join(f"{m} local | {m} global" for m in mods)
    + (" | planted |" if res["planted"] else " |"),
    "|---|---|" + "---|---|" * len(mods) + ("---|" if res["planted"] else ""),
  ]
  for name in res["classes"]:
    cells = [res["modalities"][m]["classes"].get(name) for m in mods]
    if cells[0] is None:
      continue
    row = f"| {name} | {cells[0]['n']} | " + " | ".join(f"{c['local']:.1%} | {c['global']:.1%}" for c in cells)
    lines.append(row + (f" | {res['planted'].get(name, '?')} |" if res["planted"] else " |"))
  lines.append("")
  for m in mods:
    e = res["modalities"][m]
    line = f"- {m}: {e['overall_local']:.1%} of all test samples routed to local"
    if "planted_agreement" in e:
      agree = sum(e["class_majority_agrees"].values())
      line += (
        f"; agreement with the planted scale {e['planted_agreement']:.1%} of samples, "
        f"majority route = planted scale for {agree}/{len(e['class_majority_agrees'])} classes"
      )
    if e.get("claims"):
      line += "; " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in e["claims"].items())
    lines.append(line)
  return "\n".join(lines) + "\n"


def plot(res: dict, path: str | Path) -> Path:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  mods = list(res["modalities"])
  names = [n for n in res["classes"] if n in res["modalities"][mods[0]]["classes"]]
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(names), 3.2))
  width = 0.8 / len(mods)
  for i, m in enumerate(mods):
    vals = [res["modalities"][m]["classes"][n]["local"] for n in names]
    ax.bar(np.arange(len(names)) + i * width, vals, width, label=m)
  ax.axhline(0.5, color="gray", lw=0.8, ls="--")
  ax.set_xticks(np.arange(len(names)) + width * (len(mods) - 1) / 2, names)
  ax.set_ylim(0, 1)
  ax.set_ylabel("fraction routed to local")
  ax.set_title(Path(res["run"]).name)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return Path(path)


def report(run: str | Path) -> dict:
  """Analyze a run and write routing.md / routing.json / routing.png into it; returns the analysis."""
  res = analyze(run)
  run = Path(run)
  (run / "routing.md").write_text(table(res))
  (run / "routing.json").write_text(json.dumps(res, indent=2))
  plot(res, run / "routing.png")
  return res


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--run", action="append", required=True, help="a DR-MoE run directory (repeatable)")
  args = ap.parse_args(argv)
  try:
    for r in args.run:
      res = report(r)
      print(table(res))
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}")
    return 2
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
