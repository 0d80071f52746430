"""Data sources of the speech-emotion experiments (DR-MoE), registered in :mod:`jmoe.data.sources` on import.

``config.data`` fields read (every source):

* ``labelled_only``: a label head; when set, samples without a label for it (``label_masks[head]`` False, e.g.
  RAVDESS calm/fearful/... for ``emotion4``, IEMOCAP frustrated for ``emotion4``) are dropped before the folds are
  made. They would enter neither loss nor metrics anyway; dropping them halves the RAVDESS 4-class compute and
  makes every ``label.<head>`` in ``test_outputs.npz`` a real label.

Sources:

* ``synthetic_scale``: :func:`jmoe.data.synthetic_scale.synthetic_scale` with ``synthetic_speakers``,
  ``synthetic_per_speaker``, ``synthetic_seed``, ``synthetic_scales`` (comma list, e.g. ``local,local,global,global``).
* ``ravdess``: :func:`jmoe.data.ravdess.build_dataset` from ``features`` (a ``tools/extract_features`` file or
  folder) and ``path`` (the audio root; when given the features must cover exactly its clips unless
  ``smoke_clips`` is set), ``calm_as_neutral``. ``smoke_clips=N`` (smoke runs): take N clips per actor from
  ``path`` (labelled for ``labelled_only`` when set, emotions spread; the first ``smoke_actors`` actors) and
  extract their Whisper features into ``features`` first if that file does not exist yet.
* ``iemocap``: :func:`jmoe.data.iemocap.build_dataset` from ``path`` (release folder), ``features`` (speech) and
  optional ``text_features``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jmoe.data import format as fmt
from jmoe.data import sources

EXTRACT_HINT = "python -m tools.extract_features --modality speech --input {audio} --output {out}"


def keep_labelled(ds: fmt.Dataset, head: str) -> fmt.Dataset:
  """The dataset with only the samples labelled for ``head`` (every split)."""
  if not head:
    return ds
  if head not in ds.label_specs:
    raise ValueError(f"data.labelled_only={head!r}: {ds.name} has label heads {sorted(ds.label_specs)}")
  splits = {k: sp.take(np.flatnonzero(sp.label_mask(head))) for k, sp in ds.splits.items()}
  kept = sum(len(sp) for sp in splits.values())
  src = f"{ds.source}; only the {kept} samples labelled for {head}"
  return dataclasses.replace(ds, splits=splits, source=src)


def _synthetic_scale(cfg):
  from jmoe.data.synthetic_scale import DEFAULT_SCALES, synthetic_scale

  scales = tuple(x for x in str(cfg.get("synthetic_scales", "")).split(",") if x) or DEFAULT_SCALES
  ds = synthetic_scale(
    n_speakers=int(cfg.get("synthetic_speakers", 10)),
    per_speaker=int(cfg.get("synthetic_per_speaker", 40)),
    scales=scales,
    seed=int(cfg.get("synthetic_seed", 0)),
  )
  return keep_labelled(ds, cfg.get("labelled_only", ""))


def smoke_clip_paths(root, per_actor: int, actors: int, head: str = "") -> list[Path]:
  """``per_actor`` clips of each of the first ``actors`` actors under the RAVDESS ``root``, emotions spread
  (round-robin over the emotions labelled for ``head``: emotion4 -> neutral, happy, angry, sad)."""
  from jmoe.data.ravdess import list_clips

  wanted = {"emotion4": (1, 3, 5, 4)}.get(head, tuple(range(1, 9)))
  by_actor: dict[int, list] = {}
  for c in list_clips(root):
    by_actor.setdefault(c.actor, []).append(c)
  out = []
  for a in sorted(by_actor)[:actors]:
    per_emotion = {e: [c for c in by_actor[a] if c.emotion == e] for e in wanted}
    picked, i = [], 0
    while len(picked) < per_actor and any(per_emotion.values()):
      e = wanted[i % len(wanted)]
      if per_emotion[e]:
        picked.append(per_emotion[e].pop(0))
      i += 1
    out += [c.path for c in picked]
  return out


def extract_smoke_features(root, out: Path, per_actor: int, actors: int, head: str = "") -> Path:
  """Whisper tiny.en features of a handful of RAVDESS clips -> ``out`` (a folder with ``features.npz``)."""
  import csv

  from tools import extract_features

  paths = smoke_clip_paths(root, per_actor, actors, head)
  out.mkdir(parents=True, exist_ok=True)
  manifest = out / "clips.csv"
  with open(manifest, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "path"])
    for p in paths:
      w.writerow([Path(p).stem, str(Path(p).resolve())])
  rc = extract_features.main(["--modality", "speech", "--input", str(manifest), "--output", str(out)])
  if rc:
    raise ValueError(f"feature extraction for the smoke run failed (exit {rc}); see the line above")
  return out / "features.npz"


def _ravdess(cfg):
  from jmoe.data.ravdess import build_dataset

  features = Path(str(cfg.get("features", "")))
  root = str(cfg.get("path", "")) or None
  smoke_clips = int(cfg.get("smoke_clips", 0))
  head = cfg.get("labelled_only", "")
  file = features / "features.npz" if features.suffix != ".npz" else features
  if smoke_clips and not file.is_file():
    if root is None:
      raise ValueError("data.smoke_clips needs data.path (the RAVDESS audio root) to extract features from")
    file = extract_smoke_features(root, features, smoke_clips, int(cfg.get("smoke_actors", 3)), head)
  if not str(cfg.get("features", "")) or not file.is_file():
    raise FileNotFoundError(
      f"no RAVDESS features at {file}: run first `{EXTRACT_HINT.format(audio=root or '../shared/data/ravdess', out=features)}`"
    )
  ds = build_dataset(file, None if smoke_clips else root, calm_as_neutral=bool(cfg.get("calm_as_neutral", False)))
  return keep_labelled(ds, head)


def _iemocap(cfg):
  from jmoe.data.iemocap import build_dataset

  if not cfg.get("path"):
    raise ValueError("data.source='iemocap' needs data.path (the IEMOCAP release folder with Session1..5)")
  features = str(cfg.get("features", ""))
  if not features or not Path(features).exists():
    raise FileNotFoundError(
      f"no IEMOCAP speech features at {features!r}: write the manifest with jmoe.data.iemocap.write_manifest and run "
      f"first `{EXTRACT_HINT.format(audio='iemocap.csv', out=features or 'runs/features/iemocap_whisper')}`"
    )
  text = str(cfg.get("text_features", "")) or None
  ds = build_dataset(cfg.path, features, text)
  return keep_labelled(ds, cfg.get("labelled_only", ""))


sources.register("synthetic_scale", _synthetic_scale)
sources.register("ravdess", _ravdess)
sources.register("iemocap", _iemocap)
