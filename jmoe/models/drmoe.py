"""DR-MoE: Dual Routing Mixture-of-Experts over local (frame/token) and global (utterance) representations.

Axis alphabet: **B** batch, **T** frames or tokens of one modality, **D** input width, **W** model width, **G** scale
groups (2: local, global; group 0 = local, group 1 = global everywhere, including ``aux['per_sample']``).

Per base modality m (``audio``, ``text``; the dataset gives the two views ``<m>_local`` [B, T, D] + mask [B, T] and
``<m>_global`` [B, D], see :mod:`jmoe.data.ravdess` / :mod:`jmoe.data.synthetic_scale`):

* **local expert**: frames average-pooled by ``frame_stride`` (a pooled step is real if any of its frames is), then
  :class:`~jmoe.models.layers.SequenceEncoder` (Dense(W) + GELU, ``layers`` masked self-attention blocks) ->
  tokens [B, T', W] with their mask;
* **global expert**: :class:`~jmoe.models.layers.ModalityEncoder` on the utterance vector -> one token [B, 1, W];
* **scale-aware router** (:class:`~jmoe.models.layers.ScaleRouter`) on summaries of both scales (the local tokens'
  masked mean and max [B, 2W], the global token [B, W]) -> a routing over G = 2 groups, executed by
  :func:`jmoe.moe.layer.mixture`, which also returns each sample's choice.
* both experts write into one token buffer [B, T' + 1, W] (local tokens at 0..T'-1, the global token at T'), so the
  routed representation is ``mixture({tokens, mask}) = sum_g w[b, g] * expert_g`` -- with a hard top-1 routing
  exactly the chosen expert's tokens and mask.
* **bidirectional cross-attention** (:class:`~jmoe.models.layers.BidirectionalCrossAttention`) between audio and
  text on the routed token sets (audio queries attend to text's real tokens and vice versa) when both are present;
* per modality the fused tokens are pooled (masked mean and max, concatenated: a burst of a few frames survives
  the max), concatenated over modalities, dropout, Dense(W) + GELU and one linear classifier per task head.

Router (``model.router``):

* ``'straight_through'`` (default): hard top-1 in training AND evaluation; forward weight exactly 1 on the chosen
  group, backward the softmax gradient (Bengio et al. 2013), via :func:`jmoe.moe.routing.top1_routing`;
* ``'switch'``: hard top-1 scaled by its probability (Switch Transformer estimator);
* ``'soft'``: softmax mixture of both groups in training, hard argmax at evaluation (the same router parameters;
  at evaluation the routing is top-1 with weight exactly 1). In training the token mask is the weighted sum of
  the two masks (> 0 counts as real), i.e. the union of both scales' tokens.

Against the router's collapse onto one scale: ``model.router_temperature`` (logits / T) and ``model.router_gumbel``
(Gumbel noise on the logits in training: the straight-through Gumbel-softmax), both searchable with the Switch
balance weight ``loss_weights.switch`` (``--config.search.space``, :mod:`jmoe.train.search`).

Ablations (``model.scales``): ``'route'`` (DR-MoE), ``'local'`` (local expert only), ``'global'`` (global expert
only), ``'concat'`` (both scales' tokens concatenated, no router: the "simple concatenation" baseline);
``model.cross_attention=False`` drops the fusion (per-modality pooled tokens are concatenated instead).

Choices the abstract leaves open (the reasons and the measurements behind them: docs/models/drmoe.md):

* local/global features: the speech encoder's frames as local and their masked mean as global (any encoder of the
  feature extractor, ``jmoe.features``); ``frame_stride`` pools the frames before the local expert.
* one router per modality (audio and text choose their scale independently), per sample (not per token).
* no load-balancing loss by default (the abstract names none): ``aux['losses']['switch']`` (the Switch loss of each
  modality's routing, summed; 1 = uniform) is reported and enters the objective only with
  ``config.loss_weights.switch > 0``. Under hard top-1 the unchosen expert's tokens are masked out of the pooling, so
  neither that expert nor its router logit gets a task-loss gradient: a router can collapse onto one scale.
* a modality may be absent from the config (RAVDESS runs audio-only: its text is two fixed sentences); with one
  modality there is no cross-attention. A modality absent for *some* samples (``present/<m>``) is not handled.
* width 64, 4 heads, 1 self-attention block, dropout 0.1, AdamW (the platform's optimizer).

Per-sample diagnostics (``aux['per_sample']``, saved in ``test_outputs.npz`` as ``per_sample.<name>``):
``scale_<m>`` int32 [B] (0 local, 1 global: the routed group; constant in the single-scale ablations, absent for
``concat``) and ``gate_<m>`` float32 [B, G] (router probabilities). ``aux['stats']``: ``load_<m>`` [G] (fraction of
the batch routed to each scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmoe.data import sources
from jmoe.models.layers import (
  BidirectionalCrossAttention,
  ModalityEncoder,
  ScaleRouter,
  SequenceEncoder,
  in_dtype,
  masked_mean,
)
from jmoe.moe.layer import mixture
from jmoe.moe.routing import top1_routing

SCALES = ("route", "local", "global", "concat")
ROUTERS = ("straight_through", "switch", "soft")
LOCAL, GLOBAL = 0, 1


def base_modalities(views: Sequence[str]) -> tuple[str, ...]:
  """``('audio_local', 'audio_global', 'text_local')`` -> ``('audio', 'text')`` (first-seen order)."""
  out = []
  for v in views:
    base, _, scale = v.rpartition("_")
    if scale not in ("local", "global") or not base:
      raise ValueError(f"DR-MoE modality {v!r} must be named <modality>_local or <modality>_global")
    if base not in out:
      out.append(base)
  return tuple(out)


def pool_frames(x: jax.Array, mask: jax.Array | None, stride: int) -> tuple[jax.Array, jax.Array]:
  """Average-pool frames by ``stride``: x [B, T, D], mask [B, T] -> [B, ceil(T/s), D], mask [B, ceil(T/s)].

  Each pooled step is the mean of its real frames; it is real if any of its frames is.
  """
  mask = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)
  if stride <= 1:
    return x, mask
  b, t, d = x.shape
  pad = -t % stride
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad)))
  m = mask.reshape(b, -1, stride).astype(x.dtype)
  s = jnp.sum(x.reshape(b, -1, stride, d) * m[..., None], axis=2)
  n = jnp.sum(m, axis=2)
  return s / jnp.maximum(n, 1.0)[..., None], n > 0


def masked_max(h: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, T, W] with mask [B, T] -> [B, W] max over real steps (zeros for an all-padding row)."""
  m = mask.astype(bool)[..., None]
  out = jnp.max(jnp.where(m, h, -jnp.inf), axis=1)
  return jnp.where(jnp.any(m, axis=1), out, 0.0)


