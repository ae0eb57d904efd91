"""Faster R-CNN with a ResNet-FPN backbone (torchvision `fasterrcnn_resnet50_fpn`), split at P2..P5.

Ren et al., 2015, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks" (RPN Sec. 3.1, box parametrisation Eq. 2), with the FPN of Lin et al., 2017 (RPN on
P2..P6, Sec. 4.1; RoI pooling level of Eq. 1, Sec. 4.2) and RoIAlign (He et al., 2017). All shapes
are fixed (jit-able); every variable-length list of torchvision becomes a padded array + mask.

```
part1 (edge)    backbone ResNet-FPN -> P2..P5                         (`resnet_fpn`)
part2 (server)  P6 = P5[::2, ::2]
  RPN           head per level: ReLU(conv3x3) -> cls_logits (A), bbox_pred (4A), A = 3
                anchors: size s_l = 32 2^(l-2) on P_l, ratios r in (0.5, 1, 2)
                  torchvision: w = s / sqrt(r), h = s sqrt(r), cell = round([-w, -h, w, h] / 2),
                  stride = padded image size // feature size (integer division, per axis)
                decode (weights 1, 1, 1, 1; dw, dh clamped at log(1000 / 16))
                per level top pre_nms_top_n (1000) by objectness -> sigmoid -> clip to the resized
                image -> drop w or h < 1e-3 -> NMS 0.7 within each level -> best 1000
  RoI heads     MultiScaleRoIAlign P2..P5, 7x7, sampling 2 -> fc6 (1024) ReLU -> fc7 (1024) ReLU
                -> cls_score (91 incl. background 0), bbox_pred (91 x 4, weights 10, 10, 5, 5)
                softmax; per-class boxes, clipped; (box, class >= 1) pairs with score > 0.05 and
                w, h >= 1e-2; class-wise NMS 0.5; best 100
  output        boxes x (original / resized size) per axis (torchvision `resize_boxes`)
```

Conventions (`convention`): "torchvision" as above (RGB in [0, 1], ImageNet mean/std, resize with
`F.interpolate(bilinear, scale_factor, recompute_scale_factor=True)` so the short side is <= 800
and the long side <= 1333, batch padded with zeros to a multiple of 32); "detectron2" follows
detectron2's `GeneralizedRCNN` / `StandardRPNHead` / `FastRCNNOutputLayers` instead: BGR in
[0, 255] minus pixel mean (103.53, 116.28, 123.675), `ResizeShortestEdge(800, 1333)` with PIL
bilinear on uint8, unrounded anchors with fixed strides 4..64 (offset 0), proposals kept when
w, h > 0, RoIAlignV2 (aligned, adaptive sampling, detectron2 level mapping), 81 classes with
background LAST, no small-box removal in the box head, final boxes clipped to the original image
(empty ones dropped). Its adaptive RoIAlign grid is capped at 4 samples per bin side
(`roi_align.multiscale_roi_align(max_grid=4)`), exact for boxes up to 28 strides long.
The detectron2 path is checked against a torch transcription of detectron2's inference code
(`tests/detectors/torchvision_resnet_fpn_reference.py`, `detectron2=True`), not against detectron2.

Choices the paper leaves open / where the port differs: greedy NMS runs in score order over a
fixed candidate array (`lax.while_loop`), grouped by level or class with an explicit group mask
(torchvision's `batched_nms` either offsets boxes by group or loops over groups; both are the
same greedy per-group NMS up to float rounding and the order of exact ties). The resized image
size, needed for clipping and mapping boxes back, travels in `FasterRCNNMeta.resized_size` (an
`ImageMeta` with one more field) because torchvision's per-axis ratios cannot be recovered
exactly from one float32 scale.

Classes: torchvision's 91-way layout (0 background, 1..90 COCO category ids, with the ten unused
ids never trained) maps label l to contiguous class l - 1 and COCO id l; detectron2's 80 classes
map through `metrics.coco.COCO80_TO_COCO91`.

Parameters: {"backbone": resnet_fpn params, "rpn": {conv, cls_logits, bbox_pred},
"roi_heads": {fc6, fc7, cls_score, bbox_pred}}, each leaf {kernel (HWIO or (in, out)), bias};
`convert.torchvision_frcnn.load_frcnn_torchvision` / `load_frcnn_detectron2` write them.

Typical use:

  det, params = faster_rcnn.load("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")
  batch, meta = det.preprocess([rgb_uint8_image])
  pyramid = det.part1(params, batch)                    # {"p2", "p3", "p4", "p5"} NHWC, 256 ch
  detections = det.part2(params, pyramid, meta)         # boxes in original-image pixels
"""

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors
from hssc_jax.detectors import nms as nms_lib
from hssc_jax.detectors import resnet_fpn
from hssc_jax.detectors import roi_align as roi_lib
from hssc_jax.detectors.base import Detections, ImageMeta
from hssc_jax.metrics.coco import COCO80_TO_COCO91

