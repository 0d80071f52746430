"""DR-MoE on the synthetic planted-scale data (:mod:`jmoe.data.synthetic_scale`): the routing check with a known answer.

Angry and happy are planted in short local bursts inside the frames, neutral and sad in a shift of the whole
utterance (audio and text alike). Folds: leave 2 speakers out (5 folds), 1 validation speaker carved from training.

  python -m experiments.drmoe_synthetic                                  # 5 folds x 3 seeds, ~1-2 min on 2 cores
  python -m experiments.drmoe_routing --config.run=runs/drmoe_synthetic # per-class routing + planted agreement
  python -m experiments.drmoe_synthetic --config.model.scales=concat --config.workdir=runs/drmoe_synthetic_concat
  python -m experiments.drmoe_synthetic --config.loss_weights.switch=0.1 --config.workdir=runs/drmoe_synthetic_sw01
      # the router finds the planted scale per class only with this balance term (4/4 classes, ~69% of samples)
  python -m experiments.drmoe_synthetic --config.smoke=True --config.workdir=/tmp/s   # seconds
"""

from experiments.drmoe_common import drmoe_config, smoke_model
from jmoe.train import app, cli


def get_config():
  c = drmoe_config("drmoe_synthetic", "synthetic_scale", "audio_local,audio_global,text_local,text_global")
  c.seeds = 3
  c.members = "vmap"
  c.folds.kind = "logo"
  c.folds.group = "speaker"
  c.folds.test_groups_per_fold = 2
  c.folds.valid_groups = 1
  return c


def smoke(c):
  """Tiny data (6 speakers x 8 utterances), width 16 (the app also sets 1 seed, 2 epochs, 2 folds)."""
  c.data.synthetic_speakers = 6
  c.data.synthetic_per_speaker = 8
  smoke_model(c)


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
