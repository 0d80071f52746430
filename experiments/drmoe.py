"""DR-MoE on any speech-emotion dataset (format v2, e.g. built by ``python -m jmoe.data.build``).

Command (DIR: a dataset with ``<m>_local`` / ``<m>_global`` views of one or two modalities and a classification
label; ``head`` names that label)::

  python -m experiments.drmoe --config.data.path=DIR --config.head=emotion
  python -m experiments.drmoe --config.data.path=DIR --config.head=emotion --config.folds.kind=logo \
      --config.folds.group=speaker                                # speaker-independent folds
  python -m experiments.drmoe --config.data.path=DIR --config.head=emotion --config.smoke=True   # seconds

Every view of the dataset is used unless ``data.modalities`` names some; samples without a label for ``head`` are
dropped (``data.labelled_only``). Folds: the dataset's own split, else 5-fold (``folds.kind=auto``). The corpus
experiments (``drmoe_ravdess``, ``drmoe_iemocap``) are presets of this one.
"""

from experiments.drmoe_common import drmoe_config, smoke_model
from jmoe.train import app, cli


def get_config():
  c = drmoe_config("drmoe", "dir", "", head="emotion")
  c.folds.kind = "auto"
  c.folds.k = 5
  return c


def smoke(c):
  smoke_model(c)


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
