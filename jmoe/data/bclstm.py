"""Real CMU-MOSI utterance features released with bc-LSTM (Poria et al., ACL 2017).

Expected layout of ``mosi_dir`` (see ``../shared/data/mosi/README.md``)::

    mosi_dir/CMU_MOSI_Opinion_Labels.csd        official SDK labels (real-valued, [-3, 3])
    mosi_dir/standard_folds.json                SDK standard folds (52/10/31 videos)
    mosi_dir/bclstm/transcripts.csv             rows "<video>_<n>","TRANSCRIPT","93",<binary>
    mosi_dir/bclstm/text_{train,test}.csv       col 0 = row index into transcripts.csv
    mosi_dir/bclstm/{text,audio,video}/<m>_{train,test}0.csv
                                                one utterance per row: D features + binary label

Widths: text 100 (text-CNN), audio 73 (openSMILE), vision 100 (3D-CNN; the CSV folder is
``video``, the jmoe modality is ``vision``). The bc-LSTM split is by video: 1,447 train /
752 test utterances from 62 / 31 videos. Real-valued labels come from the official
label ``.csd``; the loader checks that the CSVs' binary label equals ``score >= 0`` on
every row, which also proves the row-to-id join.

Label leakage. The text-CNN and 3D-CNN were trained with labels on the bc-LSTM train
videos, which include 24 of the 31 *standard* test videos. On the standard split the
bc-LSTM ``text`` and ``vision`` features therefore leak test labels (a linear probe
reaches ~93% / ~84% binary accuracy). :func:`load_mosi_standard` refuses them unless
``allow_leaky=True``; use audio (unsupervised openSMILE) plus your own text features
(``extra_features``), or use :func:`load_mosi_bclstm` (the bc-LSTM split, leak-free).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from jmoe.data.format import MODALITIES, Dataset, Split, canonical_modalities, read_feature_table, validate
from jmoe.data.sdk import load_mosi_labels, standard_folds

FOLDER = {"text": "text", "audio": "audio", "vision": "video"}
"""jmoe modality -> bc-LSTM CSV folder / file prefix."""
DIMS = {"text": 100, "audio": 73, "vision": 100}
LEAKY_ON_STANDARD = ("text", "vision")
LABELS_FILE = "CMU_MOSI_Opinion_Labels.csd"
FOLDS_FILE = "standard_folds.json"
PARTS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class BclstmPart:
  """One bc-LSTM file set (``'train'`` or ``'test'``).

  Attributes:
    ids: str ``[B]`` utterance ids ``'<video>_<n>'`` (via transcripts.csv).
    features: modality -> float32 ``[B, D]``.
    binary: int ``[B]`` the CSVs' binary sentiment label (1 = positive).
  """

  ids: np.ndarray
  features: dict[str, np.ndarray]
  binary: np.ndarray


def _read_numeric_csv(path: Path) -> np.ndarray:
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such bc-LSTM feature file")
  try:
    text = path.read_text().replace('"', "")
    arr = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
  except (UnicodeDecodeError, ValueError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path}: not a numeric bc-LSTM CSV ({msg})") from None
  if arr.shape[0] == 0:
    raise ValueError(f"{path}: empty CSV")
  return arr


def read_transcripts(path) -> tuple[np.ndarray, list[str], np.ndarray]:
  """``transcripts.csv`` -> (ids str ``[M]``, transcripts, binary int ``[M]``), in file order."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such transcripts file")
  ids, texts, binary = [], [], []
  with path.open(newline="") as fh:
    for lineno, row in enumerate(csv.reader(fh), 1):
      if len(row) != 4:
        raise ValueError(f"{path}: line {lineno} has {len(row)} fields, expected 4 (id, text, 93, label)")
      try:
        binary.append(int(row[3]))
      except ValueError:
        raise ValueError(f"{path}: line {lineno}: label {row[3]!r} is not 0/1") from None
      ids.append(row[0])
      texts.append(row[1])
  if len(set(ids)) != len(ids):
    raise ValueError(f"{path}: duplicate utterance ids")
  return np.asarray(ids, dtype=str), texts, np.asarray(binary, np.int64)


