"""YOLOv5 v6.0 (ultralytics/yolov5, tag v6.0, `models/yolov5{n,s,m,l,x}.yaml`) in Flax, split in two.

```
image (N, S, S, 3) in [0, 1], S a multiple of 32        [c(k) = ceil(k w / 8) 8, d(n) = round(n d)]
part 1 (edge)
  backbone  0 Conv(c64, 6, 2, 2)  1 Conv(c128, 3, 2)  2 C3(c128, d3)
            3 Conv(c256, 3, 2)    4 C3(c256, d6)                          -> x4  (/8)
            5 Conv(c512, 3, 2)    6 C3(c512, d9)                          -> x6  (/16)
            7 Conv(c1024, 3, 2)   8 C3(c1024, d3)  9 SPPF(c1024, 5)
  PAN neck 10 Conv(c512, 1)                                             -> x10
           11-13 up2, concat x6, C3(c512, d3, no shortcut)
           14 Conv(c256, 1)                                             -> x14
           15-17 up2, concat x4, C3(c256, d3, no shortcut)              -> P3 (/8)
           18-20 Conv(c256, 3, 2), concat x14, C3(c512, d3, no shortcut) -> P4 (/16)
           21-23 Conv(c512, 3, 2), concat x10, C3(c1024, d3, no shortcut)-> P5 (/32)
part 2 (server)
  Detect   1x1 conv per level to 3 anchors x (5 + C), sigmoid, v6.0 decoding
           xy = (2 sigmoid - 0.5 + grid) stride,  wh = (2 sigmoid)^2 anchor
  NMS      `nms.yolo_nms` (conf 0.001, IoU 0.6, multi-label, class-aware, <= 300)
  boxes    back to original pixels: subtract the letterbox pad, divide by the scale, clip
```

Sizes n/s/m/l/x differ only by the (depth, width) multiples. For `yolov5n` at 640 the pyramid is
P3 (N, 80, 80, 64), P4 (N, 40, 40, 128), P5 (N, 20, 20, 256). Parameters come from an ultralytics
checkpoint through `hssc_jax.detectors.convert.ultralytics`, loaded by `yolov5_weights` (or random
init for tests).

Typical use:

  det, variables = yolov5_weights.load("yolov5n-coco-v6.0.pt")   # or an orbax directory
  batch, meta = det.preprocess([rgb_uint8_image])
  pyramid = det.part1(variables, batch)                   # {"p3", "p4", "p5"} NHWC
  detections = det.part2(variables, pyramid, meta)        # boxes in original-image pixels
"""

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.detectors import letterbox as letterbox_lib
from hssc_jax.detectors import nms as nms_lib
from hssc_jax.detectors.base import Detections, ImageMeta
from hssc_jax.detectors.yolov5_layers import C3, SPPF, Conv, upsample2
from hssc_jax.metrics.coco import COCO80_TO_COCO91

MULTIPLES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0),
             "x": (1.33, 1.25)}  # size -> (depth_multiple, width_multiple)
ANCHORS_V6 = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119),
              (116, 90, 156, 198, 373, 326))  # (w, h) pairs in pixels, per level P3, P4, P5
STRIDES = (8, 16, 32)

def channels(c: int, width_multiple: float) -> int:
  """Upstream `make_divisible(c * width_multiple, 8)`."""
  return int(math.ceil(c * width_multiple / 8) * 8)


def depth(n: int, depth_multiple: float) -> int:
  """Upstream `max(round(n * depth_multiple), 1)` for repeated blocks."""
  return max(round(n * depth_multiple), 1) if n > 1 else n


class Detect(nn.Module):
  """The v6.0 head's 1x1 convolutions (upstream `Detect.m`): raw logits per level."""

  num_classes: int
  num_anchors: int = 3

  @nn.compact
  def __call__(self, features: Sequence[jax.Array]) -> list[jax.Array]:
    out = []
    no = self.num_classes + 5
    for i, (f, stride) in enumerate(zip(features, STRIDES)):
      # Upstream `Model._initialize_biases`: objectness for ~8 objects per 640 image, class prior.
      bias = np.zeros((self.num_anchors, no), np.float32)
      bias[:, 4] += math.log(8 / (640 / stride) ** 2)
      bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99))
      init = lambda *_, b=bias.reshape(-1): jnp.asarray(b)
      out.append(nn.Conv(self.num_anchors * no, (1, 1), bias_init=init, name=f"m_{i}")(f))
    return out


