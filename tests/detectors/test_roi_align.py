"""RoIAlign and its FPN level mapping against a direct numpy transcription of the definition."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.detectors import roi_align

# Sample coordinates are float32 as in the C++ kernel, but XLA may contract `start + p * bin` into
# an FMA: one ulp of a coordinate near 80 (7.6e-6) times a neighbour difference of a few units.
TOL = dict(rtol=1e-5, atol=1e-4)
f32 = np.float32


def _bilinear(img, y, x):
  """torchvision `bilinear_interpolate` (ops/cpu/roi_align_kernel.cpp) on an (H, W, C) map."""
  h, w = img.shape[:2]
  if y < -1.0 or y > h or x < -1.0 or x > w:
    return np.zeros(img.shape[-1])
  y, x = max(y, f32(0)), max(x, f32(0))
  y_low, x_low = int(y), int(x)
  if y_low >= h - 1:
    y_high = y_low = h - 1
    y = f32(y_low)
  else:
    y_high = y_low + 1
  if x_low >= w - 1:
    x_high = x_low = w - 1
    x = f32(x_low)
  else:
    x_high = x_low + 1
  ly, lx = f32(y - y_low), f32(x - x_low)
  hy, hx = f32(1) - ly, f32(1) - lx
  v = img.astype(np.float64)
  return (hy * hx * v[y_low, x_low] + hy * lx * v[y_low, x_high] + ly * hx * v[y_high, x_low]
          + ly * lx * v[y_high, x_high])


def _reference(img, box, scale, out=(7, 7), ratio=2, aligned=False):
  """One box, loops over bins and samples, coordinates in float32 as the C++ kernel."""
  offset = f32(0.5) if aligned else f32(0)
  x1, y1, x2, y2 = (f32(f32(v) * f32(scale)) - offset for v in box)
  rw, rh = f32(x2 - x1), f32(y2 - y1)
  if not aligned:
    rw, rh = max(rw, f32(1)), max(rh, f32(1))
  bh, bw = f32(rh / f32(out[0])), f32(rw / f32(out[1]))
  gh = ratio if ratio > 0 else math.ceil(rh / f32(out[0]))
  gw = ratio if ratio > 0 else math.ceil(rw / f32(out[1]))
  res = np.zeros(tuple(out) + (img.shape[-1],))
  for ph in range(out[0]):
    for pw in range(out[1]):
      for iy in range(gh):
        y = f32(y1 + f32(ph) * bh) + f32(f32(iy + 0.5) * bh / f32(gh))
        for ix in range(gw):
          x = f32(x1 + f32(pw) * bw) + f32(f32(ix + 0.5) * bw / f32(gw))
          res[ph, pw] += _bilinear(img, f32(y), f32(x))
      res[ph, pw] /= max(gh * gw, 1)
  return res


def _boxes(rng, n, h, w, lo=2.0, hi=None):
  hi = hi or max(h, w)
  c = rng.uniform([-4, -4], [w + 4, h + 4], (n, 2))
  s = np.exp(rng.uniform(np.log(lo), np.log(hi), (n, 2)))
  return np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)


@pytest.mark.parametrize("aligned", [False, True])
def test_single_level_matches_definition(aligned):
  """Boxes inside, across and outside the borders, tiny boxes (size clamped to 1 when not aligned)."""
  rng = np.random.default_rng(0)
  feat = rng.standard_normal((2, 9, 13, 3)).astype(np.float32)
  boxes = _boxes(rng, 2 * 12, 36, 52, lo=0.5).reshape(2, 12, 4)
  boxes[0, 0] = [-30, -30, -10, -10]  # entirely outside: all samples beyond -1 -> zeros
  boxes[1, 0] = [10.0, 10.0, 10.0, 10.0]  # empty box
  got = np.asarray(roi_align.roi_align(jnp.asarray(feat), jnp.asarray(boxes), spatial_scale=0.25,
                                       aligned=aligned))
  assert got.shape == (2, 12, 7, 7, 3)
  for n in range(2):
    for r in range(12):
      np.testing.assert_allclose(got[n, r], _reference(feat[n], boxes[n, r], 0.25, aligned=aligned),
                                 **TOL, err_msg=f"image {n} box {r}")
  np.testing.assert_array_equal(got[0, 0], 0.0)


def test_adaptive_sampling_and_other_sizes():
  """sampling_ratio 0 (detectron2's ROIAlignV2): exact while ceil(size / bins) <= max_grid."""
  rng = np.random.default_rng(1)
  feat = rng.standard_normal((1, 12, 10, 2)).astype(np.float32)
  boxes = _boxes(rng, 10, 12, 10, lo=0.3, hi=14)[None]  # scale 1: sizes up to 14 -> grid <= 3
  got = np.asarray(roi_align.roi_align(jnp.asarray(feat), jnp.asarray(boxes), output_size=(5, 4),
                                       sampling_ratio=0, aligned=True, max_grid=4))
  assert got.shape == (1, 10, 5, 4, 2)
  for r in range(10):
    ref = _reference(feat[0], boxes[0, r], 1.0, (5, 4), ratio=0, aligned=True)
    np.testing.assert_allclose(got[0, r], ref, **TOL, err_msg=f"box {r}")


def test_level_mapping():
  """k = clamp(floor(4 + log2(sqrt(area) / 224) + 1e-6), 2, 5) (torchvision LevelMapper)."""
  # 223.9999 and 447.9998 sit within float32 rounding of a level edge: the 1e-6 lifts them (torch
  # float32 gives 4 and 5 with it, 3 and 4 without).
  sides = np.array([8, 111.9, 112, 150, 223.9, 223.9999, 224, 447, 447.9998, 448, 1000, 3000],
                   np.float32)
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
  expected = [2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5]
  np.testing.assert_array_equal(np.asarray(roi_align.map_levels(jnp.asarray(boxes))), expected)
  rect = np.array([[10, 20, 10 + 448, 20 + 112]], np.float32)  # sqrt(area) = 224
  assert int(roi_align.map_levels(jnp.asarray(rect))[0]) == 4
  d2 = np.asarray(roi_align.map_levels(jnp.asarray(boxes), mapping="detectron2"))
  np.testing.assert_array_equal(d2, [2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5])  # its 1e-8 is too small
  with pytest.raises(errors.ConfigError, match="unknown level mapping"):
    roi_align.map_levels(jnp.asarray(boxes), mapping="mmdet")


def test_multiscale_matches_per_level_definition():
  """P2..P5 of a 256x320 input; boxes of every level, each compared on the level it maps to."""
  rng = np.random.default_rng(2)
  strides = (4, 8, 16, 32)
  feats = [rng.standard_normal((2, 256 // s, 320 // s, 3)).astype(np.float32) for s in strides]
  boxes = _boxes(rng, 2 * 16, 256, 320, lo=10, hi=700).reshape(2, 16, 4)
  for i, side in enumerate((20.0, 150.0, 300.0, 600.0)):  # one box of each level 2..5
    boxes[i % 2, i] = [100 - side / 2, 120 - side / 3, 100 + side / 2, 120 + side / 1.5]
  got = np.asarray(roi_align.multiscale_roi_align([jnp.asarray(f) for f in feats],
                                                  jnp.asarray(boxes)))
  levels = np.asarray(roi_align.map_levels(jnp.asarray(boxes))) - 2
  assert set(levels.reshape(-1)) == {0, 1, 2, 3}
  for n in range(2):
    for r in range(16):
      lv = levels[n, r]
      np.testing.assert_allclose(got[n, r], _reference(feats[lv][n], boxes[n, r], 1 / strides[lv]),
                                 **TOL, err_msg=f"image {n} box {r} level {lv}")


def test_bad_inputs():
  feat = jnp.zeros((1, 8, 8, 4))
  with pytest.raises(errors.InvalidInputError, match="boxes must be"):
    roi_align.roi_align(feat, jnp.zeros((1, 3, 5)))
  with pytest.raises(errors.InvalidInputError, match="boxes must be"):
    roi_align.roi_align(feat, jnp.zeros((2, 3, 4)))
  with pytest.raises(errors.InvalidInputError, match="one N and C"):
    roi_align.multiscale_roi_align([feat, jnp.zeros((1, 4, 4, 5))], jnp.zeros((1, 3, 4)),
                                   strides=(4, 8))
  with pytest.raises(errors.InvalidInputError, match="one stride per"):
    roi_align.multiscale_roi_align([feat], jnp.zeros((1, 3, 4)), strides=(4, 8))
  with pytest.raises(errors.ConfigError, match="max_grid"):
    roi_align.roi_align(feat, jnp.zeros((1, 3, 4)), sampling_ratio=0, max_grid=0)