def read_bclstm(bclstm_dir, modalities=MODALITIES) -> dict[str, BclstmPart]:
  """Read the bc-LSTM train and test files; rows keep file order.

  Checks that every file of a part has the same number of rows, that the binary label
  column agrees across modalities and with transcripts.csv, and that
  ``text_<part>.csv`` repeats the text features of ``text/text_<part>0.csv`` (so its
  index column really belongs to these rows).
  """
  bclstm_dir = Path(bclstm_dir)
  if not bclstm_dir.is_dir():
    raise FileNotFoundError(f"{bclstm_dir}: no such bc-LSTM directory")
  mods = canonical_modalities(modalities, where="modalities")
  all_ids, _, all_binary = read_transcripts(bclstm_dir / "transcripts.csv")
  parts = {}
  for part in PARTS:
    index_path = bclstm_dir / f"text_{part}.csv"
    index = _read_numeric_csv(index_path)
    rows = index[:, 0]
    if not np.all(rows == np.round(rows)) or rows.min() < 0 or rows.max() >= len(all_ids):
      raise ValueError(f"{index_path}: column 0 must be row indices into transcripts.csv (0..{len(all_ids) - 1})")
    rows = rows.astype(np.int64)
    n = len(rows)
    feats, binary = {}, None
    for m in sorted(set(mods) | {"text"}, key=MODALITIES.index):
      p = bclstm_dir / FOLDER[m] / f"{FOLDER[m]}_{part}0.csv"
      arr = _read_numeric_csv(p)
      if arr.shape != (n, DIMS[m] + 1):
        raise ValueError(
          f"{p}: shape {arr.shape}, expected ({n}, {DIMS[m] + 1}) "
          f"({n} rows as in {index_path.name}, {DIMS[m]} features + label)"
        )
      lab = arr[:, -1]
      if not np.isin(lab, (0, 1)).all():
        raise ValueError(f"{p}: last column must be the binary label (0/1)")
      if binary is None:
        binary = lab.astype(np.int64)
      elif not np.array_equal(binary, lab):
        raise ValueError(f"{p}: binary labels differ from the other modalities in {int((binary != lab).sum())} rows")
      feats[m] = arr[:, :-1].astype(np.float32)
    if index.shape[1] == DIMS["text"] + 1:
      diff = np.abs(index[:, 1:] - feats["text"]).max()
      if diff > 1e-4:
        raise ValueError(
          f"{index_path}: rows do not repeat text/text_{part}0.csv "
          f"(max difference {diff:.3g}); the files do not belong together"
        )
    if not np.array_equal(all_binary[rows], binary):
      raise ValueError(
        f"{index_path}: binary labels of the indexed transcripts differ from the feature "
        f"files in {int((all_binary[rows] != binary).sum())} rows"
      )
    parts[part] = BclstmPart(ids=all_ids[rows], features={m: feats[m] for m in mods}, binary=binary)
  vids = {p: {i.rsplit("_", 1)[0] for i in parts[p].ids.tolist()} for p in PARTS}
  both = vids["train"] & vids["test"]
  if both:
    raise ValueError(f"{bclstm_dir}: {len(both)} videos appear in both train and test files, e.g. {sorted(both)[0]}")
  return parts


def _scores(mosi_dir: Path, part: BclstmPart, labels: Mapping[str, float], where: Path) -> np.ndarray:
  missing = [i for i in part.ids.tolist() if i not in labels]
  if missing:
    raise ValueError(f"{where}: {len(missing)} bc-LSTM utterances have no label in {LABELS_FILE}, e.g. {missing[0]}")
  y = np.asarray([labels[i] for i in part.ids.tolist()], np.float32)
  bad = (y >= 0).astype(np.int64) != part.binary
  if bad.any():
    raise ValueError(
      f"{where}: binary label != (score >= 0) on {int(bad.sum())} rows, e.g. "
      f"{part.ids[bad][0]}; ids and labels are misaligned"
    )
  return y


