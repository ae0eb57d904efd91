"""YOLOv5 letterbox preprocessing, bit-exact with the upstream (OpenCV) path, without OpenCV.

Upstream (ultralytics/yolov5 v6.0 `utils/augmentations.py::letterbox(img, 640, auto=False)`):

```
r = min(S / h, S / w)                             # scale, never rounded
new = (round(w r), round(h r))                    # resized (width, height)
img = cv2.resize(img, new, INTER_LINEAR)          # only when new != (w, h)
dw, dh = (S - new_w) / 2, (S - new_h) / 2
top, bottom = round(dh - 0.1), round(dh + 0.1)    # Python round: half to even
left, right = round(dw - 0.1), round(dw + 0.1)
img = pad(img, 114)
```

`resize_linear` reproduces `cv2.resize(..., INTER_LINEAR)` on uint8 images: half-pixel centres,
no antialiasing, clamped borders, 11-bit fixed-point weights (INTER_RESIZE_COEF_BITS) and the
rounding of OpenCV's vectorised vertical pass (see `_vertical`). Detections are mapped back with
upstream's `scale_coords`: subtract the (fractional) pad `(S - w r) / 2`, divide by r, clip.
"""

from typing import Sequence

import numpy as np

from hssc_jax import errors

PAD_VALUE = 114
_COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def _taps(dst: int, src: int, clamp_weights: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source index and the two fixed-point weights of each output pixel along one axis.

  As OpenCV's `resize` (INTER_LINEAR): f = (d + 0.5) * src / dst - 0.5 in double, then float32;
  s = floor(f); weights (1 - f', f') with f' = f - s, rounded to 11 bits. Out-of-range taps:
  horizontally OpenCV moves them to the border pixel with weights (1, 0) (`clamp_weights`);
  vertically it keeps the weights and only clamps the row index (done by the caller).
  """
  scale = 1.0 / (dst / src)
  f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  s = np.floor(f).astype(np.int64)
  f = (f - s.astype(np.float32)).astype(np.float32)
  if clamp_weights:
    low = s < 0
    f[low], s[low] = 0.0, 0
    high = s >= src - 1
    f[high], s[high] = 0.0, src - 1
  w0 = np.rint((np.float32(1.0) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
  w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
  return s, w0, w1


def _vertical(r0: np.ndarray, r1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
  """OpenCV's SIMD vertical pass for 8-bit (`VResizeLinearVec_32s8u`).

  The horizontal sums (value x 2^11) are shifted right by 4, multiplied by the 11-bit weights
  keeping the high 16 bits, added, and rounded by a final shift of 2: 4 + 16 + 2 = 22 bits in all,
  with truncations in between that differ from the exact (sum + 2^21) >> 22.
  """
  v = ((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16)
  return np.clip((v + 2) >> 2, 0, 255)


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """`cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)` for uint8 HWC images."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3:
    raise errors.InvalidInputError(
        f"resize_linear needs a uint8 HWC image, got {image.dtype} of shape {image.shape}")
  if width < 1 or height < 1:
    raise errors.InvalidInputError(f"resize target must be at least 1x1, got {width}x{height}")
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image.copy()
  sx, a0, a1 = _taps(width, w, clamp_weights=True)
  sy, b0, b1 = _taps(height, h, clamp_weights=False)
  src = image.astype(np.int64)
  sx1 = np.minimum(sx + 1, w - 1)
  rows = src[:, sx] * a0[None, :, None] + src[:, sx1] * a1[None, :, None]  # (h, width, c)
  sy0, sy1 = np.clip(sy, 0, h - 1), np.clip(sy + 1, 0, h - 1)
  out = _vertical(rows[sy0], rows[sy1], b0[:, None, None], b1[:, None, None])
  return out.astype(np.uint8)


def geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
  """(scale r, resized height, resized width, top pad, left pad) of the upstream letterbox."""
  r = min(size / height, size / width)
  nh, nw = int(round(height * r)), int(round(width * r))
  top = int(round((size - nh) / 2 - 0.1))
  left = int(round((size - nw) / 2 - 0.1))
  return r, nh, nw, top, left


def letterbox(image: np.ndarray, size: int = 640, pad_value: int = PAD_VALUE
              ) -> tuple[np.ndarray, float, tuple[float, float]]:
  """Letterboxes one uint8 HWC image into a size x size square (see module doc).

  Returns:
    (uint8 image (size, size, C), scale r, (top, left) pad of upstream's `scale_coords`, i.e.
    ((size - h r) / 2, (size - w r) / 2), which is the one that reproduces upstream detections).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise errors.InvalidInputError(
        f"letterbox needs a uint8 HWC RGB image, got {image.dtype} of shape {image.shape}")
  h, w = image.shape[:2]
  if h < 1 or w < 1:
    raise errors.InvalidInputError(f"empty image of shape {image.shape}")
  r, nh, nw, top, left = geometry(h, w, size)
  resized = resize_linear(image, nw, nh) if (nh, nw) != (h, w) else image
  out = np.full((size, size, image.shape[2]), pad_value, np.uint8)
  out[top:top + nh, left:left + nw] = resized
  return out, r, ((size - h * r) / 2, (size - w * r) / 2)


def letterbox_batch(images: Sequence[np.ndarray], size: int = 640
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Letterboxes a list of images: (float32 NHWC batch in [0, 1], orig (h, w), scale, (top, left))."""
  if len(images) == 0:
    raise errors.InvalidInputError("preprocess needs at least one image")
  batch = np.empty((len(images), size, size, 3), np.float32)
  sizes, scales, pads = [], [], []
  for i, im in enumerate(images):
    out, r, pad = letterbox(im, size)
    batch[i] = out.astype(np.float32) / np.float32(255.0)
    sizes.append(np.asarray(im).shape[:2])
    scales.append(r)
    pads.append(pad)
  return (batch, np.asarray(sizes, np.int32), np.asarray(scales, np.float32),
          np.asarray(pads, np.float32))
