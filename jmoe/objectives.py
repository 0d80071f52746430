"""Differentiable, padding-aware training objectives (JAX).

Axis alphabet: B samples (rows of one device's batch shard), K label dimensions, C classes, D feature width,
P devices on the data-parallel axis ``axis_name``.

Two forms:

* **Per-sample** objectives return ``[B]``; the training loop multiplies them by its per-sample weight ``w [B]``
  (0 for padding rows) and label masks and normalises: :func:`mse`, :func:`l1`, :func:`softmax_xent`,
  :func:`kl_div`.
* **Batch statistics** (:func:`ccc_loss`, :func:`nt_xent`) take ``w [B]`` themselves and are written as
  *sufficient statistics -> ``jax.lax.psum`` over ``axis_name`` -> finalize* (NT-Xent also ``all_gather``-s the
  embeddings), so that on P devices, each holding a shard with some ``w = 0`` padding rows, the value equals the
  value on one device holding the whole unpadded batch (up to float32 summation order). Padding rows never
  enter any statistic.

Gradients under data parallelism. The batch statistics return the same (global) value on every device. Under
``jax.pmap`` (and ``shard_map(check_vma=False)``), ``jax.grad`` of that value on one device w.r.t. its own shard
is **P times** the corresponding rows of the single-device gradient (the transpose of ``psum`` / ``all_gather``
sums the P identical cotangents). This is exactly what the loop's rule "``lax.pmean`` of per-device parameter
gradients" needs: the mean over devices of the per-device gradients is the gradient of the global loss, the same
convention as the per-sample terms in :mod:`jmoe.train.steps`. ``tests/test_objectives.py`` checks both statements
on 8 fake devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ccc_loss", "kl_div", "l1", "mse", "nt_xent", "softmax_xent"]


# --------------------------------------------------------------------------- per-sample
def _per_sample_mean(err: jax.Array) -> jax.Array:
  """[B] -> [B]; [B, K, ...] -> [B] (mean over every non-batch axis)."""
  if err.ndim <= 1:
    return err
  return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-sample squared error: ``pred, target [B]`` -> ``(pred - target)^2 [B]``; ``[B, K]`` -> mean over K ``[B]``."""
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  _check_same_shape(pred, target, "mse")
  return _per_sample_mean(jnp.square(pred - target.astype(pred.dtype)))


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-sample absolute error: ``pred, target [B]`` -> ``|pred - target| [B]``; ``[B, K]`` -> mean over K ``[B]``."""
  pred, target = jnp.asarray(pred), jnp.asarray(target)
  _check_same_shape(pred, target, "l1")
  return _per_sample_mean(jnp.abs(pred - target.astype(pred.dtype)))


def softmax_xent(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample cross-entropy ``-log softmax(logits)[label]``: ``logits [B, C]``, integer ``labels [B]`` -> ``[B]``.

  Labels of padding rows may be anything in ``[0, C)`` (e.g. 0); the caller's weight zeroes them. A label outside
  ``[0, C)`` gives 0 loss (one-hot of nothing), silently, as ``optax.softmax_cross_entropy_with_integer_labels``
  would not: keep padding labels in range.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(f"softmax_xent: logits must be [B, C] and labels [B], got {logits.shape} and {labels.shape}")
  logp = jax.nn.log_softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logp.dtype)
  return -jnp.sum(onehot * logp, axis=-1)


def kl_div(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
  """Per-sample ``KL(p || q) = sum_C p (log p - log q)`` with ``p = softmax(p_logits)``, ``q = softmax(q_logits)``.

  Shapes: ``p_logits, q_logits [B, C]`` (finite) -> ``[B]``. ``p`` is the **teacher** (the target distribution,
  e.g. HAEMSA's shared expert in the shared -> specific transfer) and ``q`` the **student**. Gradients flow into
  both; wrap the teacher in ``jax.lax.stop_gradient`` for one-way distillation.
  """
  p_logits, q_logits = jnp.asarray(p_logits), jnp.asarray(q_logits)
  if p_logits.ndim != 2 or p_logits.shape != q_logits.shape:
    raise ValueError(f"kl_div: p_logits and q_logits must both be [B, C], got {p_logits.shape} and {q_logits.shape}")
  logp = jax.nn.log_softmax(p_logits, axis=-1)
  logq = jax.nn.log_softmax(q_logits, axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def _check_same_shape(a, b, name):
  if a.shape != b.shape or a.ndim == 0:
    raise ValueError(f"{name}: pred and target must have the same shape [B] or [B, K], got {a.shape} and {b.shape}")


# --------------------------------------------------------------------------- batch statistics
def _psum(x, axis_name):
  return x if axis_name is None else jax.lax.psum(x, axis_name)


def ccc_loss(
  pred: jax.Array, target: jax.Array, w: jax.Array, axis_name: str | None = None, eps: float = 1e-8
) -> jax.Array:
  """``1 - CCC``, averaged over K, from weighted population moments of the *global* batch -> scalar.

  Shapes: ``pred, target [B]`` (K = 1) or ``[B, K]``; ``w [B]`` (per-sample weight, 0 = padding) or ``[B, K]``
  (weight times a per-dimension label mask). With ``W_k = sum_b w_bk`` over all devices::

    m_p = sum w p / W          m_t = sum w t / W                     (pass 1: psum of [W, sum w p, sum w t])
    v_p = sum w (p - m_p)^2 / W,  v_t = sum w (t - m_t)^2 / W,  c = sum w (p - m_p)(t - m_t) / W   (pass 2: psum)
    CCC_k = 2 c / (v_p + v_t + (m_p - m_t)^2 + eps)        loss = mean_k (1 - CCC_k)

  Lin's CCC uses population (1/W) moments; with 0/1 weights these are the plain moments of the real rows. The
  moments are centred in a second pass on the global means (two ``psum`` s, both exact), which avoids the float32
  cancellation of raw moments on 1-9 rating scales. ``eps`` keeps a constant batch finite; ``W`` is clamped to
  ``eps`` so an all-padding batch gives loss 1 with zero gradient. See the module docstring for gradients under
  data parallelism.
  """
  pred, target, w = jnp.asarray(pred), jnp.asarray(target), jnp.asarray(w)
  _check_same_shape(pred, target, "ccc_loss")
  if pred.ndim == 1:
    pred, target = pred[:, None], target[:, None]
  if pred.ndim != 2:
    raise ValueError(f"ccc_loss: pred must be [B] or [B, K], got {pred.shape}")
  if w.ndim == 1 and w.shape[0] == pred.shape[0]:
    w = w[:, None]
  if w.shape not in ((pred.shape[0], 1), pred.shape):
    raise ValueError(f"ccc_loss: w must be [B] or [B, K] for pred {pred.shape}, got {w.shape}")
  dtype = pred.dtype
  w = jnp.broadcast_to(w.astype(dtype), pred.shape)
  target = target.astype(dtype)

  s0, s_p, s_t = _psum((jnp.sum(w, 0), jnp.sum(w * pred, 0), jnp.sum(w * target, 0)), axis_name)
  total = jnp.maximum(s0, eps)
  m_p, m_t = s_p / total, s_t / total
  dp, dt = pred - m_p, target - m_t
  s_pp, s_tt, s_pt = _psum((jnp.sum(w * dp * dp, 0), jnp.sum(w * dt * dt, 0), jnp.sum(w * dp * dt, 0)), axis_name)
  v_p, v_t, cov = s_pp / total, s_tt / total, s_pt / total
  ccc = 2.0 * cov / (v_p + v_t + jnp.square(m_p - m_t) + eps)
  return jnp.mean(1.0 - ccc)


def nt_xent(
  z_a: jax.Array,
  z_b: jax.Array,
  w: jax.Array,
  temperature: float,
  axis_name: str | None = None,
  intra_view: bool = True,
) -> jax.Array:
  """NT-Xent (SimCLR; Hi-MoE eq. 1 and 7) between two views of the same samples over the *global* batch -> scalar.

  Shapes: ``z_a, z_b [B, D]`` (e.g. two modality embeddings of the same B samples), ``w [B]`` (0 = padding),
  ``temperature`` a positive float (or a traced scalar). With ``axis_name``, the candidates are the
  ``jax.lax.all_gather(..., tiled=True)`` of every device's rows, N = global rows (padding included, masked out).

  Embeddings are L2-normalised: ``u = z / max(||z||, 1e-12)``. For an anchor ``i`` of view ``a`` with positive
  ``b_i`` (same sample, other view), ``s(x, y) = u_x . u_y / temperature``::

    l_a(i) = -s(a_i, b_i) + log( sum_{j real} exp s(a_i, b_j) + [intra_view] sum_{j real, j != i} exp s(a_i, a_j) )

  and ``l_b(i)`` the same with ``a`` and ``b`` swapped. "real" means ``w_j > 0``: padding rows are never negatives
  (nor positives). The loss is averaged over the 2 x real anchors, anchors weighted by ``w``::

    L = sum_i w_i (l_a(i) + l_b(i)) / (2 sum_i w_i)       (sums over the global batch)

  which with 0/1 weights is Hi-MoE eq. 7 (the 2B-row concatenated batch, self-similarity masked) when
  ``intra_view=True`` (the default, SimCLR), and the symmetric CLIP / InfoNCE cross-view loss when
  ``intra_view=False``. Cost: [B, N] similarities per device. See the module docstring for gradients.
  """
  z_a, z_b, w = jnp.asarray(z_a), jnp.asarray(z_b), jnp.asarray(w)
  if z_a.ndim != 2 or z_a.shape != z_b.shape or w.shape != z_a.shape[:1]:
    raise ValueError(f"nt_xent: z_a, z_b must be [B, D] and w [B], got {z_a.shape}, {z_b.shape}, {w.shape}")
  dtype = z_a.dtype
  w = w.astype(dtype)

  def unit(z):
    # sqrt(max(||z||^2, 1e-24)) rather than max(||z||, 1e-12): the same value, but a finite gradient for an
    # all-zero row (a missing modality), whose d||z|| would be NaN and poison even a weight-0 row's 0 * NaN.
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(z), axis=-1, keepdims=True), 1e-24))

  u_a, u_b = unit(z_a), unit(z_b.astype(dtype))
  if axis_name is None:
    g_a, g_b, g_w = u_a, u_b, w
    offset = 0
  else:
    g_a = jax.lax.all_gather(u_a, axis_name, tiled=True)
    g_b = jax.lax.all_gather(u_b, axis_name, tiled=True)
    g_w = jax.lax.all_gather(w, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * z_a.shape[0]
  n = g_w.shape[0]
  rows = offset + jnp.arange(z_a.shape[0])  # global index of each local anchor, [B]
  real = g_w > 0  # [N]
  self_mask = rows[:, None] == jnp.arange(n)[None, :]  # [B, N]
  neg_inf = jnp.asarray(-jnp.inf, dtype)

  pos = jnp.sum(u_a * u_b, axis=-1) / temperature  # [B] positive similarity, the same for both directions

  def anchor_loss(u_x, g_x, g_y):
    """Anchors u_x [B, D] of view x; candidates g_y [N, D] of the other view and g_x [N, D] of the same view."""
    cross = u_x @ g_y.T / temperature  # [B, N]
    terms = [jnp.where(real[None, :], cross, neg_inf)]
    if intra_view:
      same = u_x @ g_x.T / temperature
      terms.append(jnp.where(real[None, :] & ~self_mask, same, neg_inf))
    lse = jax.nn.logsumexp(jnp.concatenate(terms, axis=-1), axis=-1)
    # A padding anchor has its own positive masked out; its finite lse is multiplied by w = 0 below. If every row
    # is padding, lse is -inf: replace by 0 so that 0 * value stays 0 (and its gradient finite).
    return jnp.where(jnp.isfinite(lse), lse, 0.0) - pos

  per_anchor = anchor_loss(u_a, g_a, g_b) + anchor_loss(u_b, g_b, g_a)  # [B]
  num, den = _psum((jnp.sum(w * per_anchor), jnp.sum(w)), axis_name)
  return num / (2.0 * jnp.maximum(den, 1e-12))
