"""Build a format-v2 dataset from a manifest (CSV/TSV) and feature files: ``python -m jmoe.data.build``.

Axis alphabet: **B** samples (manifest rows), **T** frames or tokens, **D** feature width, **K** columns of a
multi-column regression head.

Usage::

    python -m jmoe.data.build --manifest clips.csv --features audio=runs/features/my_whisper \\
        --labels emotion:classification --labels arousal:regression:1,5 --groups speaker,session \\
        --out runs/data/my_corpus [--name my_corpus] [--id-column id] [--split-column split]

Manifest: a CSV (``.tsv``/``.tab``: tab-separated) with a header row. Columns:

* the id column (``--id-column``; default ``id``, else ``path`` when there is no ``id`` column). A column named
  ``path`` or ``file`` holds file paths and the id is the file's stem -- the id that ``tools/extract_features``
  gives a clip of a folder -- any other column is the id as written;
* label columns (``--labels``, repeatable): ``HEAD:KIND[:ARG]`` with KIND ``classification`` or ``regression``.
  ``HEAD=COL1+COL2+...:regression`` makes one ``[B, K]`` head from K columns (dimension names = the columns).
  ARG: the class names of a classification head in id order (``neutral,happy,angry,sad``; default: the sorted
  unique label strings), or ``LOW,HIGH`` the range of a regression head (default: none). An **empty cell** means "no
  label here": the sample's ``label_masks[HEAD]`` is False (its placeholder label is 0);
* group columns (``--groups``, comma list or repeatable: ``speaker``, ``subject``, ``session``...): integers when every
  value of the column is one, else strings; folds are built from them;
* an optional split column (``--split-column``; default ``split`` when present): ``train``/``valid``/``test`` (all
  three must occur). Without it the dataset is one cross-validation ``pool``.

Features (``--features MODALITY=PATH``, repeatable; every manifest id must be in every file, extra ids are ignored):

* the output of ``tools/extract_features`` (a folder holding ``features.npz``, or the ``.npz``; it has ``ids``,
  ``local``, ``mask`` and ``global``): two views ``MODALITY_local`` ``[B, T, D]`` (T trimmed to the longest kept
  sample) and ``MODALITY_global`` ``[B, D]`` (``modality_meta[...]['view_of'] == MODALITY``), as
  :func:`jmoe.data.ravdess.feature_views` reads them;
* an ``.npz`` with ``ids`` ``[B]`` and one other array ``[B, D]``: modality ``MODALITY``;
* an ``.npz`` whose every key is a sample id and every value a vector ``[D]``: modality ``MODALITY``;
* a CSV/TSV table: the id column (named as ``--id-column``, else the first column) and numeric columns.

Errors: every malformed row is reported on its own line, ``<manifest>:<line>: <reason>`` (line = the line number in
the file, the header being line 1): a missing feature for an id, an unknown split name, a non-numeric or
out-of-range regression label, a class outside the given classes, a duplicate id, an empty id or group cell, a wrong
cell count, NaN/Inf features. Nothing is written unless every row is good; then the dataset is validated and saved
by :func:`jmoe.data.format.save_dataset` (atomically). The CLI prints the errors (at most ``--max-errors``) and
exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

from jmoe.data import format as fmt

KINDS = ("classification", "regression")
PATH_COLUMNS = ("path", "file")


class ManifestError(ValueError):
  """Malformed manifest rows: ``errors`` holds one line per problem; ``str()`` is the first and a count."""

  def __init__(self, errors: list[str]):
    self.errors = list(errors)
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    super().__init__(f"{errors[0]}{more}")


@dataclasses.dataclass(frozen=True)
class HeadArg:
  """One ``--labels`` entry: head name, its manifest columns, kind, given classes or range."""

  head: str
  columns: tuple[str, ...]
  kind: str
  classes: tuple[str, ...] | None = None
  range: tuple[float, float] | None = None


def parse_label_arg(text: str) -> HeadArg:
  """``HEAD[=COL1+COL2]:KIND[:ARG]`` -> :class:`HeadArg`; one-line ValueError naming the argument otherwise."""
  parts = text.split(":", 2)
  if len(parts) < 2 or not parts[0]:
    raise ValueError(f"--labels {text!r}: expected HEAD:KIND[:ARG] with KIND one of {', '.join(KINDS)}")
  name, kind = parts[0], parts[1].strip().lower()
  head, _, cols = name.partition("=")
  columns = tuple(c for c in cols.split("+") if c) if cols else (head,)
  if kind not in KINDS:
    raise ValueError(f"--labels {text!r}: kind {parts[1]!r} is not one of {', '.join(KINDS)}")
  if not fmt._NAME.match(head):
    raise ValueError(f"--labels {text!r}: head name {head!r} is not an identifier (letters, digits, '_')")
  arg = parts[2] if len(parts) == 3 else ""
  if kind == "classification":
    if len(columns) != 1:
      raise ValueError(f"--labels {text!r}: a classification head reads one column, got {list(columns)}")
    classes = tuple(c.strip() for c in arg.split(",")) if arg else None
    if classes is not None and (len(set(classes)) != len(classes) or "" in classes):
      raise ValueError(f"--labels {text!r}: class names must be distinct and non-empty")
    return HeadArg(head, columns, kind, classes=classes)
  rng = None
  if arg:
    try:
      lo, hi = (float(v) for v in arg.split(","))
    except ValueError:
      raise ValueError(f"--labels {text!r}: a regression range is LOW,HIGH (two numbers), got {arg!r}") from None
    if not lo < hi:
      raise ValueError(f"--labels {text!r}: range LOW,HIGH needs LOW < HIGH")
    rng = (lo, hi)
  return HeadArg(head, columns, kind, range=rng)


def read_manifest(path) -> tuple[list[str], list[tuple[int, list[str]]]]:
  """(header, [(line number, cells)]) of a CSV/TSV; blank lines skipped. One-line errors for a missing/empty file."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such manifest file")
  delim = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
  with open(path, newline="", encoding="utf-8-sig") as fh:
    reader = csv.reader(fh, delimiter=delim)
    rows = []
    header = None
    for cells in reader:
      if not any(c.strip() for c in cells):
        continue
      if header is None:
        header = [c.strip() for c in cells]
        continue
      rows.append((reader.line_num, [c.strip() for c in cells]))
  if header is None:
    raise ValueError(f"{path}: manifest is empty (needs a header row and data rows)")
  dup = sorted({c for c in header if header.count(c) > 1})
  if dup:
    raise ValueError(f"{path}: manifest header repeats column(s) {dup}")
  if not rows:
    raise ValueError(f"{path}: manifest has a header but no data rows")
  return header, rows