ANCHOR_SIZES = (32, 64, 128, 256, 512)  # one size per level P2..P6
ASPECT_RATIOS = (0.5, 1.0, 2.0)
RPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
BBOX_CLIP = math.log(1000.0 / 16)
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
DETECTRON2_MEAN_BGR = (103.53, 116.28, 123.675)
CONVENTIONS = ("torchvision", "detectron2")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FasterRCNNMeta(ImageMeta):
  """`ImageMeta` plus resized_size: (N, 2) int32 (height, width) of each image after resizing,
  before padding (torchvision's `image_sizes`)."""

  resized_size: Any = None


# ----------------------------------------------------------------------------------- geometry


def cell_anchors(convention: str = "torchvision") -> np.ndarray:
  """(5, 3, 4) float32 anchors centred at 0 for P2..P6 (torchvision `AnchorGenerator.
  generate_anchors`: float32, `round()` half to even; detectron2: unrounded, h = r w)."""
  out = []
  ratios = np.asarray(ASPECT_RATIOS, np.float32)
  for size in ANCHOR_SIZES:
    s = np.float32(size)
    if convention == "torchvision":
      h_ratios = np.sqrt(ratios)
      w_ratios = np.float32(1) / h_ratios
      ws, hs = w_ratios * s, h_ratios * s
      out.append(np.round(np.stack([-ws, -hs, ws, hs], 1) / np.float32(2)))
    else:  # detectron2 DefaultAnchorGenerator.generate_cell_anchors (double, then float32)
      cells = []
      for r in ASPECT_RATIOS:
        w = math.sqrt(float(size) ** 2 / r)
        h = r * w
        cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
      out.append(np.asarray(cells))
  return np.asarray(out, np.float32)


def grid_anchors(feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                 convention: str = "torchvision") -> list[np.ndarray]:
  """Anchors (H_l W_l 3, 4) per level, ordered (y, x, anchor) as torchvision's `grid_anchors`."""
  cells = cell_anchors(convention)
  out = []
  for l, (h, w) in enumerate(feature_sizes):
    if convention == "torchvision":
      sy, sx = image_size[0] // h, image_size[1] // w
    else:
      sy = sx = resnet_fpn.STRIDES[RPN_LEVELS[l]]
    ys = np.arange(h, dtype=np.float32) * np.float32(sy)
    xs = np.arange(w, dtype=np.float32) * np.float32(sx)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    shifts = np.stack([xx, yy, xx, yy], -1).reshape(-1, 1, 4)
    out.append((shifts + cells[l][None]).reshape(-1, 4).astype(np.float32))
  return out


def decode_boxes(deltas: jax.Array, boxes: jax.Array, weights: Sequence[float]) -> jax.Array:
  """torchvision `BoxCoder.decode_single` (Eq. 2 of Faster R-CNN inverted), deltas (..., 4)."""
  widths = boxes[..., 2] - boxes[..., 0]
  heights = boxes[..., 3] - boxes[..., 1]
  ctr_x = boxes[..., 0] + 0.5 * widths
  ctr_y = boxes[..., 1] + 0.5 * heights
  wx, wy, ww, wh = (np.float32(w) for w in weights)
  dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
  dw = jnp.minimum(deltas[..., 2] / ww, np.float32(BBOX_CLIP))
  dh = jnp.minimum(deltas[..., 3] / wh, np.float32(BBOX_CLIP))
  pcx, pcy = dx * widths + ctr_x, dy * heights + ctr_y
  pw, ph = jnp.exp(dw) * widths, jnp.exp(dh) * heights
  return jnp.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], -1)