class YOLOv5Module(nn.Module):
  """Backbone + PAN neck (`part1`) and Detect convolutions (`head`); see module doc."""

  depth_multiple: float
  width_multiple: float
  num_classes: int = 80
  fused: bool = True

  def setup(self):
    c = lambda k: channels(k, self.width_multiple)
    d = lambda n: depth(n, self.depth_multiple)
    f = self.fused
    self.layer_0 = Conv(c(64), 6, 2, 2, fused=f)
    self.layer_1 = Conv(c(128), 3, 2, fused=f)
    self.layer_2 = C3(c(128), d(3), fused=f)
    self.layer_3 = Conv(c(256), 3, 2, fused=f)
    self.layer_4 = C3(c(256), d(6), fused=f)
    self.layer_5 = Conv(c(512), 3, 2, fused=f)
    self.layer_6 = C3(c(512), d(9), fused=f)
    self.layer_7 = Conv(c(1024), 3, 2, fused=f)
    self.layer_8 = C3(c(1024), d(3), fused=f)
    self.layer_9 = SPPF(c(1024), 5, fused=f)
    self.layer_10 = Conv(c(512), 1, 1, fused=f)
    self.layer_13 = C3(c(512), d(3), shortcut=False, fused=f)
    self.layer_14 = Conv(c(256), 1, 1, fused=f)
    self.layer_17 = C3(c(256), d(3), shortcut=False, fused=f)
    self.layer_18 = Conv(c(256), 3, 2, fused=f)
    self.layer_20 = C3(c(512), d(3), shortcut=False, fused=f)
    self.layer_21 = Conv(c(512), 3, 2, fused=f)
    self.layer_23 = C3(c(1024), d(3), shortcut=False, fused=f)
    self.detect = Detect(self.num_classes)

  def part1(self, x: jax.Array) -> dict[str, jax.Array]:
    x = self.layer_2(self.layer_1(self.layer_0(x)))
    x4 = self.layer_4(self.layer_3(x))
    x6 = self.layer_6(self.layer_5(x4))
    x = self.layer_9(self.layer_8(self.layer_7(x6)))
    x10 = self.layer_10(x)
    x = self.layer_13(jnp.concatenate([upsample2(x10), x6], -1))
    x14 = self.layer_14(x)
    p3 = self.layer_17(jnp.concatenate([upsample2(x14), x4], -1))
    p4 = self.layer_20(jnp.concatenate([self.layer_18(p3), x14], -1))
    p5 = self.layer_23(jnp.concatenate([self.layer_21(p4), x10], -1))
    return {"p3": p3, "p4": p4, "p5": p5}

  def head(self, features: dict[str, jax.Array]) -> list[jax.Array]:
    return self.detect([features["p3"], features["p4"], features["p5"]])

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    return self.head(self.part1(x))


def decode(logits: Sequence[jax.Array], anchors: Sequence[Sequence[float]], num_classes: int
           ) -> jax.Array:
  """v6.0 `Detect.forward` in inference: per-level logits -> (N, sum 3 H W, 5 + C).

  Rows are ordered (level, anchor, y, x) as upstream; columns x y w h (network pixels),
  objectness and class probabilities, all after the sigmoid.
  """
  no = num_classes + 5
  out = []
  for t, stride, anc in zip(logits, STRIDES, anchors):
    n, ny, nx, _ = t.shape
    na = len(anc) // 2
    y = jax.nn.sigmoid(t.reshape(n, ny, nx, na, no).transpose(0, 3, 1, 2, 4))
    gy, gx = jnp.meshgrid(jnp.arange(ny, dtype=jnp.float32), jnp.arange(nx, dtype=jnp.float32),
                          indexing="ij")
    grid = jnp.stack([gx, gy], -1)[None, None]  # (1, 1, ny, nx, 2), x first
    anchor = jnp.asarray(anc, jnp.float32).reshape(1, na, 1, 1, 2)
    xy = (y[..., 0:2] * 2 - 0.5 + grid) * jnp.float32(stride)
    wh = (y[..., 2:4] * 2) ** 2 * anchor
    out.append(jnp.concatenate([xy, wh, y[..., 4:]], -1).reshape(n, -1, no))
  return jnp.concatenate(out, axis=1)


def to_original_pixels(boxes: jax.Array, meta: ImageMeta) -> jax.Array:
  """Network-pixel x1 y1 x2 y2 -> original pixels (upstream `scale_coords`: -pad, /scale, clip)."""
  pad = jnp.asarray(meta.pad, jnp.float32)
  scale = jnp.asarray(meta.scale, jnp.float32)[:, None, None]
  hw = jnp.asarray(meta.orig_size, jnp.float32)
  shift = jnp.stack([pad[:, 1], pad[:, 0], pad[:, 1], pad[:, 0]], -1)[:, None]
  limit = jnp.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None]
  return jnp.clip((boxes - shift) / scale, 0.0, limit)


