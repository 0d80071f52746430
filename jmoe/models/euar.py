"""EUAR: Enhanced experts with Uncertainty-Aware Routing (multimodal sentiment regression).

Per modality m: an encoder maps a sequence [B, T, D_m] (with mask [B, T]) or an utterance vector [B, D_m] to
x_m [B, W]; a top-k gate (eq. 5; k=3, weights = the raw softmax scores) picks Gaussian experts (eq. 1-3) through
the shared routing core (:class:`jmoe.moe.layer.MoELayer`, any dispatch strategy); h_m = sum_j G_j z_j (eq. 6).
The h_m are concatenated and a fully connected head predicts the score (eq. 11).

Choices the paper leaves open (why each, and the results: docs/models/euar.md):
* sigma = exp(logvar / 2) with logvar = Linear(x) (a second, non-shared linear layer, eq. 2).
* Training: z = mu + eps * sigma; evaluation: z = mu (deterministic).
* KL (eq. 4) and sigma^2 (eq. 10) are averaged over the feature axis W of each expert. The KL term of a sample
  is the gate-weighted KL of its selected experts, sum_j G_j KL_j (unselected experts are not computed by a sparse
  dispatch), averaged over the batch.
* U-loss (eq. 10): (1/E) sum_j sigma_j^2 G_j per sample, averaged over the batch; G_j = 0 off the top-k.
* Aux loss (eq. 7-9): (1/E) sum_j R_j P_j with R_j the top-1 (argmax) fraction and P_j the mean gate weight, i.e.
  the Switch loss of the routing core divided by E^2. P_j uses the full softmax (the routing core's router_probs).
* Encoders: sequences -> Dense(W) + GELU, masked mean over time; vectors -> Dense(W) + GELU. LayerNorm on x_m.
* The official code normalises gate weights across the batch at evaluation; we do not (per-sample outputs).
Ablations by config: ``expert='mlp'`` (deterministic two-layer MLP experts with the Gaussian expert's parameter
count: no KL, no U-loss), ``expert='linear'`` (the Gaussian expert without its uncertainty: z = mu = Linear(x),
deterministic, no sigma head, no KL, no U-loss -- the paper's "MLP model which uses simple linear layers", and the
ablation that changes nothing but the uncertainty), ``loss_weights.uloss=0``, ``loss_weights.kl=0``, ``fusion='late'`` (no
MoE: one encoder + head per modality, predictions averaged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmoe.models.layers import ModalityEncoder, in_dtype
from jmoe.moe.experts import MLPExpert, ragged_dense
from jmoe.moe.layer import MoELayer
from jmoe.moe.losses import gaussian_kl
from jmoe.moe.routing import TopKRouter


class GaussianExpert(nn.Module):
  """EUAR expert (eq. 1-4): x [n, W] -> {'z': [n, W], 'sigma2': [n], 'kl': [n]}.

  ``sigma2`` and ``kl`` are means over the W features. Uses the ``'noise'`` RNG stream in training.
  """

  width: int

  def _outputs(self, mu, logvar, deterministic, noise=None):
    sigma2 = jnp.exp(logvar)
    if deterministic:
      z = mu
    else:
      eps = jax.random.normal(self.make_rng("noise"), mu.shape, mu.dtype) if noise is None else noise
      z = mu + eps * jnp.exp(0.5 * logvar)
    return {"z": z, "sigma2": jnp.mean(sigma2, axis=-1), "kl": jnp.mean(gaussian_kl(mu, logvar), axis=-1)}

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = True):
    mu = nn.Dense(self.width, name="mu")(x)
    logvar = nn.Dense(
      self.width, name="logvar", kernel_init=nn.initializers.zeros, bias_init=nn.initializers.constant(-2.0)
    )(x)
    return self._outputs(mu, logvar, deterministic)

  def ragged_apply(self, params, x, group_sizes, rng=None):
    """The same function on x [S, W] sorted by expert (dropless dispatch)."""
    mu = ragged_dense(x, params["mu"]["kernel"], params["mu"]["bias"], group_sizes)
    logvar = ragged_dense(x, params["logvar"]["kernel"], params["logvar"]["bias"], group_sizes)
    sigma2 = jnp.exp(logvar)
    z = mu if rng is None else mu + jax.random.normal(rng, mu.shape, mu.dtype) * jnp.exp(0.5 * logvar)
    return {"z": z, "sigma2": jnp.mean(sigma2, axis=-1), "kl": jnp.mean(gaussian_kl(mu, logvar), axis=-1)}


class DeterministicExpert(nn.Module):
  """Ablation expert: an MLP with the Gaussian expert's output structure (sigma2 = kl = 0)."""

  width: int

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    z = MLPExpert(self.width, self.width, name="mlp")(x)
    zeros = jnp.zeros(x.shape[:1], x.dtype)
    return {"z": z, "sigma2": zeros, "kl": zeros}

  def ragged_apply(self, params, x, group_sizes, rng=None):
    z = MLPExpert(self.width, self.width).ragged_apply(params["mlp"], x, group_sizes)
    zeros = jnp.zeros(x.shape[:1], x.dtype)
    return {"z": z, "sigma2": zeros, "kl": zeros}