def _video(ids: np.ndarray) -> np.ndarray:
  return np.asarray([i.rsplit("_", 1)[0] for i in ids.tolist()], dtype=str)


def _check_dir(mosi_dir) -> Path:
  mosi_dir = Path(mosi_dir)
  if not mosi_dir.is_dir():
    raise FileNotFoundError(f"{mosi_dir}: no such MOSI directory")
  return mosi_dir


def load_mosi_bclstm(mosi_dir, valid_fraction: float = 0.15, seed: int = 0, modalities=MODALITIES) -> Dataset:
  """MOSI on the bc-LSTM split (leak-free for all three modalities).

  ``test`` is the bc-LSTM test file (752 utterances, 31 videos). ``valid`` takes
  ``round(valid_fraction * 62)`` whole train videos (chosen by a ``seed``-ed permutation
  of the sorted video ids), ``train`` keeps the rest; rows keep file order.
  Features are float32 ``[B, D]`` (text 100, audio 73, vision 100); labels are the
  official real-valued scores.
  """
  mosi_dir = _check_dir(mosi_dir)
  if not 0.0 < valid_fraction < 1.0:
    raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
  mods = canonical_modalities(modalities, where="modalities")
  parts = read_bclstm(mosi_dir / "bclstm", mods)
  labels = load_mosi_labels(mosi_dir / LABELS_FILE)
  ys = {p: _scores(mosi_dir, parts[p], labels, mosi_dir / "bclstm" / f"text_{p}.csv") for p in PARTS}

  train_vid = _video(parts["train"].ids)
  videos = np.asarray(sorted(set(train_vid.tolist())))
  n_valid = min(max(1, int(round(valid_fraction * len(videos)))), len(videos) - 1)
  perm = np.random.default_rng(seed).permutation(len(videos))
  valid_videos = set(videos[perm[:n_valid]].tolist())
  in_valid = np.isin(train_vid, list(valid_videos))

  def make(part: BclstmPart, y: np.ndarray, sel=None) -> Split:
    sel = np.arange(len(y)) if sel is None else sel
    return Split(features={m: part.features[m][sel] for m in mods}, masks={}, labels=y[sel], ids=part.ids[sel])

  splits = {
    "train": make(parts["train"], ys["train"], np.flatnonzero(~in_valid)),
    "valid": make(parts["train"], ys["train"], np.flatnonzero(in_valid)),
    "test": make(parts["test"], ys["test"]),
  }
  ds = Dataset(
    name="mosi-bclstm",
    splits=splits,
    modalities=mods,
    dims={m: DIMS[m] for m in mods},
    synthetic=False,
    source=f"{mosi_dir} (bc-LSTM features, bc-LSTM split; valid = {n_valid} train videos, "
    f"valid_fraction={valid_fraction}, seed={seed})",
  )
  return validate(ds, mosi_dir)


