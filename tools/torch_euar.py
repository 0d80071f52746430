"""Eager PyTorch reference of jmoe's EUAR model and training step (for ``tools/bench_euar_train.py``).

The computation of :class:`jmoe.models.euar.EUAR` (``gaussian`` experts, ``moe`` fusion) and of its one-device
train step (EUAR eq. 12 with padding weights, ``clip_grad_norm_`` then ``torch.optim.AdamW``), written the way a
typical PyTorch codebase would: ``nn.Module``s in eager mode, dispatch ``'loop'`` (per expert ``torch.where``,
``index_add_``) or ``'dense'`` (every expert on every token, a [B, E] combine matrix zero off the top-k).
:func:`load_jax_params` copies a jmoe parameter tree in (Linear weight = kernel.T) and :func:`to_jax_tree` maps
back: the tests check that both compute the same loss, gradients and optimizer step. torch is imported on first
use only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tools import benchlib

DISPATCHES = ("loop", "dense")


import_torch = functools.partial(benchlib.import_torch, required=True)


@functools.cache
def _classes():
  """The EUAR module class, defined on first use so that importing this file does not import torch."""
  torch = import_torch()
  nn = torch.nn
  F = torch.nn.functional

  class GaussianExpert(nn.Module):
    """x [n, W] -> (z [n, W], sigma2 [n], kl [n])."""

    def __init__(self, width: int):
      super().__init__()
      self.mu = nn.Linear(width, width)
      self.logvar = nn.Linear(width, width)
      nn.init.zeros_(self.logvar.weight)
      nn.init.constant_(self.logvar.bias, -2.0)

    def forward(self, x):
      mu = self.mu(x)
      logvar = self.logvar(x)
      var = torch.exp(logvar)
      z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
      kl = -0.5 * (1.0 + logvar - mu.pow(2) - var)
      return z, var.mean(-1), kl.mean(-1)

  class ModalityEncoder(nn.Module):
    """[B, T, D] (+ mask [B, T]) or [B, D] -> [B, W]."""

    def __init__(self, in_dim: int, width: int, dropout: float):
      super().__init__()
      self.proj = nn.Linear(in_dim, width)
      self.dropout = nn.Dropout(dropout)
      self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x, mask=None):
      h = F.gelu(self.proj(x), approximate="tanh")
      if h.dim() == 3:
        m = torch.ones(h.shape[:2], dtype=h.dtype) if mask is None else mask.to(h.dtype)
        h = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
      return self.norm(self.dropout(h))

  class GaussianMoE(nn.Module):
    """Top-k softmax gate over E Gaussian experts. x [B, W] -> (z [B, W], sigma2 [B], kl [B], aux scalar)."""

    def __init__(self, width: int, num_experts: int, k: int, dispatch: str = "loop"):
      super().__init__()
      if dispatch not in DISPATCHES:
        raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
      self.num_experts, self.k, self.dispatch = num_experts, k, dispatch
      self.gate = nn.Linear(width, num_experts)
      self.experts = nn.ModuleList([GaussianExpert(width) for _ in range(num_experts)])

    def forward(self, x):
      probs = torch.softmax(self.gate(x), dim=-1)  # [B, E]
      weights, index = torch.topk(probs, self.k, dim=-1)  # [B, K], raw softmax scores
      n, w = x.shape
      if self.dispatch == "loop":
        z, sigma2, kl = x.new_zeros(n, w), x.new_zeros(n), x.new_zeros(n)
        for j, expert in enumerate(self.experts):
          tok, slot = torch.where(index == j)
          if tok.numel() == 0:
            continue
          g = weights[tok, slot]
          zj, s2j, klj = expert(x[tok])
          z.index_add_(0, tok, zj * g.unsqueeze(-1))
          sigma2.index_add_(0, tok, s2j * g)
          kl.index_add_(0, tok, klj * g)
      else:
        combine = torch.zeros_like(probs).scatter(1, index, weights)  # [B, E], zero off the top-k
        z, sigma2, kl = 0.0, 0.0, 0.0
        for j, expert in enumerate(self.experts):
          zj, s2j, klj = expert(x)
          g = combine[:, j]
          z = z + zj * g.unsqueeze(-1)
          sigma2 = sigma2 + s2j * g
          kl = kl + klj * g
      top1 = F.one_hot(index[:, 0], self.num_experts).to(probs.dtype)
      aux = self.num_experts * torch.sum(top1.mean(0) * probs.mean(0))
      return z, sigma2, kl, aux

  class EUAR(nn.Module):
    """batch dict (``m``, optional ``m_mask``) -> (pred [B], {'kl': [B], 'uloss': [B], 'aux': scalar})."""

    def __init__(
      self,
      dims: Mapping[str, int],
      modalities: Sequence[str] = ("text", "audio", "vision"),
      width: int = 72,
      num_experts: int = 4,
      k: int = 3,
      dropout: float = 0.1,
      dispatch: str = "loop",
    ):
      super().__init__()
      self.modalities = tuple(modalities)
      self.num_experts = num_experts
      self.enc = nn.ModuleDict({m: ModalityEncoder(dims[m], width, dropout) for m in self.modalities})
      self.moe = nn.ModuleDict({m: GaussianMoE(width, num_experts, k, dispatch) for m in self.modalities})
      self.dropout = nn.Dropout(dropout)
      self.fuse = nn.Linear(len(self.modalities) * width, width)
      self.head = nn.Linear(width, 1)

    def forward(self, batch):
      feats, kl, u, aux = [], 0.0, 0.0, 0.0
      for m in self.modalities:
        x = self.enc[m](batch[m], batch.get(f"{m}_mask"))
        z, s2, klm, auxm = self.moe[m](x)
        feats.append(z)
        kl = kl + klm
        u = u + s2 / self.num_experts
        aux = aux + auxm / self.num_experts**2
      h = self.dropout(torch.cat(feats, dim=-1))
      h = F.gelu(self.fuse(h), approximate="tanh")
      pred = self.head(h)[:, 0]
      return pred, {"kl": kl, "uloss": u, "aux": aux}

  return EUAR


def make_model(
  dims: Mapping[str, int],
  modalities: Sequence[str] = ("text", "audio", "vision"),
  width: int = 72,
  num_experts: int = 4,
  k: int = 3,
  dropout: float = 0.1,
  dispatch: str = "loop",
  seed: int = 0,
):
  """The torch EUAR (train mode). ``dims[m]`` is the feature size of modality m."""
  torch = import_torch()
  torch.manual_seed(seed)
  return _classes()(dims, modalities, width, num_experts, k, dropout, dispatch)


def loss_terms(model, batch, loss_cfg: Mapping[str, Any]):
  """EUAR eq. 12 with padding weights, as ``jmoe.train.steps._loss_terms`` on one device -> (loss, terms)."""
  pred, aux = model(batch)
  w = batch["weight"]
  total = w.sum()
  terms = {
    "task": (w * (pred - batch["label/sentiment"]).square()).sum() / total,
    "kl": (w * aux["kl"]).sum() / total,
    "uloss": (w * aux["uloss"]).sum() / total,
    "aux": aux["aux"],
  }
  loss = (
    terms["task"]
    + loss_cfg["alpha"] * terms["kl"] * float(loss_cfg["use_kl"])
    + loss_cfg["beta"] * terms["aux"]
    + loss_cfg["lam"] * terms["uloss"] * float(loss_cfg["use_uloss"])
  )
  return loss, terms


def make_optimizer(model, lr: float, weight_decay: float):
  """AdamW as in ``jmoe.train.steps.make_optimizer`` (betas 0.9/0.999, eps 1e-8, decoupled decay on all params)."""
  torch = import_torch()
  return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)


def train_step(model, opt, batch, loss_cfg: Mapping[str, Any], grad_clip: float):
  """One optimisation step: zero_grad, loss, backward, clip_grad_norm_, AdamW step. Returns the loss tensor."""
  torch = import_torch()
  opt.zero_grad(set_to_none=True)
  loss, _ = loss_terms(model, batch, loss_cfg)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  opt.step()
  return loss.detach()


def to_torch_batch(batch: Mapping[str, np.ndarray], device_index: int | None = 0):
  """A jmoe batch (numpy, leading device axis [P, B/P, ...] when ``device_index`` is set) -> torch tensors."""
  torch = import_torch()
  out = {}
  for key, a in batch.items():
    a = np.asarray(a if device_index is None else a[device_index])
    out[key] = torch.from_numpy(np.ascontiguousarray(a))
  return out


def load_jax_params(model, params: Mapping[str, Any]) -> None:
  """Copy a jmoe EUAR parameter tree (``model.init(...)['params']``) into the torch model, in place.

  jmoe names: ``enc_<m>/{proj,norm}``, ``moe_<m>/experts/stack/{mu,logvar}/{kernel [E, W, W], bias [E, W]}``,
  ``fuse``, ``head``, and the router gate of modality m (the i-th) under whichever name the model version gives
  it: ``router_<m>/gate`` (named router), ``TopKRouter_<i>/gate`` (unnamed router created in the EUAR scope and
  passed to MoELayer as an attribute) or ``moe_<m>/router/gate``.
  """
  torch = import_torch()
  p = {k: v for k, v in params.items()}
  arr = lambda a: torch.as_tensor(np.array(a, dtype=np.float32))

  def dense(lin, tree):
    with torch.no_grad():
      lin.weight.copy_(arr(tree["kernel"]).T)
      lin.bias.copy_(arr(tree["bias"]))

  for i, m in enumerate(model.modalities):
    enc = p[f"enc_{m}"]
    dense(model.enc[m].proj, enc["proj"])
    with torch.no_grad():
      model.enc[m].norm.weight.copy_(arr(enc["norm"]["scale"]))
      model.enc[m].norm.bias.copy_(arr(enc["norm"]["bias"]))
    moe = p[f"moe_{m}"]
    for where in (p.get(f"router_{m}"), moe.get("router"), p.get(f"TopKRouter_{i}")):
      if where is not None:
        gate = where["gate"]
        break
    else:
      raise KeyError(f"no router parameters for modality {m!r} in {sorted(p)}")
    dense(model.moe[m].gate, gate)
    stack = moe["experts"]["stack"]
    for j, expert in enumerate(model.moe[m].experts):
      for name in ("mu", "logvar"):
        dense(
          getattr(expert, name),
          {"kernel": np.asarray(stack[name]["kernel"])[j], "bias": np.asarray(stack[name]["bias"])[j]},
        )
  dense(model.fuse, p["fuse"])
  dense(model.head, p["head"])


def to_jax_tree(model, like: Mapping[str, Any], grads: bool = False) -> dict[str, Any]:
  """The inverse of :func:`load_jax_params`: the torch parameters (or their ``.grad`` with ``grads=True``) as numpy
  arrays in the structure of the jmoe parameter tree ``like`` (used to compare gradients and optimizer steps)."""
  val = lambda t: (
    np.zeros(tuple(t.shape), np.float32)
    if grads and t.grad is None
    else (t.grad if grads else t).detach().cpu().numpy().astype(np.float32)
  )
  dense = lambda lin: {"kernel": val(lin.weight).T.copy(), "bias": val(lin.bias)}
  out: dict[str, Any] = {}
  for i, m in enumerate(model.modalities):
    out[f"enc_{m}"] = {
      "proj": dense(model.enc[m].proj),
      "norm": {"scale": val(model.enc[m].norm.weight), "bias": val(model.enc[m].norm.bias)},
    }
    experts = model.moe[m].experts
    stack = {
      name: {
        "kernel": np.stack([val(getattr(e, name).weight).T for e in experts]),
        "bias": np.stack([val(getattr(e, name).bias) for e in experts]),
      }
      for name in ("mu", "logvar")
    }
    out[f"moe_{m}"] = {"experts": {"stack": stack}}
    gate = {"gate": dense(model.moe[m].gate)}
    if f"router_{m}" in like:
      out[f"router_{m}"] = gate
    elif "router" in like.get(f"moe_{m}", {}):
      out[f"moe_{m}"]["router"] = gate
    else:
      out[f"TopKRouter_{i}"] = gate
  out["fuse"] = dense(model.fuse)
  out["head"] = dense(model.head)
  return out


def num_params(model) -> int:
  return int(sum(q.numel() for q in model.parameters()))
