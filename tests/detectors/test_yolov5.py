"""The Flax YOLOv5 v6.0: architecture, split exactness, and the upstream PyTorch reference outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.detectors import yolov5
from hssc_jax.detectors import yolov5_weights
from hssc_jax.detectors.base import ImageMeta

# Parameter counts printed by upstream v6.0 (`Model.info()`), BatchNorm fused / not fused.
UPSTREAM_PARAMS = {"n": (1867405, 1872157), "s": (7225885, 7235389), "m": (21172173, 21190557),
                   "l": (46533693, 46563709), "x": (86705005, 86749405)}
RAW_TOL = dict(box=2e-2, score=5e-5)  # vs PyTorch fp32 (boxes in 640-pixel units)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("size", list(yolov5.MULTIPLES))
def test_architecture_of_each_size(size):
  """Parameter counts equal upstream's and the pyramid has strides 8/16/32 (shapes only)."""
  for fused, expected in zip((True, False), UPSTREAM_PARAMS[size]):
    det = yolov5.YOLOv5(size=size, img_size=64, fused=fused)
    variables = jax.eval_shape(det.init, jax.random.PRNGKey(0))
    assert _count(variables["params"]) == expected
    assert ("batch_stats" in variables) == (not fused)
  feats = jax.eval_shape(det.part1, variables, jnp.zeros((2, 64, 96, 3)))
  c3, c4, c5 = det.feature_channels
  assert {k: v.shape for k, v in feats.items()} == {
      "p3": (2, 8, 12, c3), "p4": (2, 4, 6, c4), "p5": (2, 2, 3, c5)}
  raw = jax.eval_shape(det.head, variables, feats)
  assert raw.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 85)


def test_random_model_runs_and_splits_exactly():
  det = yolov5.YOLOv5(size="n", img_size=64, num_classes=3)
  variables = det.init(jax.random.PRNGKey(1))
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
            rng.integers(0, 256, (64, 30, 3), dtype=np.uint8)]
  x, meta = det.preprocess(images)
  assert x.shape == (2, 64, 64, 3) and x.dtype == np.float32
  feats = det.part1(variables, x)
  assert all(np.isfinite(np.asarray(f)).all() for f in feats.values())
  split = det.part2(variables, feats, meta)
  whole = det.detect(variables, x, meta)
  for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert split.boxes.shape == (2, 300, 4) and split.classes.dtype == jnp.int32
  raw = np.asarray(det.raw(variables, x))
  assert raw.shape == (2, 3 * (64 + 16 + 4), 8) and (raw[..., 4:] >= 0).all() and (raw[..., 4:] <= 1).all()


def test_decode_v6():
  """xy = (2 sigmoid - 0.5 + grid) stride, wh = (2 sigmoid)^2 anchor, rows (level, anchor, y, x)."""
  logits = [jnp.zeros((1, 2, 3, 3 * 6)), jnp.zeros((1, 1, 2, 3 * 6)), jnp.zeros((1, 1, 1, 3 * 6))]
  logits[0] = logits[0].at[0, 1, 2, 6:12].set(jnp.array([2.0, -1.0, 0.5, 0.0, 3.0, -2.0]))
  out = np.asarray(yolov5.decode(logits, yolov5.ANCHORS_V6, 1))
  assert out.shape == (1, 3 * 6 + 3 * 2 + 3 * 1, 6)
  row = out[0, 1 * 6 + 1 * 3 + 2]  # level 0, anchor 1, y 1, x 2
  sig = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5, 0.0, 3.0, -2.0])))
  np.testing.assert_allclose(row[:2], (sig[:2] * 2 - 0.5 + [2, 1]) * 8, rtol=1e-6)
  np.testing.assert_allclose(row[2:4], (sig[2:4] * 2) ** 2 * [16, 30], rtol=1e-6)
  np.testing.assert_allclose(row[4:], sig[4:], rtol=1e-6)
  # Anchor-free zero logits on level 2, anchor 2: centre of cell (0, 0), wh = anchor.
  np.testing.assert_allclose(out[0, -1, :4], [0.5 * 32, 0.5 * 32, 373, 326], rtol=1e-6)


def test_bad_configuration_and_input():
  with pytest.raises(errors.ConfigError, match="unknown YOLOv5 size"):
    yolov5.YOLOv5(size="q")
  with pytest.raises(errors.ConfigError, match="multiple of 32"):
    yolov5.YOLOv5(img_size=100)
  det = yolov5.YOLOv5(size="n", img_size=64)
  variables = jax.eval_shape(det.init, jax.random.PRNGKey(0))
  with pytest.raises(errors.InvalidInputError, match="multiples of 32"):
    jax.eval_shape(det.part1, variables, jnp.zeros((1, 60, 64, 3)))


