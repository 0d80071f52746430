"""The DR-MoE experiments' shared config and smoke variant (each experiment file stays a few lines)."""

import ml_collections

from jmoe.train import app


def drmoe_config(name: str, source: str, modalities: str, head: str = "emotion4") -> ml_collections.ConfigDict:
  """DR-MoE on ``source``: one classification task on ``head``, speaker-independent folds set by the caller."""
  c = app.base_config(name, model_name="drmoe")
  c.head = head  # the label head; task 'emotion', its output head and data.labelled_only follow it
  head = c.get_ref("head")
  c.data = ml_collections.ConfigDict(
    dict(
      source=source,
      path="",
      features="",
      text_features="",
      modalities=modalities,
      labelled_only=head,
      calm_as_neutral=False,
      smoke_clips=0,
      smoke_actors=3,
      synthetic_speakers=10,
      synthetic_per_speaker=40,
      synthetic_seed=0,
      synthetic_scales="",
    )
  )
  c.tasks = ml_collections.ConfigDict(
    {"emotion": dict(kind="classification", head=head, label=head, loss="xent", weight=1.0)}
  )
  # The Switch load-balancing term of the routers: reported, off by default (see jmoe/models/drmoe.py).
  c.loss_weights = ml_collections.ConfigDict(dict(switch=0.0))
  c.model = ml_collections.ConfigDict(
    dict(
      scales="route",  # route (DR-MoE) | local | global | concat (ablations)
      router="straight_through",  # straight_through | switch | soft (soft in training, hard at evaluation)
      router_hidden=64,
      router_temperature=1.0,  # logits / T (searchable: --config.search.space='model.router_temperature=log:0.3:3')
      router_gumbel=False,  # Gumbel noise on the router's logits in training (straight-through Gumbel-softmax)
      cross_attention=True,
      width=64,
      num_heads=4,
      layers=1,
      dropout=0.1,
      frame_stride=1,
      dtype="float32",  # compute dtype: float32 | bfloat16 (parameters, losses and metrics stay float32)
    )
  )
  c.optim.epochs = 30
  c.optim.patience = 8
  c.optim.batch_size = 32
  return c


def smoke_model(c) -> None:
  """The smoke setting shared by the DR-MoE experiments: width 16, no self-attention block (XLA compiles it for
  ~10 s on a busy 2-core machine), one fold."""
  c.model.width = 16
  c.model.router_hidden = 16
  c.model.layers = 0
  c.folds.max_folds = 1