# --------------------------------------------------------------------------- features
@dataclasses.dataclass
class FeatureSource:
  """The arrays of one ``--features`` file, indexed by id."""

  modality: str
  path: Path
  index: dict[str, int]
  arrays: dict[str, np.ndarray]  # modality name -> float32 [N, D] or [N, T, D]
  masks: dict[str, np.ndarray]  # sequence modality -> bool [N, T]
  meta: dict[str, dict]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:  # all mean "not a feature file"
    raise ValueError(f"{path}: not a feature .npz ({type(e).__name__}: {str(e)[:100]})") from None


def _feature_table_csv(path: Path, modality: str, id_column: str) -> FeatureSource:
  header, rows = read_manifest(path)
  ic = header.index(id_column) if id_column in header else 0
  ids, vecs = [], []
  for line, cells in rows:
    if len(cells) != len(header):
      raise ValueError(f"{path}:{line}: {len(cells)} cells, the header has {len(header)}")
    try:
      vecs.append([float(c) for j, c in enumerate(cells) if j != ic])
    except ValueError:
      raise ValueError(f"{path}:{line}: a feature cell is not a number") from None
    ids.append(cells[ic])
  return _table_source(modality, path, np.asarray(ids, str), np.asarray(vecs, np.float32))


def _table_source(modality: str, path: Path, ids: np.ndarray, x: np.ndarray) -> FeatureSource:
  if x.ndim != 2 or x.shape[0] != len(ids):
    raise ValueError(f"{path}: expected features [B, D] for ids [B], got {x.shape} for {len(ids)} ids")
  index = {}
  for i, u in enumerate(ids.tolist()):
    if u in index:
      raise ValueError(f"{path}: duplicate id {u!r} in the feature file")
    index[u] = i
  return FeatureSource(modality, path, index, {modality: x.astype(np.float32)}, {}, {})


