"""DR-MoE routing analysis: which scale (local frames/tokens vs the global utterance vector) each emotion is routed to.

  python -m experiments.drmoe_routing --config.run=runs/drmoe_ravdess[,runs/drmoe_synthetic,...]

Reads ``<run>/config.json`` and every ``<run>/fold_<f>/seed_<s>/test_outputs.npz`` (``per_sample.scale_<m>``: 0 local,
1 global; ``label.<head>``); pools the test samples of all folds x seeds (each test sample once per seed) and writes
``<run>/routing.md`` (table), ``<run>/routing.json`` and ``<run>/routing.png`` (fraction routed to local per class and
modality). Class names come from the dataset's metadata (``<data.path>/meta.json`` label_specs) when the run read a
saved dataset (``data.source='dir'``, e.g. one built by ``python -m jmoe.data.build``); then the share routed local
is also given per value of each of the dataset's groups (speaker, session...). On ``synthetic_scale`` data it also
states the agreement with the planted scale of each class (per sample, and whether each class's majority route is its
planted scale). On RAVDESS / IEMOCAP (and any dataset with such class names) it states whether anger leans local and
the low-arousal classes (sad, calm, neutral) lean global, the abstract's claim: "leans" = routed to
that scale more often than the modality's average sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np

from jmoe.train import cli

LOW_AROUSAL = ("sad", "calm", "neutral")
MAX_GROUP_VALUES = 24  # the table lists the per-group shares of groups with at most this many values


def dataset_meta(cfg: dict) -> dict | None:
  """The ``meta.json`` of the run's dataset when ``data.path`` is a saved jmoe dataset (``data.source='dir'``, or
  any dataset built by ``python -m jmoe.data.build``), else None."""
  path = str(cfg.get("data", {}).get("path") or "")
  if not path or not (Path(path) / "meta.json").is_file():
    if cfg.get("data", {}).get("source") == "dir":
      raise FileNotFoundError(f"{path or '(empty data.path)'}: the run's dataset (data.path) has no meta.json")
    return None
  meta = json.loads((Path(path) / "meta.json").read_text())
  if not isinstance(meta, dict) or "label_specs" not in meta:
    raise ValueError(f"{path}/meta.json: no label_specs (not a format-2 jmoe dataset)")
  return meta


def dataset_groups(cfg: dict) -> dict[str, dict[str, str]]:
  """{group name: {sample id: value}} from the run's saved dataset (every split's ``group.<name>.npy`` and
  ``ids.npy``); {} when the run did not read a saved dataset."""
  meta = dataset_meta(cfg)
  if meta is None:
    return {}
  root = Path(cfg["data"]["path"])
  out: dict[str, dict[str, str]] = {}
  for split in meta.get("splits", {}):
    ids = np.load(root / split / "ids.npy", allow_pickle=False).astype(str)
    for f in sorted((root / split).glob("group.*.npy")):
      vals = np.load(f, allow_pickle=False)
      out.setdefault(f.stem[len("group.") :], {}).update(zip(ids.tolist(), (str(v) for v in vals.tolist())))
  return out


def class_names(cfg: dict) -> tuple[str, ...]:
  """The class names of the run's head: from the dataset's metadata (``meta.json`` label_specs) when the run read a
  saved dataset, else from the data source named in its config."""
  source, head = cfg["data"]["source"], cfg["tasks"][next(iter(cfg["tasks"]))]["label"]
  meta = dataset_meta(cfg)
  if meta is not None:
    specs = meta["label_specs"]
    if head not in specs:
      raise ValueError(f"{cfg['data']['path']}: the run's head {head!r} is not in the dataset's heads {sorted(specs)}")
    if specs[head].get("kind") != "classification" or not specs[head].get("classes"):
      raise ValueError(f"{cfg['data']['path']}: head {head!r} is not a classification head with class names")
    return tuple(specs[head]["classes"])
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
  try:
    cfg = json.loads((run / "config.json").read_text())
  except ValueError as e:
    raise ValueError(f"{run / 'config.json'}: not valid JSON ({e})") from None
  if not isinstance(cfg, dict):
    raise ValueError(f"{run / 'config.json'}: not a run's config (a JSON object)")  # noqa: TRY004
  model = cfg.get("model_name")  # absent in hand-written and older run configs
  if model is not None and model != "drmoe":
    raise ValueError(
      f"{run}: a {model!r} run ({cfg.get('name', '?')}), not a DR-MoE run; drmoe_routing reads the runs of "
      "experiments.drmoe_* (model_name 'drmoe')"
    )
  tasks = cfg.get("tasks") or {}
  if not tasks or "label" not in next(iter(tasks.values())):
    raise ValueError(f"{run / 'config.json'}: its first task has no classification label (not a DR-MoE run?)")
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
  groups = dataset_groups(cfg)
  ids = np.concatenate([np.asarray(o["ids"]).astype(str)[k] for o, k in zip(outs, keep)]) if groups else None
  res: dict = {"run": str(run), "head": head, "classes": list(names), "files": len(outs), "modalities": {}}
  if cfg["data"]["source"] == "synthetic_scale" and planted is None:
    import ml_collections

    from jmoe.data import (
      sources,
      speech_sources,  # noqa: F401  (registers the source)
    )
    from jmoe.data.synthetic_scale import planted_scales

    planted = planted_scales(sources.load(ml_collections.ConfigDict(cfg["data"])))
  for m in mods:
    s = np.concatenate([o[f"per_sample.scale_{m}"][k] for o, k in zip(outs, keep)]).astype(int)
    per = {}
    for c, name in enumerate(names):
      sel = y == c
      if sel.any():
        per[name] = {"n": int(sel.sum()), "local": float(np.mean(s[sel] == 0)), "global": float(np.mean(s[sel] == 1))}
    entry = {"overall_local": float(np.mean(s == 0)), "classes": per}
    if groups:  # fraction routed local per value of each dataset group (speaker, session, ...)
      entry["groups"] = {}
      for g, of in groups.items():
        vals = np.array([of.get(u, "?") for u in ids.tolist()])
        entry["groups"][g] = {
          v: {"n": int((vals == v).sum()), "local": float(np.mean(s[vals == v] == 0))}
          for v in sorted(set(vals.tolist()))
        }
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
    for g, per in e.get("groups", {}).items():
      if len(per) <= MAX_GROUP_VALUES:
        cells = ", ".join(f"{v} {c['local']:.0%} (n={c['n']})" for v, c in per.items())
        lines.append(f"  - {m} routed local by {g}: {cells}")
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


def get_config():
  c = ml_collections.ConfigDict()
  c.run = ""  # a DR-MoE run directory, or a comma list of them
  c.quiet = False
  c.debug = False
  return c


def run(cfg) -> list[dict]:
  runs = [r.strip() for r in str(cfg.run).split(",") if r.strip()]
  if not runs:
    raise ValueError("config.run is empty: name a DR-MoE run directory, e.g. --config.run=runs/drmoe_ravdess")
  out = []
  for r in runs:
    res = report(r)
    if not cfg.quiet:
      print(table(res))
    out.append(res)
  return out


if __name__ == "__main__":
  cli.main(get_config, run)
