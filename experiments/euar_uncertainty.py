"""Does EUAR's sigma^2 track the planted noise? The diagnostic of :mod:`jmoe.evaluators.uncertainty` on a finished
EUAR run on the synthetic MOSI source (whose truth is known)::

  python -m experiments.euar_mosi                                   # train (writes runs/euar_mosi)
  python -m experiments.euar_uncertainty --config.run=runs/euar_mosi       # uncertainty.{md,json,png} in the run dir
"""

import ml_collections

from jmoe.evaluators import uncertainty
from jmoe.train import cli


def get_config():
  c = ml_collections.ConfigDict()
  c.run = ""  # a finished EUAR run dir (config.data.source='synthetic')
  c.debug = False
  return c


def run(cfg) -> list:
  if not cfg.run:
    raise ValueError("config.run is empty: name a finished EUAR run directory, e.g. --config.run=runs/euar_mosi")
  try:
    _, text, paths = uncertainty.write(cfg.run)
  except uncertainty.RunError as e:
    raise ValueError(str(e)) from None
  print(text)
  print("wrote " + ", ".join(str(p) for p in paths))
  return paths


if __name__ == "__main__":
  cli.main(get_config, run)
