"""Does EUAR's sigma^2 track the planted noise? The diagnostic of :mod:`jmoe.evaluators.uncertainty` on a finished
EUAR run on the synthetic MOSI source (whose truth is known)::

  python -m experiments.euar_mosi                                   # train (writes runs/euar_mosi)
  python -m experiments.euar_uncertainty --run runs/euar_mosi       # uncertainty.{md,json,png} in the run dir
"""

import argparse
import sys

from jmoe.evaluators import uncertainty


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--run", required=True, help="a finished EUAR run dir (config.data.source='synthetic')")
  args = ap.parse_args(argv)
  try:
    _, text, paths = uncertainty.write(args.run)
  except (uncertainty.RunError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(text)
  print("wrote " + ", ".join(str(p) for p in paths))
  return 0


if __name__ == "__main__":
  sys.exit(main())