class DRMoE(nn.Module):
  """DR-MoE. ``__call__(batch, deterministic)`` -> ({head: logits [B, C]}, aux) (the platform's model contract).

  batch: ``<m>_local`` [B, T, D] with ``<m>_local_mask`` [B, T] and/or ``<m>_global`` [B, D] for every view in
  ``modalities``.
  aux['losses']: ``switch`` (scalar batch statistic: Switch load-balancing loss of the routings, summed over
  modalities; 0 without routing). aux['per_sample']: ``scale_<m>`` int32 [B], ``gate_<m>`` [B, G].
  aux['stats']: ``load_<m>`` [G].
  """

  modalities: Sequence[str] = ("audio_local", "audio_global")
  heads_out: Sequence[tuple[str, int]] = (("emotion4", 4),)
  width: int = 64
  num_heads: int = 4
  layers: int = 1
  dropout: float = 0.1
  scales: str = "route"
  router: str = "straight_through"
  router_temperature: float = 1.0
  router_gumbel: bool = False
  router_hidden: int = 64
  cross_attention: bool = True
  frame_stride: int = 1
  dtype: str = "float32"  # compute dtype: "float32" | "bfloat16" (parameters, losses, metrics fp32)

  def _expert_tokens(self, m: str, batch, deterministic: bool):
    """Both experts of modality m in one buffer: ({'local': (tok, mask), 'global': (tok, mask)}, summaries)."""
    out = {}
    if f"{m}_local" in self.modalities and self.scales != "global":
      x, mask = pool_frames(batch[f"{m}_local"], batch.get(f"{m}_local_mask"), self.frame_stride)
      tok = SequenceEncoder(self.width, self.layers, self.num_heads, self.dropout, name=f"local_{m}")(
        x, mask, deterministic
      )
      out["local"] = (tok, mask)
    if f"{m}_global" in self.modalities and self.scales != "local":
      g = ModalityEncoder(self.width, self.dropout, name=f"global_{m}")(batch[f"{m}_global"], None, deterministic)
      out["global"] = (g[:, None, :], jnp.ones((g.shape[0], 1), bool))
    return out

  def _route(self, m: str, experts, deterministic: bool):
    """The routed token set of modality m -> (tokens [B, T'+1, W], mask [B, T'+1], per_sample, stats, switch)."""
    (lt, lm), (gt, gm) = experts["local"], experts["global"]
    b, t, w = lt.shape
    zeros_t = jnp.zeros((b, t, w), lt.dtype)
    local = {"tokens": jnp.concatenate([lt, jnp.zeros((b, 1, w), lt.dtype)], 1), "mask": jnp.pad(lm, ((0, 0), (0, 1)))}
    glob = {"tokens": jnp.concatenate([zeros_t, gt], 1), "mask": jnp.pad(gm, ((0, 0), (t, 0)))}
    local["mask"], glob["mask"] = local["mask"].astype(lt.dtype), glob["mask"].astype(lt.dtype)
    summaries = [jnp.concatenate([masked_mean(lt, lm), masked_max(lt, lm)], -1), gt[:, 0]]
    soft = self.router == "soft"
    estimator = ("soft" if not deterministic else "straight_through") if soft else self.router
    routing = ScaleRouter(
      2,
      estimator=estimator,
      hidden=self.router_hidden,
      temperature=self.router_temperature,
      gumbel=self.router_gumbel,
      name=f"router_{m}",
    )(summaries, deterministic)
    if soft and deterministic:  # soft in training, hard at evaluation: top-1 of the same logits
      routing = top1_routing(routing.logits, "straight_through")
    mixed, choice = mixture([local, glob], routing)
    per_sample = {f"scale_{m}": choice, f"gate_{m}": routing.probs}
    stats = {f"load_{m}": routing.metrics["load"]}
    return mixed["tokens"], mixed["mask"] > 0, per_sample, stats, routing.metrics["switch_loss"]

  def __call__(self, batch: dict[str, Any], deterministic: bool = True):
    return in_dtype(self, type(self).forward, batch, deterministic)

  @nn.compact
  def forward(self, batch: dict[str, Any], deterministic: bool = True):
    if self.scales not in SCALES:
      raise ValueError(f"DR-MoE scales must be one of {SCALES}, got {self.scales!r}")
    if self.router not in ROUTERS:
      raise ValueError(f"DR-MoE router must be one of {ROUTERS}, got {self.router!r}")
    mods = base_modalities(self.modalities)
    seqs, per_sample, stats, switch = {}, {}, {}, jnp.zeros((), jnp.float32)
    for m in mods:
      for v in [f"{m}_local", f"{m}_global"]:
        if v in self.modalities and v not in batch:
          raise ValueError(f"DR-MoE: batch has no view {v!r} (has {sorted(batch)})")
      experts = self._expert_tokens(m, batch, deterministic)
      if self.scales == "route":
        tok, mask, ps, st, sw = self._route(m, experts, deterministic)
        per_sample.update(ps)
        stats.update(st)
        switch = switch + sw
      elif self.scales == "concat":
        (lt, lm), (gt, gm) = experts["local"], experts["global"]
        tok, mask = jnp.concatenate([lt, gt], 1), jnp.concatenate([lm, gm], 1)
      else:
        tok, mask = experts[self.scales]
        b = tok.shape[0]
        per_sample[f"scale_{m}"] = jnp.full((b,), LOCAL if self.scales == "local" else GLOBAL, jnp.int32)
      seqs[m] = (tok, mask)
    if self.cross_attention and len(mods) == 2:
      (a, am), (t, tm) = seqs[mods[0]], seqs[mods[1]]
      a2, t2 = BidirectionalCrossAttention(self.num_heads, self.dropout, name="cross")(a, t, am, tm, deterministic)
      seqs = {mods[0]: (a2, am), mods[1]: (t2, tm)}
    elif self.cross_attention and len(mods) > 2:
      raise ValueError(f"DR-MoE cross-attention fuses two modalities, got {mods}")
    pooled = [jnp.concatenate([masked_mean(h, mk), masked_max(h, mk)], -1) for h, mk in seqs.values()]
    h = nn.Dropout(self.dropout)(jnp.concatenate(pooled, -1), deterministic=deterministic)
    h = nn.gelu(nn.Dense(self.width, name="fuse")(h))
    outputs = {head: nn.Dense(c, name=f"head_{head}")(h) for head, c in self.heads_out}
    aux = {"losses": {"switch": switch}, "per_sample": per_sample, "stats": stats}
    return outputs, aux


