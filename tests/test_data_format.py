"""jmoe dataset format: validate, save/load round trip, one-line errors."""

import dataclasses
import json

import numpy as np
import pytest

from jmoe.data import format as fmt
from jmoe.data.format import (
  MODALITIES,
  Dataset,
  LabelSpec,
  Split,
  describe,
  load_dataset,
  load_feature_npz,
  read_feature_table,
  save_dataset,
  validate,
)


def make_ds(n=(6, 3, 4), seq=True) -> Dataset:
  rng = np.random.default_rng(0)
  splits = {}
  for s, k in zip(("train", "valid", "test"), n):
    feats = {
      "text": rng.normal(size=(k, 8)).astype(np.float32),
      "audio": rng.normal(size=(k, 5, 3)).astype(np.float32) if seq else rng.normal(size=(k, 3)).astype(np.float32),
    }
    masks = {"audio": np.arange(5)[None] < rng.integers(1, 6, (k, 1))} if seq else {}
    splits[s] = Split(
      features=feats,
      masks=masks,
      labels=rng.uniform(-3, 3, k).astype(np.float32),
      ids=np.asarray([f"{s}vid_{i + 1}" for i in range(k)]),
    )
  return Dataset(
    name="toy",
    splits=splits,
    modalities=("text", "audio"),
    dims={"text": 8, "audio": 3},
    synthetic=True,
    source="make_ds()",
  )


def with_split(ds, name, **changes):
  return dataclasses.replace(ds, splits={**ds.splits, name: dataclasses.replace(ds.splits[name], **changes)})


def one_line_error(exc_type, fn, *args, **kw):
  with pytest.raises(exc_type) as ei:
    fn(*args, **kw)
  msg = str(ei.value)
  assert "\n" not in msg, msg
  return msg


def test_modalities_constant():
  assert MODALITIES == ("text", "audio", "vision")


def test_valid_dataset_passes_and_len():
  ds = make_ds()
  assert validate(ds, "here") is ds
  assert len(ds.splits["train"]) == 6 and len(ds.splits["test"]) == 4
  assert ds.splits["train"].is_sequence("audio") and not ds.splits["train"].is_sequence("text")
  sub = ds.splits["train"].take([0, 2])
  assert len(sub) == 2 and sub.ids.tolist() == ["trainvid_1", "trainvid_3"]
  assert sub.masks["audio"].shape == (2, 5)
  assert "toy (SYNTHETIC) 6/3/4 text[8] audio[5x3]" in describe(ds)


def write_v1(ds, directory):
  """The format-1 layout (meta.json + <split>.npz), as earlier jmoe versions wrote it."""
  directory.mkdir(parents=True)
  for s, sp in ds.splits.items():
    arrays = {m: sp.features[m] for m in ds.modalities}
    arrays.update({f"{m}_mask": v for m, v in sp.masks.items()})
    np.savez(directory / f"{s}.npz", labels=sp.labels["sentiment"], ids=sp.ids, **arrays)
  meta = {"format_version": 1, "name": ds.name, "modalities": list(ds.modalities), "dims": ds.dims}
  meta.update(synthetic=ds.synthetic, source=ds.source, splits={s: len(sp) for s, sp in ds.splits.items()})
  (directory / "meta.json").write_text(json.dumps(meta))
  return directory


def assert_same(ds, back):
  assert (back.name, back.modalities, back.dims, back.synthetic, back.source) == (
    ds.name,
    ds.modalities,
    ds.dims,
    ds.synthetic,
    ds.source,
  )
  assert back.label_specs == ds.label_specs and set(back.splits) == set(ds.splits)
  for s in ds.splits:
    a, b = ds.splits[s], back.splits[s]
    for m in ds.modalities:
      np.testing.assert_array_equal(a.features[m], b.features[m])
    assert set(a.masks) == set(b.masks)
    for m in a.masks:
      np.testing.assert_array_equal(a.masks[m], b.masks[m])
    assert set(a.labels) == set(b.labels)
    for h in a.labels:
      np.testing.assert_array_equal(a.labels[h], b.labels[h])
    for field in ("label_masks", "groups", "present"):
      assert set(getattr(a, field)) == set(getattr(b, field))
      for k in getattr(a, field):
        np.testing.assert_array_equal(getattr(a, field)[k], getattr(b, field)[k])
    assert a.ids.tolist() == b.ids.tolist()