def load_features(spec: str, id_column: str = "id") -> FeatureSource:
  """Read one ``MODALITY=PATH`` argument (see the module docstring for the layouts)."""
  modality, sep, p = spec.partition("=")
  if not sep or not modality or not p:
    raise ValueError(f"--features {spec!r}: expected MODALITY=PATH")
  if not fmt._NAME.match(modality):
    raise ValueError(f"--features {spec!r}: modality {modality!r} is not an identifier (letters, digits, '_')")
  path = Path(p)
  if path.is_dir():
    path = path / "features.npz"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such feature file (--features {spec})")
  if path.suffix.lower() in (".csv", ".tsv", ".tab"):
    return _feature_table_csv(path, modality, id_column)
  arrays = _load_npz(path)
  if {"ids", "local", "mask"} <= set(arrays):  # tools/extract_features output: local + global views
    from jmoe.data.ravdess import feature_views

    ids, feats, masks, meta = feature_views(path, modality)
    index = {u: i for i, u in enumerate(ids.tolist())}
    return FeatureSource(modality, path, index, feats, masks, meta)
  if "ids" in arrays:
    others = [k for k in arrays if k != "ids"]
    if len(others) != 1:
      raise ValueError(f"{path}: an 'ids' table needs exactly one feature array beside 'ids', has {sorted(others)}")
    x = arrays[others[0]]
    if not np.issubdtype(x.dtype, np.number):
      raise ValueError(f"{path}: feature array {others[0]!r} is not numeric ({x.dtype})")
    return _table_source(modality, path, np.asarray(arrays["ids"]).astype(str), x)
  if not arrays:
    raise ValueError(f"{path}: feature .npz holds no arrays")
  shapes = {np.shape(v) for v in arrays.values()}
  if len(shapes) != 1 or len(next(iter(shapes))) != 1:
    raise ValueError(f"{path}: an id -> vector .npz needs every value a vector [D] of one size, got shapes {shapes}")
  ids = np.asarray(list(arrays), str)
  return _table_source(modality, path, ids, np.stack([np.asarray(v, np.float32) for v in arrays.values()]))


# --------------------------------------------------------------------------- build
def _column(header: list[str], name: str, what: str, where) -> int:
  if name not in header:
    raise ValueError(f"{where}: manifest has no {what} column {name!r} (columns: {', '.join(header)})")
  return header.index(name)


