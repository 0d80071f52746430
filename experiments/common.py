"""The EUAR experiments' shared config (each experiment file stays a few lines)."""

import ml_collections

from jmoe.train import app


def euar_config(name: str, synthetic_kind: str, text_dim: int, audio_dim: int, vision_dim: int):
  c = app.base_config(name, model_name="euar")
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
      nonfinite="error",  # mmsa pickles: 'error' refuses NaN/Inf features, 'zero' replaces them with 0
    )
  )
  c.tasks = ml_collections.ConfigDict({"sentiment": dict(kind="sentiment", head="sentiment", loss="mse", weight=1.0)})
  # EUAR eq. 12: task + alpha KL + beta aux + lambda U (a weight of 0 switches a term off: the no-KL ablation is
  # --config.loss_weights.kl=0).
  c.loss_weights = ml_collections.ConfigDict(dict(kl=1e-3, auxiliary_loss=1e-5, uloss=1e-3))
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
      dtype="float32",  # compute dtype: float32 | bfloat16 (parameters, losses and metrics stay float32)
    )
  )
  return c


def smoke(config):
  """The smoke variant: tiny synthetic data (the app also sets 1 seed, 2 epochs)."""
  if config.data.source == "synthetic":
    config.data.synthetic_sizes = (96, 32, 32)
