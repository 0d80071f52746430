"""Batches for data-parallel steps: fixed shapes, padded and masked so no sample is dropped or counted twice.

A batch is a dict of numpy arrays with leading axes [P, ceil(B/P)] (P devices or data shards): ``<m>`` features,
``<m>_mask`` for sequence modalities, ``label`` and ``weight`` [P, ceil(B/P)] (1 for real samples, 0 for padding).
A global batch size B that is not a multiple of P is padded up to ``P * ceil(B/P)`` rows with weight-0 rows (never
truncated); the steps divide weighted sums by the global weight total, so padding changes nothing.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jmoe.data.format import Split


def num_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def per_device_batch(batch_size: int, num_devices: int) -> int:
  """Rows per device: ceil(B / P); the padded global batch is P times that."""
  if batch_size < 1 or num_devices < 1:
    raise ValueError(f"batch_size and num_devices must be >= 1, got {batch_size}, {num_devices}")
  return -(-batch_size // num_devices)


def iterate_batches(
  split: Split, modalities, batch_size: int, num_devices: int = 1, shuffle_seed: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """Yield every sample of ``split`` exactly once in batches of ``batch_size`` split over ``num_devices``.

  Each batch takes ``batch_size`` samples; it is padded with weight-0 rows to ``num_devices * ceil(batch_size /
  num_devices)`` rows (so a batch size not divisible by the device count is padded, not truncated or refused), and
  the last, short batch is padded the same way: every batch has the same shape (no recompiles).
  ``shuffle_seed`` (e.g. hash of (seed, epoch)) permutes the order deterministically; None keeps file order.
  """
  per_device = per_device_batch(batch_size, num_devices)
  padded_size = per_device * num_devices
  n = len(split)
  if n == 0:
    raise ValueError("cannot iterate over an empty split")
  order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
  keys = [m for m in modalities] + [f"{m}_mask" for m in modalities if m in split.masks]
  arrays = {m: split.features[m] for m in modalities}
  arrays.update({f"{m}_mask": split.masks[m] for m in modalities if m in split.masks})
  arrays["label"] = split.labels["sentiment"].astype(np.float32)
  for start in range(0, n, batch_size):
    idx = order[start : start + batch_size]
    pad = padded_size - len(idx)
    batch = {}
    for key in keys + ["label"]:
      a = arrays[key][idx]
      if pad:
        a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
      batch[key] = a.reshape((num_devices, per_device) + a.shape[1:])
    weight = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    batch["weight"] = weight.reshape(num_devices, per_device)
    yield batch
