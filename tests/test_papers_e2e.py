"""Every paper end to end through its experiment command's run(), on files written in the published formats:
Hi-MoE on DEAP and DREAMER files, DR-MoE and HAEMSA on an IEMOCAP release layout (the one IEMOCAP loader serves
both), DR-MoE on real RAVDESS clips when the shared copy and the speech extra are present. EUAR and HAEMSA on MOSI
run in tests/test_euar.py and tests/test_population.py. Each is a smoke run of a few seconds of training."""

import json
from pathlib import Path

import numpy as np
import pytest

from jmoe.train import cli

LABELS = ("neu", "hap", "sad", "ang", "exc", "fru")


def write_iemocap(root: Path, feats: Path, per_session: int = 12, sessions=(1, 2, 3, 4, 5)) -> list[str]:
  """An IEMOCAP release layout (EmoEvaluation + transcriptions, no wavs) and speech/text feature files in the
  feature extractor's layout, with a class-dependent mean so that a model can learn something."""
  rng = np.random.default_rng(0)
  ids, ys = [], []
  for s in sessions:
    dialog = f"Ses0{s}F_impro01"
    d = root / f"Session{s}" / "dialog"
    (d / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
    (d / "transcriptions").mkdir(parents=True, exist_ok=True)
    lines, tlines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], []
    for i in range(per_session):
      uid, label = f"{dialog}_{'FM'[i % 2]}{i:03d}", LABELS[i % len(LABELS)]
      lines += [f"[{i:.4f} - {i + 0.8:.4f}]\t{uid}\t{label}\t[2.5000, 3.0000, 3.5000]", ""]
      tlines.append(f"{uid} [{i:08.4f}-{i + 0.8:08.4f}]: words")
      ids.append(uid)
      ys.append(i % len(LABELS))
    (d / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tlines) + "\n")
  means = rng.normal(size=(len(LABELS), 8)) * 2
  for name, dim in (("speech", 8), ("text", 6)):
    t = 5
    mask = np.ones((len(ids), t), bool)
    local = (means[ys][:, None, :dim] + rng.normal(size=(len(ids), t, dim))).astype(np.float32)
    glob = local.mean(1)
    (feats / name).mkdir(parents=True, exist_ok=True)
    np.savez(
      feats / name / "features.npz",
      ids=np.array(ids),
      local=local,
      mask=mask,
      encoder=np.array(f"test-{name}"),
      **{"global": glob},
    )
  return ids


def _run(module, overrides: dict) -> dict:
  import importlib

  mod = importlib.import_module(f"experiments.{module}")
  cfg = mod.get_config()
  cfg.update_from_flattened_dict({"smoke": True, "quiet": True, **overrides})
  return mod.run(cfg)


def _ok(out: dict) -> None:
  seeds = [r for f in out["folds"] for r in f["seeds"]]
  assert seeds and all(r["status"] == "ok" for r in seeds), seeds
  for r in seeds:
    for metrics in r["test"].values():
      assert all(v is None or np.isfinite(v) for v in metrics.values() if isinstance(v, float))
  assert out["synthetic"] is False


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
  root = tmp_path_factory.mktemp("iemocap")
  write_iemocap(root / "release", root / "feats")
  return root


def test_haemsa_on_an_iemocap_release_layout(iemocap, tmp_path):
  """The command of the docs (data.path + features + text_features) loads real-layout IEMOCAP through the one loader."""
  out = _run(
    "haemsa_iemocap",
    {
      "data.path": str(iemocap / "release"),
      "data.features": str(iemocap / "feats" / "speech"),
      "data.text_features": str(iemocap / "feats" / "text"),
      "workdir": str(tmp_path / "run"),
    },
  )
  _ok(out)
  assert out["dataset"] == "iemocap" and out["modalities"] == ["text_global", "audio_global"]
  assert (tmp_path / "run" / "fold_0" / "seed_0" / "fitness.jsonl").exists()
  with np.load(tmp_path / "run" / "fold_0" / "seed_0" / "test_outputs.npz") as z:
    assert z["label_mask.emotion6"].all()  # labelled_only=emotion6: every test sample is labelled


def test_drmoe_on_an_iemocap_release_layout(iemocap, tmp_path):
  out = _run(
    "drmoe_iemocap",
    {
      "data.path": str(iemocap / "release"),
      "data.features": str(iemocap / "feats" / "speech"),
      "workdir": str(tmp_path / "run"),
    },
  )
  _ok(out)
  assert json.loads((tmp_path / "run" / "results.json").read_text())["tasks"]["emotion"]["head"] == "emotion4"


def test_himoe_on_deap_files(tmp_path):
  from test_data_physio_loaders import RATE, deap_arrays, write_deap

  src = tmp_path / "data_preprocessed_python"
  for s in (1, 2, 3):
    write_deap(src / f"s{s:02d}.dat", *deap_arrays(trials=6, seconds=8, seed=s))
  out = _run(
    "himoe_deap",
    {
      "data.source": "deap",
      "data.path": str(src),
      "data.deap_trials": 6,
      "data.deap_samples": 11 * RATE,
      "folds.k": 2,
      "folds.valid_fraction": 0.3,
      "workdir": str(tmp_path / "run"),
    },
  )
  _ok(out)


def test_himoe_on_a_dreamer_file(tmp_path):
  from test_data_physio_loaders import write_dreamer

  path = write_dreamer(tmp_path / "DREAMER.mat", subjects=3, videos=6)
  out = _run(
    "himoe_dreamer",
    {
      "data.source": "dreamer",
      "data.path": str(path),
      "data.dreamer_baseline_samples": 5 * 128,
      "folds.k": 2,
      "folds.valid_fraction": 0.3,
      "workdir": str(tmp_path / "run"),
    },
  )
  _ok(out)


RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


def test_drmoe_on_real_ravdess_clips(tmp_path):
  if not RAVDESS.is_dir():
    pytest.skip(f"the RAVDESS copy is not at {RAVDESS}")
  pytest.importorskip("ctranslate2", reason="the speech extra (pip install -e '.[speech]') runs the Whisper encoder")
  out = _run(
    "drmoe_ravdess",
    {"data.path": str(RAVDESS), "workdir": str(tmp_path / "run")},  # smoke: 8 clips x 3 actors, features extracted
  )
  _ok(out)


def test_a_user_error_in_a_paper_command_is_one_line(iemocap, capsys):
  from experiments import haemsa_iemocap

  rc = cli.invoke(
    haemsa_iemocap.get_config,
    haemsa_iemocap.run,
    {"data.path": str(iemocap / "release"), "data.features": str(iemocap / "nowhere")},
  )
  assert rc == 2 and capsys.readouterr().err.startswith("error: no IEMOCAP speech features at")
