"""Batches for data-parallel steps: fixed shapes, padded and masked so no sample is dropped or counted twice.

A batch is a dict of numpy arrays with leading axes [P, ceil(B/P)] (P devices or data shards): ``<m>`` features,
``<m>_mask`` for sequence modalities, ``present/<m>`` modality presence, ``label/<head>`` and ``label_mask/<head>``
per label head, and ``weight`` [P, ceil(B/P)] (1 for real samples, 0 for padding). Member batches (one per trained
member of a vmapped population) add a member axis: [P, M, ceil(B/P), ...].
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


def batch_arrays(split: Split, modalities, heads=()) -> dict[str, np.ndarray]:
  """The arrays a batch is cut from: ``<m>``, ``<m>_mask``, ``present/<m>``, ``label/<head>``,
  ``label_mask/<head>`` (only where the split has them)."""
  arrays = {m: split.features[m] for m in modalities}
  arrays.update({f"{m}_mask": split.masks[m] for m in modalities if m in split.masks})
  arrays.update({f"present/{m}": split.present[m] for m in modalities if m in split.present})
  for h in heads:
    y = np.asarray(split.labels[h])
    arrays[f"label/{h}"] = y.astype(np.float32) if np.issubdtype(y.dtype, np.floating) else y.astype(np.int32)
    if h in split.label_masks:
      arrays[f"label_mask/{h}"] = np.asarray(split.label_masks[h], bool)
  return arrays


def iterate_batches(
  split: Split, modalities, batch_size: int, num_devices: int = 1, shuffle_seed: int | None = None, heads=()
) -> Iterator[dict[str, np.ndarray]]:
  """Yield every sample of ``split`` exactly once in batches of ``batch_size`` split over ``num_devices``.

  Each batch takes ``batch_size`` samples; it is padded with weight-0 rows to ``num_devices * ceil(batch_size /
  num_devices)`` rows (so a batch size not divisible by the device count is padded, not truncated or refused), and
  the last, short batch is padded the same way: every batch has the same shape (no recompiles).
  ``shuffle_seed`` (e.g. hash of (seed, epoch)) permutes the order deterministically; None keeps file order.
  ``heads``: the label heads to include (``label/<head>``, ``label_mask/<head>``).
  """
  per_device = per_device_batch(batch_size, num_devices)
  padded_size = per_device * num_devices
  n = len(split)
  if n == 0:
    raise ValueError("cannot iterate over an empty split")
  order = np.arange(n) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(n)
  arrays = batch_arrays(split, modalities, heads)
  for start in range(0, n, batch_size):
    idx = order[start : start + batch_size]
    pad = padded_size - len(idx)
    batch = {}
    for key, arr in arrays.items():
      a = np.asarray(arr[idx])
      if pad:
        a = np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
      batch[key] = a.reshape((num_devices, per_device) + a.shape[1:])
    weight = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    batch["weight"] = weight.reshape(num_devices, per_device)
    yield batch


def iterate_member_batches(splits, modalities, batch_size: int, num_devices: int, shuffle_seeds, heads=()):
  """One batch per member, stacked on a member axis: leaves [P, M, b, ...].

  ``splits``: one split per member (the same split for seeds of one run; the folds' train splits for fold members,
  which must then have the same number of batches). ``shuffle_seeds``: one per member (None = file order).
  """
  iters = [
    iterate_batches(sp, modalities, batch_size, num_devices, seed, heads) for sp, seed in zip(splits, shuffle_seeds)
  ]
  for parts in zip(*iters, strict=True):
    yield {k: np.stack([p[k] for p in parts], axis=1) for k in parts[0]}
