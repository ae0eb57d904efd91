"""ShapesNet: the project's own small detector, for the offline demo and tests.

A CenterNet-style detector (Zhou et al., "Objects as Points", 2019) small enough to train on a CPU
on the generated shapes dataset (`hssc_jax.data.synthetic`). It follows the same split API as the
real detectors, with a YOLO-like pyramid so every codec runs on it unchanged:

```
image (N, S, S, 3) in [0, 1]
  part 1: stem /2 -> /4 -> P3 /8 -> P4 /16 -> P5 /32     (conv-SiLU stages with residual blocks)
  part 2: top-down fusion P5 -> P4 -> P3, then at stride 8 the heads
          heatmap (C classes, sigmoid), size (w, h in pixels / 16), offset (sub-cell centre)
          decoding: 3x3 max-pool peak picking, top-K, boxes back to original pixels
```

Preprocessing letterboxes to `img_size` (pad 114, like YOLO) so boxes map back exactly.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax.detectors.base import Detections, ImageMeta


class _Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    h = nn.silu(nn.Conv(self.features, (3, 3))(x))
    return x + nn.Conv(x.shape[-1], (3, 3))(h)


class _Backbone(nn.Module):
  widths: Sequence[int]

  @nn.compact
  def __call__(self, x):
    w = self.widths
    x = nn.silu(nn.Conv(w[0], (3, 3), (2, 2))(x))
    x = nn.silu(nn.Conv(w[1], (3, 3), (2, 2))(x))
    feats = []
    for c in w[2:]:
      x = nn.silu(nn.Conv(c, (3, 3), (2, 2))(x))
      x = _Block(c)(x)
      feats.append(x)
    return dict(zip(("p3", "p4", "p5"), feats))


class _Head(nn.Module):
  num_classes: int
  width: int

  @nn.compact
  def __call__(self, f):
    up = lambda x, ref: jax.image.resize(x, (x.shape[0],) + ref.shape[1:3] + (x.shape[3],),
                                         "nearest")
    x = nn.silu(nn.Conv(self.width, (1, 1))(f["p5"]))
    x = nn.silu(nn.Conv(self.width, (3, 3))(up(x, f["p4"]) + nn.Conv(self.width, (1, 1))(f["p4"])))
    x = nn.silu(nn.Conv(self.width, (3, 3))(up(x, f["p3"]) + nn.Conv(self.width, (1, 1))(f["p3"])))
    x = _Block(self.width)(x)
    heat = nn.Conv(self.num_classes, (1, 1), bias_init=nn.initializers.constant(-2.19))(x)
    reg = nn.Conv(4, (1, 1))(nn.silu(nn.Conv(self.width, (3, 3))(x)))
    return jnp.concatenate([heat, reg], axis=-1)


class ShapesNetModule(nn.Module):
  num_classes: int = 4
  widths: Sequence[int] = (16, 24, 32, 48, 64)
  head_width: int = 48

  def setup(self):
    self.backbone = _Backbone(self.widths)
    self.head = _Head(self.num_classes, self.head_width)

  def part1(self, x):
    return self.backbone(x)

  def raw(self, feats):
    return self.head(feats)

  def __call__(self, x):
    return self.head(self.backbone(x))


STRIDE = 8
SIZE_UNIT = 16.0


@dataclasses.dataclass(frozen=True)
class ShapesNet:
  """Split detector over `ShapesNetModule` (see module doc)."""

  num_classes: int = 4
  img_size: int = 128
  widths: Sequence[int] = (16, 24, 32, 48, 64)
  head_width: int = 48
  max_detections: int = 100
  name: str = "shapes_net"
  feature_names: Sequence[str] = ("p3", "p4", "p5")

  @property
  def module(self) -> ShapesNetModule:
    return ShapesNetModule(self.num_classes, tuple(self.widths), self.head_width)

  @property
  def coco_category_ids(self) -> list[int]:
    return list(range(1, self.num_classes + 1))

  def init(self, rng: jax.Array) -> Any:
    x = jnp.zeros((1, self.img_size, self.img_size, 3), jnp.float32)
    return self.module.init(rng, x)

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, ImageMeta]:
    """Letterbox each uint8 RGB image into img_size x img_size (pad 114), scale to [0, 1]."""
    s = self.img_size
    batch = np.full((len(images), s, s, 3), 114, np.uint8)
    scales, pads, sizes = [], [], []
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for i, im in enumerate(images):
      h, w = im.shape[:2]
      r = min(s / h, s / w)
      nh, nw = max(1, round(h * r)), max(1, round(w * r))
      resized = np.asarray(Image.fromarray(im).resize((nw, nh), Image.BILINEAR)) if (nh, nw) != (h, w) else im
      top, left = (s - nh) // 2, (s - nw) // 2
      batch[i, top:top + nh, left:left + nw] = resized
      scales.append(r)
      pads.append((top, left))
      sizes.append((h, w))
    meta = ImageMeta(np.asarray(sizes, np.int32), np.asarray(scales, np.float32),
                     np.asarray(pads, np.float32))
    return batch.astype(np.float32) / 255.0, meta

  def part1(self, variables: Any, batch: jax.Array) -> dict[str, jax.Array]:
    return self.module.apply(variables, batch, method=ShapesNetModule.part1)

  def head(self, variables: Any, features: Any) -> jax.Array:
    """Raw head output (N, H/8, W/8, C + 4): heatmap logits, size, offset."""
    return self.module.apply(variables, features, method=ShapesNetModule.raw)

  def part2(self, variables: Any, features: Any, meta: ImageMeta) -> Detections:
    return self.decode(self.head(variables, features), meta)

  def detect(self, variables: Any, batch: jax.Array, meta: ImageMeta) -> Detections:
    return self.part2(variables, self.part1(variables, batch), meta)

  def decode(self, raw: jax.Array, meta: ImageMeta) -> Detections:
    n, h, w, _ = raw.shape
    c = self.num_classes
    heat = jax.nn.sigmoid(raw[..., :c])
    peak = nn.max_pool(heat, (3, 3), (1, 1), padding="SAME")
    heat = jnp.where(heat >= peak, heat, 0.0).reshape(n, -1)
    k = min(self.max_detections, heat.shape[1])
    scores, flat = jax.lax.top_k(heat, k)
    cls = flat % c
    cell = flat // c
    cy, cx = cell // w, cell % w
    reg = raw[..., c:].reshape(n, h * w, 4)
    r = jnp.take_along_axis(reg, cell[..., None], axis=1)
    size = jnp.exp(jnp.clip(r[..., :2], -5, 5)) * SIZE_UNIT
    ctr_x = (cx + jax.nn.sigmoid(r[..., 2])) * STRIDE
    ctr_y = (cy + jax.nn.sigmoid(r[..., 3])) * STRIDE
    boxes = jnp.stack([ctr_x - size[..., 0] / 2, ctr_y - size[..., 1] / 2,
                       ctr_x + size[..., 0] / 2, ctr_y + size[..., 1] / 2], axis=-1)
    pad = jnp.asarray(meta.pad, jnp.float32)
    boxes = (boxes - jnp.stack([pad[:, 1], pad[:, 0], pad[:, 1], pad[:, 0]], -1)[:, None])
    boxes = boxes / jnp.asarray(meta.scale, jnp.float32)[:, None, None]
    hw = jnp.asarray(meta.orig_size, jnp.float32)
    lim = jnp.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], -1)[:, None]
    boxes = jnp.clip(boxes, 0.0, lim)
    return Detections(boxes, scores, cls.astype(jnp.int32), scores > 0.01)


def targets(boxes: np.ndarray, labels: np.ndarray, num_classes: int, img_size: int
            ) -> dict[str, np.ndarray]:
  """CenterNet training targets for one letterboxed image (boxes x1y1x2y2 in network pixels)."""
  g = img_size // STRIDE
  heat = np.zeros((g, g, num_classes), np.float32)
  reg = np.zeros((g, g, 4), np.float32)
  mask = np.zeros((g, g), np.float32)
  yy, xx = np.mgrid[0:g, 0:g]
  for (x1, y1, x2, y2), lab in zip(boxes, labels):
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
    ix, iy = min(int(cx), g - 1), min(int(cy), g - 1)
    sigma = max(0.5, 0.15 * max(bw, bh) / STRIDE)
    heat[..., lab] = np.maximum(heat[..., lab], np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma**2)))
    off = np.clip([cx - ix, cy - iy], 1e-3, 1 - 1e-3)
    reg[iy, ix] = [np.log(bw / SIZE_UNIT), np.log(bh / SIZE_UNIT), np.log(off[0] / (1 - off[0])),
                   np.log(off[1] / (1 - off[1]))]
    mask[iy, ix] = 1.0
  return {"heat": heat, "reg": reg, "mask": mask}


def loss(raw: jax.Array, t: dict[str, jax.Array], num_classes: int) -> jax.Array:
  """CenterNet focal loss on the heatmap + L1 on size/offset logits at object centres."""
  logits = raw[..., :num_classes]
  p = jnp.clip(jax.nn.sigmoid(logits), 1e-4, 1 - 1e-4)
  pos = (t["heat"] >= 0.999).astype(jnp.float32)
  neg_w = (1 - t["heat"]) ** 4
  focal = -(pos * (1 - p) ** 2 * jnp.log(p) + (1 - pos) * neg_w * p**2 * jnp.log(1 - p))
  npos = jnp.maximum(pos.sum(), 1.0)
  reg = jnp.abs(raw[..., num_classes:] - t["reg"]).sum(-1) * t["mask"]
  return focal.sum() / npos + reg.sum() / jnp.maximum(t["mask"].sum(), 1.0)
