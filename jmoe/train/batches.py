"""Batches for data-parallel steps: fixed shapes, padded and masked so no sample is dropped or counted twice.

A batch is a dict of numpy arrays with leading axes [P, B/P] (P devices): ``<m>`` features, ``<m>_mask`` for
sequence modalities, ``label`` [P, B/P] and ``weight`` [P, B/P] (1 for real samples, 0 for padding).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jmoe.data.format import Split


def num_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def iterate_batches(split: Split, modalities, batch_size: int, num_devices: int = 1,
                    shuffle_seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yield every sample of ``split`` exactly once in batches of ``batch_size`` split over ``num_devices``.

  The last batch is padded (weight 0) to the full size, so every batch has the same shape (no recompiles).
  ``shuffle_seed`` (e.g. hash of (seed, epoch)) permutes the order deterministically; None keeps file order.
  """
  if batch_size % num_devices:
    raise ValueError(f"batch_size={batch_size} is not divisible by the device count {num_devices}")
  n = len(split)
  if n == 0:
    raise ValueError("cannot iterate over an empty split")
  order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
  keys = [m for m in modalities] + [f"{m}_mask" for m in modalities if m in split.masks]
  arrays = {m: split.features[m] for m in modalities}
  arrays.update({f"{m}_mask": split.masks[m] for m in modalities if m in split.masks})
  arrays["label"] = split.labels.astype(np.float32)
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    pad = batch_size - len(idx)
    batch = {}
    for key in keys + ["label"]:
      a = arrays[key][idx]
      if pad:
        a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
      batch[key] = a.reshape((num_devices, batch_size // num_devices) + a.shape[1:])
    weight = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    batch["weight"] = weight.reshape(num_devices, batch_size // num_devices)
    yield batch
