"""EUAR on CMU-MOSI.

Command (embedded default: SYNTHETIC MOSI-shaped data, 5 seeds, ~3 min on 2 CPU cores)::

  python -m experiments.euar_mosi
  python -m experiments.euar_mosi --config.model.expert=mlp --config.workdir=runs/euar_mosi_mlp   # ablation
  python -m experiments.euar_mosi --config.smoke=True                                              # seconds

Real data (../shared/data/mosi; read its README about leakage on the standard split)::

  python -m experiments.euar_mosi --config.data.source=bclstm --config.data.path=../shared/data/mosi
  python -m experiments.euar_mosi --config.data.source=standard --config.data.path=../shared/data/mosi \
      --config.data.text_features=runs/features/mosi_minilm.npz

Every run prints its results table (valid and test, mean ± std over seeds, checkpoint chosen on validation)
and writes it with curves.png / expert_load.png to ``config.workdir``. Re-running the same command resumes.
Expected numbers: docs/models/euar.md.
"""

from experiments.common import euar_config, smoke
from jmoe.train import app, cli


def get_config():
  return euar_config(name="euar_mosi", synthetic_kind="mosi", text_dim=768, audio_dim=5, vision_dim=20)


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
