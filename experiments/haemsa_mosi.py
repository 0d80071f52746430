"""HAEMSA on CMU-MOSI: sentiment regression + its 2- and 7-class views + the unified expert's 7-class head
(eq. 14's four tasks), KL knowledge transfer, and an evolved population (eq. 8-10).

Commands (default: SYNTHETIC MOSI-shaped data)::

  python -m experiments.haemsa_mosi                                   # full HAEMSA (population)
  python -m experiments.haemsa_mosi --config.smoke=True               # seconds
  python -m experiments.haemsa_mosi --config.data.source=bclstm --config.data.path=../shared/data/mosi
  python -m experiments.haemsa_mosi --config.data.source=standard --config.data.path=../shared/data/mosi \
      --config.data.modalities=audio           # read ../shared/data/mosi/README.md about leakage first

Ablations (Tables 3-4; each with its own --config.workdir)::

  --config.model.levels=0                              # without hierarchy
  --config.population.enabled=False                    # without evolution (one model per seed, platform loop)
  --config.model.shared=False --config.loss_weights.kl=0 --config.tasks=... (drop 'unified'): use ablation()
  python -m experiments.haemsa_mosi --config.ablation=no_shared | no_mtl | no_hierarchy | no_evolution

The 2- and 7-class views are the platform task kind ``sentiment_class`` (derived from the score, see
jmoe/train/tasks.py); λ_1..4 = config.tasks.<t>.weight, γ = config.loss_weights.kl (fixed; optionally genes).
"""

import ml_collections

from experiments.common import euar_config
from jmoe.train import cli, population

ABLATIONS = ("full", "no_hierarchy", "no_evolution", "no_shared", "no_mtl")


def haemsa_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """HAEMSA model, KL weight and population fields added to a platform config."""
  c.model_name = "haemsa"
  c.ablation = "full"
  c.loss_weights = ml_collections.ConfigDict(dict(kl=0.1))  # γ of eq. 14
  c.model = ml_collections.ConfigDict(
    dict(width=64, levels=2, shared=True, task_experts=4, kt_head="unified", kt_classes=7, dropout=0.1, dtype="float32")
  )
  c.population = population.population_config()
  c.population.genes = ml_collections.ConfigDict(
    {
      "lr": dict(init=(3e-4, 3e-3), low=1e-5, high=1e-2, sigma=0.1, log=True),
      "loss/kl": dict(init=(0.01, 0.3), low=0.0, high=1.0, sigma=0.02),
      "gene/levels": dict(init=(0.0, 2.0), low=0.0, high=2.0, sigma=0.3),
    }
  )
  return c


def add_modality_genes(c, modalities=("text", "audio", "vision")):
  for m in modalities:
    c.population.genes[f"gene/shared_in/{m}"] = dict(init=(0.4, 1.0), low=0.0, high=1.0, sigma=0.1)
    c.population.genes[f"gene/expert/{m}"] = dict(init=(0.6, 1.0), low=0.0, high=1.0, sigma=0.1)


def apply_ablation(c) -> None:
  """Turn ``config.ablation`` into config changes (called by smoke / the CLI before validation)."""
  if c.ablation not in ABLATIONS:
    raise ValueError(f"config.ablation={c.ablation!r} is invalid: choose one of {ABLATIONS}")
  # The CLI's config (config_flags) is locked, and deleting a field of a locked ConfigDict raises KeyError.
  with c.unlocked():
    _apply_ablation(c)


def _apply_ablation(c) -> None:
  if c.ablation == "no_hierarchy":
    c.model.levels = 0
    if "gene/levels" in c.population.genes:
      del c.population.genes["gene/levels"]
  elif c.ablation == "no_evolution":
    c.population.enabled = False
  elif c.ablation == "no_shared":
    c.model.shared = False
    c.loss_weights.kl = 0.0
    drop = [t for t, e in c.tasks.items() if (e.get("head") or t) == c.model.kt_head]
    for t in drop:
      del c.tasks[t]
    for k in [k for k in c.population.genes if k.startswith("gene/shared_in/") or k == "loss/kl"]:
      del c.population.genes[k]
  elif c.ablation == "no_mtl":
    keep = c.select.split("/")[0] if c.select else next(iter(c.tasks))  # the selected (main) task
    for t in [t for t in c.tasks if t != keep]:
      del c.tasks[t]
    c.model.shared = False  # without the unified task the KL teacher is untrained: the transfer goes too
    c.loss_weights.kl = 0.0
    for k in [k for k in c.population.genes if k.startswith("gene/shared_in/") or k == "loss/kl"]:
      del c.population.genes[k]


def get_config():
  c = euar_config(name="haemsa_mosi", synthetic_kind="mosi", text_dim=768, audio_dim=5, vision_dim=20)
  c = haemsa_config(c)
  c.tasks = ml_collections.ConfigDict(
    {
      "sentiment": dict(kind="sentiment", head="sentiment", label="sentiment", loss="l1", weight=1.0),  # λ1
      "binary": dict(kind="sentiment_class", head="binary", label="sentiment", num_classes=2, weight=0.3),  # λ2
      "seven": dict(kind="sentiment_class", head="seven", label="sentiment", num_classes=7, weight=0.3),  # λ3
      "unified": dict(kind="sentiment_class", head="unified", label="sentiment", num_classes=7, weight=0.3),  # λ4
    }
  )
  c.select = "sentiment/MAE"
  c.seeds = 3
  c.optim.epochs = 12  # without evolution: the same epoch budget as one individual (G x epochs_per_generation)
  c.population.size = 16
  c.population.generations = 6
  c.population.epochs_per_generation = 2
  add_modality_genes(c)
  return c


def smoke_population(cfg) -> None:
  """The smoke setting shared by the HAEMSA experiments: P=4, 2 generations of 1 epoch, width 16."""
  cfg.optim.epochs = min(cfg.optim.epochs, 2)
  cfg.population.size = min(cfg.population.size, 4)
  cfg.population.tournament = min(cfg.population.tournament, cfg.population.size)
  cfg.population.generations = min(cfg.population.generations, 2)
  cfg.population.epochs_per_generation = 1
  cfg.model.width = min(cfg.model.width, 16)


def smoke(cfg):
  """Tiny synthetic data, P=4, 2 generations of 1 epoch."""
  if cfg.data.source == "synthetic":
    cfg.data.synthetic_sizes = (64, 32, 32)
  smoke_population(cfg)


def run(cfg):
  """The ablation, then the population (or, without evolution, the platform loop)."""
  return population.run_or_app(cfg, smoke, apply_ablation)


if __name__ == "__main__":
  cli.main(get_config, run)
