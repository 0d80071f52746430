"""Text features: transcripts CSV -> token (local) and mean-pooled (global) hidden states of a local Hugging Face
encoder; the ``--modality text`` extraction of :mod:`jmoe.features.extract` (see there for the output layout)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from jmoe.features.models import MISSING_DEPS, TEXT_ARCHS, check_model_type, layer_index, not_local, resolve_model
from jmoe.features.shards import (
  assemble,
  output_lock,
  prepare_output,
  prepare_parts,
  read_csv_rows,
  run_shards,
  sha1_file,
  todo_shards,
)


def read_transcripts(path: str | Path) -> tuple[list[str], list[str]]:
  """Read (ids, texts) from a bc-LSTM transcripts CSV or a generic ``id,text`` CSV."""
  path = Path(path)
  if not path.is_file():
    raise SystemExit(f"error: input file not found: {path}")
  rows = read_csv_rows(path)
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


def main_text(args) -> int:
  """``--modality text`` of :func:`jmoe.features.extract.main` (``args``: its parsed arguments)."""
  try:
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer
  except ImportError:
    raise SystemExit(MISSING_DEPS) from None

  out, parts = prepare_output(args.output, args.overwrite)
  ids, texts = read_transcripts(args.input)
  with output_lock(out):
    return _extract_text(args, torch, transformers, AutoModel, AutoTokenizer, ids, texts, out, parts)


def _extract_text(args, torch, transformers, AutoModel, AutoTokenizer, ids, texts, out, parts) -> int:
  if args.lowercase:
    texts = [t.lower() for t in texts]
  model_name = args.model or "roberta-base"
  src, model_desc = resolve_model(model_name)
  check_model_type(src, model_desc, args.arch, TEXT_ARCHS)

  transformers.logging.set_verbosity_error()
  try:
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True)
  except (OSError, ValueError) as e:
    raise not_local(model_name, e) from None
  mt = model.config.model_type
  if args.arch != "auto" and mt != TEXT_ARCHS[args.arch]:
    raise SystemExit(f"error: {model_desc} is a {mt!r} model, not {args.arch!r} (--arch {args.arch})")
  n_hidden = model.config.num_hidden_layers + 1
  layer = layer_index(args.layer, n_hidden, model_desc)
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
  manifest = {
    "model": model_desc,
    "input": str(Path(args.input).resolve()),
    "input_sha1": sha1_file(Path(args.input)),
    "n": n,
    "batch_size": bs,
    "max_len": T,
    "lowercase": bool(args.lowercase),
    "layer": layer,
  }
  if out.exists() and not args.overwrite:  # finished by a run that held the lock before this one
    raise SystemExit(f"error: {out} exists (pass --overwrite to replace it)")
  prepare_parts(parts, manifest)
  todo = todo_shards(parts, ranges)

  def compute(s, e):
    enc = tok(texts[s:e], padding="max_length", truncation=True, max_length=T, return_tensors="pt")
    enc = {k: v.to(device) for k, v in enc.items()}
    with torch.inference_mode():
      res = model(**enc, output_hidden_states=layer != -1)
    hidden = (res.last_hidden_state if layer == -1 else res.hidden_states[layer]).float()  # [B, T, D]
    m = enc["attention_mask"].bool()
    hidden = hidden * m[..., None]  # zero the padded positions
    pooled = hidden.sum(1) / m.sum(1, keepdim=True).clamp(min=1)
    return hidden.cpu().numpy().astype(np.float32), m.cpu().numpy(), pooled.cpu().numpy().astype(np.float32)

  run_shards(todo, ranges, parts, compute, "batch", "extract")
  meta = {
    "model": model_desc,
    "encoder": f"{mt} {Path(model_desc).name}" + ("" if layer == -1 else f" layer {layer}"),
    "arch": mt,
    "layer": np.int64(layer),
    "modality": "text",
    "rate_hz": np.float64(0.0),
    "max_len": np.int64(T),
    "lowercase": bool(args.lowercase),
  }
  b, t, d = assemble(parts, ranges, out, ids, meta)
  if not args.keep_parts:
    shutil.rmtree(parts, ignore_errors=True)
  print(f"wrote {out}: {b} utterances, local [{b}, {t}, {d}], pooled [{b}, {d}]", file=sys.stderr)
  return 0