@pytest.mark.parametrize("seq", [True, False])
def test_save_load_round_trip(tmp_path, seq):
  ds = make_ds(seq=seq)
  save_dataset(ds, tmp_path / "d")
  meta = json.loads((tmp_path / "d" / "meta.json").read_text())
  assert meta["format_version"] == 2 and meta["splits"] == {"train": 6, "valid": 3, "test": 4}
  assert meta["label_specs"] == {"sentiment": {"kind": "regression", "range": [-3.0, 3.0]}}
  assert sorted(p.name for p in (tmp_path / "d" / "train").iterdir()) == sorted(
    ["features.text.npy", "features.audio.npy", "label.sentiment.npy", "ids.npy"] + (["mask.audio.npy"] if seq else [])
  )
  assert not [p for p in tmp_path.iterdir() if p.name != "d"]  # no temporary folder left behind
  assert_same(ds, load_dataset(tmp_path / "d"))
  mm = load_dataset(tmp_path / "d", mmap=True)
  assert isinstance(mm.splits["train"].features["audio"], np.memmap)
  assert_same(ds, mm)


@pytest.mark.parametrize("seq", [True, False])
def test_reads_format_1_unchanged(tmp_path, seq):
  ds = make_ds(seq=seq)
  back = load_dataset(write_v1(ds, tmp_path / "v1"))
  assert_same(ds, back)
  assert back.label_specs["sentiment"].range == (-3.0, 3.0)


