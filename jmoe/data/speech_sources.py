"""Data sources of the speech-emotion experiments (DR-MoE, HAEMSA on IEMOCAP), declared in
:mod:`jmoe.data.sources` on import. ``data.labelled_only`` (every source) drops samples without a label for the head
(RAVDESS calm/fearful/... for ``emotion4``, IEMOCAP frustrated for ``emotion4``).

* ``synthetic_scale``: :func:`jmoe.data.synthetic_scale.synthetic_scale` (planted local/global scales).
* ``ravdess``: :func:`jmoe.data.ravdess.build_dataset` from ``features`` (a feature-extraction output file or
  folder) and ``path`` (the audio root; when given the features must cover exactly its clips unless
  ``smoke_clips`` is set). ``smoke_clips=N`` (smoke runs): take N clips per actor from ``path`` (the first
  ``smoke_actors`` actors, emotions spread) and extract their Whisper features into ``features`` first if that file
  does not exist yet.
* ``iemocap``: :func:`jmoe.data.iemocap.build_dataset` from ``path`` (release folder), ``features`` (speech) and
  optional ``text_features``; heads ``emotion4``, ``emotion6`` and ``vad``. One loader for every model.
* ``synthetic_iemocap``: SYNTHETIC 6-class utterance vectors over 5 sessions (``text_global``, ``audio_global``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jmoe.data import format as fmt
from jmoe.data import sources

EXTRACT_HINT = "python -m tools.extract_features --modality speech --input {audio} --output {out}"


def _synthetic_scale(cfg):
  from jmoe.data.synthetic_scale import DEFAULT_SCALES, synthetic_scale

  scales = tuple(x for x in str(cfg.synthetic_scales).split(",") if x) or DEFAULT_SCALES
  return synthetic_scale(
    n_speakers=int(cfg.synthetic_speakers),
    per_speaker=int(cfg.synthetic_per_speaker),
    scales=scales,
    seed=int(cfg.synthetic_seed),
  )


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

  from jmoe.features import extract as extract_features

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


def _labelled_for(ds: fmt.Dataset, head: str, where) -> fmt.Dataset:
  """``ds``, or a one-line ValueError naming ``where`` when no sample has a label for ``head`` (``labelled_only``
  would otherwise leave an empty dataset)."""
  if head and head in ds.label_specs:
    n = sum(int(sp.label_mask(head).sum()) for sp in ds.splits.values())
    if n == 0:
      classes = ", ".join(ds.label_specs[head].classes or ())
      raise ValueError(f"{where}: no sample is labelled for {head} ({classes}); pick another head (--config.head)")
  return ds


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
  return _labelled_for(ds, head, file)


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
  return _labelled_for(build_dataset(cfg.path, features, text), cfg.get("labelled_only", ""), features)


def _synthetic_iemocap(cfg):
  """SYNTHETIC: 6 classes, 5 sessions, utterance vectors whose class means differ (smoke runs and tests)."""
  from jmoe.data.iemocap import EMOTIONS6

  r = np.random.default_rng(int(cfg.synthetic_seed))
  n = int(cfg.synthetic_n)
  if n < 30:
    raise ValueError(f"data.synthetic_n={n} is invalid: use at least 30 utterances (6 per session)")
  y = r.integers(0, 6, n).astype(np.int32)
  dims = {"text_global": 12, "audio_global": 8}
  feats = {m: (r.normal(size=(6, d))[y] + r.normal(size=(n, d)) * 1.5).astype(np.float32) for m, d in dims.items()}
  split = fmt.Split(
    features=feats,
    masks={},
    labels={"emotion6": y},
    ids=np.array([f"u{i}" for i in range(n)]),
    groups={"session": (np.arange(n) % 5 + 1).astype(np.int64)},
  )
  return fmt.Dataset(
    name="synthetic-iemocap6",
    splits={fmt.POOL: split},
    modalities=tuple(dims),
    dims=dims,
    synthetic=True,
    source=f"synthetic 6-class pool, n={n}",
    label_specs={"emotion6": fmt.LabelSpec("classification", classes=EMOTIONS6)},
  )


for _source in (
  sources.Source(
    "synthetic_scale",
    _synthetic_scale,
    dict(synthetic_speakers=10, synthetic_per_speaker=40, synthetic_seed=0, synthetic_scales=""),
    "speech-shaped local/global frame features with a planted scale per class (jmoe.data.synthetic_scale)",
    synthetic=True,
  ),
  sources.Source(
    "ravdess",
    _ravdess,
    dict(features="", calm_as_neutral=False, smoke_clips=0, smoke_actors=3),
    "RAVDESS speech clips (path = the audio root) with features from the speech feature extractor",
  ),
  sources.Source(
    "iemocap",
    _iemocap,
    dict(features="", text_features=""),
    "IEMOCAP release folder (path, Session1..5) with speech features (and optional text features)",
  ),
  sources.Source(
    "synthetic_iemocap",
    _synthetic_iemocap,
    dict(synthetic_seed=0, synthetic_n=300),
    "IEMOCAP-shaped 6-class utterance vectors over 5 sessions",
    synthetic=True,
  ),
):
  sources.register(_source)
