"""HAEMSA on IEMOCAP, 6 classes (happy, sad, neutral, angry, excited, frustrated): weighted F1 and UA.

Commands (DIR: the IEMOCAP release root; features from ``python -m tools.extract_features``, as for DR-MoE)::

  python -m experiments.haemsa_iemocap --config.data.path=DIR \
      --config.data.features=runs/features/iemocap_whisper --config.data.text_features=runs/features/iemocap_roberta
  python -m experiments.haemsa_iemocap --config.smoke=True        # seconds, SYNTHETIC 6-class data
  ... --config.ablation=no_hierarchy | no_evolution | no_shared | no_mtl

The data source is the library's one IEMOCAP loader (``data.source=iemocap``, :mod:`jmoe.data.speech_sources`),
the same as DR-MoE's. Folds: leave one session out (5 folds; validation = one other session). Tasks: ``emotion6``
(λ1) and the unified expert's 6-class head ``unified`` on the same labels (λ2, the KL teacher of eq. 11-13).
Utterances outside the 6 classes are dropped (``data.labelled_only=emotion6``). Without ``data.path`` in smoke mode
the source is a small SYNTHETIC 6-class pool (banner printed): numbers on it are not results.
"""

import ml_collections

from experiments.haemsa_mosi import (
  add_modality_genes,
  apply_ablation,
  haemsa_config,
  smoke_population,
)
from jmoe.train import app, cli, population

MODALITIES = ("text_global", "audio_global")


def get_config():
  c = app.base_config("haemsa_iemocap", model_name="haemsa")
  c.data = ml_collections.ConfigDict(
    dict(
      source="iemocap",
      path="",
      features="",
      text_features="",
      modalities=",".join(MODALITIES),
      labelled_only="emotion6",
      synthetic_seed=0,
      synthetic_n=300,
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
  cli.main(get_config, run)
