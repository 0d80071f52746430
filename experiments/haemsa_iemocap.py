"""HAEMSA on IEMOCAP, 6 classes (happy, sad, neutral, angry, excited, frustrated): weighted F1 and UA.

Commands::

  python -m experiments.haemsa_iemocap --config.data.path=DIR \
      --config.data.audio_features=runs/features/iemocap_whisper --config.data.text_features=runs/features/iemocap_roberta
  python -m experiments.haemsa_iemocap --config.smoke=True        # seconds, SYNTHETIC 6-class data
  ... --config.ablation=no_hierarchy | no_evolution | no_shared | no_mtl

DIR is the IEMOCAP release root (jmoe/data/iemocap.py; features from tools/extract_features). Folds: leave one
session out (5 folds; validation = one other session). Tasks: ``emotion6`` (λ1) and the unified expert's 6-class
head ``unified`` on the same labels (λ2, the KL teacher of eq. 11-13). Without --config.data.path the source is
a small SYNTHETIC 6-class pool (banner printed): numbers on it are not results.
"""

import ml_collections
import numpy as np

from experiments.haemsa_mosi import add_modality_genes, apply_ablation, haemsa_config, smoke_population
from jmoe.data import format as fmt
from jmoe.data import sources
from jmoe.train import app, population

MODALITIES = ("text_global", "audio_global")


def _iemocap(cfg):
  from jmoe.data import iemocap

  if not cfg.path or not cfg.audio_features:
    raise ValueError("data.source='iemocap' needs --config.data.path=DIR and --config.data.audio_features=FEATURES")
  return iemocap.build_dataset(cfg.path, cfg.audio_features, cfg.text_features or None)


def _synthetic_iemocap(cfg):
  """SYNTHETIC: 6 classes, 5 sessions, utterance vectors whose class means differ (for smoke runs and tests)."""
  from jmoe.data.iemocap import EMOTIONS6

  r = np.random.default_rng(cfg.get("synthetic_seed", 0))
  n = int(cfg.get("synthetic_n", 0) or 300)
  y = r.integers(0, 6, n).astype(np.int32)
  dims = {"text_global": 12, "audio_global": 8}
  feats = {m: (r.normal(size=(6, d))[y] + r.normal(size=(n, d)) * 1.5).astype(np.float32) for m, d in dims.items()}
  split = fmt.Split(
    features=feats,
    masks={},
    labels={"emotion6": y},
    ids=np.array([f"u{i}" for i in range(n)]),
    groups={"session": (np.arange(n) % 5 + 1).astype(np.int64)},
  )
  return fmt.Dataset(
    name="synthetic-iemocap6",
    splits={fmt.POOL: split},
    modalities=tuple(dims),
    dims=dims,
    synthetic=True,
    source=f"synthetic 6-class pool, n={n}",
    label_specs={"emotion6": fmt.LabelSpec("classification", classes=EMOTIONS6)},
  )


sources.register("iemocap", _iemocap)
sources.register("synthetic_iemocap", _synthetic_iemocap)


def get_config():
  c = app.base_config("haemsa_iemocap", model_name="haemsa")
  c.data = ml_collections.ConfigDict(
    dict(
      source="iemocap",
      path="",
      audio_features="",
      text_features="",
      modalities=",".join(MODALITIES),
      synthetic_seed=0,
      synthetic_n=0,
    )
  )
  c = haemsa_config(c)
  c.model.kt_classes = 6
  c.tasks = ml_collections.ConfigDict(
    {
      "emotion6": dict(kind="classification", head="emotion6", label="emotion6", weight=1.0),  # λ1
      "unified": dict(kind="classification", head="unified", label="emotion6", weight=0.3),  # λ2
    }
  )
  c.select = "emotion6/weighted_F1"
  c.folds.kind = "logo"
  c.folds.group = "session"
  c.seeds = 3
  c.optim.epochs = 12
  c.population.size = 16
  c.population.generations = 6
  c.population.epochs_per_generation = 2
  add_modality_genes(c, MODALITIES)
  return c


def smoke(cfg):
  """SYNTHETIC 6-class data when no path is given; P=4, 2 generations of 1 epoch, one fold."""
  if not cfg.data.path:
    cfg.data.source = "synthetic_iemocap"
    cfg.data.synthetic_n = 150
  cfg.folds.max_folds = 1
  smoke_population(cfg)


def run(cfg):
  return population.run_or_app(cfg, smoke, apply_ablation)


if __name__ == "__main__":
  population.cli(get_config, smoke, apply_ablation)
