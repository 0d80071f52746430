"""HAEMSA: Hierarchical Adaptive Expert for Multimodal Sentiment Analysis (Liu, Qin, Zong 2025, arXiv 2503.22715).

Axis alphabet: B batch, T time steps, M modalities, W width, L hierarchy levels, E task-tower experts, K classes
of the knowledge-transfer distribution, H output heads (tasks).

Forward pass (``HAEMSA.__call__(batch, deterministic) -> ({head: [B, ...]}, aux)``, the platform's model contract):

* eq. 1-3, modality-specific experts: h_m = f_m(x_m), f_m = :class:`~jmoe.models.layers.ModalityEncoder`
  (Dense(W) + GELU, masked mean over time for [B, T, D_m] sequences, LayerNorm) -> [B, W] per modality m.
* eq. 4, the shared ("unified") expert on the concatenation: h_s = f_s([u_1; ...; u_M]) with u_m the raw input of
  modality m pooled over time (masked mean; a vector input as is), f_s = Dense(W) + GELU + LayerNorm. Raw sequences
  of different lengths cannot be concatenated along features, hence the pooling (choice).
* eq. 5, L hierarchy levels: for each level i and modality l, g_l^(i)([h_l; h_s]) is a gate between two expert
  groups run through the routing core's :func:`jmoe.moe.layer.mixture`: a specific expert MLP(h_l) and a shared
  expert MLP(h_s), with soft routing from Dense(2)([h_l; h_s]) (the gate reads the concatenation of eq. 5);
  h_l^(i) = LayerNorm(h_l^(i-1) + mixture). The shared stream's own level (l = s in eq. 5 reads [h_s; h_s]) is
  h_s^(i) = LayerNorm(h_s^(i-1) + MLP(h_s^(i-1))). Per-sample gate weights are returned in ``aux['per_sample']``.
* fusion: [h_1^(L); ...; h_M^(L); h_s^(L)] -> Dense(W) + GELU -> x_f [B, W].
* Fig. 2 (E), task-driven gates: one bank of E MLP experts and H softmax gates
  (``MoELayer(TaskGates(H, E), MLPExpert, E)``, one expert pass for every task) -> [H, B, W]; head h =
  Dense(out_h) of its gate's mixture (a scalar head for sentiment / regression, C logits for classes).
* eq. 11-13, knowledge transfer: the shared expert and every specific expert get a K-class classifier on their
  eq. 1-4 outputs (h_s, h_m). The shared expert's classifier is the model head ``kt_head`` (default ``unified``),
  trained by an ordinary platform task (MOSI: ``sentiment_class`` with 7 classes of the score; IEMOCAP: the 6
  emotions), so the teacher distribution is a supervised one. L_KL^m = KL(p_s || p_m) per sample with the
  teacher side **stop-gradient** (the transfer moves the specific experts, not the unified one; the unified
  expert learns from its task). For a regression task the distribution is therefore over sentiment classes (the
  7 MMSA bins of the score). ``aux['losses']['kl']`` [B] = sum_m over the active specific experts.
* eq. 14: L = sum_t lambda_t L_t + gamma sum_m L_KL^m is exactly the platform objective: lambda_t =
  ``hparams['task/<t>']`` (``config.tasks.<t>.weight``), gamma = ``hparams['loss/kl']`` (``config.loss_weights.kl``).
  They are **fixed** per run (the paper's eq. 6 learns w_t "by attention"; we do not); under evolution
  (:mod:`jmoe.train.population`) they may be hyperparameter genes, evolved by eq. 9-10, never by gradients.

Architecture genes (all optional batch entries, [B] float32 each, constant within one individual; a missing entry
means "on" / the maximum). They are masks over the maximal shape, so a population with different architectures
stays one compiled program:

* ``gene/expert/<m>``: specific expert m active iff > 0.5 (off: its stream, level gates and KL term are zeroed, so
  the model depends on x_m only through the shared expert);
* ``gene/shared_in/<m>``: modality m feeds the shared expert iff > 0.5 (off: u_m is zeroed before f_s);
* ``gene/levels``: number of active levels, level i (0-based) active iff gene > i + 0.5 (off levels are identity).

If every specific expert is off and no modality feeds the shared expert, the model has no input; such a sample is
computed with every specific expert on (a documented fallback, so that a mutation cannot make an individual
undefined); the population refuses an initial configuration that does that (``validate_genes``).

Ablations by config: ``model.levels=0`` (without hierarchy), ``model.shared=False`` (without cross-modal
integration: no shared expert, no KL, levels mix nothing), a single task (without MTL), and training without the
population (``population.enabled=False``: without evolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmoe.data import sources
from jmoe.models.layers import ModalityEncoder, TaskGates, in_dtype, masked_mean
from jmoe.moe.experts import MLPExpert
from jmoe.moe.layer import MoELayer, mixture
from jmoe.moe.routing import soft_routing


def gene_masks(batch, modalities: Sequence[str], levels: int, batch_size: int) -> dict[str, jax.Array]:
  """Binary masks [B] from the batch's genes: ``expert/<m>``, ``shared_in/<m>``, ``level/<i>`` (1.0 = on)."""

  def get(key, default):
    v = batch.get(f"gene/{key}")
    v = jnp.full((batch_size,), default, jnp.float32) if v is None else jnp.asarray(v, jnp.float32).reshape(-1)
    return v

  out = {}
  for m in modalities:
    out[f"expert/{m}"] = (get(f"expert/{m}", 1.0) > 0.5).astype(jnp.float32)
    out[f"shared_in/{m}"] = (get(f"shared_in/{m}", 1.0) > 0.5).astype(jnp.float32)
  n_levels = get("levels", float(levels))
  for i in range(levels):
    out[f"level/{i}"] = (n_levels > i + 0.5).astype(jnp.float32)
  return out