def clip_boxes(boxes: jax.Array, hw: jax.Array) -> jax.Array:
  """`clip_boxes_to_image`: x in [0, width], y in [0, height]; hw (2,) float32."""
  x = jnp.clip(boxes[..., 0::2], 0.0, hw[1])
  y = jnp.clip(boxes[..., 1::2], 0.0, hw[0])
  return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def grouped_nms(boxes: jax.Array, groups: jax.Array, valid: jax.Array, *, iou_threshold: float,
                max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS within groups over boxes sorted by descending score (`batched_nms`).

  Returns (indices (max_output,) int32 in keep order, kept (max_output,) bool).
  """
  k = boxes.shape[0]
  thr = nms_lib._float32_above(iou_threshold)  # pylint: disable=protected-access
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  positions = jnp.arange(k)

  def cond(state):
    alive, _, n = state
    return jnp.logical_and(n < max_output, jnp.any(alive))

  def body(state):
    alive, keep, n = state
    i = jnp.argmax(alive)
    iou = nms_lib._iou_row(boxes[i], areas[i], boxes, areas)  # pylint: disable=protected-access
    hit = (iou >= thr) & (groups == groups[i])
    alive = alive & ~hit & (positions != i)
    return alive, keep.at[n].set(i.astype(jnp.int32)), n + 1

  keep0 = jnp.zeros((max_output,), jnp.int32)
  _, keep, n = jax.lax.while_loop(cond, body, (valid, keep0, jnp.int32(0)))
  return keep, jnp.arange(max_output) < n


def _sorted(scores: jax.Array, valid: jax.Array) -> jax.Array:
  """Indices by descending score, invalid last (stable: ties keep their index order)."""
  return jnp.argsort(jnp.where(valid, -scores, jnp.inf), stable=True)


# ------------------------------------------------------------------------------------- layers


def _conv(x: jax.Array, p: Mapping[str, jax.Array], pad: int) -> jax.Array:
  y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), ((pad, pad), (pad, pad)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + p["bias"]


def _dense(x: jax.Array, p: Mapping[str, jax.Array]) -> jax.Array:
  return x @ p["kernel"] + p["bias"]


def rpn_head(params: Mapping[str, Any], feature: jax.Array) -> tuple[jax.Array, jax.Array]:
  """RPNHead on one level: (N, H W A) objectness logits and (N, H W A, 4) deltas."""
  t = jax.nn.relu(_conv(feature, params["conv"], 1))
  n = feature.shape[0]
  return (_conv(t, params["cls_logits"], 0).reshape(n, -1),
          _conv(t, params["bbox_pred"], 0).reshape(n, -1, 4))


def box_head(params: Mapping[str, Any], pooled: jax.Array) -> tuple[jax.Array, jax.Array]:
  """TwoMLPHead + FastRCNNPredictor: pooled (N, R, 7, 7, C) -> logits (N, R, K), deltas
  (N, R, 4 K) (4 (K - 1) for detectron2)."""
  x = pooled.reshape(pooled.shape[:2] + (-1,))  # (y, x, c) order: fc6 kernel rows permuted
  x = jax.nn.relu(_dense(x, params["fc6"]))
  x = jax.nn.relu(_dense(x, params["fc7"]))
  return _dense(x, params["cls_score"]), _dense(x, params["bbox_pred"])


# ---------------------------------------------------------------------------------- detector


def _scale_and_size(h: int, w: int, min_size: int, max_size: int, convention: str
                    ) -> tuple[float, int, int]:
  if convention == "torchvision":
    # `scalar / tensor` is `tensor.reciprocal() * scalar` in float32 (480 -> 1.6666667461, not
    # 1.6666666269), then F.interpolate's size floor(double(size) * scale): 480x640 -> 800x1066.
    f32 = np.float32
    scale = min((f32(1) / f32(min(h, w))) * f32(min_size),
                (f32(1) / f32(max(h, w))) * f32(max_size))
    scale = float(f32(scale))
    return scale, int(math.floor(h * scale)), int(math.floor(w * scale))
  scale = min_size * 1.0 / min(h, w)  # detectron2 ResizeShortestEdge.get_output_shape
  newh, neww = (min_size, scale * w) if h < w else (scale * h, min_size)
  if max(newh, neww) > max_size:
    s = max_size * 1.0 / max(newh, neww)
    newh, neww = newh * s, neww * s
  newh, neww = int(newh + 0.5), int(neww + 0.5)
  return newh / h, newh, neww


def resize_bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """PyTorch `upsample_bilinear2d` (align_corners False, no antialias, scale in / out) on HWC
  float32, with the kernel's float32 operations."""
  img = np.asarray(img, np.float32)

  def taps(n_in, n_out):
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = src.astype(np.int64)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, np.float32(1) - l1, l1

  y0, y1, ly0, ly1 = taps(img.shape[0], out_h)
  x0, x1, lx0, lx1 = taps(img.shape[1], out_w)
  lx0, lx1 = lx0[None, :, None], lx1[None, :, None]
  top = lx0 * img[y0][:, x0] + lx1 * img[y0][:, x1]
  bottom = lx0 * img[y1][:, x0] + lx1 * img[y1][:, x1]
  return (ly0[:, None, None] * top + ly1[:, None, None] * bottom).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FasterRCNN:
  """Split Faster R-CNN ResNet-FPN (the `SplitDetector` protocol of `detectors.base`).

  Attributes:
    convention: "torchvision" or "detectron2" (see module doc).
    arch: backbone, a `resnet_fpn.ARCHS` name.
    stride_in_1x1: detectron2 MSRA R-50/R-101 blocks.
    min_size, max_size: resize targets of the short and long side (800, 1333).
    rpn_pre_nms_top_n, rpn_post_nms_top_n, rpn_nms_thresh: RPN test settings (1000, 1000, 0.7).
    box_score_thresh, box_nms_thresh, detections_per_img: box head test settings (0.05, 0.5, 100).
    pad_to: 0 pads each batch to its largest image rounded up to 32 (torchvision, detectron2);
      a positive multiple of 32 pads every batch to pad_to x pad_to (one compiled shape for a
      whole evaluation; differs from torchvision only through its padded-size anchor strides on
      P6 and the anchors beyond the image: e.g. 1344 for max_size 1333).
    pixel_std: detectron2 only, BGR pixel std (1, 1, 1 for the MSRA R-50/R-101 weights;
      (57.375, 57.12, 58.395) for X-101-32x8d, which `load` sets).
  """

  convention: str = "torchvision"
  arch: str = "resnet50"
  stride_in_1x1: bool = False
  min_size: int = 800
  max_size: int = 1333
  rpn_pre_nms_top_n: int = 1000
  rpn_post_nms_top_n: int = 1000
  rpn_nms_thresh: float = 0.7
  box_score_thresh: float = 0.05
  box_nms_thresh: float = 0.5
  detections_per_img: int = 100
  pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
  pad_to: int = 0
  name: str = "faster_rcnn"
  feature_names: tuple[str, ...] = resnet_fpn.FEATURE_NAMES
  feature_channels: tuple[int, ...] = (256, 256, 256, 256)

  def __post_init__(self):
    if self.convention not in CONVENTIONS:
      raise errors.ConfigError(f"unknown convention {self.convention!r}; known: {CONVENTIONS}")
    if self.arch not in resnet_fpn.ARCHS:
      raise errors.ConfigError(f"unknown backbone {self.arch!r}; known: {sorted(resnet_fpn.ARCHS)}")
    if self.pad_to < 0 or self.pad_to % 32 or (self.pad_to and self.pad_to < math.ceil(
        self.max_size / 32) * 32):
      raise errors.ConfigError(f"pad_to must be 0 or a multiple of 32 >= max_size "
                               f"({self.max_size}), got {self.pad_to}")

  @property
  def torchvision(self) -> bool:
    return self.convention == "torchvision"

  @property
  def num_classes(self) -> int:
    return 90 if self.torchvision else 80

  @property
  def num_logits(self) -> int:
    """cls_score outputs: 91 (background first) or 81 (background last)."""
    return self.num_classes + 1

  @property
  def coco_category_ids(self) -> tuple[int, ...]:
    if self.torchvision:
      return tuple(range(1, 91))  # label l (1..90) -> class l - 1 -> COCO id l
    return COCO80_TO_COCO91

  def init(self, rng: jax.Array) -> dict[str, Any]:
    """Random params for tests and shape checks, drawn in numpy (a Flax `init` of the backbone
    costs tens of seconds on CPU): kernels lecun-normal (the Flax default), identity frozen
    BatchNorm, zero biases; heads normal(0.01) as torchvision's RPN / predictor init."""
    gen = np.random.default_rng(int(jax.random.randint(rng, (), 0, 2**31 - 1)))

    def fill(path, spec):
      leaf = path[-1].key
      if leaf == "kernel":
        fan_in = int(np.prod(spec.shape[:-1]))
        return gen.standard_normal(spec.shape, np.float32) / np.float32(math.sqrt(fan_in))
      return (np.ones if leaf in ("scale", "var") else np.zeros)(spec.shape, np.float32)

    c, a, nl = resnet_fpn.FPN_CHANNELS, len(ASPECT_RATIOS), self.num_logits
    nbox = 4 * (nl if self.torchvision else self.num_classes)
    layer = lambda shape, std: {"kernel": std * gen.standard_normal(shape, np.float32),
                                "bias": np.zeros(shape[-1:], np.float32)}
    return {
        "backbone": jax.tree_util.tree_map_with_path(fill, resnet_fpn.abstract_params(self.arch)),
        "rpn": {"conv": layer((3, 3, c, c), 0.01),
                "cls_logits": layer((1, 1, c, a), 0.01),
                "bbox_pred": layer((1, 1, c, 4 * a), 0.01)},
        "roi_heads": {"fc6": layer((c * 49, 1024), 1 / math.sqrt(c * 49)),
                      "fc7": layer((1024, 1024), 1 / 32.0),
                      "cls_score": layer((1024, nl), 0.01),
                      "bbox_pred": layer((1024, nbox), 0.001)},
    }

  # --------------------------------------------------------------------------- host side

  def resized_shape(self, h: int, w: int) -> tuple[float, int, int]:
    """(scale, resized height, resized width) of an h x w image."""
    return _scale_and_size(h, w, self.min_size, self.max_size, self.convention)

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, FasterRCNNMeta]:
    """uint8 HWC RGB images -> (N, H, W, 3) float32 batch padded to 32, and geometry."""
    if not len(images):
      raise errors.InvalidInputError("preprocess needs at least one image")
    resized, sizes, scales, rsizes = [], [], [], []
    for img in images:
      img = np.asarray(img)
      if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise errors.InvalidInputError(f"images must be (H, W, 3), got {img.shape}")
      h, w = img.shape[:2]
      scale, nh, nw = self.resized_shape(h, w)
      if self.torchvision:
        x = (img.astype(np.float32) / np.float32(255) - np.asarray(TORCHVISION_MEAN, np.float32)
             ) / np.asarray(TORCHVISION_STD, np.float32)
        x = resize_bilinear(x, nh, nw)
      else:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        u8 = img if img.dtype == np.uint8 else np.clip(img, 0, 255).astype(np.uint8)
        if (nh, nw) != (h, w):
          u8 = np.asarray(Image.fromarray(u8).resize((nw, nh), Image.BILINEAR))
        x = ((u8[..., ::-1].astype(np.float32) - np.asarray(DETECTRON2_MEAN_BGR, np.float32))
             / np.asarray(self.pixel_std, np.float32))
      resized.append(x)
      sizes.append((h, w))
      scales.append(scale)
      rsizes.append((nh, nw))
    hmax = self.pad_to or int(math.ceil(max(s[0] for s in rsizes) / 32) * 32)
    wmax = self.pad_to or int(math.ceil(max(s[1] for s in rsizes) / 32) * 32)
    batch = np.zeros((len(images), hmax, wmax, 3), np.float32)
    for i, x in enumerate(resized):
      batch[i, :x.shape[0], :x.shape[1]] = x
    meta = FasterRCNNMeta(np.asarray(sizes, np.int32), np.asarray(scales, np.float32),
                          np.zeros((len(images), 2), np.float32), np.asarray(rsizes, np.int32))
    return batch, meta

  # ------------------------------------------------------------------------------ device

  def _check_batch(self, batch: jax.Array) -> None:
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[1] % 32 or batch.shape[2] % 32:
      raise errors.InvalidInputError(
          f"batch must be (N, H, W, 3) with H and W multiples of 32, got {batch.shape}")

  @functools.partial(jax.jit, static_argnums=0)
  def part1(self, params: Any, batch: jax.Array) -> dict[str, jax.Array]:
    """Normalised batch (N, H, W, 3) -> {"p2", "p3", "p4", "p5"} (N, H / s, W / s, 256)."""
    self._check_batch(batch)
    return resnet_fpn.backbone_features(params["backbone"], batch,
                                        stride_in_1x1=self.stride_in_1x1)

  def _resized_size(self, meta: ImageMeta) -> jax.Array:
    rs = getattr(meta, "resized_size", None)
    if rs is not None:
      return jnp.asarray(rs, jnp.float32)
    hw = jnp.asarray(meta.orig_size, jnp.float32) * jnp.asarray(meta.scale, jnp.float32)[:, None]
    return jnp.floor(hw + 1e-3)  # plain ImageMeta: approximate (see module doc)

  def _features(self, features: Mapping[str, jax.Array]) -> list[jax.Array]:
    missing = [k for k in self.feature_names if k not in features]
    if missing:
      raise errors.InvalidInputError(f"feature pyramid lacks {missing}; has {sorted(features)}")
    return [jnp.asarray(features[k], jnp.float32) for k in self.feature_names]

  @functools.partial(jax.jit, static_argnums=0)
  def proposals(self, params: Any, features: Any, meta: ImageMeta
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RPN: pyramid -> (boxes (N, post_nms, 4) in resized-image pixels, objectness probability
    (N, post_nms), valid (N, post_nms)), rows in descending score order."""
    feats = self._features(features)
    feats = feats + [resnet_fpn.p6_from_p5(feats[-1])]
    n = feats[0].shape[0]
    image_size = (4 * feats[0].shape[1], 4 * feats[0].shape[2])  # padded input (multiple of 32)
    anchors = grid_anchors([f.shape[1:3] for f in feats], image_size, self.convention)
    top_boxes, top_logits, top_levels = [], [], []
    for l, (f, anc) in enumerate(zip(feats, anchors)):
      logits, deltas = rpn_head(params["rpn"], f)
      k = min(self.rpn_pre_nms_top_n, logits.shape[1])
      score, idx = jax.lax.top_k(logits, k)
      d = jnp.take_along_axis(deltas, idx[..., None], axis=1)
      top_boxes.append(decode_boxes(d, jnp.asarray(anc)[idx], (1.0, 1.0, 1.0, 1.0)))
      top_logits.append(score)
      top_levels.append(jnp.full((n, k), l, jnp.int32))
    boxes = jnp.concatenate(top_boxes, 1)
    logits = jnp.concatenate(top_logits, 1)
    levels = jnp.concatenate(top_levels, 1)
    hw = self._resized_size(meta)
    post = self.rpn_post_nms_top_n

    def one(boxes, logits, levels, hw):
      boxes = clip_boxes(boxes, hw)
      w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
      if self.torchvision:
        scores = jax.nn.sigmoid(logits)
        valid = (w >= 1e-3) & (h >= 1e-3) & (scores >= 0.0)
      else:
        scores = logits
        valid = (w > 0.0) & (h > 0.0) & jnp.isfinite(boxes).all(-1) & jnp.isfinite(logits)
      order = _sorted(scores, valid)
      boxes, scores, levels, valid = boxes[order], scores[order], levels[order], valid[order]
      keep, kept = grouped_nms(boxes, levels, valid, iou_threshold=self.rpn_nms_thresh,
                               max_output=min(post, boxes.shape[0]))
      zero = lambda a: jnp.where(kept.reshape(kept.shape + (1,) * (a.ndim - 1)), a[keep], 0)
      out = zero(boxes), zero(scores), kept
      if post > boxes.shape[0]:  # fewer anchors than post_nms_top_n: pad to a fixed size
        extra = post - boxes.shape[0]
        out = tuple(jnp.concatenate([a, jnp.zeros((extra,) + a.shape[1:], a.dtype)]) for a in out)
      return out

    return jax.vmap(one)(boxes, logits, levels, hw)

  @functools.partial(jax.jit, static_argnums=0)
  def box_outputs(self, params: Any, features: Any, boxes: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """RoI heads on proposals (N, R, 4): class logits (N, R, K) and box deltas (N, R, 4 K')."""
    feats = self._features(features)
    if self.torchvision:
      pooled = roi_lib.multiscale_roi_align(feats, boxes, output_size=7, sampling_ratio=2,
                                            aligned=False, mapping="torchvision")
    else:
      pooled = roi_lib.multiscale_roi_align(feats, boxes, output_size=7, sampling_ratio=0,
                                            aligned=True, mapping="detectron2")
    return box_head(params["roi_heads"], pooled)

  @functools.partial(jax.jit, static_argnums=0)
  def part2(self, params: Any, features: Any, meta: ImageMeta) -> Detections:
    """Pyramid -> RPN -> RoI heads -> class-wise NMS -> boxes in original-image pixels."""
    props, _, pvalid = self.proposals(params, features, meta)
    logits, deltas = self.box_outputs(params, features, props)
    hw = self._resized_size(meta)
    orig = jnp.asarray(meta.orig_size, jnp.float32)
    nc, top = self.num_classes, self.detections_per_img

    def one(props, pvalid, logits, deltas, hw, orig):
      r = props.shape[0]
      probs = jax.nn.softmax(logits, -1)
      if self.torchvision:
        probs = probs[:, 1:]
        deltas = deltas.reshape(r, nc + 1, 4)[:, 1:]
      else:
        probs = probs[:, :nc]
        deltas = deltas.reshape(r, nc, 4)
      boxes = clip_boxes(decode_boxes(deltas, props[:, None, :], (10.0, 10.0, 5.0, 5.0)), hw)
      valid = (probs > self.box_score_thresh) & pvalid[:, None]
      if self.torchvision:
        w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        valid &= (w >= 1e-2) & (h >= 1e-2)
      else:
        valid &= jnp.isfinite(boxes).all(-1) & jnp.isfinite(probs)
      boxes, scores, valid = boxes.reshape(-1, 4), probs.reshape(-1), valid.reshape(-1)
      classes = jnp.tile(jnp.arange(nc, dtype=jnp.int32), r)
      order = _sorted(scores, valid)
      boxes, scores, classes, valid = boxes[order], scores[order], classes[order], valid[order]
      keep, kept = grouped_nms(boxes, classes, valid, iou_threshold=self.box_nms_thresh,
                               max_output=top)
      ratio = orig / hw  # per-axis (height, width), torchvision `resize_boxes`
      out = boxes[keep] * jnp.stack([ratio[1], ratio[0], ratio[1], ratio[0]])
      if not self.torchvision:  # detectron2 `detector_postprocess`: clip, drop empty boxes
        out = clip_boxes(out, orig)
        kept &= (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
      z = lambda a: jnp.where(kept.reshape(kept.shape + (1,) * (a.ndim - 1)), a, 0)
      return z(out), z(scores[keep]), z(classes[keep]), kept

    boxes, scores, classes, valid = jax.vmap(one)(props, pvalid, logits, deltas, hw, orig)
    return Detections(boxes, scores, classes, valid)

  @functools.partial(jax.jit, static_argnums=0)
  def detect(self, params: Any, batch: jax.Array, meta: ImageMeta) -> Detections:
    """part2(part1(batch))."""
    return self.part2(params, self.part1(params, batch), meta)


_DERIVED = ("name", "feature_names", "feature_channels")


def save(directory: str | os.PathLike, detector: FasterRCNN, params: Any) -> Path:
  """Writes converted params and the detector's settings as an orbax checkpoint directory
  (`detectors.checkpoint`), so later loads skip the conversion: `load(directory)`."""
  from hssc_jax.detectors import checkpoint  # pylint: disable=g-import-not-at-top
  fields = {f.name: getattr(detector, f.name) for f in dataclasses.fields(detector)
            if f.name not in _DERIVED}
  return checkpoint.save(directory, params, {"detector": "faster_rcnn", "fields": fields})


def convert(source: str | os.PathLike, directory: str | os.PathLike, **kwargs: Any) -> Path:
  """A torchvision `.pth` or detectron2 `.pkl` -> an orbax checkpoint directory (see `save`)."""
  det, params = load(source, **kwargs)
  return save(directory, det, params)


def load(path: str | os.PathLike, convention: str | None = None, **overrides: Any
         ) -> tuple[FasterRCNN, dict[str, Any]]:
  """(detector, params) from a torchvision `.pth`, a detectron2 model-zoo `.pkl`, or a directory
  written by `save` / `convert`.

  `convention` defaults to "detectron2" for `.pkl` files and "torchvision" otherwise; for
  detectron2 `stride_in_1x1` defaults to True except for ResNeXt (as its model zoo).
  """
  if Path(path).expanduser().is_dir():
    from hssc_jax.detectors import checkpoint  # pylint: disable=g-import-not-at-top
    params, info = checkpoint.load(Path(path).expanduser())
    if info.get("detector") != "faster_rcnn":
      raise errors.CheckpointError(f"{path} holds a {info.get('detector')!r} checkpoint, "
                                   "not a Faster R-CNN one")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in info["fields"].items()}
    if convention is not None:
      fields["convention"] = convention
    fields.update(overrides)
    return FasterRCNN(**fields), params
  from hssc_jax.detectors.convert import torchvision_frcnn  # pylint: disable=g-import-not-at-top
  path = Path(path).expanduser()
  if not path.is_file():
    raise errors.ConfigError(f"Faster R-CNN weights not found: {path}")
  convention = convention or ("detectron2" if path.suffix == ".pkl" else "torchvision")
  if convention == "torchvision":
    params = torchvision_frcnn.load_frcnn_torchvision(path)
  elif convention == "detectron2":
    params = torchvision_frcnn.load_frcnn_detectron2(path)
  else:
    raise errors.ConfigError(f"unknown convention {convention!r}; known: {CONVENTIONS}")
  arch = resnet_fpn.arch_of(params["backbone"])
  if "arch" in overrides and overrides["arch"] != arch:
    raise errors.ConfigError(f"{path} holds a {arch} backbone, not {overrides['arch']}")
  fields = dict(overrides, arch=arch, convention=convention)
  if convention == "detectron2":
    fields.setdefault("stride_in_1x1", not arch.startswith("resnext"))
    if arch.startswith("resnext"):  # detectron2 X-101-32x8d configs: PIXEL_STD 57.375, ...
      fields.setdefault("pixel_std", (57.375, 57.12, 58.395))
  return FasterRCNN(**fields), params


DEPTHS = {50: "resnet50", 101: "resnet101"}


def build_from_config(cfg: Any) -> tuple[FasterRCNN, dict[str, Any]]:
  """(detector, params) from `config.detector` (see `detectors.factory`): `weights` (.pth / .pkl
  or "random"), optional `convention`, `depth` (50 | 101), `arch`, `stride_in_1x1`, RPN / box
  thresholds under their `FasterRCNN` field names."""
  def get(k, default=None):
    try:
      v = cfg[k]
    except (KeyError, AttributeError):
      return default
    return default if v is None else v
  kwargs = {k: get(k) for k in ("min_size", "max_size", "rpn_pre_nms_top_n", "rpn_post_nms_top_n",
                                "rpn_nms_thresh", "box_score_thresh", "box_nms_thresh",
                                "detections_per_img", "stride_in_1x1", "pad_to")
            if get(k) is not None}
  arch = get("arch")
  depth = get("depth")
  if depth is not None:
    if int(depth) not in DEPTHS:
      raise errors.ConfigError(f"Faster R-CNN depth must be one of {sorted(DEPTHS)}, got {depth}")
    if arch is not None and arch != DEPTHS[int(depth)]:
      raise errors.ConfigError(f"depth {depth} contradicts arch {arch!r}")
    arch = DEPTHS[int(depth)]
  convention = get("convention") or None
  weights = get("weights", "") or ""
  if weights == "random":
    det = FasterRCNN(convention=convention or "torchvision", arch=arch or "resnet50", **kwargs)
    return det, det.init(jax.random.PRNGKey(0))
  if not weights:
    raise errors.ConfigError("faster_rcnn needs detector.weights: a torchvision .pth, a "
                             "detectron2 .pkl, a directory written by faster_rcnn.convert, "
                             "or 'random'")
  if arch is not None:
    kwargs["arch"] = arch
  return load(weights, convention, **kwargs)
