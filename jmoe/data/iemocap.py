"""IEMOCAP from the release layout: utterance listing (ids, wavs, transcripts, labels) and a format-2 dataset.

Axis alphabet: **B** utterances, **T** frames or tokens, **D** feature width.

Release layout (as read by public loaders; the audio cannot be brought onto these machines, so the tests write small
files in exactly this layout)::

    <root>/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt
        % [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]          (header; ignored)
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
        C-E1:<TAB>Neutral;<TAB>()                                        (per-annotator lines; ignored)
        A-E1:<TAB>val 3; act 2; dom  3;<TAB>()
    <root>/Session{n}/sentences/wav/<dialog>/<utterance_id>.wav         16 kHz
    <root>/Session{n}/dialog/transcriptions/<dialog>.txt
        Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.

In an EmoEvaluation file every line that starts with ``[`` is a summary line and must parse (times, id, one of the
labels ``neu hap exc ang sad fru sur fea dis oth xxx``, three bracketed values); the id must belong to the file's
dialog and session. In a transcription file every non-blank line must be ``<id> [start-end]: text``. A line that
does not parse raises a one-line ``ValueError`` ``<file>:<line>: ...``. Utterance ids in the transcripts that have
no EmoEvaluation entry are ignored; an evaluated utterance without a transcript line gets text ``""``.

Speaker: the utterance id's last field starts with the speaker's gender, so ``Ses01F_impro01_M013`` was spoken by
``Ses01M`` (the dialog name's letter only says which actor wore the markers).

Dataset (:func:`build_dataset`), one split ``pool`` (leave-one-session-out folds are computed from the ``session``
group by :mod:`jmoe.data.folds`), every evaluated utterance included:

* label heads ``emotion4`` (neutral, happy = hap + exc, angry, sad: the 4-class protocol, 5,531 utterances of the
  release), ``emotion6`` (HAEMSA's order: happy, sad, neutral, angry, excited, frustrated), both int32 [B] with
  ``label_masks`` False for utterances outside the head's classes, and ``vad`` float32 [B, 3] (valence, arousal,
  dominance, range 1-5; a value off that scale is a one-line ``ValueError`` naming the file, line and utterance,
  never a silently masked head);
* groups ``session`` (int64 1-5), ``speaker`` (str, e.g. ``Ses01F``), ``dialog`` (str), ``gender`` (str F/M);
* modalities from ``tools/extract_features`` feature files: ``audio_local`` [B, T, D] + mask, ``audio_global``
  [B, D] and, when a text feature file is given, ``text_local`` + mask and ``text_global``; each view's
  ``modality_meta`` names ``view_of``, the encoder and its scale. Every utterance must have features (a one-line
  ``ValueError`` names a missing id); extra ids in a feature file are ignored.

:func:`write_manifest` writes the ``id,path,text`` CSV that ``tools/extract_features`` reads for both modalities::

    python -m tools.extract_features --modality speech --input iemocap.csv --output runs/features/iemocap_whisper
    python -m tools.extract_features --model roberta-base --input iemocap.csv --output runs/features/iemocap_roberta
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from pathlib import Path

import numpy as np

from jmoe.data import format as fmt
from jmoe.data.ravdess import check_frames, feature_views

LABELS: tuple[str, ...] = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")
EMOTIONS4: tuple[str, ...] = ("neutral", "happy", "angry", "sad")
EMOTION4_OF = {"neu": 0, "hap": 1, "exc": 1, "ang": 2, "sad": 3}
EMOTIONS6: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "excited", "frustrated")
EMOTION6_OF = {"hap": 0, "sad": 1, "neu": 2, "ang": 3, "exc": 4, "fru": 5}
VAD_NAMES: tuple[str, ...] = ("valence", "arousal", "dominance")
VAD_RANGE = (1.0, 5.0)
SESSIONS = (1, 2, 3, 4, 5)

_NUM = r"(-?\d+(?:\.\d*)?)"
_EVAL = re.compile(rf"^\[{_NUM}\s*-\s*{_NUM}\]\t(\S+)\t(\S+)\t\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]\s*$")
_TRANS = re.compile(r"^(\S+) \[(\d+(?:\.\d*)?)-(\d+(?:\.\d*)?)\]:\s?(.*)$")
_ID = re.compile(r"^Ses0([1-5])[FM]_.+_([FM])[A-Z]*\d+$")


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One evaluated utterance."""

  id: str
  session: int
  dialog: str
  start: float
  end: float
  label: str
  vad: tuple[float, float, float]
  wav: Path
  text: str = ""

  @property
  def speaker(self) -> str:
    """``Ses0<n><F|M>`` of the person speaking (the gender letter of the id's last field)."""
    return f"Ses0{self.session}{self.id.rsplit('_', 1)[1][0]}"


