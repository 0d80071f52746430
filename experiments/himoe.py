"""Hi-MoE on any dataset of ratings over sequences of several modalities (format v2, e.g. built by
``python -m jmoe.data.build``): regression of the ``head`` label plus its high/low classification.

Command (DIR: a dataset whose label ``ratings`` holds one or more ratings on a scale whose midpoint splits high from
low; other names via ``tasks.ratings.label`` / ``tasks.ratings_hl.label``)::

  python -m experiments.himoe --config.data.path=DIR --config.tasks.ratings_hl.threshold=5.0
  python -m experiments.himoe --config.data.path=DIR --config.folds.kind=logo --config.folds.group=subject
  python -m experiments.himoe --config.data.path=DIR --config.smoke=True                     # seconds

Features are standardised per fold with the training split's statistics (``folds.standardize=True``, the default;
real band-power features collapse to constant predictions without it). Folds: the dataset's own split, else
10-fold (``folds.kind=auto``). ``himoe_deap`` and ``himoe_dreamer`` are presets with their corpora's loaders.
"""

from experiments.himoe_deap import himoe_config
from experiments.himoe_deap import smoke as himoe_smoke
from jmoe.train import app, cli


def get_config():
  c = himoe_config("himoe", "dir", "", head="ratings", threshold=5.0)
  c.tasks.ratings.label = "ratings"
  c.folds.kind = "auto"
  c.folds.group = ""
  c.folds.within = ""
  return c


def run(cfg):
  return app.run(cfg, himoe_smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