def kl_divergence(teacher_logits: jax.Array, student_logits: jax.Array) -> jax.Array:
  """KL(p_teacher || p_student) per sample (eq. 11-13): [B, K] logits -> [B]; the teacher is stop-gradient."""
  p_log = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
  q_log = jax.nn.log_softmax(student_logits, axis=-1)
  return jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1)


class HAEMSA(nn.Module):
  """HAEMSA model (see the module docstring).

  Attributes:
    modalities: the M input modalities (``batch[m]`` [B, T, D_m] with ``batch[m + '_mask']`` [B, T], or [B, D_m]).
    heads: (name, trailing output shape) per task head: () score, (C,) logits.
    width: W. levels: L (maximal number of hierarchy levels). shared: the shared expert exists.
    task_experts: E experts of the task tower. kt_head: the shared expert's K-class head (eq. 11-13 teacher).
    kt_classes: K. dropout: on the fused representation.
  """

  modalities: Sequence[str] = ("text", "audio", "vision")
  heads: Sequence[tuple[str, tuple[int, ...]]] = (("sentiment", ()),)
  width: int = 64
  levels: int = 2
  shared: bool = True
  task_experts: int = 4
  kt_head: str = "unified"
  kt_classes: int = 7
  dropout: float = 0.1
  dtype: str = "float32"  # compute dtype: "float32" | "bfloat16" (parameters, losses, metrics fp32)

  def __call__(self, batch: dict[str, Any], deterministic: bool = True):
    return in_dtype(self, type(self).forward, batch, deterministic)

  @nn.compact
  def forward(self, batch: dict[str, Any], deterministic: bool = True):
    mods = tuple(self.modalities)
    for m in mods:
      if m not in batch:
        raise ValueError(f"HAEMSA: batch has no modality {m!r} (has {sorted(batch)})")
    b = batch[mods[0]].shape[0]
    g = gene_masks(batch, mods, self.levels, b)
    on = jnp.stack([g[f"expert/{m}"] for m in mods], -1)  # [B, M]
    fed = jnp.stack([g[f"shared_in/{m}"] for m in mods], -1)  # [B, M]
    no_input = (jnp.max(on, -1) == 0) & ((jnp.max(fed, -1) == 0) | (not self.shared))
    on = jnp.where(no_input[:, None], 1.0, on)  # documented fallback: every specific expert on

    # eq. 1-3: modality-specific experts.
    h = {m: ModalityEncoder(self.width, name=f"f_{m}")(batch[m], batch.get(f"{m}_mask"), deterministic) for m in mods}
    h = {m: h[m] * on[:, i, None] for i, m in enumerate(mods)}
    per_sample, stats = {}, {}
    kl = jnp.zeros((b,), jnp.float32)
    outputs = {}
    if self.shared:
      # eq. 4: the shared expert on the concatenation of the (pooled) raw inputs of the modalities that feed it.
      pooled = []
      for i, m in enumerate(mods):
        x = batch[m].astype(jnp.float32)
        u = masked_mean(x, batch.get(f"{m}_mask")) if x.ndim == 3 else x
        pooled.append(u * fed[:, i, None])
      hs = nn.LayerNorm(name="f_s_norm")(nn.gelu(nn.Dense(self.width, name="f_s")(jnp.concatenate(pooled, -1))))
      # eq. 11-13: the unified expert's distribution (a model head, trained by a platform task) teaches each
      # active specific expert's distribution.
      teacher = nn.Dense(self.kt_classes, name="kt_shared")(hs)
      outputs[self.kt_head] = teacher
      for i, m in enumerate(mods):
        student = nn.Dense(self.kt_classes, name=f"kt_{m}")(h[m])
        kl_m = kl_divergence(teacher, student) * on[:, i]
        stats[f"kl_{m}"] = jnp.mean(kl_m)
        kl = kl + kl_m
    else:
      hs = None

    # eq. 5: hierarchical levels, each a gate (routing core mixture) between a specific and a shared expert group.
    for lvl in range(self.levels):
      active = g[f"level/{lvl}"][:, None]
      new_h = {}
      for i, m in enumerate(mods):
        spec = MLPExpert(self.width, self.width, name=f"g{lvl}_{m}_specific")(h[m])
        if self.shared:
          shar = MLPExpert(self.width, self.width, name=f"g{lvl}_{m}_shared")(hs)
          gate = soft_routing(nn.Dense(2, name=f"g{lvl}_{m}_gate")(jnp.concatenate([h[m], hs], -1)))
          fused, _ = mixture([spec, shar], gate)
          per_sample[f"gate_l{lvl}_{m}"] = gate.dense_weights()  # [B, 2]: (specific, shared)
        else:
          fused = spec
        upd = nn.LayerNorm(name=f"g{lvl}_{m}_norm")(h[m] + fused) * on[:, i, None]
        new_h[m] = active * upd + (1.0 - active) * h[m]
      if self.shared:
        upd = nn.LayerNorm(name=f"g{lvl}_s_norm")(hs + MLPExpert(self.width, self.width, name=f"g{lvl}_s")(hs))
        hs = active * upd + (1.0 - active) * hs
      h = new_h

    z = jnp.concatenate([h[m] for m in mods] + ([hs] if self.shared else []), -1)
    z = nn.Dropout(self.dropout)(z, deterministic=deterministic)
    xf = nn.gelu(nn.Dense(self.width, name="fuse")(z))
    # Fig. 2 (E): task-driven gates over one expert bank (one expert pass for every head).
    heads = tuple(self.heads)
    tower = MoELayer(TaskGates(len(heads), self.task_experts), MLPExpert(self.width, self.width), self.task_experts)
    y, routing, _ = tower(xf, deterministic=deterministic)  # y [H, B, W]
    for j, (name, shape) in enumerate(heads):
      hj = nn.gelu(y[j])
      if shape == ():
        outputs[name] = nn.Dense(1, name=f"head_{name}")(hj)[:, 0]
      else:
        outputs[name] = nn.Dense(int(shape[0]), name=f"head_{name}")(hj)
      per_sample[f"task_gate_{name}"] = routing.dense_weights()[j]  # [B, E]
    return outputs, {"losses": {"kl": kl}, "stats": stats, "per_sample": per_sample}


