"""EUAR on CMU-MOSEI.

MOSEI features cannot be downloaded here; the embedded default is SYNTHETIC MOSEI-shaped data
(16,326 / 1,871 / 4,659 samples; text 768, audio 74, vision 35). Real data: an MMSA pickle or a TFDS build::

  python -m experiments.euar_mosei --config.data.source=mmsa --config.data.path=/data/MOSEI/unaligned_50.pkl
  python -m experiments.euar_mosei --config.data.source=tfds --config.data.path=~/tensorflow_datasets \
      --config.data.tfds_name=jmoe_mosei/unaligned
"""

from experiments.common import euar_config, smoke
from jmoe.train import app, cli


def get_config():
  config = euar_config(name="euar_mosei", synthetic_kind="mosei", text_dim=768, audio_dim=74, vision_dim=35)
  config.optim.batch_size = 32
  return config


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
