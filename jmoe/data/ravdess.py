"""RAVDESS speech (real emotional speech): file-name parsing and a format-2 dataset from extracted features.

Axis alphabet: **B** clips, **T** encoder frames, **D** feature width.

Layout (``../shared/data/ravdess``, see its README; never copied into the repository)::

    <root>/audio/Actor_XX/MM-VV-EE-II-SS-RR-AA.flac     1,440 clips, 16 kHz mono

The labels are in the file name: MM modality (01-03), VV vocal channel (01 speech, 02 song), EE emotion
(01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust, 08 surprised), II intensity (01 normal,
02 strong), SS statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the door"), RR repetition
(01/02), AA actor (01-24; odd male, even female). A name that does not parse, or whose actor disagrees with its
``Actor_XX`` folder, raises a one-line ``ValueError`` naming the file.

Features come from ``tools/extract_features --modality speech`` (e.g. Whisper tiny.en: ``local`` [B, T, 384] frames at
50 Hz + ``mask`` [B, T], ``global`` [B, 384] = masked mean); their ids are the file stems, so the labels are
re-derived from the ids and the feature file alone is enough to build the dataset. A clip without a valid frame
(mask all False) is a one-line ``ValueError`` naming the file and the clip.

The dataset (:func:`build_dataset`) has one split ``pool`` (speaker-independent folds over the ``actor`` group are
computed by :mod:`jmoe.data.folds`) with

* modalities ``audio_local`` float32 [B, T, D] + mask [B, T] and ``audio_global`` float32 [B, D], both
  ``modality_meta[m]['view_of'] == 'audio'`` with the encoder's name, its frame rate and ``scale`` local/global;
* label heads ``emotion8`` (int32 [B], the 8 RAVDESS emotions in code order) and ``emotion4`` (int32 [B]:
  neutral, happy, angry, sad -- the IEMOCAP 4-class set, so models and metrics carry over; samples of other
  emotions have ``label_masks['emotion4'] == False``);
* groups ``actor`` (int64 1-24), ``gender`` (str male/female), ``statement`` (int64 1/2), ``intensity`` (int64 1/2).

Choice: **calm does not join neutral** in ``emotion4`` by default (``calm_as_neutral=False``): calm is a separately
acted, mildly positive low-arousal category, and the 4-class set mirrors IEMOCAP's, which has no calm; merging would
also make neutral the largest class (96 + 192 clips). Pass ``calm_as_neutral=True`` for the merged variant.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from jmoe.data import format as fmt

EMOTIONS8: tuple[str, ...] = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
"""emotion8 classes; class id = EE code - 1."""
EMOTIONS4: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
"""emotion4 classes (IEMOCAP's 4-class set)."""
AUDIO_SUFFIXES = (".flac", ".wav")
_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_FIELDS = (  # (field, low, high)
  ("modality", 1, 3),
  ("vocal_channel", 1, 2),
  ("emotion", 1, 8),
  ("intensity", 1, 2),
  ("statement", 1, 2),
  ("repetition", 1, 2),
  ("actor", 1, 24),
)


@dataclasses.dataclass(frozen=True)
class RavdessClip:
  """One clip's identity and labels (codes as in the file name, 1-based)."""

  id: str
  path: Path | None
  modality: int
  vocal_channel: int
  emotion: int
  intensity: int
  statement: int
  repetition: int
  actor: int

  @property
  def gender(self) -> str:
    return "male" if self.actor % 2 else "female"

  @property
  def emotion_name(self) -> str:
    return EMOTIONS8[self.emotion - 1]


def parse_name(name: str | Path) -> RavdessClip:
  """Parse ``MM-VV-EE-II-SS-RR-AA[.flac]`` (a path or a bare stem); one-line ValueError naming it otherwise."""
  p = Path(name)
  stem = p.stem if p.suffix.lower() in AUDIO_SUFFIXES else p.name
  m = _NAME.match(stem)
  if not m:
    raise ValueError(f"{name}: file name does not parse as RAVDESS MM-VV-EE-II-SS-RR-AA (7 two-digit fields)")
  vals = {}
  for (field, lo, hi), s in zip(_FIELDS, m.groups()):
    v = int(s)
    if not lo <= v <= hi:
      raise ValueError(f"{name}: RAVDESS field {field} = {s} is outside {lo:02d}-{hi:02d}")
    vals[field] = v
  return RavdessClip(id=stem, path=p if p.suffix else None, **vals)


def default_root() -> Path:
  """``<repo>/../shared/data/ravdess`` (where the shared copy lives next to the repository)."""
  return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ravdess"


def list_clips(root: str | Path | None = None) -> list[RavdessClip]:
  """All clips under ``<root>/audio/Actor_XX/`` (or ``root`` itself if it holds ``Actor_XX`` folders), sorted."""
  root = Path(root) if root is not None else default_root()
  audio = root / "audio" if (root / "audio").is_dir() else root
  if not audio.is_dir():
    raise FileNotFoundError(f"{root}: no RAVDESS audio folder")
  clips = []
  for d in sorted(audio.glob("Actor_*")):
    for f in sorted(d.iterdir()):
      if f.suffix.lower() not in AUDIO_SUFFIXES:
        continue
      c = parse_name(f)
      if d.name != f"Actor_{c.actor:02d}":
        raise ValueError(f"{f}: actor {c.actor:02d} in the file name but the file is in folder {d.name}")
      clips.append(c)
  if not clips:
    raise FileNotFoundError(f"{audio}: no RAVDESS clips (Actor_XX/*.flac)")
  return clips


def feature_views(path, modality: str) -> tuple[np.ndarray, dict, dict, dict]:
  """Read a feature file of ``tools/extract_features`` as two views of ``modality``.

  Returns ``(ids [B], features, masks, modality_meta)``: features ``{f'{modality}_local': float32 [B, T, D],
  f'{modality}_global': float32 [B, D]}``, masks ``{f'{modality}_local': bool [B, T]}`` and each view's
  ``{'view_of': modality, 'encoder': ..., 'rate_hz': ..., 'scale': 'local' | 'global'}``.
  A folder is read as ``<folder>/features.npz``.
  """
  path = Path(path)
  if path.is_dir():
    path = path / "features.npz"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such feature file")
  try:
    with np.load(path, allow_pickle=False) as z:  # each array read once (a RAVDESS 'local' is ~0.6 GB)
      arrays = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile / pickle / format errors all mean "not a feature file"
    raise ValueError(f"{path}: not a feature .npz ({type(e).__name__}: {str(e)[:100]})") from None
  key = "global" if "global" in arrays else "pooled"
  missing = [k for k in ("ids", "local", "mask", key) if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a tools/extract_features file (missing {missing}, has {sorted(arrays)})")
  ids, local, mask, glob = arrays["ids"], arrays["local"], arrays["mask"], arrays[key]
  b = ids.shape[0] if ids.ndim == 1 else -1
  if local.ndim != 3 or mask.shape != local.shape[:2] or glob.shape != (b, local.shape[2]) or local.shape[0] != b:
    raise ValueError(
      f"{path}: expected ids [B], local [B, T, D], mask [B, T], {key} [B, D]; got {ids.shape}, {local.shape}, "
      f"{mask.shape}, {glob.shape}"
    )
  ids = ids.astype(str)
  if len(set(ids.tolist())) != b:
    raise ValueError(f"{path}: duplicate ids in the feature file")
  local, glob, mask = local.astype(np.float32, copy=False), glob.astype(np.float32, copy=False), mask.astype(bool)
  for name, x in (("local", local), (key, glob)):
    if not np.isfinite(x).all():
      raise ValueError(f"{path}: NaN/Inf values in '{name}'")
  meta = {k: arrays[k].item() for k in ("encoder", "model", "rate_hz", "layer") if k in arrays}
  encoder = str(meta.get("encoder") or meta.get("model") or "unknown")
  base = {"view_of": modality, "encoder": encoder, "features_file": str(path)}
  if "rate_hz" in meta and float(meta["rate_hz"]) > 0:
    base["rate_hz"] = float(meta["rate_hz"])
  if "layer" in meta:
    base["layer"] = int(meta["layer"])
  lm, gm = f"{modality}_local", f"{modality}_global"
  return (
    ids,
    {lm: local, gm: glob},
    {lm: mask},
    {lm: {**base, "scale": "local"}, gm: {**base, "scale": "global"}},
  )


def check_frames(path, ids: np.ndarray, mask: np.ndarray) -> None:
  """One-line ValueError naming the feature file and the clips that have no valid frame (``mask`` all False: the
  extraction produced nothing, and the clip's global vector is all zero)."""
  empty = np.flatnonzero(~np.asarray(mask, bool).any(axis=1))
  if empty.size:
    raise ValueError(
      f"{path}: {empty.size} clip(s) have no valid frame (mask all False), e.g. {ids[empty[:3]].tolist()}: "
      "re-extract them or remove them from the feature file"
    )


def emotion4_labels(emotion: np.ndarray, calm_as_neutral: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(labels int32 [B], mask bool [B]) of the emotion4 head from 1-based RAVDESS emotion codes [B]."""
  code_to_4 = {1: 0, 3: 1, 5: 2, 4: 3}  # neutral, happy, angry, sad
  if calm_as_neutral:
    code_to_4[2] = 0
  y = np.array([code_to_4.get(int(e), 0) for e in emotion], np.int32)
  m = np.array([int(e) in code_to_4 for e in emotion], bool)
  return y, m


def build_dataset(
  features, root: str | Path | None = None, *, calm_as_neutral: bool = False, name: str = "ravdess"
) -> fmt.Dataset:
  """A format-2 :class:`~jmoe.data.format.Dataset` (one split ``pool``) from a speech feature file.

  Args:
    features: ``.npz`` (or a folder holding ``features.npz``) written by ``tools/extract_features --modality
      speech`` over RAVDESS clips; its ids are the clip stems (labels are parsed from them).
    root: optional RAVDESS folder; when given, the features must cover exactly its clips (a one-line ValueError
      names a missing or extra clip).
    calm_as_neutral: count calm as neutral in ``emotion4`` (default False: calm is masked out; module docstring).
    name: dataset name.
  """
  ids, feats, masks, meta = feature_views(features, "audio")
  check_frames(features, ids, masks["audio_local"])
  try:
    clips = [parse_name(u) for u in ids]
  except ValueError as e:  # an id of the feature file: name the file too
    raise ValueError(f"{features}: id {e}") from None
  if root is not None:
    want = {c.id for c in list_clips(root)}
    have = set(ids.tolist())
    if want != have:
      miss, extra = sorted(want - have), sorted(have - want)
      raise ValueError(
        f"{features}: features do not match the clips of {root}: {len(miss)} missing (e.g. {miss[:2]}), "
        f"{len(extra)} extra (e.g. {extra[:2]})"
      )
  emo = np.array([c.emotion for c in clips], np.int64)
  y4, m4 = emotion4_labels(emo, calm_as_neutral)
  split = fmt.Split(
    features=feats,
    masks=masks,
    labels={"emotion8": (emo - 1).astype(np.int32), "emotion4": y4},
    ids=np.asarray(ids, str),
    label_masks={"emotion4": m4},
    groups={
      "actor": np.array([c.actor for c in clips], np.int64),
      "gender": np.array([c.gender for c in clips], str),
      "statement": np.array([c.statement for c in clips], np.int64),
      "intensity": np.array([c.intensity for c in clips], np.int64),
    },
  )
  enc = meta["audio_local"]["encoder"]
  src = f"RAVDESS speech clips{f' under {root}' if root is not None else ''}; features {features} ({enc})"
  if calm_as_neutral:
    src += "; emotion4 counts calm as neutral"
  ds = fmt.Dataset(
    name=name,
    splits={fmt.POOL: split},
    modalities=("audio_local", "audio_global"),
    dims={m: int(x.shape[-1]) for m, x in feats.items()},
    synthetic=False,
    source=src,
    label_specs={
      "emotion8": fmt.LabelSpec("classification", classes=EMOTIONS8),
      "emotion4": fmt.LabelSpec("classification", classes=EMOTIONS4),
    },
    modality_meta=meta,
  )
  return fmt.validate(ds, features)