def test_build_from_config_random():
  det, variables = yolov5_weights.build_from_config(
      {"name": "yolov5", "size": "n", "img_size": 64, "weights": "random"})
  assert det.img_size == 64 and _count(variables["params"]) == UPSTREAM_PARAMS["n"][0]
  with pytest.raises(errors.ConfigError, match="not found"):
    yolov5_weights.build_from_config({"size": "n", "weights": "/nonexistent/yolo.pt"})


# ---- with the shared ultralytics weights and the upstream reference outputs ----

@pytest.fixture(scope="module")
def converted(yolov5n_weights):
  return yolov5_weights.load(yolov5n_weights)


@pytest.fixture(scope="module")
def reference_batch(converted, coco_mini):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  ref = coco_mini.parents[1] / "reference" / "yolov5n-coco-mini"
  if not ref.is_dir():
    pytest.skip(f"shared reference outputs not available: {ref}")
  val = coco_mini / "val2017"
  names = ("000000000139", "000000000802")
  det, _ = converted
  x, meta = det.preprocess([np.asarray(Image.open(val / f"{n}.jpg").convert("RGB"))
                            for n in names])
  return x, meta, [ref / n for n in names]


def test_pyramid_shapes_and_split(converted, reference_batch):
  det, variables = converted
  x, meta, _ = reference_batch
  assert (det.size, det.num_classes, det.fused) == ("n", 80, True)
  feats = det.part1(variables, x)
  assert {k: v.shape for k, v in feats.items()} == {
      "p3": (2, 80, 80, 64), "p4": (2, 40, 40, 128), "p5": (2, 20, 20, 256)}
  assert all(np.isfinite(np.asarray(f)).all() for f in feats.values())
  split = det.part2(variables, feats, meta)
  whole = det.detect(variables, x, meta)
  for a, b in zip(jax.tree.leaves(split), jax.tree.leaves(whole)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_raw_matches_pytorch_reference(converted, reference_batch):
  det, variables = converted
  x, _, refs = reference_batch
  raw = np.asarray(det.raw(variables, x))
  for i, ref in enumerate(refs):
    expected = np.load(f"{ref}_raw.npy")[0]
    np.testing.assert_allclose(raw[i, :, :4], expected[:, :4], rtol=0, atol=RAW_TOL["box"])
    np.testing.assert_allclose(raw[i, :, 4:], expected[:, 4:], rtol=0, atol=RAW_TOL["score"])


def test_detections_match_pytorch_reference(converted, reference_batch):
  """NMS output, mapped back to letterboxed pixels, equals upstream's `*_det_letterboxed.npy`."""
  det, variables = converted
  x, meta, refs = reference_batch
  out = det.detect(variables, x, meta)
  boxes, scores, classes, valid = (np.asarray(a) for a in (out.boxes, out.scores, out.classes,
                                                           out.valid))
  pad, scale = np.asarray(meta.pad), np.asarray(meta.scale)
  for i, ref in enumerate(refs):
    expected = np.load(f"{ref}_det_letterboxed.npy")
    n = int(valid[i].sum())
    assert n == len(expected)
    letterboxed = boxes[i, :n] * scale[i] + np.array([pad[i, 1], pad[i, 0]] * 2, np.float32)
    # Boxes clipped to the image in `detect`: clip the reference the same way.
    h, w = np.asarray(meta.orig_size)[i]
    lo = np.array([pad[i, 1], pad[i, 0]] * 2)
    hi = lo + np.array([w, h, w, h]) * scale[i]
    ref_boxes = np.clip(expected[:, :4], lo, hi)
    top = 50  # near-equal scores may swap places further down on another CPU
    np.testing.assert_array_equal(classes[i, :top], expected[:top, 5].astype(np.int32))
    np.testing.assert_allclose(letterboxed[:top], ref_boxes[:top], atol=1e-2)
    np.testing.assert_allclose(scores[i, :n], expected[:, 4], atol=1e-5)
    # Every detection has a counterpart of the same class with the same box.
    for b, c in zip(letterboxed, classes[i, :n]):
      same = ref_boxes[expected[:, 5] == c]
      assert np.abs(same - b).max(axis=1).min() < 1e-2