def validate_genes(genes: dict[str, Any], modalities: Sequence[str], shared: bool = True) -> None:
  """One-line ValueError when gene values (scalars or [P] arrays) switch off every modality of an individual."""
  import numpy as np

  def val(key):
    return np.asarray(genes.get(f"gene/{key}", 1.0), np.float64)

  on = np.stack(np.broadcast_arrays(*[val(f"expert/{m}") > 0.5 for m in modalities]), -1).any(-1)
  fed = np.stack(np.broadcast_arrays(*[val(f"shared_in/{m}") > 0.5 for m in modalities]), -1).any(-1)
  dead = ~(on | (fed & shared))
  if np.any(dead):
    raise ValueError(
      f"genes switch off every modality (no specific expert > 0.5 and {'no modality feeds the shared expert' if shared else 'no shared expert'}) "
      f"for {int(np.sum(dead))} individual(s): keep at least one gene/expert/<m> or gene/shared_in/<m> above 0.5"
    )


def validate_config(cfg) -> None:
  m = cfg.model
  checks = [
    ("width", isinstance(m.width, int) and m.width >= 1, "use an int >= 1"),
    ("levels", isinstance(m.levels, int) and m.levels >= 0, "use an int >= 0 (0 = without hierarchy)"),
    ("task_experts", isinstance(m.task_experts, int) and m.task_experts >= 1, "use an int >= 1"),
    ("kt_classes", isinstance(m.kt_classes, int) and m.kt_classes >= 2, "use an int >= 2"),
    ("dropout", 0.0 <= m.dropout < 1.0, "use 0 <= dropout < 1"),
  ]
  for key, ok, allowed in checks:
    if not ok:
      raise ValueError(f"config.model.{key}={m[key]!r} is invalid: {allowed}")
  kt_tasks = [t for t, e in cfg.tasks.items() if (e.get("head") or t) == m.kt_head]
  if m.shared and cfg.get("loss_weights", {}).get("kl", 0.0) > 0 and not kt_tasks:
    raise ValueError(
      f"config.model.kt_head={m.kt_head!r}: no task trains the shared expert's distribution (the KL teacher); "
      "add a task with that head or set config.loss_weights.kl=0"
    )
  if not m.shared and kt_tasks:
    raise ValueError(f"config.model.shared=False has no {m.kt_head!r} head: remove task(s) {kt_tasks}")
  mods = sources.modalities(cfg.data)
  if mods:  # '' = every modality of the dataset: checked once the data are loaded (the population's run)
    fixed = {k: v for k, v in cfg.get("population", {}).get("genes", {}).items() if k.startswith("gene/")}
    validate_genes({k: max(v.get("init", (1.0, 1.0))) for k, v in fixed.items()}, mods, m.shared)