def _check_vad(uid: str, vad, where: str) -> None:
  """One-line ValueError if a valence/arousal/dominance value of ``uid`` is off the 1-5 scale (or not finite)."""
  for name, x in zip(VAD_NAMES, vad):
    if not VAD_RANGE[0] <= x <= VAD_RANGE[1]:  # NaN fails too
      raise ValueError(
        f"{where}: {uid}: {name} {x:g} is off the IEMOCAP {VAD_RANGE[0]:g}-{VAD_RANGE[1]:g} scale (fix or drop that "
        "line; the vad head would otherwise learn from it)"
      )


def read_emo_evaluation(path: str | Path) -> list[tuple[str, float, float, str, tuple[float, float, float]]]:
  """Summary lines of one EmoEvaluation file as (id, start, end, label, (v, a, d)), in file order."""
  path = Path(path)
  out = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.startswith("["):
        continue
      m = _EVAL.match(line)
      if not m:
        raise ValueError(
          f"{path}:{n}: EmoEvaluation line does not parse as '[start - end]<TAB>id<TAB>label<TAB>[V, A, D]': "
          f"{line[:80]!r}"
        )
      start, end, uid, label, v, a, d = m.groups()
      if label not in LABELS:
        raise ValueError(f"{path}:{n}: unknown label {label!r} for {uid} (known: {' '.join(LABELS)})")
      _check_vad(uid, (float(v), float(a), float(d)), f"{path}:{n}")
      out.append((uid, float(start), float(end), label, (float(v), float(a), float(d))))
  return out


