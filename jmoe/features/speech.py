"""Speech features: audio listing and loading, the Whisper (CTranslate2) and transformers encoders, and the
``--modality speech`` extraction of :mod:`jmoe.features.extract` (see there for the output layout).

Long clips: the output stores frames zero-padded to the longest clip (``local`` [B, T, D]), so one clip far longer
than the others would pad every clip to its length (one 5-minute clip among RAVDESS's 3-second ones: tens of GB).
Before anything is computed, the frame count of every clip is estimated from its header (duration x frame rate,
capped by ``--max-frames``): when the padded array would hold more than :data:`PAD_WASTE` times the real frames and
more than :data:`PAD_FRAMES_FLOOR` frames in all, the run is refused in one line naming the longest clip, its
length, the median length and the padded size, and suggesting ``--max-frames``; a clip longer than
:data:`PAD_WASTE` times the median of the other clips in a smaller input only gets a one-line warning (the median of
the others, so that two clips, one short and one long, are warned about too).
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from jmoe.features.models import (
  AUDIO_SUFFIXES,
  MISSING_DEPS,
  MISSING_SPEECH_DEPS,
  SAMPLE_RATE,
  SPEECH_HF_ARCHS,
  TEXT_ARCHS,
  WHISPER_ALIASES,
  WHISPER_NAME,
  WHISPER_RATE_HZ,
  WHISPER_WINDOW,
  check_model_type,
  layer_index,
  not_local,
  resolve_whisper,
)
from jmoe.features.shards import (
  assemble,
  output_lock,
  prepare_output,
  prepare_parts,
  read_csv_rows,
  run_shards,
  todo_shards,
)

PAD_WASTE = 16
"""Refuse (above :data:`PAD_FRAMES_FLOOR`) or warn when padding would store more than this many times the real
frames (for the warning: the longest clip against the median clip)."""
PAD_FRAMES_FLOOR = 1_000_000
"""Padded frames (B x T) below which a wasteful padding is only warned about (small inputs cost little)."""


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
    rows = read_csv_rows(path)
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
    missing = [f for f in files if not f.is_file()]
    if missing:  # found before any clip is encoded, not when its batch comes up
      raise SystemExit(
        f"error: {path}: {len(missing)} of {len(files)} listed audio files not found, first {missing[0]} "
        "(paths are relative to the CSV's folder)"
      )
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
      raise not_local(model_dir, e, "speech") from None
    self.device = device
    n_hidden = self.model.config.num_hidden_layers + 1
    self.layer = layer_index(layer, n_hidden, desc)
    strides = getattr(self.model.config, "conv_stride", None) or [320]
    self.rate_hz = SAMPLE_RATE / float(np.prod(strides))

  def encode(self, wave: np.ndarray) -> np.ndarray:
    inp = self.fe(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    with self.torch.inference_mode():
      hs = self.model(inp["input_values"].to(self.device), output_hidden_states=True).hidden_states
    return hs[self.layer][0].float().cpu().numpy()


def estimate_frames(files, rate_hz: float, max_frames: int | None = None) -> np.ndarray:
  """int64 [B]: frames each clip will give (``ceil(duration * rate_hz)``, capped by ``max_frames``), from the audio
  headers only; -1 for a file whose header cannot be read (its batch reports it)."""
  import soundfile as sf

  out = np.full(len(files), -1, np.int64)
  for i, f in enumerate(files):
    try:
      info = sf.info(str(f))
    except Exception:  # noqa: BLE001, S112 -- reported with its name when its batch loads it
      continue
    t = math.ceil(info.frames / float(info.samplerate) * rate_hz) if info.samplerate else 0
    out[i] = min(t, max_frames) if max_frames else t
  return out


def check_padding(ids, frames: np.ndarray) -> None:
  """Refuse (one-line SystemExit) or warn about padding every clip to a far longer one (module docstring)."""
  known = frames[frames >= 0]
  if known.size == 0:
    return
  longest = int(np.argmax(frames))
  t = int(frames[longest])
  others = np.delete(frames, longest)
  others = others[others >= 0]
  med = float(np.median(others)) if others.size else float(t)  # the longest clip against the others
  padded, real = len(frames) * t, int(known.sum())
  if padded > PAD_WASTE * max(real, 1) and padded > PAD_FRAMES_FLOOR:
    cap = int(np.percentile(known, 99))
    raise SystemExit(
      f"error: clip {ids[longest]!r} gives {t} frames (median {med:.0f}); padding all {len(frames)} clips to it "
      f"would store {padded:,} frames for {real:,} real ones; pass --max-frames (e.g. {max(cap, 1)}) or extract "
      "that clip separately"
    )
  if t > PAD_WASTE * max(med, 1.0):
    print(
      f"warning: clip {ids[longest]!r} gives {t} frames, {t / max(med, 1.0):.0f}x the median {med:.0f} of the other "
      f"clips: every clip is padded to it ({padded:,} frames in all; --max-frames caps it)",
      file=sys.stderr,
    )


def main_speech(args) -> int:
  """``--modality speech`` of :func:`jmoe.features.extract.main` (``args``: its parsed arguments)."""
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
      import transformers
    else:
      import torch  # noqa: F401
      import transformers
  except ImportError as e:
    raise SystemExit(MISSING_SPEECH_DEPS if whisper else f"{MISSING_DEPS} soundfile [{e.name} missing]") from None
  import transformers

  transformers.logging.set_verbosity_error()
  out, parts = prepare_output(args.output, args.overwrite)
  ids, files = list_audio(args.input)
  with output_lock(out):
    return _extract_speech(args, model, whisper, ids, files, out, parts)


def _extract_speech(args, model, whisper, ids, files, out, parts) -> int:

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
    arch = check_model_type(desc, desc, args.arch, SPEECH_HF_ARCHS)
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
  check_padding(ids, estimate_frames(files, enc.rate_hz, args.max_frames))
  if out.exists() and not args.overwrite:  # finished by a run that held the lock before this one
    raise SystemExit(f"error: {out} exists (pass --overwrite to replace it)")
  prepare_parts(parts, manifest)
  todo = todo_shards(parts, ranges)

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

  run_shards(todo, ranges, parts, compute, "batch", "speech")
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
  b, t, d = assemble(parts, ranges, out, ids, meta)
  if not args.keep_parts:
    shutil.rmtree(parts, ignore_errors=True)
  print(f"wrote {out}: {b} clips, local [{b}, {t}, {d}], global [{b}, {d}] ({encoder_name})", file=sys.stderr)
  return 0
