"""EUAR on any sentiment dataset (format v2, e.g. built by ``python -m jmoe.data.build``): a score per sample,
MMSA metrics (Has0/Non0 Acc2, F1, Acc7, MAE, Corr).

Command (DIR: a dataset with a ``sentiment`` label on the CMU-MOSI scale, -3..3)::

  python -m experiments.euar --config.data.path=DIR
  python -m experiments.euar --config.data.path=DIR --config.data.modalities=text,audio
  python -m experiments.euar --config.data.path=DIR --config.smoke=True          # seconds

Every modality of the dataset is used unless ``data.modalities`` names some. Folds: the dataset's own split, else
5-fold (``folds.kind=auto``). ``euar_mosi`` and ``euar_mosei`` are presets with their corpora's loaders.
"""

from experiments.common import euar_config, smoke
from jmoe.train import app, cli


def get_config():
  c = euar_config(name="euar", synthetic_kind="mosi", text_dim=768, audio_dim=5, vision_dim=20)
  c.data.source = "dir"
  c.data.modalities = ""
  c.folds.kind = "auto"
  c.folds.k = 5
  return c


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