def read_transcriptions(path: str | Path) -> dict[str, str]:
  """id -> text of one transcription file (``<id> [start-end]: text`` per non-blank line)."""
  path = Path(path)
  out = {}
  with open(path, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      m = _TRANS.match(line)
      if not m:
        raise ValueError(f"{path}:{n}: transcription line does not parse as '<id> [start-end]: text': {line[:80]!r}")
      out[m.group(1)] = m.group(4).strip()
  return out


def list_utterances(root: str | Path, sessions=SESSIONS, require_wav: bool = True) -> list[Utterance]:
  """Every evaluated utterance of ``sessions`` under the release folder ``root``, sorted by session, dialog, file order.

  Raises a one-line error for a missing session folder, a session without EmoEvaluation files, a file without an
  evaluated line, a line that does not parse, an id that does not belong to its file's dialog/session, a duplicate
  id, or (``require_wav``) a missing wav file.
  """
  root = Path(root)
  utts: list[Utterance] = []
  seen: dict[str, Path] = {}
  for s in sessions:
    sdir = root / f"Session{s}"
    edir = sdir / "dialog" / "EmoEvaluation"
    if not edir.is_dir():
      raise FileNotFoundError(f"{edir}: no such folder (IEMOCAP release layout Session{s}/dialog/EmoEvaluation)")
    efiles = sorted(p for p in edir.glob("*.txt") if p.is_file())
    if not efiles:
      raise FileNotFoundError(f"{edir}: no EmoEvaluation .txt files (Session{s} would contribute no utterance)")
    for ef in efiles:
      dialog = ef.stem
      tfile = sdir / "dialog" / "transcriptions" / f"{dialog}.txt"
      texts = read_transcriptions(tfile) if tfile.is_file() else {}
      rows = read_emo_evaluation(ef)
      if not rows:
        raise ValueError(
          f"{ef}: no evaluated utterance (no '[start - end]<TAB>id<TAB>label<TAB>[V, A, D]' line): a cut or emptied "
          "file; restore it from the release"
        )
      for uid, start, end, label, vad in rows:
        m = _ID.match(uid)
        if not m or int(m.group(1)) != s or uid.rsplit("_", 1)[0] != dialog:
          raise ValueError(f"{ef}: utterance id {uid!r} does not belong to dialog {dialog} of Session{s}")
        if uid in seen:
          raise ValueError(f"{ef}: utterance id {uid!r} listed twice (also in {seen[uid]})")
        seen[uid] = ef
        wav = sdir / "sentences" / "wav" / dialog / f"{uid}.wav"
        if require_wav and not wav.is_file():
          raise FileNotFoundError(f"{wav}: wav file of utterance {uid} not found")
        utts.append(Utterance(uid, s, dialog, start, end, label, vad, wav, texts.get(uid, "")))
  if not utts:
    raise ValueError(f"{root}: no evaluated utterances in sessions {list(sessions)}")
  return utts


def write_manifest(utterances, path: str | Path) -> Path:
  """Write ``id,path,text`` (the input of ``tools/extract_features`` for speech and text); atomic; returns path."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["id", "path", "text"])
    for u in utterances:
      w.writerow([u.id, str(Path(u.wav).resolve()), u.text])
  os.replace(tmp, path)
  return path


def _head(labels, mapping) -> tuple[np.ndarray, np.ndarray]:
  y = np.array([mapping.get(x, 0) for x in labels], np.int32)
  return y, np.array([x in mapping for x in labels], bool)


def _take_views(path, modality: str, ids: list[str]):
  fids, feats, masks, meta = feature_views(path, modality)
  pos = {u: i for i, u in enumerate(fids.tolist())}
  missing = [u for u in ids if u not in pos]
  if missing:
    raise ValueError(f"{path}: no {modality} features for {len(missing)} utterance(s), e.g. {missing[:3]}")
  idx = np.array([pos[u] for u in ids], np.int64)
  masks = {m: x[idx] for m, x in masks.items()}
  check_frames(path, np.asarray(ids, str), masks[f"{modality}_local"])
  return {m: x[idx] for m, x in feats.items()}, masks, meta


def build_dataset(
  utterances, audio_features, text_features=None, *, name: str = "iemocap", sessions=SESSIONS
) -> fmt.Dataset:
  """A format-2 :class:`~jmoe.data.format.Dataset` (one split ``pool``) of IEMOCAP utterances.

  Args:
    utterances: a list of :class:`Utterance` or the release folder (listed with :func:`list_utterances`, wav files
      not required: only the features are read).
    audio_features: feature ``.npz`` (or folder with ``features.npz``) of ``tools/extract_features --modality
      speech`` whose ids are the utterance ids -> ``audio_local`` / ``audio_global``.
    text_features: optional text feature file of the same tool -> ``text_local`` / ``text_global``.
    name: dataset name. sessions: sessions to list when ``utterances`` is a folder.
  """
  where = audio_features
  if isinstance(utterances, (str, Path)):
    source_root = str(utterances)
    utterances = list_utterances(utterances, sessions, require_wav=False)
  else:
    source_root = None
    utterances = list(utterances)
  ids = [u.id for u in utterances]
  feats, masks, meta = _take_views(audio_features, "audio", ids)
  mods = ["audio_local", "audio_global"]
  if text_features is not None:
    tf, tm, tmeta = _take_views(text_features, "text", ids)
    feats, masks, meta = {**feats, **tf}, {**masks, **tm}, {**meta, **tmeta}
    mods += ["text_local", "text_global"]
  labels = [u.label for u in utterances]
  y4, m4 = _head(labels, EMOTION4_OF)
  y6, m6 = _head(labels, EMOTION6_OF)
  for u in utterances:
    _check_vad(u.id, u.vad, str(Path(u.wav).parents[3] / "dialog" / "EmoEvaluation" / f"{u.dialog}.txt"))
  vad = np.array([u.vad for u in utterances], np.float32).reshape(len(ids), 3)
  split = fmt.Split(
    features=feats,
    masks=masks,
    labels={"emotion4": y4, "emotion6": y6, "vad": vad},
    ids=np.asarray(ids, str),
    label_masks={"emotion4": m4, "emotion6": m6},
    groups={
      "session": np.array([u.session for u in utterances], np.int64),
      "speaker": np.array([u.speaker for u in utterances], str),
      "dialog": np.array([u.dialog for u in utterances], str),
      "gender": np.array([u.speaker[-1] for u in utterances], str),
    },
  )
  encs = "; ".join(f"{m.split('_')[0]} {meta[m]['encoder']}" for m in mods if m.endswith("_local"))
  ds = fmt.Dataset(
    name=name,
    splits={fmt.POOL: split},
    modalities=tuple(mods),
    dims={m: int(feats[m].shape[-1]) for m in mods},
    synthetic=False,
    source=f"IEMOCAP release{f' {source_root}' if source_root else ''}: {len(ids)} evaluated utterances; "
    f"features {audio_features}{f', {text_features}' if text_features is not None else ''} ({encs})",
    label_specs={
      "emotion4": fmt.LabelSpec("classification", classes=EMOTIONS4),
      "emotion6": fmt.LabelSpec("classification", classes=EMOTIONS6),
      "vad": fmt.LabelSpec("regression", range=VAD_RANGE, names=VAD_NAMES),
    },
    modality_meta=meta,
  )
  return fmt.validate(ds, where)
