"""JAX YOLOv5 NMS against a brute-force numpy transcription of upstream + torchvision."""

import jax
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.detectors import nms


def reference_nms(pred, conf=0.001, iou=0.6, max_det=300, max_nms=30000, offset=4096.0):
  """Upstream v6.0 `non_max_suppression` (multi-label) + torchvision's CPU nms, in numpy float32."""
  x = pred[pred[:, 4] > np.float32(conf)]
  scores = x[:, 5:] * x[:, 4:5]
  i, j = np.nonzero(scores > np.float32(conf))
  xywh = x[i, :4]
  boxes = np.stack([xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2,
                    xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2], 1)
  s, c = scores[i, j], j
  if len(s) > max_nms:
    top = np.argsort(-s, kind="stable")[:max_nms]
    boxes, s, c = boxes[top], s[top], c[top]
  shifted = boxes + (c.astype(np.float32) * np.float32(offset))[:, None]
  x1, y1, x2, y2 = shifted.T
  areas = (x2 - x1) * (y2 - y1)
  order = np.argsort(-s, kind="stable")
  suppressed = np.zeros(len(s), bool)
  keep = []
  for a, ia in enumerate(order):
    if suppressed[ia]:
      continue
    keep.append(ia)
    rest = order[a + 1:]
    w = np.maximum(np.float32(0), np.minimum(x2[ia], x2[rest]) - np.maximum(x1[ia], x1[rest]))
    h = np.maximum(np.float32(0), np.minimum(y2[ia], y2[rest]) - np.maximum(y1[ia], y1[rest]))
    inter = w * h
    ovr = inter / (areas[ia] + areas[rest] - inter)
    suppressed[rest[ovr.astype(np.float64) > iou]] = True  # C++: float promoted to double
  keep = np.asarray(keep[:max_det], np.int64)
  return boxes[keep], s[keep], c[keep]


def _random_pred(rng, n_boxes, n_classes, clustered=True):
  """Decoded head rows with clusters of overlapping boxes, so NMS has work to do."""
  centres = rng.uniform(0, 640, (max(n_boxes // 20, 1), 2))
  xy = centres[rng.integers(0, len(centres), n_boxes)] + rng.normal(0, 6, (n_boxes, 2))
  if not clustered:
    xy = rng.uniform(0, 640, (n_boxes, 2))
  wh = rng.uniform(8, 120, (n_boxes, 2))
  obj = rng.uniform(0, 1, (n_boxes, 1)) ** 3
  cls = rng.uniform(0, 1, (n_boxes, n_classes)) ** 4
  return np.concatenate([xy, wh, obj, cls], 1).astype(np.float32)


def _check(pred, **kw):
  b, s, c, valid = (np.asarray(a) for a in jax.jit(
      lambda p: nms.yolo_nms_single(p, **kw))(pred))
  ref_kw = dict(conf=kw.get("conf_threshold", 0.001), iou=kw.get("iou_threshold", 0.6),
                max_det=kw.get("max_detections", 300), max_nms=kw.get("max_candidates", 30000))
  rb, rs, rc = reference_nms(pred, **ref_kw)
  n = int(valid.sum())
  assert n == len(rs) and valid[:n].all() and not valid[n:].any()
  np.testing.assert_array_equal(c[:n], rc)
  np.testing.assert_array_equal(s[:n], rs)
  np.testing.assert_array_equal(b[:n], rb)
  assert (b[n:] == 0).all() and (s[n:] == 0).all()
  return n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  pred = _random_pred(rng, 1500, 6)
  n = _check(pred, max_detections=300)
  assert 20 < n <= 300  # suppression happened and something survived


def test_truncations():
  rng = np.random.default_rng(3)
  pred = _random_pred(rng, 800, 5, clustered=False)
  assert _check(pred, max_detections=25) == 25  # stops after max_detections keeps
  _check(pred, max_candidates=200, conf_threshold=0.01, iou_threshold=0.45)  # top-200 candidates


def test_threshold_compared_as_double():
  """IoU exactly float32(0.6) > 0.6 (double): upstream suppresses; a float32 compare would not."""
  pred = np.zeros((2, 6), np.float32)
  pred[0] = [5, 5, 10, 10, 0.9, 1.0]  # x1 y1 x2 y2 = 0 0 10 10
  pred[1] = [5, 3, 10, 6, 0.8, 1.0]   # 0 0 10 6: IoU 60 / 100
  _, _, _, valid = nms.yolo_nms_single(pred)
  assert int(valid.sum()) == 1
  pred[1] = [5, 3, 10, 5.9, 0.8, 1.0]  # IoU 0.59
  _, _, _, valid = nms.yolo_nms_single(pred)
  assert int(valid.sum()) == 2


def test_multi_label_and_class_aware():
  """One box above threshold for two classes yields two detections that do not suppress each other."""
  pred = np.zeros((3, 8), np.float32)
  pred[0] = [50, 50, 20, 20, 0.9, 0.8, 0.5, 0.0]
  pred[1] = [51, 50, 20, 20, 0.9, 0.7, 0.0, 0.0]  # same class 0, IoU > 0.6: suppressed
  pred[2] = [300, 300, 20, 20, 0.0005, 1.0, 1.0, 1.0]  # objectness below conf: never a candidate
  boxes, scores, classes, valid = (np.asarray(a) for a in nms.yolo_nms_single(pred))
  assert int(valid.sum()) == 2
  np.testing.assert_array_equal(classes[:2], [0, 1])
  np.testing.assert_allclose(scores[:2], [0.72, 0.45], rtol=1e-6)
  np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])


def test_batched_and_empty():
  rng = np.random.default_rng(5)
  batch = np.stack([_random_pred(rng, 400, 4), np.zeros((400, 9), np.float32)])
  boxes, scores, classes, valid = nms.yolo_nms(batch, max_detections=50)
  assert boxes.shape == (2, 50, 4) and scores.shape == classes.shape == valid.shape == (2, 50)
  assert valid[0].sum() > 0 and valid[1].sum() == 0
  single = nms.yolo_nms_single(batch[0], max_detections=50)
  np.testing.assert_array_equal(np.asarray(single[0]), np.asarray(boxes[0]))
  with pytest.raises(errors.InvalidInputError):
    nms.yolo_nms(batch[0])
