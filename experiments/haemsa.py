"""HAEMSA on any sentiment dataset (format v2, e.g. built by ``python -m jmoe.data.build``): the score, its 2- and
7-class views and the unified expert's 7-class head, with the evolved population.

Command (DIR: a dataset with a ``sentiment`` label on the CMU-MOSI scale, -3..3)::

  python -m experiments.haemsa --config.data.path=DIR
  python -m experiments.haemsa --config.data.path=DIR --config.ablation=no_evolution
  python -m experiments.haemsa --config.data.path=DIR --config.smoke=True        # seconds

Modality genes are evolved for every modality the dataset has unless ``data.modalities`` names some (then set
``population.genes`` to match). ``haemsa_mosi`` and ``haemsa_iemocap`` are presets of the HAEMSA config.
"""

from experiments import haemsa_mosi
from jmoe.train import cli, population


def get_config():
  c = haemsa_mosi.get_config()
  c.name, c.workdir = "haemsa", "runs/haemsa"
  c.data.source = "dir"
  c.folds.kind = "auto"
  c.folds.k = 5
  return c


def run(cfg):
  return population.run_or_app(cfg, haemsa_mosi.smoke, haemsa_mosi.apply_ablation)


if __name__ == "__main__":
  cli.main(get_config, run)
