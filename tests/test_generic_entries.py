"""The generic entry of a model on a user's own dataset (format v2 directory): ``experiments.drmoe`` with
``data.source=dir`` honours ``data.labelled_only`` (masked samples are dropped, which changes nothing in the
result), titles the run by model and dataset, and smoke mode shrinks any dataset."""

import numpy as np

from jmoe.data import format as fmt
from jmoe.data import sources
from jmoe.train import app

CLASSES = ("neutral", "happy", "angry", "sad")


def write_speech_dataset(path, n=80, masked=0, seed=0):
  """A pool of utterances: audio_local [n, 6, 8] frames and audio_global [n, 8], 4 classes with distinct means,
  6 speakers; ``masked`` extra samples without a label (placeholder class 0, label mask False)."""
  rng = np.random.default_rng(seed)
  total = n + masked
  y = np.arange(total) % len(CLASSES)
  means = rng.normal(size=(len(CLASSES), 8)) * 2
  local = (means[y][:, None] + rng.normal(size=(total, 6, 8))).astype(np.float32)
  mask = np.ones((total, 6), bool)
  labelled = np.arange(total) < n
  y = np.where(labelled, y, 0).astype(np.int32)
  split = fmt.Split(
    features={"audio_local": local, "audio_global": local.mean(1)},
    masks={"audio_local": mask},
    labels={"emotion": y},
    ids=np.array([f"clip{i:03d}" for i in range(total)]),
    label_masks={"emotion": labelled},
    groups={"speaker": (np.arange(total) % 6).astype(np.int64)},
  )
  ds = fmt.Dataset(
    name="toy-speech",
    splits={fmt.POOL: split},
    modalities=("audio_local", "audio_global"),
    dims={"audio_local": 8, "audio_global": 8},
    synthetic=False,
    source="written by the test",
    label_specs={"emotion": fmt.LabelSpec("classification", classes=CLASSES)},
  )
  fmt.save_dataset(ds, path)
  return path


def test_labelled_only_applies_to_a_dir_dataset(tmp_path):
  write_speech_dataset(tmp_path / "ds", masked=30)
  cfg = {"source": "dir", "path": str(tmp_path / "ds"), "modalities": "", "labelled_only": "emotion"}
  ds = sources.load(app.ml_collections.ConfigDict(cfg))
  assert len(ds.splits[fmt.POOL]) == 80 and ds.splits[fmt.POOL].label_mask("emotion").all()
  cfg["labelled_only"] = ""
  assert len(sources.load(app.ml_collections.ConfigDict(cfg)).splits[fmt.POOL]) == 110


def test_generic_drmoe_entry_on_a_user_dataset_masked_samples_change_nothing(tmp_path, capsys):
  from experiments import drmoe

  write_speech_dataset(tmp_path / "clean")
  write_speech_dataset(tmp_path / "dirty", masked=30)
  outs = []
  for name in ("clean", "dirty"):
    cfg = drmoe.get_config()
    cfg.update_from_flattened_dict(
      {
        "data.path": str(tmp_path / name),
        "workdir": str(tmp_path / f"run_{name}"),
        "quiet": True,
        "seeds": 1,
        "optim.epochs": 2,
        "folds.kind": "logo",
        "folds.group": "speaker",
        "folds.max_folds": 1,
        "model.width": 16,
        "model.router_hidden": 16,
        "model.layers": 0,
      }
    )
    outs.append(drmoe.run(cfg))
  assert outs[0]["folds"][0]["seeds"][0]["test"] == outs[1]["folds"][0]["seeds"][0]["test"]
  assert outs[0]["folds"][0]["sizes"] == outs[1]["folds"][0]["sizes"]
  table = (tmp_path / "run_clean" / "results.md").read_text()
  assert table.startswith("### drmoe: toy-speech")


def test_smoke_mode_shrinks_any_dataset(tmp_path):
  write_speech_dataset(tmp_path / "big", n=600)
  ds = sources.load(app.ml_collections.ConfigDict({"source": "dir", "path": str(tmp_path / "big")}))
  small = app.shrink(ds)
  assert len(small.splits[fmt.POOL]) == app.SMOKE_SIZES[fmt.POOL] < 600
  assert set(small.splits[fmt.POOL].groups["speaker"]) == set(range(6))