@dataclasses.dataclass(frozen=True)
class YOLOv5:
  """Split YOLOv5 v6.0 detector (the `SplitDetector` protocol of `detectors.base`).

  Attributes:
    size: "n", "s", "m", "l" or "x".
    num_classes: classes of the head (80 for COCO).
    img_size: side of the square letterbox input (a multiple of 32).
    conf_threshold, iou_threshold, max_detections, max_candidates: NMS settings (upstream
      `non_max_suppression` defaults for mAP: 0.001, 0.6, 300, 30000).
    fused: BatchNorm folded into the convolutions (what the converter writes by default).
    anchors: per level (w, h) anchor pairs in pixels (v6.0 defaults).
  """

  size: str = "n"
  num_classes: int = 80
  img_size: int = 640
  conf_threshold: float = 0.001
  iou_threshold: float = 0.6
  max_detections: int = 300
  max_candidates: int = 30000
  fused: bool = True
  anchors: tuple[tuple[float, ...], ...] = ANCHORS_V6
  name: str = "yolov5"
  feature_names: tuple[str, ...] = ("p3", "p4", "p5")

  def __post_init__(self):
    if self.size not in MULTIPLES:
      raise errors.ConfigError(f"unknown YOLOv5 size {self.size!r}; known: {sorted(MULTIPLES)}")
    if self.img_size % 32 or self.img_size < 32:
      raise errors.ConfigError(f"img_size must be a positive multiple of 32, got {self.img_size}")
    if self.num_classes < 1:
      raise errors.ConfigError(f"num_classes must be >= 1, got {self.num_classes}")

  @property
  def module(self) -> YOLOv5Module:
    dm, wm = MULTIPLES[self.size]
    return YOLOv5Module(dm, wm, self.num_classes, self.fused)

  @property
  def feature_channels(self) -> tuple[int, ...]:
    wm = MULTIPLES[self.size][1]
    return channels(256, wm), channels(512, wm), channels(1024, wm)

  @property
  def coco_category_ids(self) -> tuple[int, ...]:
    if self.num_classes == 80:
      return COCO80_TO_COCO91
    return tuple(range(1, self.num_classes + 1))

  def init(self, rng: jax.Array) -> Any:
    """Random variables ({"params"} fused, {"params", "batch_stats"} otherwise)."""
    x = jnp.zeros((1, self.img_size, self.img_size, 3), jnp.float32)
    return self.module.init(rng, x)

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, ImageMeta]:
    """Upstream letterbox of each uint8 HWC RGB image (`letterbox.letterbox`), scaled to [0, 1]."""
    batch, sizes, scales, pads = letterbox_lib.letterbox_batch(images, self.img_size)
    return batch, ImageMeta(sizes, scales, pads)

  def _check_batch(self, batch: jax.Array) -> None:
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[1] % 32 or batch.shape[2] % 32:
      raise errors.InvalidInputError(
          f"batch must be (N, H, W, 3) with H and W multiples of 32, got {batch.shape}")

  @functools.partial(jax.jit, static_argnums=0)
  def part1(self, variables: Any, batch: jax.Array) -> dict[str, jax.Array]:
    """Network input (N, H, W, 3) in [0, 1] -> {"p3", "p4", "p5"} (the inputs of Detect)."""
    self._check_batch(batch)
    return self.module.apply(variables, batch, method=YOLOv5Module.part1)

  @functools.partial(jax.jit, static_argnums=0)
  def head(self, variables: Any, features: Any) -> jax.Array:
    """Detect's raw logits (N, 3 (H3 W3 + H4 W4 + H5 W5), 5 + C), rows as in `decode`."""
    logits = self.module.apply(variables, dict(features), method=YOLOv5Module.head)
    no = self.num_classes + 5
    return jnp.concatenate([
        t.reshape(t.shape[0], t.shape[1], t.shape[2], -1, no).transpose(0, 3, 1, 2, 4)
        .reshape(t.shape[0], -1, no) for t in logits], axis=1)

  @functools.partial(jax.jit, static_argnums=0)
  def decode_features(self, variables: Any, features: Any) -> jax.Array:
    """Pyramid -> decoded head output (N, A, 5 + C): xywh in network pixels, obj, classes."""
    logits = self.module.apply(variables, dict(features), method=YOLOv5Module.head)
    return decode(logits, self.anchors, self.num_classes)

  @functools.partial(jax.jit, static_argnums=0)
  def raw(self, variables: Any, batch: jax.Array) -> jax.Array:
    """The whole network before NMS: (N, 25200, 85) at 640 (upstream `model(x)[0]`)."""
    return self.decode_features(variables, self.part1(variables, batch))

  @functools.partial(jax.jit, static_argnums=0)
  def part2(self, variables: Any, features: Any, meta: ImageMeta) -> Detections:
    """Pyramid -> Detect -> NMS -> boxes in original-image pixels."""
    pred = self.decode_features(variables, features)
    boxes, scores, classes, valid = nms_lib.yolo_nms(
        pred, conf_threshold=self.conf_threshold, iou_threshold=self.iou_threshold,
        max_detections=self.max_detections, max_candidates=self.max_candidates)
    boxes = jnp.where(valid[..., None], to_original_pixels(boxes, meta), 0.0)
    return Detections(boxes, scores, classes, valid)

  @functools.partial(jax.jit, static_argnums=0)
  def detect(self, variables: Any, batch: jax.Array, meta: ImageMeta) -> Detections:
    """part2(part1(batch))."""
    return self.part2(variables, self.part1(variables, batch), meta)
