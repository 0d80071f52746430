"""Offline feature extraction (text and speech encoders -> ``local`` + ``global`` feature files), as library code.

:mod:`jmoe.features.extract` (``main(argv)``: the command line of ``python -m tools.extract_features``, and the
output layout), :mod:`jmoe.features.speech` / :mod:`jmoe.features.text` (the two modalities),
:mod:`jmoe.features.models` (local model lookup) and :mod:`jmoe.features.shards` (resumable output).
"""
