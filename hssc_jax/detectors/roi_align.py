"""RoIAlign (He et al., 2017, "Mask R-CNN", Sec. 3) on an FPN pyramid, in JAX, fixed shapes.

What Faster R-CNN's box head (Ren et al., 2015) reads for each proposal: a 7x7 grid of bins over the
box, each bin the mean of `g x g` bilinear samples of the feature map of the box's FPN level
(Lin et al., 2017, Eq. 1). Semantics of torchvision's `ops.roi_align` CPU kernel:

```
start = box * scale - (0.5 if aligned else 0)                      (per axis)
size  = end - start, at least 1 when not aligned
bin   = size / n_bins;   g = sampling_ratio, or ceil(size / n_bins) when sampling_ratio <= 0
sample(p, i) = start + p bin + (i + 0.5) bin / g,      p < n_bins, i < g
value(y, x)  = 0 if y < -1 or y > H or x < -1 or x > W, else bilinear after clamping to
               [0, H - 1] x [0, W - 1] (torchvision's `bilinear_interpolate`)
out[py, px]  = sum over the g_h x g_w samples of the bin / max(g_h g_w, 1)
```
Bilinear weights and the validity test factor into a y part and an x part, so each bin is
`sum_a sum_b wy[a] wx[b] F[ya, xb]` over the 2 g_h rows and 2 g_w columns of corner pixels: one
gather of (2 g n_bins)^2 pixels per box and a small einsum.

Level of a box (`map_levels`), torchvision `LevelMapper` (Eq. 1 of FPN with k0 = 4, 224):
`k = clamp(floor(4 + log2(sqrt(area) / 224) + 1e-6), 2, 5)`; detectron2's
`assign_boxes_to_levels` puts its epsilon inside the log instead
(`floor(4 + log2(sqrt(area) / 224 + 1e-8))`, `mapping="detectron2"`).

torchvision's `MultiScaleRoIAlign` (Faster R-CNN default): output 7, sampling_ratio 2,
aligned False. detectron2's FPN box head (`ROIAlignV2`): aligned True, sampling_ratio 0
(adaptive). The adaptive grid depends on the box, so here it runs over a static `max_grid`
samples per bin side with the unused ones masked out: exact while ceil(size / n_bins) <=
max_grid, and a coarser (clamped) grid for longer boxes, a choice the paper leaves open (it
samples 4 points per bin).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors


def map_levels(boxes: jax.Array, k_min: int = 2, k_max: int = 5, canonical_scale: float = 224.0,
               canonical_level: int = 4, mapping: str = "torchvision") -> jax.Array:
  """FPN level k in [k_min, k_max] of each x1 y1 x2 y2 box (..., 4), int32 (see module doc)."""
  boxes = jnp.asarray(boxes, jnp.float32)
  area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
  s = jnp.sqrt(area)
  if mapping == "torchvision":
    k = jnp.floor(canonical_level + jnp.log2(s / canonical_scale) + jnp.float32(1e-6))
  elif mapping == "detectron2":
    k = jnp.floor(canonical_level + jnp.log2(s / canonical_scale + jnp.float32(1e-8)))
  else:
    raise errors.ConfigError(f"unknown level mapping {mapping!r}; known: torchvision, detectron2")
  return jnp.clip(k, k_min, k_max).astype(jnp.int32)


def _axis(start: jax.Array, end: jax.Array, length: jax.Array, n_bins: int, sampling_ratio: int,
          max_grid: int, aligned: bool) -> tuple[jax.Array, jax.Array]:
  """Corner indices and weights along one axis: (n_bins, 2 G) int32 and float32, G static."""
  size = end - start
  if not aligned:
    size = jnp.maximum(size, 1.0)
  bin_size = size / n_bins
  if sampling_ratio > 0:
    grid, n = jnp.float32(sampling_ratio), sampling_ratio
  else:
    grid, n = jnp.clip(jnp.ceil(size / n_bins), 0, max_grid), max_grid
  i = jnp.arange(n, dtype=jnp.float32)
  p = jnp.arange(n_bins, dtype=jnp.float32)[:, None]
  c = start + p * bin_size + (i + 0.5) * bin_size / grid  # (n_bins, n), torchvision's order
  used = (i < grid) & (c >= -1.0) & (c <= length)
  c = jnp.maximum(c, 0.0)
  low = jnp.floor(c).astype(jnp.int32)
  last = length.astype(jnp.int32) - 1
  at_end = low >= last
  low = jnp.where(at_end, last, low)
  high = jnp.where(at_end, last, low + 1)
  frac = jnp.where(at_end, 0.0, c - low.astype(jnp.float32))
  w = jnp.where(used, 1.0, 0.0) / jnp.maximum(grid, 1.0)
  idx = jnp.stack([low, high], -1).reshape(n_bins, 2 * n)
  wts = jnp.stack([(1.0 - frac) * w, frac * w], -1).reshape(n_bins, 2 * n)
  return idx, wts


def _one_box(flat: jax.Array, box: jax.Array, offset: jax.Array, height: jax.Array,
             width: jax.Array, scale: jax.Array, output_size: tuple[int, int], sampling_ratio: int,
             max_grid: int, aligned: bool) -> jax.Array:
  """RoIAlign of one box on one level stored at flat[offset : offset + H W] (row-major)."""
  shift = 0.5 if aligned else 0.0
  b = box * scale - shift
  iy, wy = _axis(b[1], b[3], height.astype(jnp.float32), output_size[0], sampling_ratio, max_grid,
                 aligned)
  ix, wx = _axis(b[0], b[2], width.astype(jnp.float32), output_size[1], sampling_ratio, max_grid,
                 aligned)
  pix = flat[offset + iy[:, :, None, None] * width + ix[None, None, :, :]]  # (ph, 2G, pw, 2G, C)
  return jnp.einsum("ia,jb,iajbc->ijc", wy, wx, pix, precision=jax.lax.Precision.HIGHEST)


def _pool(features: Sequence[jax.Array], boxes: jax.Array, levels: jax.Array,
          scales: Sequence[float], output_size: tuple[int, int], sampling_ratio: int,
          aligned: bool, max_grid: int) -> jax.Array:
  """RoIAlign of every box on its level (levels: (N, R) index into features)."""
  n, c = features[0].shape[0], features[0].shape[-1]
  sizes = np.array([f.shape[1:3] for f in features], np.int32)
  offsets = np.concatenate([[0], np.cumsum(sizes[:, 0] * sizes[:, 1])[:-1]]).astype(np.int32)
  flat = jnp.concatenate([f.reshape(n, -1, c).astype(jnp.float32) for f in features], axis=1)
  lv = jnp.asarray(levels, jnp.int32)
  per_box = functools.partial(_one_box, output_size=output_size, sampling_ratio=sampling_ratio,
                              max_grid=max_grid, aligned=aligned)
  over_boxes = jax.vmap(per_box, in_axes=(None, 0, 0, 0, 0, 0))
  return jax.vmap(over_boxes)(
      flat, boxes.astype(jnp.float32), jnp.asarray(offsets)[lv], jnp.asarray(sizes[:, 0])[lv],
      jnp.asarray(sizes[:, 1])[lv], jnp.asarray(np.asarray(scales, np.float32))[lv])


def _check(features: Sequence[jax.Array], boxes: jax.Array, sampling_ratio: int,
           max_grid: int) -> None:
  n, c = features[0].shape[0], features[0].shape[-1]
  for f in features:
    if f.ndim != 4 or f.shape[0] != n or f.shape[-1] != c:
      raise errors.InvalidInputError(
          f"features must be (N, H, W, C) with one N and C, got {[f.shape for f in features]}")
  if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[-1] != 4:
    raise errors.InvalidInputError(f"boxes must be ({n}, R, 4), got {boxes.shape}")
  if sampling_ratio <= 0 and max_grid < 1:
    raise errors.ConfigError("adaptive sampling (sampling_ratio <= 0) needs max_grid >= 1")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


@functools.partial(jax.jit, static_argnames=("spatial_scale", "output_size", "sampling_ratio",
                                             "aligned", "max_grid"))
def roi_align(features: jax.Array, boxes: jax.Array, spatial_scale: float = 1.0,
              output_size: int | tuple[int, int] = 7, sampling_ratio: int = 2,
              aligned: bool = False, max_grid: int = 4) -> jax.Array:
  """Single-level RoIAlign: features (N, H, W, C), boxes (N, R, 4) x1 y1 x2 y2 -> (N, R, ph, pw, C).

  Box coordinates are in the image frame; `spatial_scale` maps them to the feature map (1/stride).
  """
  _check([features], boxes, sampling_ratio, max_grid)
  return _pool([features], boxes, jnp.zeros(boxes.shape[:-1], jnp.int32), (spatial_scale,),
               _pair(output_size), sampling_ratio, aligned, max_grid)


@functools.partial(jax.jit, static_argnames=("strides", "output_size", "sampling_ratio", "aligned",
                                             "max_grid", "mapping", "first_level"))
def multiscale_roi_align(features: Sequence[jax.Array], boxes: jax.Array,
                         strides: tuple[int, ...] = (4, 8, 16, 32),
                         output_size: int | tuple[int, int] = 7, sampling_ratio: int = 2,
                         aligned: bool = False, max_grid: int = 4, mapping: str = "torchvision",
                         first_level: int = 2) -> jax.Array:
  """torchvision `MultiScaleRoIAlign`: each box pooled from the level `map_levels` gives it.

  Args:
    features: per level (N, H_l, W_l, C), finest first (P2..P5 for Faster R-CNN).
    boxes: (N, R, 4) x1 y1 x2 y2 in network-input pixels (padding rows give ignorable outputs).
    strides: stride of each level, a tuple (scale 1 / stride, as torchvision's power-of-two
      `_infer_scale`).
    output_size, sampling_ratio, aligned: RoIAlign settings (torchvision: 7, 2, False; detectron2:
      7, 0, True); `max_grid` bounds the adaptive grid when sampling_ratio <= 0.
    mapping, first_level: level mapping ("torchvision" or "detectron2"); features[0] is level
      `first_level`, so levels span [first_level, first_level + len(features) - 1].

  Returns:
    (N, R, ph, pw, C) float32.
  """
  if not features or len(features) != len(strides):
    raise errors.InvalidInputError(
        f"need one stride per feature level, got {len(features)} levels and strides {strides}")
  _check(features, boxes, sampling_ratio, max_grid)
  levels = map_levels(boxes, first_level, first_level + len(features) - 1,
                      mapping=mapping) - first_level
  return _pool(features, boxes, levels, tuple(1.0 / s for s in strides), _pair(output_size),
               sampling_ratio, aligned, max_grid)
