"""DR-MoE on RAVDESS speech (real, audio-only: the text is one of two fixed sentences).

Features: Whisper tiny.en encoder frames (50 Hz, 384-d) as local, their masked mean as global, extracted once::

  python -m tools.extract_features --modality speech --input ../shared/data/ravdess/audio \
      --output runs/features/ravdess_whisper

Runs (speaker-independent: 12 folds of actor pairs (1,2), (3,4), ... -- one male, one female each; 2 validation
actors carved at random from the 22 training actors; the checkpoint is chosen on validation UA, never on test)::

  python -m experiments.drmoe_ravdess                                   # 4-class (neutral, happy, angry, sad)
  python -m experiments.drmoe_ravdess --config.head=emotion8 --config.workdir=runs/drmoe_ravdess8
  python -m experiments.drmoe_ravdess --config.model.scales=global --config.workdir=runs/drmoe_ravdess_global
  python -m experiments.drmoe_routing --config.run=runs/drmoe_ravdess
  python -m experiments.drmoe_logreg --config.exp=ravdess                # logistic regression on the global view
  python -m experiments.drmoe_ravdess --config.loss_weights.switch=0.1 --config.seeds=2 --config.optim.epochs=15 \
      --config.workdir=runs/drmoe_ravdess_sw01      # Switch balance term: ends the router's collapse to global
  python -m experiments.drmoe_ravdess --config.smoke=True --config.data.path=../shared/data/ravdess \
      --config.workdir=/tmp/drmoe_smoke                                   # < 1 min, extracts 24 clips itself

4-class: calm does NOT join neutral (``--config.data.calm_as_neutral=True`` merges it; see jmoe/data/ravdess.py);
clips of the other emotions are dropped (``data.labelled_only``). Frames are average-pooled by 4 (80 ms steps)
before the local expert (``model.frame_stride``) to fit the CPU budget.
"""

from experiments.drmoe_common import drmoe_config, smoke_model
from jmoe.train import app, cli


def get_config():
  c = drmoe_config("drmoe_ravdess", "ravdess", "audio_local,audio_global")
  c.data.features = "runs/features/ravdess_whisper"
  c.data.path = ""  # optional audio root (../shared/data/ravdess): then the features must cover its clips exactly
  c.model.frame_stride = 4
  c.seeds = 3
  c.members = "vmap"
  c.folds.kind = "logo"
  c.folds.group = "actor"
  c.folds.test_groups_per_fold = 2
  c.folds.valid_groups = 2
  return c


def smoke(c):
  """A handful of real clips: 8 per actor from 3 actors (features extracted into the workdir when data.path is set),
  one actor per test/valid group, width 16."""
  if c.data.path:
    c.data.smoke_clips = 8
    c.data.smoke_actors = 3
    c.data.features = f"{c.workdir}/smoke_features"
  c.folds.test_groups_per_fold = 1
  c.folds.valid_groups = 1
  smoke_model(c)


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
