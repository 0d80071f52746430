"""jmoe: JAX/Flax mixture-of-experts for multimodal emotion and sentiment recognition.

Axis alphabet used in every docstring of the package:

  B  batch (samples)              N  tokens routed by one MoE layer (B, or B*T flattened)
  T  time steps of a sequence     M  modalities
  D  model / input width          H  expert hidden width      O  expert output width
  E  experts                      K  experts chosen per token (top-k)
  G  token groups                 S  tokens per group
  C  expert capacity (slots per expert and group)
"""

__version__ = "0.1.0"
