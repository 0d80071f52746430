"""Hi-MoE: hierarchical mixture of experts for continuous multimodal emotion recognition (physiological signals).

Axis alphabet: B batch, T time steps (windows), M modalities, K experts per modality bank, L emotion experts,
D raw feature width, W model width, H rating dimensions (V, A, D, L).

Forward pass (paper eq. in brackets), for every modality m of ``config.data.modalities``:

1. Encoder (no parameters shared between modalities): ``SequenceEncoder`` (Dense(W) + GELU, ``enc_layers``
   self-attention blocks over the real steps) maps x_m [B, T, D_m] (mask [B, T]) or a per-trial vector [B, D_m]
   (read as T = 1) to Z_m [B, T, W] (zero on padding steps).
2. Presence p_m [B, T]: ``batch['present/<m>']`` ([B] or [B, T]) when the batch has it, else "the raw features of
   the step are not all zero"; padding steps are never present. A missing step's encoder output is set to the
   zero vector: x_t^(m) = p_m[t] * Z_m[t] (eq. 2: "for missing modalities x is set to a zero vector").
3. Modality expert bank [eq. 2-3]: ``MoELayer(SoftmaxRouter(K), MLPExpert, K)`` on every step (the routing core's
   dense path: every expert once, weights [B*T, K]); alpha = softmax(W_g x + b_g). A missing step has x = 0, so
   alpha = softmax(b_g) exactly -- the gate falls back to its bias (tested) and the bank outputs the learned
   default sum_k softmax(b_g)_k E_k(0). Padding steps are masked tokens (no output, no statistics).
4. Fusion [eq. 4]: additive attention over modalities per step, a_{t,m} = softmax_m(v^T tanh(W_a z_t^(m))),
   z_t = sum_m a_{t,m} z_t^(m). Missing modalities are NOT masked out of the fusion: the model sees the bank's
   default output and learns how much to trust it (the paper routes missingness through the gate bias only);
   ``per_sample['fusion']`` reports a so that "attention moves away from a missing modality" can be checked.
5. Emotion expert bank [eq. 5-6]: ``MoELayer(DARouter(L), MLPExpert, L)``: every emotion expert runs once and
   beta_t = softmax_l phi(z_t, F_l(z_t)) with phi(z, F_l(z)) = <W_q z, W_k F_l(z)> / sqrt(d_k) (a scaled dot
   product between a query from the fused input and a key from expert l's output; ``jmoe.models.layers.DARouter``).
   ``differential=False`` by default: eq. 5 as written (one softmax map, beta is a distribution);
   ``--config.model.differential=True`` switches on the differential-attention variant (two maps subtracted,
   signed weights beta = a_1 - lambda a_2).
6. Temporal pooling and heads: e_t [B, T, W] is averaged over the real steps (the ratings are per trial, so one
   prediction per sample: a trial sequence or a window), then one independent head per dimension
   (Dense(W) + GELU + Dense(1)) gives the regression head [B, H] (on the rating scale: its output bias starts at
   the scale's midpoint, 5 on 1-9, 3 on 1-5), and one independent Dense(2) per dimension the high/low logits
   [B, H, 2] (platform task kind ``high_low``; threshold 5 on 1-9, 3 on 1-5). Which heads exist follows
   ``config.tasks`` (a regression task -> a rating head, a high_low task -> a logits head).

Loss [eq. 8]: the platform's task losses (MSE on the rating scale, cross-entropy for high/low, label masks) plus
lambda * NT-Xent, lambda = ``config.loss_weights.nt_xent`` (``hparams['loss/nt_xent']``).

NT-Xent [eq. 1, 7]: ``jmoe.objectives.nt_xent`` (SimCLR form: the 2N-row concatenated batch, self-similarity
masked) with temperature ``config.model.temperature`` on the ENCODER outputs Z_i, Z_j of every modality pair (i < j),
averaged over the M(M-1)/2 pairs. ``align_level='step'`` (default; eq. 1's rows are time steps): every real step of
every sample is a row, positives are the same step of the same sample in the other modality, all other steps of
the batch are negatives; ``'sample'``: rows are the samples' Z_m averaged over real steps. Rows that are padding
(``batch['weight'] = 0``), padding steps, or where either modality is missing get weight 0: they are neither
anchors, positives nor negatives. Exact under data parallelism (``axis_name='batch'`` when that axis is bound).

Choices the paper leaves open (besides the above): width W=32, K=4 modality experts, L=4 emotion experts, d_k=16,
one self-attention block per encoder, dropout 0.1 before the heads, tau=0.1, lambda=0.1 (``experiments/
himoe_deap.py``); experts are two-layer MLPs (W -> W -> W); no residual around either bank (eq. 3 and 6 as
written); no load-balancing loss (soft banks; the routers' loss weights stay 0).

Ablations (one config switch each):

* ``emotion_bank=False`` -- w/o emotion expert bank: the heads read the fused z_t directly.
* alignment off -- ``--config.loss_weights.nt_xent=0`` (lambda = 0; the term is still logged).
* ``modality_routing='uniform'`` -- w/o soft routing: a fixed uniform mix 1/K of the K experts (same parameters,
  no gate; a missing modality then gives the plain mean of E_k(0)); ``'single'``: one expert per modality (K = 1).
* ``fusion='late'`` -- late fusion baseline (Tang et al. 2017 style): per modality encoder -> mean over steps ->
  its own heads; the modalities' predictions (and logits) are averaged. Missing modalities are zero-imputed raw
  inputs (no presence masking, no banks, no alignment), the usual zero-imputation baseline.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmoe import objectives
from jmoe.models.layers import DARouter, SequenceEncoder, in_dtype, masked_mean
from jmoe.moe.expert_parallel import axis_is_bound
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer
from jmoe.moe.routing import SoftmaxRouter, soft_routing

FUSIONS = ("moe", "late")
ROUTINGS = ("soft", "uniform", "single")
ALIGN_LEVELS = ("step", "sample")
AXIS = "batch"


def _as_steps(x: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """[B, T, D] (mask [B, T]) or [B, D] -> ([B, T, D], bool mask [B, T]); a vector is T = 1."""
  if x.ndim == 2:
    x = x[:, None, :]
    mask = None if mask is None else jnp.reshape(mask, (-1, 1))
  if x.ndim != 3:
    raise ValueError(f"Hi-MoE expects [B, T, D] or [B, D] features, got shape {x.shape}")
  mask = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)
  return x, mask


def presence(batch: dict[str, Any], m: str, x: jax.Array, mask: jax.Array) -> jax.Array:
  """bool [B, T]: which real steps of modality m are present (x [B, T, D] raw features, mask [B, T])."""
  p = batch.get(f"present/{m}")
  if p is None:
    p = jnp.any(x != 0, axis=-1)
  else:
    p = jnp.asarray(p).astype(bool)
    p = jnp.broadcast_to(p[:, None], mask.shape) if p.ndim == 1 else jnp.reshape(p, mask.shape)
  return p & mask


class Heads(nn.Module):
  """One independent head per rating dimension: h [B, W] -> {head: [B, H] ratings | [B, H, 2] high/low logits}.

  ``heads``: ((name, kind, H, center), ...) with kind 'regression' or 'high_low'; center = the scale midpoint.
  """

  heads: tuple
  width: int

  @nn.compact
  def __call__(self, h: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for name, kind, dims, center in self.heads:
      cols = []
      for k in range(dims):
        if kind == "regression":
          g = nn.gelu(nn.Dense(self.width, name=f"{name}_{k}_hidden")(h))
          cols.append(nn.Dense(1, bias_init=nn.initializers.constant(center), name=f"{name}_{k}")(g)[:, 0])
        else:
          cols.append(nn.Dense(2, name=f"{name}_{k}")(h))
      out[name] = jnp.stack(cols, axis=1)  # [B, H] or [B, H, 2]
    return out


class HiMoE(nn.Module):
  """Hi-MoE (module docstring). ``__call__(batch, deterministic)`` -> ({head: [B, H] | [B, H, 2]}, aux).

  batch: ``<m>`` [B, T, D_m] or [B, D_m], optional ``<m>_mask`` [B, T], ``present/<m>`` [B] or [B, T], ``weight``
  [B] (0 = padding row; default all ones).
  aux['losses']: ``nt_xent`` (a scalar, the exact global-batch value). aux['stats']: ``load_<m>`` [K] (mean gate
  weight per expert over real steps), ``entropy_<m>``, ``load_emotion`` [L].
  aux['per_sample']: ``route_<m>`` [B, K] modality-bank gate weights averaged over the sample's real steps,
  ``present_<m>`` [B] fraction of real steps present, ``fusion`` [B, M] fusion attention per modality,
  ``route_emotion`` [B, L] emotion-router weights.
  """

  modalities: Sequence[str] = ("eeg", "peripheral")
  heads: tuple = (("vadl", "regression", 4, 5.0),)
  width: int = 32
  enc_layers: int = 1
  attn_heads: int = 4
  modality_experts: int = 4
  emotion_experts: int = 4
  key_dim: int = 16
  differential: bool = False
  dropout: float = 0.1
  temperature: float = 0.1
  align_level: str = "step"
  fusion: str = "moe"
  modality_routing: str = "soft"
  emotion_bank: bool = True
  dtype: str = "float32"  # compute dtype: "float32" | "bfloat16" (parameters, losses, metrics fp32)

  def _encode(self, batch, deterministic):
    zs, masks, pres = [], [], []
    for m in self.modalities:
      if m not in batch:
        raise ValueError(f"Hi-MoE: batch has no modality {m!r} (has {sorted(batch)})")
      x, mask = _as_steps(jnp.asarray(batch[m]), batch.get(f"{m}_mask"))
      enc = SequenceEncoder(self.width, self.enc_layers, self.attn_heads, self.dropout, name=f"enc_{m}")
      zs.append(enc(x, mask, deterministic))  # [B, T, W]
      masks.append(mask)
      pres.append(presence(batch, m, x, mask))
    return zs, masks, pres

  def _late(self, zs, masks, deterministic):
    outs = []
    for m, z, mask in zip(self.modalities, zs, masks):
      h = nn.Dropout(self.dropout)(masked_mean(z, mask), deterministic=deterministic)
      outs.append(Heads(self.heads, self.width, name=f"late_heads_{m}")(h))
    return {name: jnp.mean(jnp.stack([o[name] for o in outs]), axis=0) for name in outs[0]}

  def _alignment(self, zs, masks, pres, weight):
    """Mean NT-Xent over modality pairs (scalar); rows of padding / missing steps have weight 0."""
    pairs = list(itertools.combinations(range(len(zs)), 2))
    if not pairs:
      return jnp.zeros((), jnp.float32)
    axis = AXIS if axis_is_bound(AXIS) else None
    total = 0.0
    for i, j in pairs:
      if self.align_level == "step":
        w = weight[:, None] * (masks[i] & pres[i] & pres[j]).astype(jnp.float32)
        za, zb, w = zs[i].reshape(-1, self.width), zs[j].reshape(-1, self.width), w.reshape(-1)
      else:
        za, zb = masked_mean(zs[i], masks[i] & pres[i]), masked_mean(zs[j], masks[j] & pres[j])
        w = weight * (jnp.any(pres[i], axis=1) & jnp.any(pres[j], axis=1)).astype(jnp.float32)
      # Weight-0 rows (padding, missing) may be exactly zero vectors, where the L2 norm's gradient is NaN (and
      # 0 * NaN = NaN): give them a constant unit-free placeholder; they enter no statistic either way.
      keep = (w > 0)[:, None]
      za, zb = jnp.where(keep, za, 1.0), jnp.where(keep, zb, 1.0)
      total = total + objectives.nt_xent(za, zb, w, self.temperature, axis_name=axis)
    return total / len(pairs)

  def __call__(self, batch: dict[str, Any], deterministic: bool = True):
    return in_dtype(self, type(self).forward, batch, deterministic)

  @nn.compact
  def forward(self, batch: dict[str, Any], deterministic: bool = True):
    for key, value, allowed in (
      ("fusion", self.fusion, FUSIONS),
      ("modality_routing", self.modality_routing, ROUTINGS),
      ("align_level", self.align_level, ALIGN_LEVELS),
    ):
      if value not in allowed:
        raise ValueError(f"Hi-MoE {key} must be one of {allowed}, got {value!r}")
    zs, masks, pres = self._encode(batch, deterministic)
    bsz, steps = masks[0].shape
    weight = jnp.asarray(batch.get("weight", jnp.ones((bsz,), jnp.float32)), jnp.float32).reshape(bsz)
    present_frac = {
      f"present_{m}": jnp.sum(p, axis=1) / jnp.maximum(jnp.sum(mk, axis=1), 1)
      for m, p, mk in zip(self.modalities, pres, masks)
    }
    if self.fusion == "late":
      outputs = self._late(zs, masks, deterministic)
      return outputs, {"losses": {"nt_xent": jnp.zeros((), jnp.float32)}, "stats": {}, "per_sample": present_frac}

    step_mask = jnp.any(jnp.stack(masks), axis=0)  # [B, T] steps that exist in any modality
    per_sample, stats, banked = dict(present_frac), {}, []
    for m, z, mask, p in zip(self.modalities, zs, masks, pres):
      x = z * p[..., None].astype(z.dtype)  # eq. 2: a missing step is the zero vector
      k = 1 if self.modality_routing == "single" else self.modality_experts
      expert = MLPExpert(self.width, self.width)
      if self.modality_routing == "uniform":
        routing = soft_routing(jnp.zeros((bsz * steps, k), jnp.float32), mask.reshape(-1))
        y, routing, metrics = MoELayer(None, expert, k, name=f"bank_{m}")(x, deterministic, routing=routing)
      else:
        layer = MoELayer(SoftmaxRouter(k, name=f"gate_{m}"), expert, k, name=f"bank_{m}")
        y, routing, metrics = layer(x, deterministic, mask=mask)
      alpha = routing.dense_weights().reshape(bsz, steps, k)  # [B, T, K]
      per_sample[f"route_{m}"] = masked_mean(alpha, mask)
      stats[f"load_{m}"] = metrics["mean_weight"]
      stats[f"entropy_{m}"] = metrics["entropy"]
      banked.append(y)  # [B, T, W], zero on padding steps

    zm = jnp.stack(banked, axis=2)  # [B, T, M, W]
    scores = nn.Dense(1, name="fuse_score")(jnp.tanh(nn.Dense(self.width, name="fuse_proj")(zm)))[..., 0]
    att = jax.nn.softmax(scores, axis=-1)  # [B, T, M] eq. 4
    fused = jnp.sum(att[..., None] * zm, axis=2)  # [B, T, W]
    per_sample["fusion"] = masked_mean(att, step_mask)

    if self.emotion_bank:
      router = DARouter(self.emotion_experts, self.key_dim, self.differential, name="da_router")
      bank = MoELayer(router, MLPExpert(self.width, self.width), self.emotion_experts, name="emotion_bank")
      e, routing, metrics = bank(fused, deterministic, mask=step_mask)  # eq. 5-6
      beta = routing.dense_weights().reshape(bsz, steps, self.emotion_experts)
      per_sample["route_emotion"] = masked_mean(beta, step_mask)
      stats["load_emotion"] = metrics["mean_weight"]
    else:
      e = fused
    h = nn.Dropout(self.dropout)(masked_mean(e, step_mask), deterministic=deterministic)
    outputs = Heads(self.heads, self.width, name="heads")(h)
    losses = {"nt_xent": self._alignment(zs, masks, pres, weight)}
    return outputs, {"losses": losses, "stats": stats, "per_sample": per_sample}


def validate_config(cfg) -> None:
  """Hi-MoE's model config: one line naming the key, the value and what is allowed."""
  m = cfg.model
  pos_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
  checks = [
    ("fusion", m.fusion in FUSIONS, f"choose one of {FUSIONS}"),
    ("modality_routing", m.modality_routing in ROUTINGS, f"choose one of {ROUTINGS}"),
    ("align_level", m.align_level in ALIGN_LEVELS, f"choose one of {ALIGN_LEVELS}"),
    ("width", pos_int(m.width), "use an int >= 1"),
    ("enc_layers", isinstance(m.enc_layers, int) and m.enc_layers >= 0, "use an int >= 0"),
    ("attn_heads", pos_int(m.attn_heads) and m.width % m.attn_heads == 0, "use an int >= 1 that divides width"),
    ("modality_experts", pos_int(m.modality_experts), "use an int >= 1"),
    ("emotion_experts", pos_int(m.emotion_experts), "use an int >= 1"),
    ("key_dim", pos_int(m.key_dim), "use an int >= 1"),
    ("differential", isinstance(m.differential, bool), "use True or False"),
    ("emotion_bank", isinstance(m.emotion_bank, bool), "use True or False"),
    ("dropout", 0.0 <= m.dropout < 1.0, "use 0 <= dropout < 1"),
    ("temperature", m.temperature > 0, "use a temperature > 0"),
  ]
  for key, ok, allowed in checks:
    if not ok:
      raise ValueError(f"config.model.{key}={m[key]!r} is invalid: {allowed}")


