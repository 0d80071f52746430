"""Tests for tools.extract_features with a tiny randomly initialised RoBERTa built in tmp_path.

Needs torch + transformers (+ tokenizers); skipped cleanly when they are absent, except the
missing-dependency message test, which runs everywhere.
"""

import sys

import numpy as np
import pytest

from tools import extract_features as ef

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


def _run(model_dir, csv_path, out, *extra):
  return ef.main(
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
  assert ef.read_transcripts(gen) == ef.read_transcripts(bc)
  _run(tiny_model, bc, tmp_path / "a.npz")
  _run(tiny_model, gen, tmp_path / "b.npz")
  a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
  for k in ("ids", "local", "mask", "pooled"):
    np.testing.assert_array_equal(a[k], b[k])


def test_resume_after_interruption(tiny_model, tmp_path, capsys):
  csv_path = _write_bclstm_csv(tmp_path / "transcripts.csv")
  full = tmp_path / "full.npz"
  _run(tiny_model, csv_path, full)

  out = tmp_path / "resumed.npz"
  parts = tmp_path / "resumed.npz.parts"
  _run(tiny_model, csv_path, out, "--stop-after-batches", "1")  # 5 rows / bs 2 = 3 batches
  assert not out.exists()
  assert len(list(parts.glob("shard_*.npz"))) == 1
  first = next(parts.glob("shard_*.npz"))
  mtime = first.stat().st_mtime_ns
  _run(tiny_model, csv_path, out, "--stop-after-batches", "1", "--keep-parts")
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
    ef.main(
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
    ef.main(["--model", str(tmp_path / "no_such_model"), "--input", str(csv_path), "--output", str(tmp_path / "o.npz")])
  assert "not found" in str(ei.value) and "\n" not in str(ei.value)
  with pytest.raises(SystemExit) as ei:
    ef.main(
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
    ef.main(["--model", "x", "--input", str(csv_path), "--output", str(tmp_path / "o.npz")])
  assert str(ei.value) == (
    "tools.extract_features needs torch and transformers: pip install torch==2.13.0 transformers"
  )


def test_read_transcripts_errors(tmp_path):
  with pytest.raises(SystemExit, match="not found"):
    ef.read_transcripts(tmp_path / "nope.csv")
  p = tmp_path / "dup.csv"
  p.write_text('"a_1","X","1",1\n"a_1","Y","1",0\n')
  with pytest.raises(SystemExit, match="duplicate"):
    ef.read_transcripts(p)
  p.write_text("")
  with pytest.raises(SystemExit, match="no rows"):
    ef.read_transcripts(p)
