"""The split API every detector in hssc_jax implements.

```
images --preprocess--> batch, meta --part1--> pyramid {"p3": NHWC, ...} --(codec)--> pyramid
pyramid, meta --part2--> Detections (boxes in original-image pixels)
```

`part1` is what runs on the edge device, `part2` what runs on the server. Both are pure functions of
`(params, inputs)`, batched and jit-compiled; `detect(params, batch, meta)` equals
`part2(params, part1(params, batch), meta)` exactly. Codecs see only the pyramid (a plain dict of
NHWC float32 arrays), which is what lets any codec run on any detector.
"""

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

import jax
import numpy as np

Pyramid = Mapping[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ImageMeta:
  """Per-image geometry that maps network-input pixels back to original-image pixels.

  Attributes:
    orig_size: (N, 2) int32, original (height, width).
    scale: (N,) float32, resize factor applied to the original image.
    pad: (N, 2) float32, (top, left) padding added after resizing.
  """

  orig_size: Any
  scale: Any
  pad: Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Detections:
  """Fixed-size batched detections (padding rows have `valid == False`).

  Attributes:
    boxes: (N, K, 4) float32, x1 y1 x2 y2 in original-image pixels.
    scores: (N, K) float32.
    classes: (N, K) int32, contiguous class index in [0, num_classes).
    valid: (N, K) bool.
  """

  boxes: Any
  scores: Any
  classes: Any
  valid: Any

  def per_image(self) -> list[dict[str, np.ndarray]]:
    """Host-side list of per-image dicts holding only the valid rows."""
    boxes, scores, classes, valid = (np.asarray(a) for a in
                                     (self.boxes, self.scores, self.classes, self.valid))
    return [dict(boxes=boxes[i][valid[i]], scores=scores[i][valid[i]], classes=classes[i][valid[i]])
            for i in range(boxes.shape[0])]


class SplitDetector(Protocol):
  """What codecs, training and evaluation need from a detector."""

  name: str
  feature_names: Sequence[str]
  num_classes: int
  coco_category_ids: Sequence[int]  # contiguous class index -> COCO category id

  def preprocess(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, ImageMeta]:
    """Host-side: uint8 HWC RGB images -> network batch and geometry."""

  def part1(self, params: Any, batch: jax.Array) -> Pyramid:
    """Network input -> named feature pyramid (the codec's input)."""

  def part2(self, params: Any, features: Pyramid, meta: ImageMeta) -> Detections:
    """(Decoded) feature pyramid -> detections in original-image pixels."""

  def detect(self, params: Any, batch: jax.Array, meta: ImageMeta) -> Detections:
    """The whole detector; equals part2(params, part1(params, batch), meta)."""