def build(cfg, ds, tasks) -> HAEMSA:
  """The platform's model factory: one output head per task head (the kt head is the shared expert's)."""
  m = cfg.model
  heads: dict[str, tuple[int, ...]] = {}
  kt = None
  for t in tasks:
    if t.head == m.kt_head:
      if t.num_outputs != (m.kt_classes,):
        raise ValueError(
          f"task {t.name!r} reads the KL head {m.kt_head!r} with outputs {t.num_outputs}, "
          f"but config.model.kt_classes={m.kt_classes}"
        )
      kt = t
      continue
    if t.kind == "high_low" or (t.kind == "regression" and t.num_outputs != ()):
      raise ValueError(f"HAEMSA heads are scores or class logits; task {t.name!r} ({t.kind}) is not supported")
    heads.setdefault(t.head, t.num_outputs)
  del kt
  if not heads:
    raise ValueError("HAEMSA needs at least one task besides the KL head")
  return HAEMSA(
    modalities=tuple(ds.modalities) if ds is not None else sources.modalities(cfg.data),
    heads=tuple(heads.items()),
    width=m.width,
    levels=m.levels,
    shared=m.shared,
    task_experts=m.task_experts,
    kt_head=m.kt_head,
    kt_classes=m.kt_classes,
    dropout=m.dropout,
    dtype=m.get("dtype", "float32"),
  )
