"""jmoe.data.build: manifest + feature files -> a validated format-v2 dataset; one error line per malformed row."""

import json

import numpy as np
import pytest

from jmoe.data import build
from jmoe.data import format as fmt


def _speech(tmp_path, rows=None):
  """A speech-like corpus: extractor-style features (local + mask + global), speaker/session groups, a label head
  with a masked sample, file paths as ids, no split column (a pool)."""
  rng = np.random.default_rng(0)
  ids = [f"spk{s}_utt{u}" for s in range(3) for u in range(4)] + ["extra_clip"]
  b, t, d = len(ids), 7, 5
  lengths = rng.integers(2, 6, size=b)  # the longest kept clip has < 7 frames: T is trimmed
  mask = np.arange(t)[None] < lengths[:, None]
  local = (rng.normal(size=(b, t, d)) * mask[..., None]).astype(np.float32)
  glob = (local.sum(1) / lengths[:, None]).astype(np.float32)
  feats = tmp_path / "feats"
  feats.mkdir()
  np.savez(
    feats / "features.npz",
    ids=np.array(ids),
    local=local,
    mask=mask,
    **{"global": glob},
    encoder=np.array("tiny-test"),
    rate_hz=np.array(50.0),
  )
  emotions = ["angry", "sad", "happy", ""]  # utt3 of every speaker is unlabelled for 'emotion'
  if rows is None:
    rows = ["path,emotion,arousal,speaker,session"]
    for s in range(3):
      for u in range(4):
        rows.append(f"audio/spk{s}/spk{s}_utt{u}.wav,{emotions[u]},{u + 0.5},spk{s},{u % 2 + 1}")
  manifest = tmp_path / "clips.csv"
  manifest.write_text("\n".join(rows) + "\n")
  return manifest, feats, (ids, local, mask, glob)


def test_speech_layout_pool_views_masks_groups(tmp_path):
  manifest, feats, (ids, local, mask, glob) = _speech(tmp_path)
  out = tmp_path / "ds"
  rc = build.main(
    [
      "--manifest",
      str(manifest),
      "--features",
      f"audio={feats}",
      "--labels",
      "emotion:classification",
      "--labels",
      "arousal:regression:0,4",
      "--groups",
      "speaker,session",
      "--out",
      str(out),
    ]
  )
  assert rc == 0
  ds = fmt.load_dataset(out)
  assert ds.is_pool and ds.name == "ds" and not ds.synthetic
  assert ds.modalities == ("audio_local", "audio_global")
  assert ds.modality_meta["audio_local"]["view_of"] == "audio" and ds.modality_meta["audio_local"]["scale"] == "local"
  pool = ds.splits["pool"]
  assert pool.ids.tolist() == ids[:12]  # manifest order; the extra feature id is ignored; ids are the path stems
  t = int(mask[:12].sum(1).max())
  assert pool.features["audio_local"].shape == (12, t, 5)
  np.testing.assert_array_equal(pool.features["audio_local"], local[:12, :t])
  np.testing.assert_array_equal(pool.masks["audio_local"], mask[:12, :t])
  np.testing.assert_array_equal(pool.features["audio_global"], glob[:12])
  spec = ds.label_specs["emotion"]
  assert spec.classes == ("angry", "happy", "sad")  # sorted unique label strings
  lm = pool.label_mask("emotion")
  assert lm.tolist() == [True, True, True, False] * 3
  names = np.array(spec.classes)[pool.labels["emotion"][lm]]
  assert names.tolist() == ["angry", "sad", "happy"] * 3
  assert "arousal" not in pool.label_masks  # fully labelled: no mask written
  np.testing.assert_allclose(pool.labels["arousal"], [0.5, 1.5, 2.5, 3.5] * 3)
  assert ds.label_specs["arousal"].range == (0.0, 4.0)
  assert pool.groups["speaker"].tolist() == [f"spk{s}" for s in range(3) for _ in range(4)]
  assert pool.groups["session"].dtype == np.int64 and pool.groups["session"].tolist() == [1, 2, 1, 2] * 3
  meta = json.loads((out / "meta.json").read_text())
  assert meta["label_specs"]["emotion"]["classes"] == ["angry", "happy", "sad"]