class LinearExpert(nn.Module):
  """Ablation expert: the Gaussian expert's mu branch alone, z = Linear(x), deterministic (sigma2 = kl = 0).

  Its parameters are named like the Gaussian expert's ``mu`` so that the two differ by the uncertainty only.
  """

  width: int

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    z = nn.Dense(self.width, name="mu")(x)
    zeros = jnp.zeros(x.shape[:1], x.dtype)
    return {"z": z, "sigma2": zeros, "kl": zeros}

  def ragged_apply(self, params, x, group_sizes, rng=None):
    z = ragged_dense(x, params["mu"]["kernel"], params["mu"]["bias"], group_sizes)
    zeros = jnp.zeros(x.shape[:1], x.dtype)
    return {"z": z, "sigma2": zeros, "kl": zeros}


EXPERTS = {"gaussian": GaussianExpert, "mlp": DeterministicExpert, "linear": LinearExpert}


class EUAR(nn.Module):
  """EUAR model. ``__call__(batch, deterministic)`` -> ({head: pred [B]}, aux) (the platform's model contract).

  batch: dict with ``batch[m]`` features ([B, T, D_m] or [B, D_m]) and optional ``batch[m + '_mask']`` [B, T]
  for every m in ``modalities``.
  aux['losses']: ``kl`` and ``uloss`` (eq. 4, 10; per-sample [B], summed over modalities) and ``auxiliary_loss``
  (eq. 7-9, a batch statistic: the routers' weighted Switch losses summed over modalities); eq. 12's alpha, beta,
  lambda are the train state's ``hparams['loss/kl' | 'loss/auxiliary_loss' | 'loss/uloss']``.
  aux['stats']: ``load_<m>`` (fraction of routed token-slots per expert), ``entropy_<m>``, ``dropped_<m>``.
  aux['per_sample']: ``gate_<m>`` [B, E] gate weights (zero off the top-k).
  """

  modalities: Sequence[str] = ("text", "audio", "vision")
  width: int = 72
  num_experts: int = 4
  k: int = 3
  expert: str = "gaussian"  # 'gaussian' | 'mlp' | 'linear'
  fusion: str = "moe"  # 'moe' | 'late'
  dispatch: str = "dense"
  capacity_factor: float | None = None
  dropout: float = 0.1
  head: str = "sentiment"
  dtype: str = "float32"  # compute dtype: "float32" | "bfloat16" (parameters, losses, metrics fp32)

  def __call__(self, batch: dict[str, Any], deterministic: bool = True):
    return in_dtype(self, type(self).forward, batch, deterministic)

  @nn.compact
  def forward(self, batch: dict[str, Any], deterministic: bool = True):
    if self.expert not in EXPERTS:
      raise ValueError(f"EUAR expert must be one of {sorted(EXPERTS)}, got {self.expert!r}")
    if self.fusion not in ("moe", "late"):
      raise ValueError(f"EUAR fusion must be 'moe' or 'late', got {self.fusion!r}")
    feats, per_sample_kl, per_sample_u, aux_loss, stats, gates = [], 0.0, 0.0, 0.0, {}, {}
    for m in self.modalities:
      if m not in batch:
        raise ValueError(f"EUAR: batch has no modality {m!r} (has {sorted(batch)})")
      x = ModalityEncoder(self.width, self.dropout, name=f"enc_{m}")(batch[m], batch.get(f"{m}_mask"), deterministic)
      if self.fusion == "late":
        feats.append(nn.Dense(1, name=f"late_head_{m}")(nn.gelu(nn.Dense(self.width, name=f"late_{m}")(x)))[:, 0])
        continue
      template = EXPERTS[self.expert](self.width)
      # Eq. 7-9 is the Switch loss / E^2: the router owns that weight and returns it as auxiliary_loss.
      router = TopKRouter(
        self.num_experts, k=self.k, renormalize=False, switch_weight=1.0 / self.num_experts**2, name=f"router_{m}"
      )
      moe = MoELayer(
        router,
        template,
        self.num_experts,
        strategy=self.dispatch,
        capacity_factor=self.capacity_factor,
        name=f"moe_{m}",
      )
      out, routing, metrics = moe(x, deterministic=deterministic)
      gates[f"gate_{m}"] = routing.dense_weights()  # [B, E] per-sample gate weights (zero off the top-k)
      gates[f"sigma2_{m}"] = out["sigma2"]  # [B] gate-weighted sigma^2 of the selected experts, sum_j G_j sigma_j^2
      feats.append(out["z"])
      per_sample_kl = per_sample_kl + out["kl"]
      per_sample_u = per_sample_u + out["sigma2"] / self.num_experts
      aux_loss = aux_loss + metrics["auxiliary_loss"]
      stats.update(
        {
          f"load_{m}": metrics["slot_load"],  # fraction of routed token-slots per expert
          f"entropy_{m}": metrics["entropy"],
          f"dropped_{m}": metrics["dropped_fraction"],
        }
      )
    if self.fusion == "late":
      pred = jnp.mean(jnp.stack(feats, axis=-1), axis=-1)
      zeros = jnp.zeros(pred.shape, pred.dtype)
      losses = {"kl": zeros, "auxiliary_loss": jnp.zeros(()), "uloss": zeros}
      return {self.head: pred}, {"losses": losses, "stats": stats, "per_sample": {}}
    h = jnp.concatenate(feats, axis=-1)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.gelu(nn.Dense(self.width, name="fuse")(h))
    pred = nn.Dense(1, name="head")(h)[:, 0]
    batch_size = pred.shape[0]
    as_b = lambda v: jnp.broadcast_to(jnp.asarray(v, pred.dtype), (batch_size,))
    losses = {"kl": as_b(per_sample_kl), "auxiliary_loss": jnp.asarray(aux_loss), "uloss": as_b(per_sample_u)}
    return {self.head: pred}, {"losses": losses, "stats": stats, "per_sample": gates}


