"""Command line of :mod:`jmoe.features.extract`: offline local (frame/token) and global features from a local
pretrained encoder. Usage, options and the output layout: ``python -m tools.extract_features --help`` and the
docstring of :mod:`jmoe.features.extract`.

    python -m tools.extract_features --model PATH_OR_NAME --input transcripts.csv --output feats.npz
    python -m tools.extract_features --modality speech --input AUDIO_DIR_OR_CSV --output OUT_DIR_OR.npz
"""

from __future__ import annotations

import sys

from jmoe.features.extract import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
  sys.exit(main())