def build_dataset(
  manifest,
  features: list[str],
  labels: list[str],
  groups: list[str] = (),
  *,
  id_column: str = "",
  split_column: str | None = None,
  name: str = "dataset",
) -> fmt.Dataset:
  """A validated format-v2 :class:`~jmoe.data.format.Dataset` from a manifest and feature files.

  Arguments as the CLI's flags (module docstring). ``split_column=None``: ``split`` when the manifest has one; ``''``:
  none (one ``pool``). Raises :class:`ManifestError` (a ``ValueError``; ``.errors`` lists one line per malformed
  row) or a one-line ValueError / FileNotFoundError for a bad argument, file or column.
  """
  where = Path(manifest)
  header, rows = read_manifest(where)
  if not labels:
    raise ValueError("no label heads: give --labels HEAD:KIND at least once")
  heads = [parse_label_arg(s) for s in labels]
  if len({h.head for h in heads}) != len(heads):
    raise ValueError(f"--labels name a head twice: {[h.head for h in heads]}")
  if not features:
    raise ValueError("no features: give --features MODALITY=PATH at least once")
  id_column = id_column or ("id" if "id" in header else "path" if "path" in header else "id")
  ic = _column(header, id_column, "id", where)
  as_stem = id_column.lower() in PATH_COLUMNS
  group_names = [g for s in groups for g in s.split(",") if g]
  gcols = {g: _column(header, g, "group", where) for g in group_names}
  bad_groups = [g for g in group_names if not fmt._NAME.match(g)]
  if bad_groups:
    raise ValueError(f"--groups: group name {bad_groups[0]!r} is not an identifier (letters, digits, '_')")
  if split_column is None:
    split_column = "split" if "split" in header else ""
  sc = _column(header, split_column, "split", where) if split_column else None
  lcols = {h.head: [_column(header, c, f"label ({h.head})", where) for c in h.columns] for h in heads}
  sources = [load_features(s, id_column) for s in features]
  mods = [m for src in sources for m in src.arrays]
  dup = sorted({m for m in mods if mods.count(m) > 1})
  if dup:
    raise ValueError(f"--features give modality {dup} twice")

  errors: list[str] = []
  seen: dict[str, int] = {}
  good: list[tuple[str, str, dict, dict]] = []  # (id, split, {head: raw cells}, {group: cell})
  for line, cells in rows:
    err = lambda msg, line=line: errors.append(f"{where}:{line}: {msg}")
    if len(cells) != len(header):
      err(f"{len(cells)} cells, the header has {len(header)}")
      continue
    raw_id = cells[ic]
    sid = Path(raw_id).stem if as_stem and raw_id else raw_id
    if not sid:
      err(f"empty id (column {id_column!r})")
      continue
    ok = True
    if sid in seen:
      err(f"duplicate id {sid!r} (first on line {seen[sid]})")
      ok = False
    else:
      seen[sid] = line
    split = fmt.POOL
    if sc is not None:
      split = cells[sc].lower()
      if split not in fmt.SPLITS:
        err(f"id {sid!r}: unknown split name {cells[sc]!r} in column {split_column!r} (use train, valid or test)")
        ok = False
    for src in sources:
      if sid not in src.index:
        err(f"id {sid!r}: no '{src.modality}' features in {src.path}")
        ok = False
        continue
      for m, x in src.arrays.items():
        row = x[src.index[sid]]
        if m in src.masks:
          row = row[src.masks[m][src.index[sid]]]
        if not np.isfinite(row).all():
          err(f"id {sid!r}: NaN/Inf in its '{m}' features ({src.path})")
          ok = False
    lab = {}
    for h in heads:
      vals = [cells[j] for j in lcols[h.head]]
      filled = [v != "" for v in vals]
      if not any(filled):
        lab[h.head] = None  # masked: no label here
        continue
      if not all(filled):
        err(f"id {sid!r}: head {h.head!r} has some of its columns {list(h.columns)} empty (fill all or none)")
        ok = False
        continue
      if h.kind == "classification":
        if h.classes is not None and vals[0] not in h.classes:
          err(f"id {sid!r}: label {vals[0]!r} of {h.head!r} is not one of the given classes {list(h.classes)}")
          ok = False
        lab[h.head] = vals[0]
        continue
      nums = []
      for col, v in zip(h.columns, vals):
        try:
          f = float(v)
        except ValueError:
          f = math.nan
          err(f"id {sid!r}: regression label {col!r} = {v!r} is not a number")
          ok = False
        else:
          if not math.isfinite(f):
            err(f"id {sid!r}: regression label {col!r} = {v!r} is not finite")
            ok = False
          elif h.range is not None and not h.range[0] <= f <= h.range[1]:
            err(f"id {sid!r}: regression label {col!r} = {v} is outside the range [{h.range[0]:g}, {h.range[1]:g}]")
            ok = False
        nums.append(f)
      lab[h.head] = nums
    grp = {}
    for g, j in gcols.items():
      if not cells[j]:
        err(f"id {sid!r}: empty group cell (column {g!r})")
        ok = False
      grp[g] = cells[j]
    if ok:
      good.append((sid, split, lab, grp))
  if errors:
    raise ManifestError(errors)

  split_names = sorted({s for _, s, _, _ in good}, key=(*fmt.SPLITS, fmt.POOL).index)
  if sc is not None and split_names != list(fmt.SPLITS):
    missing = [s for s in fmt.SPLITS if s not in split_names]
    raise ValueError(f"{where}: split column {split_column!r} has no {', '.join(missing)} rows (needs all three)")
  specs = {}
  for h in heads:
    if h.kind == "classification":
      present = sorted({lab[h.head] for _, _, lab, _ in good if lab[h.head] is not None})
      classes = h.classes or tuple(present)
      if not classes:
        raise ValueError(f"{where}: head {h.head!r} has no label in any row")
      specs[h.head] = fmt.LabelSpec("classification", classes=classes)
    else:
      names = h.columns if len(h.columns) > 1 else None
      specs[h.head] = fmt.LabelSpec("regression", range=h.range, names=names)
  group_is_int = {g: all(_is_int(grp[g]) for _, _, _, grp in good) for g in gcols}

  splits = {}
  for sname in split_names:
    sel = [r for r in good if r[1] == sname]
    ids = [r[0] for r in sel]
    feats, masks = {}, {}
    for src in sources:
      rows_idx = np.array([src.index[u] for u in ids])
      for m, x in src.arrays.items():
        x = np.asarray(x)[rows_idx]
        if m in src.masks:
          mk = np.asarray(src.masks[m])[rows_idx]
          t = max(int(mk.sum(1).max()), 1)
          x, mk = x[:, :t], mk[:, :t]
          masks[m] = np.ascontiguousarray(mk, bool)
        feats[m] = np.ascontiguousarray(x, np.float32)
    labels_, lmasks = {}, {}
    for h in heads:
      vals = [r[2][h.head] for r in sel]
      lm = np.array([v is not None for v in vals], bool)
      if h.kind == "classification":
        cid = {c: i for i, c in enumerate(specs[h.head].classes)}
        y = np.array([cid[v] if v is not None else 0 for v in vals], np.int32)
      else:
        k = len(h.columns)
        y = np.array([v if v is not None else [0.0] * k for v in vals], np.float32)
        y = y if k > 1 else y[:, 0]
        if h.range is not None:  # the placeholder of a masked sample inside the range too
          y[~lm] = h.range[0]
      labels_[h.head] = y
      if not lm.all():
        lmasks[h.head] = lm
    grps = {
      g: np.array([int(r[3][g]) for r in sel], np.int64) if group_is_int[g] else np.array([r[3][g] for r in sel], str)
      for g in gcols
    }
    splits[sname] = fmt.Split(
      features=feats, masks=masks, labels=labels_, ids=np.asarray(ids, str), label_masks=lmasks, groups=grps
    )
  meta = {m: v for src in sources for m, v in src.meta.items()}
  src_desc = f"jmoe.data.build: manifest {where}; features " + ", ".join(f"{s.modality}={s.path}" for s in sources)
  ds = fmt.Dataset(
    name=name,
    splits=splits,
    modalities=tuple(mods),
    dims={m: int(splits[split_names[0]].features[m].shape[-1]) for m in mods},
    synthetic=False,
    source=src_desc,
    label_specs=specs,
    modality_meta=meta,
  )
  return fmt.validate(ds, where)