def config_choices() -> dict[str, tuple]:
  """The allowed values of EUAR's choice keys (validate_config checks them; ``--help`` lists them)."""
  from jmoe.moe.layer import STRATEGIES

  return {"model.expert": tuple(sorted(EXPERTS)), "model.fusion": ("moe", "late"), "model.dispatch": tuple(STRATEGIES)}


def validate_config(cfg) -> None:
  """EUAR's model config: one line naming the key, the value and what is allowed."""
  from jmoe.moe.layer import STRATEGIES

  m = cfg.model
  checks = [
    ("expert", m.expert in EXPERTS, f"choose one of {sorted(EXPERTS)}"),
    ("fusion", m.fusion in ("moe", "late"), "choose 'moe' or 'late'"),
    ("dispatch", m.dispatch in STRATEGIES, f"choose one of {STRATEGIES}"),
    ("num_experts", isinstance(m.num_experts, int) and m.num_experts >= 1, "use an int >= 1"),
    ("k", isinstance(m.k, int) and 1 <= m.k <= max(1, m.num_experts), f"use 1 <= k <= num_experts={m.num_experts}"),
    ("width", isinstance(m.width, int) and m.width >= 1, "use an int >= 1"),
    ("dropout", 0.0 <= m.dropout < 1.0, "use 0 <= dropout < 1"),
    ("capacity_factor", m.capacity_factor >= 0, "use a factor > 0 (or 0 for no capacity limit)"),
  ]
  for key, ok, allowed in checks:
    if not ok:
      raise ValueError(f"config.model.{key}={m[key]!r} is invalid: {allowed}")


def build(cfg, ds, tasks) -> EUAR:
  """The platform's model factory: EUAR over ``config.data.modalities`` predicting the first task's head."""
  scalar = [t for t in tasks if t.kind in ("sentiment", "regression") and t.num_outputs == ()]
  if len(scalar) != len(tasks):
    raise ValueError(f"EUAR predicts one score per sample; tasks {[t.name for t in tasks]} need other heads")
  m = cfg.model
  return EUAR(
    modalities=tuple(ds.modalities),
    width=m.width,
    num_experts=m.num_experts,
    k=m.k,
    expert=m.expert,
    fusion=m.fusion,
    dispatch=m.dispatch,
    capacity_factor=m.capacity_factor or None,
    dropout=m.dropout,
    head=tasks[0].head,
    dtype=m.get("dtype", "float32"),
  )