def head_specs(ds, tasks) -> tuple:
  """((head, kind, H, scale midpoint), ...) for the tasks' heads (regression -> ratings, high_low -> logits)."""
  specs, seen = [], set()
  for t in tasks:
    if t.kind not in ("regression", "high_low"):
      raise ValueError(f"Hi-MoE predicts ratings and high/low logits; task {t.name!r} is {t.kind!r}")
    if t.head in seen:
      continue
    seen.add(t.head)
    spec = ds.label_specs[t.label]
    lo, hi = spec.range if spec.range else (0.0, 0.0)
    specs.append((t.head, t.kind, len(t.names or ("0",)), float(lo + hi) / 2.0))
  kinds = {}
  for head, kind, *_ in specs:
    if kinds.setdefault(head, kind) != kind:
      raise ValueError(f"Hi-MoE: head {head!r} is used by tasks of different kinds")
  return tuple(specs)


def build(cfg, ds, tasks) -> HiMoE:
  """The platform's model factory: Hi-MoE over ``config.data.modalities`` with one head per task head."""
  m = cfg.model
  return HiMoE(
    modalities=tuple(ds.modalities),
    heads=head_specs(ds, tasks),
    width=m.width,
    enc_layers=m.enc_layers,
    attn_heads=m.attn_heads,
    modality_experts=m.modality_experts,
    emotion_experts=m.emotion_experts,
    key_dim=m.key_dim,
    differential=m.differential,
    dropout=m.dropout,
    temperature=m.temperature,
    align_level=m.align_level,
    fusion=m.fusion,
    modality_routing=m.modality_routing,
    emotion_bank=m.emotion_bank,
    dtype=m.get("dtype", "float32"),
  )