def _is_int(s: str) -> bool:
  try:
    int(s)
  except ValueError:
    return False
  return True


def summary(ds: fmt.Dataset) -> str:
  """A few lines: sizes, heads (classes, masked counts), groups."""
  lines = [fmt.describe(ds)]
  for h, spec in ds.label_specs.items():
    n = sum(int(sp.label_mask(h).sum()) for sp in ds.splits.values())
    total = sum(len(sp) for sp in ds.splits.values())
    what = f"classes {list(spec.classes)}" if spec.kind == "classification" else "regression"
    if spec.names:
      what += f" {list(spec.names)}"
    lines.append(f"  head {h}: {what}; labelled {n}/{total}")
  for g in next(iter(ds.splits.values())).groups:
    lines.append(f"  group {g}: {len(set(np.concatenate([s.groups[g] for s in ds.splits.values()]).tolist()))} values")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m jmoe.data.build",
    description=__doc__.split("\n")[0],
    epilog="See docs/data_build.md for a worked example.",
  )
  ap.add_argument("--manifest", required=True, help="CSV/TSV with a header: id or path, labels, groups, [split]")
  ap.add_argument("--features", action="append", default=[], help="MODALITY=PATH (repeatable)")
  ap.add_argument("--labels", action="append", default=[], help="HEAD[=COL+COL]:classification|regression[:ARG]")
  ap.add_argument("--groups", action="append", default=[], help="group columns, comma list (repeatable)")
  ap.add_argument("--id-column", default="", help="id column (default 'id', else 'path': id = file stem)")
  ap.add_argument("--split-column", default=None, help="train/valid/test column (default 'split' if present)")
  ap.add_argument("--out", required=True, help="dataset directory to write")
  ap.add_argument("--name", default="", help="dataset name (default: the --out folder's name)")
  ap.add_argument("--max-errors", type=int, default=50, help="print at most this many row errors")
  args = ap.parse_args(argv)
  out = Path(args.out)
  try:
    ds = build_dataset(
      args.manifest,
      args.features,
      args.labels,
      args.groups,
      id_column=args.id_column,
      split_column=args.split_column,
      name=args.name or out.name,
    )
    fmt.save_dataset(ds, out)
  except ManifestError as e:
    for line in e.errors[: args.max_errors]:
      print(f"error: {line}", file=sys.stderr)
    if len(e.errors) > args.max_errors:
      print(f"error: ... and {len(e.errors) - args.max_errors} more", file=sys.stderr)
    print(f"error: {len(e.errors)} malformed manifest rows; nothing written", file=sys.stderr)
    return 2
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary(ds))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