def test_given_classes_fix_the_order(tmp_path):
  manifest, feats, _ = _speech(tmp_path)
  ds = build.build_dataset(manifest, [f"audio={feats}"], ["emotion:classification:sad,happy,angry,neutral"])
  assert ds.label_specs["emotion"].classes == ("sad", "happy", "angry", "neutral")
  pool = ds.splits["pool"]
  assert pool.labels["emotion"][:3].tolist() == [2, 0, 1]


def _table(tmp_path, extra_rows=()):
  """A table-like corpus (DEAP-ish): an id -> vector .npz, a two-column regression head, subject/trial groups, a
  split column, and a TSV manifest."""
  rng = np.random.default_rng(1)
  ids = [f"s{s:02d}t{t}" for s in range(1, 4) for t in range(4)]
  vecs = {u: rng.normal(size=6).astype(np.float32) for u in ids}
  np.savez(tmp_path / "eeg.npz", **vecs)
  # a second modality as an 'ids' + one-array table
  per = rng.normal(size=(len(ids), 2)).astype(np.float32)
  np.savez(tmp_path / "periph.npz", ids=np.array(ids), stats=per)
  rows = ["id\tsubject\ttrial\tvalence\tarousal\tsplit"]
  splits = ["train", "train", "valid", "test"]
  for i, u in enumerate(ids):
    rows.append(f"{u}\t{u[1:3]}\t{u}\t{1 + i % 9}\t{9 - i % 9}\t{splits[i % 4]}")
  rows += list(extra_rows)
  manifest = tmp_path / "trials.tsv"
  manifest.write_text("\n".join(rows) + "\n")
  return manifest, ids, vecs, per


def test_table_layout_predefined_split_multicolumn_head(tmp_path):
  manifest, ids, vecs, per = _table(tmp_path)
  ds = build.build_dataset(
    manifest,
    [f"eeg={tmp_path / 'eeg.npz'}", f"periph={tmp_path / 'periph.npz'}"],
    ["va=valence+arousal:regression:1,9"],
    ["subject", "trial"],
    name="table",
  )
  assert set(ds.splits) == {"train", "valid", "test"} and ds.modalities == ("eeg", "periph")
  assert ds.label_specs["va"].names == ("valence", "arousal") and ds.label_specs["va"].range == (1.0, 9.0)
  tr = ds.splits["train"]
  assert tr.ids.tolist() == [u for i, u in enumerate(ids) if i % 4 in (0, 1)]
  np.testing.assert_array_equal(tr.features["eeg"], np.stack([vecs[u] for u in tr.ids]))
  np.testing.assert_array_equal(tr.features["periph"][1], per[1])
  assert tr.labels["va"].shape == (len(tr), 2) and tr.labels["va"][1].tolist() == [2.0, 8.0]
  assert tr.groups["subject"].dtype == np.int64  # "01" -> 1
  out = fmt.save_dataset(ds, tmp_path / "out")
  assert fmt.load_dataset(out).splits["test"].ids.tolist() == ds.splits["test"].ids.tolist()