def make_v2(seed=0):
  """A cross-validation pool with free modality names, two views, several heads, masks, groups and presence."""
  rng = np.random.default_rng(seed)
  b = 7
  sp = Split(
    features={
      "eeg": rng.normal(size=(b, 4, 6)).astype(np.float32),
      "audio_local": rng.normal(size=(b, 5, 3)).astype(np.float32),
      "audio_global": rng.normal(size=(b, 3)).astype(np.float32),
    },
    masks={"eeg": np.ones((b, 4), bool), "audio_local": np.arange(5)[None] < rng.integers(1, 6, (b, 1))},
    labels={
      "vad": rng.uniform(1, 9, (b, 3)).astype(np.float32),
      "emotion": rng.integers(0, 4, b).astype(np.int32),
    },
    ids=np.asarray([f"s{i}" for i in range(b)]),
    label_masks={"emotion": np.arange(b) % 3 != 0},
    groups={"subject": np.arange(b) // 2, "session": np.asarray(["Ses01", "Ses02"] * 3 + ["Ses01"])},
    present={"eeg": rng.random((b, 4)) > 0.3, "audio_global": np.arange(b) % 2 == 0},
  )
  return Dataset(
    name="toy2",
    splits={"pool": sp},
    modalities=("eeg", "audio_local", "audio_global"),
    dims={"eeg": 6, "audio_local": 3, "audio_global": 3},
    synthetic=True,
    source="make_v2()",
    label_specs={
      "vad": LabelSpec("regression", range=(1, 9), names=("valence", "arousal", "dominance")),
      "emotion": LabelSpec("classification", classes=("neutral", "happy", "angry", "sad")),
    },
    modality_meta={"audio_local": {"view_of": "audio", "rate_hz": 50.0}, "audio_global": {"view_of": "audio"}},
  )


def test_format_2_round_trip_pool_heads_groups_presence(tmp_path):
  ds = make_v2()
  assert ds.is_pool and ds.view_of("audio_local") == "audio" and ds.view_of("eeg") == "eeg"
  back = load_dataset(save_dataset(ds, tmp_path / "d"))
  assert_same(ds, back)
  assert back.modality_meta == ds.modality_meta
  sub = back.splits["pool"].take([1, 3])
  assert sub.groups["session"].tolist() == ["Ses02", "Ses02"] and sub.label_mask("emotion").tolist() == [True, False]


def test_format_2_label_errors_one_line():
  ds = make_v2()
  sp = ds.splits["pool"]
  bad = dataclasses.replace(sp, labels={**sp.labels, "emotion": np.full(7, 4, np.int32)})
  msg = one_line_error(ValueError, validate, dataclasses.replace(ds, splits={"pool": bad}), "here")
  assert "outside the 4 declared classes" in msg
  # a masked-out label is not checked: samples that lack a head may hold any placeholder
  ok = dataclasses.replace(sp, labels={**sp.labels, "emotion": np.where(sp.label_mask("emotion"), 1, -1)})
  validate(dataclasses.replace(ds, splits={"pool": ok}), "here")
  far = dataclasses.replace(sp, labels={**sp.labels, "vad": np.full((7, 3), 9.5, np.float32)})
  assert "outside [1, 9]" in one_line_error(ValueError, validate, dataclasses.replace(ds, splits={"pool": far}), "x")
  nohead = dataclasses.replace(sp, labels={"vad": sp.labels["vad"]})
  assert "label heads" in one_line_error(ValueError, validate, dataclasses.replace(ds, splits={"pool": nohead}), "x")
  both = dict(ds.splits, train=sp)
  assert "or one 'pool'" in one_line_error(ValueError, validate, dataclasses.replace(ds, splits=both), "x")
  badp = dataclasses.replace(sp, present={"eeg": np.ones((7, 2), bool)})
  assert "present['eeg']" in one_line_error(ValueError, validate, dataclasses.replace(ds, splits={"pool": badp}), "x")


def test_save_never_replaces_a_folder_of_user_files(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "notes.txt").write_text("mine")
  one_line_error(FileExistsError, save_dataset, make_v2(), tmp_path / "d")
  assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
  save_dataset(make_v2(), tmp_path / "e")
  save_dataset(make_v2(seed=1), tmp_path / "e")  # a dataset folder is replaced whole
  assert_same(make_v2(seed=1), load_dataset(tmp_path / "e"))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e"]


def test_validate_empty_split():
  ds = make_ds()
  empty = ds.splits["valid"].take(np.zeros(3, bool))
  msg = one_line_error(ValueError, validate, dataclasses.replace(ds, splits={**ds.splits, "valid": empty}), "f.npz")
  assert msg == "f.npz: split 'valid' is empty"


def test_validate_dims_differ_between_splits():
  ds = make_ds()
  bad = with_split(ds, "test", features={**ds.splits["test"].features, "text": np.zeros((4, 9), np.float32)})
  msg = one_line_error(ValueError, validate, bad, "/data/x")
  assert msg.startswith("/data/x: ") and "'text' has D=9 in split 'test'" in msg and "says 8" in msg


def test_validate_dims_metadata_mismatch():
  ds = dataclasses.replace(make_ds(), dims={"text": 8})
  assert "dims metadata" in one_line_error(ValueError, validate, ds, "w")


def test_validate_nan_inf_features_counted():
  ds = make_ds()
  x = ds.splits["train"].features["text"].copy()
  x[0, 0], x[1, 2], x[3, 3] = np.nan, np.inf, -np.inf
  msg = one_line_error(
    ValueError, validate, with_split(ds, "train", features={**ds.splits["train"].features, "text": x}), "p"
  )
  assert msg == "p: split 'train': 3 NaN/Inf values in 'text' features"


def test_validate_labels_out_of_range_and_nan():
  ds = make_ds()
  y = ds.splits["test"].labels["sentiment"].copy()
  y[1] = 3.5
  msg = one_line_error(ValueError, validate, with_split(ds, "test", labels=y), "p")
  assert "split 'test': 1 labels outside [-3, 3]" in msg and "max 3.5" in msg
  assert validate(with_split(ds, "test", labels=y), "p", label_range=(-4, 4))
  y[0] = np.nan
  assert "1 labels are NaN/Inf" in one_line_error(ValueError, validate, with_split(ds, "test", labels=y), "p")


def test_validate_n_mismatch():
  ds = make_ds()
  msg = one_line_error(ValueError, validate, with_split(ds, "train", ids=ds.splits["train"].ids[:5]), "p")
  assert "ids have B=5 but labels['sentiment'] have shape (6,)" in msg
  feats = {**ds.splits["train"].features, "text": ds.splits["train"].features["text"][:4]}
  msg = one_line_error(ValueError, validate, with_split(ds, "train", features=feats), "p")
  assert "features['text'] have B=4 but ids have B=6" in msg


def test_validate_mask_shape_and_missing_mask():
  ds = make_ds()
  msg = one_line_error(ValueError, validate, with_split(ds, "valid", masks={"audio": np.ones((3, 4), bool)}), "p")
  assert "mask of 'audio' has shape (3, 4)" in msg
  assert "has no mask" in one_line_error(ValueError, validate, with_split(ds, "valid", masks={}), "p")
  msg = one_line_error(
    ValueError,
    validate,
    with_split(ds, "valid", masks={"audio": ds.splits["valid"].masks["audio"], "text": np.ones((3, 8), bool)}),
    "p",
  )
  assert "non-sequence" in msg


def test_validate_wrong_dtype_and_order():
  ds = make_ds()
  feats = {**ds.splits["train"].features, "text": ds.splits["train"].features["text"].astype(np.float64)}
  assert "expected float32" in one_line_error(ValueError, validate, with_split(ds, "train", features=feats), "p")
  bad = dataclasses.replace(ds, modalities=("audio", "text"))
  assert "canonical order" in one_line_error(ValueError, validate, bad, "p")
  bad = dataclasses.replace(ds, splits={k: v for k, v in ds.splits.items() if k != "valid"})
  assert "missing ['valid']" in one_line_error(ValueError, validate, bad, "p")


def test_load_missing_dir(tmp_path):
  msg = one_line_error(FileNotFoundError, load_dataset, tmp_path / "nope")
  assert msg == f"{tmp_path / 'nope'}: no such dataset directory"


def test_load_missing_meta_and_npz(tmp_path):
  (tmp_path / "d").mkdir()
  assert "meta.json: no such file" in one_line_error(FileNotFoundError, load_dataset, tmp_path / "d")
  write_v1(make_ds(), tmp_path / "e")
  (tmp_path / "e" / "valid.npz").unlink()
  msg = one_line_error(FileNotFoundError, load_dataset, tmp_path / "e")
  assert msg.startswith(str(tmp_path / "e" / "valid.npz"))


def test_load_non_npz_file(tmp_path):
  write_v1(make_ds(), tmp_path / "d")
  (tmp_path / "d" / "test.npz").write_text("hello, I am a CSV\n1,2,3\n")
  msg = one_line_error(ValueError, load_dataset, tmp_path / "d")
  assert msg.startswith(f"{tmp_path / 'd' / 'test.npz'}: not a jmoe dataset (not an .npz/zip archive")
  (tmp_path / "d" / "test.npz").write_bytes(b"PK\x03\x04 truncated zip")
  assert "cannot read as .npz" in one_line_error(ValueError, load_dataset, tmp_path / "d")
  np.save(tmp_path / "d" / "x.npy", np.zeros(3))
  (tmp_path / "d" / "x.npy").rename(tmp_path / "d" / "test.npz")
  assert "single .npy array" in one_line_error(ValueError, load_dataset, tmp_path / "d")


def test_load_bad_meta(tmp_path):
  save_dataset(make_ds(), tmp_path / "d")
  meta = tmp_path / "d" / "meta.json"
  meta.write_text("{not json")
  assert "not a jmoe dataset (meta.json is not JSON" in one_line_error(ValueError, load_dataset, tmp_path / "d")
  meta.write_text(json.dumps({"name": "x"}))
  assert "lacks format_version" in one_line_error(ValueError, load_dataset, tmp_path / "d")


def test_load_size_mismatch_and_dims_mismatch_on_disk(tmp_path):
  ds = make_ds()
  save_dataset(ds, tmp_path / "d")
  meta_path = tmp_path / "d" / "meta.json"
  meta = json.loads(meta_path.read_text())
  meta["dims"]["text"] = 7
  meta_path.write_text(json.dumps(meta))
  msg = one_line_error(ValueError, load_dataset, tmp_path / "d")
  assert msg.startswith(str(tmp_path / "d")) and "'text' has D=8" in msg and "says 7" in msg
  meta["dims"]["text"] = 8
  meta["splits"]["train"] = 7
  meta_path.write_text(json.dumps(meta))
  assert "holds 6 samples but meta.json says 7" in one_line_error(ValueError, load_dataset, tmp_path / "d")


def test_save_refuses_invalid(tmp_path):
  ds = make_ds()
  y = ds.splits["train"].labels["sentiment"].copy()
  y[0] = -7
  one_line_error(ValueError, save_dataset, with_split(ds, "train", labels=y), tmp_path / "d")
  assert not (tmp_path / "d").exists()


def test_feature_table(tmp_path):
  p = tmp_path / "f.npz"
  np.savez(
    p,
    ids=np.array(["a_1", "b_2"]),
    pooled=np.arange(6, dtype=np.float32).reshape(2, 3),
    local=np.ones((2, 4, 3), np.float32),
    mask=np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool),
  )
  table = load_feature_npz(p)
  np.testing.assert_array_equal(table["b_2"], [3, 4, 5])
  ids, feats, mask = read_feature_table(p, "local")
  assert feats.shape == (2, 4, 3) and mask.sum() == 3 and ids.tolist() == ["a_1", "b_2"]
  assert "sequence" in one_line_error(ValueError, load_feature_npz, p, "local")
  np.savez(p, ids=np.array(["a_1", "a_1"]), pooled=np.zeros((2, 3), np.float32))
  assert "duplicate ids" in one_line_error(ValueError, load_feature_npz, p)
  np.savez(p, ids=np.array(["a_1"]), vec=np.zeros((1, 3), np.float32))
  assert "needs arrays 'ids' and 'pooled'" in one_line_error(ValueError, load_feature_npz, p)
  one_line_error(FileNotFoundError, load_feature_npz, tmp_path / "missing.npz")


