"""YOLOv5 non-maximum suppression in JAX: fixed-size outputs, jit-able, batched with vmap.

Reproduces `utils/general.py::non_max_suppression` of ultralytics/yolov5 v6.0 with
`multi_label=True` and `agnostic=False`, followed by `torchvision.ops.nms`:

```
candidates: every (box a, class c) with obj_a > conf and score = obj_a * cls_ac > conf
            (multi-label: one box can be a candidate for several classes)
keep the max_candidates (30000) best by score
class-aware: boxes shifted by c * class_offset (4096), so different classes never overlap
greedy NMS in score order: keep the best, drop every later one with IoU > iou, repeat
at most max_detections (300) kept, in score order
```

The IoU is computed as torchvision's CPU kernel does it, in float32 on the shifted boxes,
`inter / (area_i + area_j - inter)`, and compared with the threshold as a double, so borderline
decisions match upstream. The greedy loop is a `lax.while_loop` that stops after
`max_detections` keeps or when no candidate is left: each step costs O(max_candidates).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hssc_jax import errors


def xywh_to_xyxy(xywh: jax.Array) -> jax.Array:
  """Centre/size boxes to corners, as upstream's `xywh2xyxy` (same float32 operations)."""
  x, y, w, h = (xywh[..., i] for i in range(4))
  return jnp.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], axis=-1)


def _float32_above(threshold: float) -> np.float32:
  """Smallest float32 t with (v > threshold) == (v >= t) for every float32 v (threshold a double)."""
  t = np.float32(threshold)
  if float(t) <= threshold:
    t = np.nextafter(t, np.float32(np.inf))
  return t


def _iou_row(box: jax.Array, area: jax.Array, boxes: jax.Array, areas: jax.Array) -> jax.Array:
  """IoU of one box with many, with torchvision's float32 operation order."""
  xx1 = jnp.maximum(box[0], boxes[:, 0])
  yy1 = jnp.maximum(box[1], boxes[:, 1])
  xx2 = jnp.minimum(box[2], boxes[:, 2])
  yy2 = jnp.minimum(box[3], boxes[:, 3])
  w = jnp.maximum(0.0, xx2 - xx1)
  h = jnp.maximum(0.0, yy2 - yy1)
  inter = w * h
  return inter / (area + areas - inter)


def greedy_nms(boxes: jax.Array, scores: jax.Array, valid: jax.Array, *, iou_threshold: float,
               max_output: int) -> tuple[jax.Array, jax.Array]:
  """Greedy NMS over boxes already sorted by descending score.

  Args:
    boxes: (K, 4) float32 x1 y1 x2 y2 (class offsets already added for class-aware NMS).
    scores: (K,) float32, non-increasing where valid.
    valid: (K,) bool, candidates taking part (invalid ones never suppress nor get kept).
    iou_threshold: a later box is suppressed when its IoU with a kept one is > this.
    max_output: stop after this many keeps.

  Returns:
    (indices (max_output,) int32 into the K candidates, in keep order; kept (max_output,) bool).
  """
  del scores  # the order carries them
  k = boxes.shape[0]
  thr = _float32_above(iou_threshold)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  positions = jnp.arange(k)

  def cond(state):
    alive, _, n = state
    return jnp.logical_and(n < max_output, jnp.any(alive))

  def body(state):
    alive, keep, n = state
    i = jnp.argmax(alive)  # first alive = best remaining (sorted input)
    iou = _iou_row(boxes[i], areas[i], boxes, areas)
    alive = alive & ~(iou >= thr) & (positions != i)  # NaN IoU never suppresses
    return alive, keep.at[n].set(i.astype(jnp.int32)), n + 1

  keep0 = jnp.zeros((max_output,), jnp.int32)
  _, keep, n = jax.lax.while_loop(cond, body, (valid, keep0, jnp.int32(0)))
  return keep, jnp.arange(max_output) < n


def yolo_nms_single(pred: jax.Array, *, conf_threshold: float = 0.001, iou_threshold: float = 0.6,
                    max_detections: int = 300, max_candidates: int = 30000,
                    class_offset: float = 4096.0
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Upstream YOLOv5 NMS on one image (see module doc).

  Args:
    pred: (A, 5 + C) float32 decoded head output: x y w h (network pixels), objectness, C class
      probabilities.

  Returns:
    boxes (max_detections, 4) x1 y1 x2 y2 in network pixels, scores (max_detections,),
    classes (max_detections,) int32, valid (max_detections,) bool; rows in score order, the
    padding rows (valid False) are zeros.
  """
  if pred.ndim != 2 or pred.shape[1] < 6:
    raise errors.InvalidInputError(f"pred must be (A, 5 + C) with C >= 1, got {pred.shape}")
  num_classes = pred.shape[1] - 5
  obj = pred[:, 4]
  score = pred[:, 5:] * obj[:, None]  # upstream: conf = obj * cls
  cand = (obj > conf_threshold)[:, None] & (score > conf_threshold)
  flat = jnp.where(cand, score, -jnp.inf).reshape(-1)
  k = min(max_candidates, flat.shape[0])
  top, idx = jax.lax.top_k(flat, k)  # ties: lower (box, class) index first
  valid = top > -jnp.inf
  box_idx, cls = idx // num_classes, idx % num_classes
  boxes = xywh_to_xyxy(pred[box_idx, :4])
  shifted = boxes + (cls.astype(jnp.float32) * jnp.float32(class_offset))[:, None]
  keep, kept = greedy_nms(shifted, top, valid, iou_threshold=iou_threshold,
                          max_output=max_detections)
  zero = lambda a: jnp.where(kept.reshape(kept.shape + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a))
  return zero(boxes[keep]), zero(top[keep]), zero(cls[keep].astype(jnp.int32)), kept


def yolo_nms(pred: jax.Array, **kwargs) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`yolo_nms_single` vmapped over a leading batch axis: pred (N, A, 5 + C)."""
  if pred.ndim != 3:
    raise errors.InvalidInputError(f"pred must be (N, A, 5 + C), got {pred.shape}")
  return jax.vmap(functools.partial(yolo_nms_single, **kwargs))(pred)
