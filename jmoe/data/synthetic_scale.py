"""Synthetic two-modality data with planted *scale* structure: which classes live in frames, which in utterances.

Axis alphabet: **B** utterances, **T** frames (audio) or tokens (text), **D** feature width.

Built to check a scale-aware router (DR-MoE: local = frame/token embeddings, global = utterance embeddings) against a
known answer. Four classes, ``CLASSES = ('angry', 'happy', 'neutral', 'sad')``; by default angry and happy are
**local** classes and neutral and sad **global** ones (the DR-MoE abstract reports local routing for anger and global
routing for low-arousal emotions), set by ``scales``.

For each modality m in (audio, text), utterance b of speaker s, class c, with ``L_b`` valid steps:

* frames ``x[b, t] = e[b, t] + o[s]``, noise ``e ~ N(0, I)`` and a speaker offset ``o[s] ~ N(0, speaker_std^2 I)``
  shared by all of that speaker's utterances (folds must keep speakers apart);
* a **local** class adds a short burst: ``burst_len`` consecutive frames at a random start get
  ``+ burst_amp * u[c]`` (``u[c]`` a fixed random unit direction per class and modality) and every valid frame gets
  ``- burst_amp * burst_len / L_b * u[c]``, so the utterance mean is *exactly* what it would be without the burst
  (invisible to any function of the mean, visible to a max over time);
* a **global** class shifts every valid frame by ``g[c]`` (a fixed random vector of norm ``global_shift``): small per
  frame next to the unit noise, clear in the mean over ``L_b`` frames;
* padding (``t >= L_b``) is zero; the global view is the masked mean of the frames (as ``tools/extract_features``
  computes it), so ``m_global = mean_t x[b, t]``.

Dataset: one split ``pool``; modalities ``audio_local`` [B, T_a, D_a] + mask, ``audio_global`` [B, D_a],
``text_local`` [B, T_t, D_t] + mask, ``text_global`` [B, D_t] (``modality_meta``: ``view_of``, ``scale``,
``encoder: 'synthetic'``); label head ``emotion4``; groups ``speaker`` (int64), and the planted truth as groups:
``planted_scale`` (str [B], ``'local'`` / ``'global'``, the scale that carries the sample's class) and
``burst_start_<m>`` (int64 [B], first burst frame in modality m, -1 for global classes). ``planted_scales(ds)``
returns the class -> scale map. ``synthetic=True`` and ``source`` names the generator and every parameter.

The generator's random draws do not depend on ``burst_amp`` / ``global_shift``, so two calls that differ only in
those give the same noise, speakers, lengths and burst positions (the tests use this to show the mean is untouched).
"""

from __future__ import annotations

import numpy as np

from jmoe.data import format as fmt

CLASSES: tuple[str, ...] = ("angry", "happy", "neutral", "sad")
DEFAULT_SCALES: tuple[str, ...] = ("local", "local", "global", "global")
MODS = ("audio", "text")


def _modality(rng, labels, speakers, n_speakers, scales, d, t_range, burst_len, burst_amp, global_shift, speaker_std):
  """One modality: (local [B, T, D], mask [B, T], global [B, D], burst_start [B])."""
  b = len(labels)
  dirs = rng.standard_normal((len(scales), d))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)  # u[c] for local classes, g[c] / |g[c]| for global ones
  offsets = speaker_std * rng.standard_normal((n_speakers, d))
  lengths = rng.integers(t_range[0], t_range[1] + 1, b)
  t = int(t_range[1])
  noise = rng.standard_normal((b, t, d))
  start_u = rng.random(b)  # burst position as a fraction of the free room, drawn for every sample
  mask = np.arange(t)[None] < lengths[:, None]
  x = noise + offsets[speakers][:, None, :]
  starts = np.full(b, -1, np.int64)
  for i in range(b):
    c = labels[i]
    n = lengths[i]
    if scales[c] == "local":
      s = int(start_u[i] * (n - burst_len + 1))
      starts[i] = s
      x[i, s : s + burst_len] += burst_amp * dirs[c]
      x[i, :n] -= burst_amp * burst_len / n * dirs[c]
    else:
      x[i, :n] += global_shift * dirs[c]
  x *= mask[..., None]
  x = x.astype(np.float32)
  glob = (x.astype(np.float64).sum(1) / lengths[:, None]).astype(np.float32)
  return x, mask, glob, starts


