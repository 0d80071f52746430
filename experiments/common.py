"""Shared config skeleton for the EUAR experiments (each experiment file stays a few lines)."""

import ml_collections
from absl import logging

from jmoe.train import sentiment


def euar_config(name: str, synthetic_kind: str, text_dim: int, audio_dim: int, vision_dim: int):
  c = ml_collections.ConfigDict()
  c.name = name
  c.workdir = f"runs/{name}"
  c.seeds = 5
  c.seed_offset = 0
  c.devices = 0  # 0 = all devices (pmap: local ones; jit: every process's); N = the first N
  c.parallel = "pmap"  # data parallel: 'pmap' (local devices) | 'jit' (Mesh/NamedSharding; multi-host)
  c.distributed = False  # jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)
  c.select_metric = "MAE"  # model selection on the validation split only
  c.smoke = False  # a few seconds: tiny data, 2 epochs, 1 seed (the tests run this)
  c.stop_after_epochs = -1  # debug: simulate an interruption after N epochs of this invocation
  c.quiet = False
  c.data = ml_collections.ConfigDict(
    dict(
      source="synthetic",
      path="",
      text_features="",
      modalities="text,audio,vision",
      tfds_name="",
      valid_fraction=0.15,
      split_seed=0,
      synthetic_kind=synthetic_kind,
      synthetic_seed=0,
      synthetic_dims=(text_dim, audio_dim, vision_dim),
      synthetic_sizes=(),
      seq_len=0,
    )
  )
  c.model = ml_collections.ConfigDict(
    dict(
      width=72,
      num_experts=4,
      k=3,
      expert="gaussian",  # expert: gaussian (EUAR) | mlp | linear (ablations)
      fusion="moe",
      dispatch="dense",
      capacity_factor=0.0,
      dropout=0.1,
    )
  )
  c.loss = ml_collections.ConfigDict(dict(alpha=1e-3, beta=1e-5, lam=1e-3, use_kl=True, use_uloss=True))
  c.optim = ml_collections.ConfigDict(
    dict(lr=1e-3, weight_decay=1e-4, grad_clip=1.0, batch_size=16, epochs=40, patience=8)
  )
  return c


def run_experiment(config):
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if config.smoke:
    config.seeds = min(config.seeds, 1)
    config.optim.epochs = 2
    if config.data.source == "synthetic":
      config.data.synthetic_sizes = (96, 32, 32)
  return sentiment.run(config)
