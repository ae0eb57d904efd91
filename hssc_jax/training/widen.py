"""Function-preserving widening of a trained codec (Net2WiderNet, Chen et al., ICLR 2016).

A codec's latent width caps its fidelity however many bits it may spend: the base codec's P4 and
P5 transforms are single strided convolutions, so at its top quality it reconstructs the features
about as well as a PCA of their 2x2 patches onto its 96 and 128 latent channels would
(`scripts/transform_ceiling.py`). Widening a trained model keeps what it learned and adds channels
that start unused:

- every array is copied into the leading block of its wider counterpart;
- a kernel's new input channels get zero weights, so new channels change no existing output;
- its new output channels, biases, gains and GDN entries keep their fresh initialisation (GDN's
  initial off-diagonal couplings are zero, so the old channels' normalisation is unchanged);
- arrays whose last axis holds several latent-wide blocks (the hyper-synthesis' means and scales,
  the cross-scale condition's four heads) are widened block by block.

So the widened model computes the same features as the narrow one, and training teaches the new
channels what the narrow latent could not carry. The blocked arrays are found by name, and a
channel-wise context model (HSC, `context_slices`) slices its latent in ways this does not follow:
`check_preserved` measures the promise on real features, and training refuses a warm start that
breaks it.
"""

from typing import Any

import numpy as np

from hssc_jax import errors

# Parameter paths whose last axis is `blocks` latent-wide blocks side by side: (path part, blocks).
BLOCKED = (("h_s/Conv_", 2), ("condition/heads", 4))


def blocks_of(path: str) -> int:
  """How many latent-wide blocks the last axis of the array at `path` holds (1 for most)."""
  return next((n for part, n in BLOCKED if part in path), 1)


def widen_array(path: str, source: Any, init: Any) -> np.ndarray:
  """`init` (the wider array, freshly initialised) with `source` (the trained narrow one) copied
  into its leading block; a 4-D kernel's new input channels (axis 2) zeroed."""
  src, out = np.asarray(source, np.float32), np.array(init, np.float32)
  if src.ndim != out.ndim or any(s > t for s, t in zip(src.shape, out.shape)):
    raise errors.ConfigError(f"warm start: cannot widen {path} from {src.shape} to {out.shape}")
  n = blocks_of(path)
  if n > 1 and (src.shape[-1] % n or out.shape[-1] % n):
    raise errors.ConfigError(f"warm start: {path} {src.shape} -> {out.shape} is not {n} blocks")
  if out.ndim == 4:
    out[:, :, src.shape[2]:, :] = 0.0
  lead = tuple(slice(0, s) for s in src.shape[:-1])
  cs, ct = src.shape[-1] // n, out.shape[-1] // n
  for b in range(n):
    out[lead + (slice(b * ct, b * ct + cs),)] = src[..., b * cs:(b + 1) * cs]
  return out


def check_preserved(narrow: Any, narrow_params: Any, wide: Any, wide_params: Any, features: Any,
                    atol: float = 1e-3) -> None:
  """ConfigError unless codec `wide` with `wide_params` reconstructs (test-time forward, rounded
  latents) what `narrow` with `narrow_params` does on the normalised `features`, to `atol`."""
  out = [c.apply({"params": p}, features, False)["features_hat"]
         for c, p in ((narrow, narrow_params), (wide, wide_params))]
  worst = {s: float(np.max(np.abs(np.asarray(out[0][s]) - np.asarray(out[1][s])))) for s in out[0]}
  bad = {s: round(d, 6) for s, d in worst.items() if not d <= atol}
  if bad:
    raise errors.ConfigError(
        f"warm start: the widened codec does not reconstruct what its source does (largest "
        f"difference per scale {bad}); training/widen.py keeps the function only of codecs whose "
        "wide arrays it knows (not a channel-wise context model)")