# --- issue 23: duplicate ids, samples without data, degenerate splits -----------------------------------------------


def test_duplicate_sample_ids_in_a_split_are_refused_naming_the_first():
  ds = make_ds()
  ids = ds.splits["test"].ids.copy()
  ids[3] = ids[1]
  msg = one_line_error(ValueError, validate, with_split(ds, "test", ids=ids), "p")
  assert msg.startswith("p: split 'test': sample id 'testvid_2' occurs 2 times"), msg


def test_a_sample_with_no_data_in_any_modality_is_refused():
  ds = make_ds()
  sp = ds.splits["train"]
  masks = {"audio": sp.masks["audio"].copy()}
  masks["audio"][2] = False
  present = {"text": np.arange(len(sp)) != 2}
  assert fmt.samples_without_data(dataclasses.replace(sp, masks=masks)).size == 0  # text still there
  bad = dataclasses.replace(sp, masks=masks, present=present)
  assert fmt.samples_without_data(bad).tolist() == [2]
  assert fmt.samples_without_data(bad, ["text"]).tolist() == [2]
  assert fmt.samples_without_data(bad, ["audio"]).tolist() == [2]
  msg = one_line_error(ValueError, validate, with_split(ds, "train", masks=masks, present=present), "p")
  assert "split 'train': 1 samples have no data in any modality (first 'trainvid_3'" in msg, msg
  msg = one_line_error(
    ValueError, fmt.check_split_sizes, bad, ds.splits["valid"], ds.splits["test"], "fold_0", modalities=["audio"]
  )
  assert msg.startswith("fold_0: split 'train': 1 samples have no data in any of ['audio']"), msg


