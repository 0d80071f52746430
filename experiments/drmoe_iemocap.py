"""DR-MoE on IEMOCAP (4-class protocol: neutral, happy + excited, angry, sad; leave-one-session-out, 5 folds).

The audio cannot be brought onto these machines; with a release copy at DIR::

  python -c "from jmoe.data import iemocap as i; i.write_manifest(i.list_utterances('DIR'), 'runs/iemocap.csv')"
  python -m tools.extract_features --modality speech --input runs/iemocap.csv --output runs/features/iemocap_whisper
  python -m tools.extract_features --model roberta-base --input runs/iemocap.csv \
      --output runs/features/iemocap_roberta                                  # optional text (local model dir)
  python -m experiments.drmoe_iemocap --config.data.path=DIR \
      [--config.data.text_features=runs/features/iemocap_roberta \
       --config.data.modalities=audio_local,audio_global,text_local,text_global]

Folds: each session is the test set once; 1 validation session is carved at random from the 4 training sessions
(selection on validation UA only). Utterances outside the 4 classes are dropped (``data.labelled_only``).
"""

from experiments.drmoe_common import drmoe_config, smoke_model
from jmoe.train import app, cli


def get_config():
  c = drmoe_config("drmoe_iemocap", "iemocap", "audio_local,audio_global")
  c.data.features = "runs/features/iemocap_whisper"
  c.model.frame_stride = 4
  c.seeds = 3
  c.members = "vmap"
  c.folds.kind = "logo"
  c.folds.group = "session"
  c.folds.test_groups_per_fold = 1
  c.folds.valid_groups = 1
  return c


def smoke(c):
  """Width 16 (the app sets 1 seed, 2 epochs, 2 folds); the data are whatever ``data.path`` holds."""
  smoke_model(c)


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
