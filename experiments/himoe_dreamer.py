"""Hi-MoE on DREAMER (14-channel EEG + 2-channel ECG): subject-dependent 10-fold CV, V/A/D on 1-5 + high/low (> 3).

Commands (embedded default: SYNTHETIC DREAMER-shaped raw signals derived from the synthetic DEAP generator,
``jmoe.data.physio_sources``: 8 subjects x 12 clips x 20 s, 14 EEG channels at 128 Hz, pulse-derived ECG at 256 Hz,
integer ratings 1-5; a few minutes on 2 CPU cores)::

  python -m experiments.himoe_dreamer
  python -m experiments.himoe_dreamer --config.smoke=True
  python -m experiments.himoe_dreamer --config.data.source=dreamer --config.data.path=DIR/DREAMER.mat
  python -m experiments.himoe_dreamer --config.data.source=dreamer --config.data.path=DIR/DREAMER.mat \\
      --config.folds.kind=logo --config.folds.group=subject                              # LOSO
  python -m experiments.himoe_dreamer --config.data.synthetic_size=dreamer               # DREAMER-size synthetic

Protocol and ablation switches as in ``experiments/himoe_deap.py``.
"""

from experiments.himoe_deap import himoe_config, smoke
from jmoe.train import app, cli


def get_config():
  return himoe_config("himoe_dreamer", "synthetic_dreamer", "eeg,ecg", "vad", 3.0)


def run(cfg):
  return app.run(cfg, smoke)


if __name__ == "__main__":
  cli.main(get_config, run)