def synthetic_scale(
  n_speakers: int = 10,
  per_speaker: int = 40,
  *,
  scales=DEFAULT_SCALES,
  d_audio: int = 16,
  d_text: int = 12,
  t_audio: tuple[int, int] = (20, 50),
  t_text: tuple[int, int] = (8, 20),
  burst_len: int = 3,
  burst_amp: float = 5.0,
  global_shift: float = 1.5,
  speaker_std: float = 0.3,
  seed: int = 0,
) -> fmt.Dataset:
  """The planted-scale dataset (module docstring); B = ``n_speakers * per_speaker``, classes balanced per speaker.

  Args:
    n_speakers, per_speaker: speakers and utterances per speaker (``per_speaker`` a multiple of 4 keeps every
      speaker balanced over the classes).
    scales: ``'local'`` or ``'global'`` for each of the 4 classes.
    d_audio, d_text: D of each modality. t_audio, t_text: (min, max) valid steps; T = max.
    burst_len, burst_amp: frames and amplitude of a local class's burst. global_shift: norm of a global class's
      per-frame shift. speaker_std: per-dimension std of the speaker offsets. seed: the only source of randomness.
  """
  scales = tuple(scales)
  if len(scales) != len(CLASSES) or set(scales) - {"local", "global"}:
    raise ValueError(f"scales must give 'local' or 'global' for each of {CLASSES}, got {scales}")
  if burst_len < 1 or min(t_audio[0], t_text[0]) < burst_len:
    raise ValueError(
      f"burst_len={burst_len} must be >= 1 and fit the shortest sequence (t_audio {t_audio}, t_text {t_text})"
    )
  rng = np.random.default_rng(seed)
  speakers = np.repeat(np.arange(n_speakers), per_speaker)
  labels = np.concatenate([rng.permutation(np.arange(per_speaker) % len(CLASSES)) for _ in range(n_speakers)])
  feats, masks, meta, groups = {}, {}, {}, {}
  for m, d, tr in (("audio", d_audio, t_audio), ("text", d_text, t_text)):
    sub = np.random.default_rng(rng.integers(2**63))
    x, mask, glob, starts = _modality(
      sub, labels, speakers, n_speakers, scales, d, tr, burst_len, burst_amp, global_shift, speaker_std
    )
    feats[f"{m}_local"], masks[f"{m}_local"], feats[f"{m}_global"] = x, mask, glob
    meta[f"{m}_local"] = {"view_of": m, "scale": "local", "encoder": "synthetic"}
    meta[f"{m}_global"] = {"view_of": m, "scale": "global", "encoder": "synthetic"}
    groups[f"burst_start_{m}"] = starts
  groups["speaker"] = speakers.astype(np.int64)
  groups["planted_scale"] = np.array([scales[c] for c in labels], str)
  mods = ("audio_local", "audio_global", "text_local", "text_global")
  split = fmt.Split(
    features={k: feats[k] for k in mods},
    masks=masks,
    labels={"emotion4": labels.astype(np.int32)},
    ids=np.array([f"spk{s:02d}_utt{i:03d}" for i, s in enumerate(speakers)], str),
    groups=groups,
  )
  params = dict(
    n_speakers=n_speakers,
    per_speaker=per_speaker,
    scales=scales,
    d_audio=d_audio,
    d_text=d_text,
    t_audio=tuple(t_audio),
    t_text=tuple(t_text),
    burst_len=burst_len,
    burst_amp=burst_amp,
    global_shift=global_shift,
    speaker_std=speaker_std,
    seed=seed,
  )
  ds = fmt.Dataset(
    name="synthetic_scale",
    splits={fmt.POOL: split},
    modalities=mods,
    dims={k: int(feats[k].shape[-1]) for k in mods},
    synthetic=True,
    source="jmoe.data.synthetic_scale.synthetic_scale("
    + ", ".join(f"{k}={v!r}" for k, v in params.items())
    + f"); planted scale per class: {dict(zip(CLASSES, scales))}",
    label_specs={"emotion4": fmt.LabelSpec("classification", classes=CLASSES)},
    modality_meta=meta,
  )
  return fmt.validate(ds, "synthetic_scale")


def planted_scales(ds: fmt.Dataset, head: str = "emotion4") -> dict[str, str]:
  """class name -> ``'local'`` / ``'global'`` from a dataset's ``planted_scale`` group (the known routing answer)."""
  classes = ds.label_specs[head].classes
  out: dict[str, str] = {}
  for sp in ds.splits.values():
    for y, s in zip(np.asarray(sp.labels[head]).tolist(), np.asarray(sp.groups["planted_scale"]).tolist()):
      if out.setdefault(classes[y], s) != s:
        raise ValueError(f"{ds.name}: class {classes[y]!r} has samples planted at both scales")
  return out