def test_every_malformed_row_gets_its_own_line(tmp_path, capsys):
  bad = [
    "s01t0\t01\tx\t3\t4\ttrain",  # duplicate id (line 14)
    "s09t9\t09\tx\t3\t4\ttrain",  # no features for this id (line 15)
    "s01t1b\t01\tx\t3\t4\tholdout",  # unknown split + no features (line 16)
    "s01t2\t01\tx\tgood\t4\ttrain",  # duplicate id and a non-numeric regression label (line 17)
    "s01t3\t01",  # wrong cell count (line 18)
    "s01t3c\t01\tx\t12\t4\ttrain",  # outside the range + no features (line 19)
    "s01t3d\t\tx\t3\t\ttrain",  # empty group cell, half-empty head, no features (line 20)
  ]
  manifest, *_ = _table(tmp_path, bad)
  args = ["--manifest", str(manifest), "--features", f"eeg={tmp_path / 'eeg.npz'}", "--labels"]
  args += ["va=valence+arousal:regression:1,9", "--groups", "subject,trial", "--out", str(tmp_path / "o")]
  assert build.main(args) == 2
  err = capsys.readouterr().err
  lines = [ln for ln in err.splitlines() if ln.startswith("error: ") and "trials.tsv:" in ln]
  by_line = {}
  for ln in lines:
    by_line.setdefault(int(ln.split("trials.tsv:")[1].split(":")[0]), []).append(ln)
  assert sorted(by_line) == [14, 15, 16, 17, 18, 19, 20]
  assert "duplicate id 's01t0' (first on line 2)" in by_line[14][0]
  assert any("no 'eeg' features" in ln for ln in by_line[15])
  assert any("unknown split name 'holdout'" in ln for ln in by_line[16])
  assert any("'valence' = 'good' is not a number" in ln for ln in by_line[17])
  assert "2 cells, the header has 6" in by_line[18][0]
  assert any("outside the range [1, 9]" in ln for ln in by_line[19])
  assert any("empty group cell (column 'subject')" in ln for ln in by_line[20])
  assert any("some of its columns" in ln for ln in by_line[20])
  assert "malformed manifest rows; nothing written" in err
  assert not (tmp_path / "o").exists()


def test_malformed_speech_rows_and_bad_arguments(tmp_path):
  rows = ["path,emotion,speaker", "a/spk0_utt0.wav,angry,spk0", "a/spk0_utt1.wav,furious,spk0", "a/nofeat.wav,sad,s"]
  manifest, feats, _ = _speech(tmp_path, rows)
  with pytest.raises(build.ManifestError) as e:
    build.build_dataset(manifest, [f"audio={feats}"], ["emotion:classification:angry,sad"], ["speaker"])
  assert len(e.value.errors) == 2
  assert (
    "clips.csv:3: id 'spk0_utt1': label 'furious' of 'emotion' is not one of the given classes" in e.value.errors[0]
  )
  assert "clips.csv:4: id 'nofeat': no 'audio' features" in e.value.errors[1]
  with pytest.raises(ValueError, match="manifest has no group column 'actor'"):
    build.build_dataset(manifest, [f"audio={feats}"], ["emotion:classification"], ["actor"])
  with pytest.raises(ValueError, match="kind 'ordinal' is not one of"):
    build.build_dataset(manifest, [f"audio={feats}"], ["emotion:ordinal"])
  with pytest.raises(FileNotFoundError, match="no such feature file"):
    build.build_dataset(manifest, [f"audio={tmp_path / 'nope.npz'}"], ["emotion:classification"])
  with pytest.raises(ValueError, match="split column 'split' has no valid, test rows"):
    m2 = tmp_path / "m2.csv"
    m2.write_text("path,emotion,split\na/spk0_utt0.wav,angry,train\n")
    build.build_dataset(m2, [f"audio={feats}"], ["emotion:classification"])


def test_nan_features_are_a_row_error(tmp_path):
  np.savez(tmp_path / "f.npz", a=np.array([1.0, 2.0], np.float32), b=np.array([np.nan, 2.0], np.float32))
  (tmp_path / "m.csv").write_text("id,y\na,1\nb,2\n")
  with pytest.raises(build.ManifestError) as e:
    build.build_dataset(tmp_path / "m.csv", [f"x={tmp_path / 'f.npz'}"], ["y:regression"])
  assert e.value.errors == [f"{tmp_path / 'm.csv'}:3: id 'b': NaN/Inf in its 'x' features ({tmp_path / 'f.npz'})"]