def test_split_sizes_too_small_to_select_or_score_on_are_refused():
  ds = make_ds(n=(30, 12, 12))
  tr, va, te = (ds.splits[s] for s in ("train", "valid", "test"))
  assert fmt.check_split_sizes(tr, va, te, "fold_0") == []
  msg = one_line_error(ValueError, fmt.check_split_sizes, tr, va.take([0]), te, "fold_1")
  assert msg.startswith("fold_1: split 'valid' has 1 sample(s) labelled for 'sentiment'; at least 2"), msg
  lm = {"sentiment": np.arange(len(te)) == 0}
  msg = one_line_error(ValueError, fmt.check_split_sizes, tr, va, dataclasses.replace(te, label_masks=lm), "f")
  assert "split 'test' has 1 sample(s)" in msg, msg
  warns = fmt.check_split_sizes(tr, va.take([0, 1, 2]), te, "fold_2")
  assert warns == ["fold_2: split 'valid' has only 3 samples labelled for 'sentiment' (below 10): its scores are noisy"]


def test_a_classification_split_with_one_class_is_refused_naming_it():
  spec = {"emo": LabelSpec("classification", classes=("sad", "happy", "angry"))}

  def split(y):
    n = len(y)
    return Split(
      features={"text": np.zeros((n, 2), np.float32)},
      masks={},
      labels={"emo": np.asarray(y, np.int32)},
      ids=np.asarray([f"u{i}" for i in range(n)]),
    )

  tr, va = split([0, 1, 2] * 4), split([0, 1] * 6)
  assert fmt.check_split_sizes(tr, va, split([2, 0] * 6), "f", label_specs=spec) == []
  msg = one_line_error(ValueError, fmt.check_split_sizes, tr, va, split([1] * 12), "fold_4", label_specs=spec)
  assert msg.startswith("fold_4: split 'test' holds only class ['happy'] of 'emo' (12 samples); at least 2 classes"), (
    msg
  )
  msg = one_line_error(ValueError, fmt.check_split_sizes, tr, va, split([1] * 12), "fold_4")  # kind from the dtype
  assert "holds only class [1] of 'emo'" in msg, msg