def _views(cfg) -> tuple[str, ...]:
  return sources.modalities(cfg.data)


def validate_config(cfg) -> None:
  """DR-MoE's model config: one line naming the key, the value and what is allowed."""
  m = cfg.model
  checks = [
    ("scales", m.scales in SCALES, f"choose one of {SCALES}"),
    ("router", m.router in ROUTERS, f"choose one of {ROUTERS}"),
    ("router_temperature", m.get("router_temperature", 1.0) > 0, "use a temperature > 0"),
    ("router_gumbel", isinstance(m.get("router_gumbel", False), bool), "use True or False"),
    (
      "width",
      isinstance(m.width, int) and m.width >= 1 and m.width % m.num_heads == 0,
      "use an int >= 1 divisible by num_heads",
    ),
    ("num_heads", isinstance(m.num_heads, int) and m.num_heads >= 1, "use an int >= 1"),
    ("layers", isinstance(m.layers, int) and m.layers >= 0, "use an int >= 0"),
    ("dropout", 0.0 <= m.dropout < 1.0, "use 0 <= dropout < 1"),
    ("frame_stride", isinstance(m.frame_stride, int) and m.frame_stride >= 1, "use an int >= 1"),
  ]
  for key, ok, allowed in checks:
    if not ok:
      raise ValueError(f"config.model.{key}={m[key]!r} is invalid: {allowed}")
  views = _views(cfg)
  if not views:  # '' = every view of the dataset: checked by build() once the data are loaded
    return
  mods = base_modalities(views)
  need = {"route": ("local", "global"), "concat": ("local", "global"), "local": ("local",), "global": ("global",)}
  for base in mods:
    for scale in need[m.scales]:
      if f"{base}_{scale}" not in views:
        raise ValueError(
          f"config.data.modalities={cfg.data.modalities!r} is invalid: model.scales={m.scales!r} needs {base}_{scale}"
        )
  if m.cross_attention and len(mods) > 2:
    raise ValueError(f"config.model.cross_attention=True fuses two modalities, config.data.modalities has {mods}")