def load_mosi_standard(
  mosi_dir,
  modalities=("audio",),
  extra_features: Mapping[str, object] | None = None,
  allow_leaky: bool = False,
  extra_key: str = "pooled",
) -> Dataset:
  """MOSI on the SDK standard folds (1,284 / 229 / 686 utterances).

  Args:
    modalities: bc-LSTM modalities to include, looked up by utterance id in both
      bc-LSTM files. Only ``'audio'`` is leak-free here; ``'text'`` and ``'vision'``
      raise ValueError unless ``allow_leaky=True`` (see the module docstring).
    extra_features: modality -> ``.npz`` written by the offline feature tool, with
      ``'ids'`` str ``[B]`` and ``extra_key``: ``'pooled'`` float ``[B, D]`` (default) or
      ``'local'`` float ``[B, T, D]`` with ``'mask'`` ``[B, T]``; e.g. ``{'text': path}``
      for sentence-encoder text features. Must cover every MOSI utterance.
    allow_leaky: accept bc-LSTM text/vision; the dataset name gets ``-LEAKY`` and
      ``source`` says why.

  Rows follow the folds' video order, then the label file's stored row order. bc-LSTM
  features are float32 ``[B, D]``; extra features keep their table's shape.
  """
  mosi_dir = _check_dir(mosi_dir)
  extra_features = dict(extra_features or {})
  mods = canonical_modalities(modalities, where="modalities")
  canonical_modalities(extra_features, where="extra_features")
  clash = set(mods) & set(extra_features)
  if clash:
    raise ValueError(f"modality {sorted(clash)[0]!r} is both a bc-LSTM modality and in extra_features; pick one")
  leaky = [m for m in mods if m in LEAKY_ON_STANDARD]
  if leaky and not allow_leaky:
    raise ValueError(
      f"bc-LSTM {'/'.join(leaky)} features leak test labels on the standard MOSI split "
      f"(their extractors were trained on 24 of the 31 standard test videos); use audio plus "
      f"your own text features (extra_features), or load_mosi_bclstm, or pass allow_leaky=True"
    )
  all_mods = canonical_modalities(tuple(mods) + tuple(extra_features), where="modalities")
  if not all_mods:
    raise ValueError("load_mosi_standard: no modalities requested")
  if leaky:
    warnings.warn(f"MOSI standard split with bc-LSTM {'/'.join(leaky)}: these features leak test labels", stacklevel=2)
  labels_path = mosi_dir / LABELS_FILE
  labels = load_mosi_labels(labels_path)
  folds = standard_folds(mosi_dir / FOLDS_FILE)

  # modality -> (id -> row, features [M, D] or [M, T, D], mask [M, T] or None)
  tables: dict[str, tuple[dict[str, int], np.ndarray, np.ndarray | None]] = {}
  if mods:
    parts = read_bclstm(mosi_dir / "bclstm", mods)
    for p in PARTS:
      _scores(mosi_dir, parts[p], labels, mosi_dir / "bclstm" / f"text_{p}.csv")
    ids_all = np.concatenate([parts[p].ids for p in PARTS])
    for m in mods:
      tables[m] = (
        {i: r for r, i in enumerate(ids_all.tolist())},
        np.concatenate([parts[p].features[m] for p in PARTS]),
        None,
      )
  dims = {m: DIMS[m] for m in mods}
  for m, path in extra_features.items():
    ids_e, feats_e, mask_e = read_feature_table(path, key=extra_key)
    tables[m] = ({i: r for r, i in enumerate(ids_e.tolist())}, feats_e, mask_e)
    dims[m] = int(feats_e.shape[-1])

  by_video: dict[str, list[str]] = {}
  for sid in labels:
    by_video.setdefault(sid.rsplit("_", 1)[0], []).append(sid)
  splits = {}
  for s, vids in folds.items():
    missing_v = [v for v in vids if v not in by_video]
    if missing_v:
      raise ValueError(f"{mosi_dir / FOLDS_FILE}: fold {s!r} lists video {missing_v[0]!r} which has no labels")
    ids = [sid for v in vids for sid in by_video[v]]
    feats, masks = {}, {}
    for m in all_mods:
      index, arr, mask = tables[m]
      missing = [i for i in ids if i not in index]
      if missing:
        src = extra_features.get(m, mosi_dir / "bclstm")
        raise ValueError(f"{src}: no {m} features for {len(missing)} utterances of split {s!r}, e.g. {missing[0]}")
      rows = np.asarray([index[i] for i in ids], np.int64)
      feats[m] = arr[rows]
      if mask is not None:
        masks[m] = mask[rows]
    splits[s] = Split(
      features=feats,
      masks=masks,
      labels=np.asarray([labels[i] for i in ids], np.float32),
      ids=np.asarray(ids, dtype=str),
    )
  src = [f"{mosi_dir} (standard folds; bc-LSTM {'/'.join(mods) or 'none'}"]
  src += [f"{m} from {p}" for m, p in extra_features.items()]
  source = ", ".join(src) + ")"
  if leaky:
    source += f" LEAKY: bc-LSTM {'/'.join(leaky)} were trained on standard test videos"
  ds = Dataset(
    name="mosi-standard" + ("-LEAKY" if leaky else ""),
    splits=splits,
    modalities=all_mods,
    dims=dims,
    synthetic=False,
    source=source,
  )
  return validate(ds, mosi_dir)