def build(cfg, ds, tasks) -> DRMoE:
  """The platform's model factory: DR-MoE over ``config.data.modalities`` with one classifier per task head.

  Only the views the chosen ``model.scales`` reads are fed (a ``global`` ablation never batches the frames).
  """
  bad = [t.name for t in tasks if t.kind != "classification"]
  if bad:
    raise ValueError(f"DR-MoE predicts classes; tasks {bad} are not classification tasks")
  m = cfg.model
  views = tuple(ds.modalities)
  keep = {"route": ("local", "global"), "concat": ("local", "global"), "local": ("local",), "global": ("global",)}
  views = tuple(v for v in views if v.rpartition("_")[2] in keep[m.scales])
  heads = tuple(dict.fromkeys((t.head, t.num_outputs[0]) for t in tasks))
  return DRMoE(
    modalities=views,
    heads_out=heads,
    width=m.width,
    num_heads=m.num_heads,
    layers=m.layers,
    dropout=m.dropout,
    scales=m.scales,
    router=m.router,
    router_hidden=m.router_hidden,
    router_temperature=float(m.get("router_temperature", 1.0)),
    router_gumbel=bool(m.get("router_gumbel", False)),
    cross_attention=m.cross_attention,
    frame_stride=m.frame_stride,
    dtype=m.get("dtype", "float32"),
  )
