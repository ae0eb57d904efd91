"""Faster R-CNN: anchors, preprocessing geometry, the split, converters, torch reference."""

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hssc_jax import errors
from hssc_jax.detectors import factory, faster_rcnn
from hssc_jax.detectors.convert import torchvision_frcnn as convert

# 128 x 192 inputs and 300 proposals keep the torch comparison fast
SMALL = dict(min_size=128, max_size=192)
POST_NMS = 300


def _reference():
  torch = pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location(
      "torchvision_resnet_fpn_reference",
      Path(__file__).with_name("torchvision_resnet_fpn_reference.py"))
  ref = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ref)
  torch.set_num_threads(1)
  return torch, ref


# ------------------------------------------------------------------------------ without torch


def test_cell_anchors_hand_computed():
  """w = s / sqrt(r), h = s sqrt(r), halved and rounded half to even (torchvision)."""
  cells = faster_rcnn.cell_anchors()
  np.testing.assert_array_equal(cells[0], [[-23, -11, 23, 11], [-16, -16, 16, 16],
                                           [-11, -23, 11, 23]])  # 45.25 / 2, 22.63 / 2
  np.testing.assert_array_equal(cells[4], [[-362, -181, 362, 181], [-256, -256, 256, 256],
                                           [-181, -362, 181, 362]])
  d2 = faster_rcnn.cell_anchors("detectron2")
  np.testing.assert_allclose(d2[0, 0], [-16 * math.sqrt(2), -8 * math.sqrt(2), 16 * math.sqrt(2),
                                        8 * math.sqrt(2)], rtol=1e-6)


def test_grid_anchors_strides_from_integer_division():
  """800 x 1088 input: P6 is 13 x 17, so torchvision's stride is (800 // 13, 1088 // 17) =
  (61, 64)."""
  sizes = [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]
  anchors = faster_rcnn.grid_anchors(sizes, (800, 1088))
  assert [a.shape[0] for a in anchors] == [3 * h * w for h, w in sizes]
  # level 0, location (y 0, x 1), anchors in ratio order; then (y 1, x 0)
  np.testing.assert_array_equal(anchors[0][3:6], [[-19, -11, 27, 11], [-12, -16, 20, 16],
                                                  [-7, -23, 15, 23]])
  np.testing.assert_array_equal(anchors[0][272 * 3], [-23, -7, 23, 15])
  np.testing.assert_array_equal(anchors[4][17 * 3 + 1], [-256, 61 - 256, 256, 61 + 256])
  np.testing.assert_array_equal(anchors[4][4], [64 - 256, -256, 64 + 256, 256])
  d2 = faster_rcnn.grid_anchors(sizes, (800, 1088), "detectron2")
  np.testing.assert_allclose(d2[4][17 * 3 + 1], [-256, 64 - 256, 256, 64 + 256])


def test_preprocess_geometry():
  """480 x 640: torchvision 800 x 1066 (float32 scale 1.6666667461, floor), detectron2 800 x 1067
  (round half up); both padded to 800 x 1088; a tall image fills the long-side limit."""
  img = np.zeros((480, 640, 3), np.uint8)
  tv = faster_rcnn.FasterRCNN()
  batch, meta = tv.preprocess([img, np.zeros((1000, 300, 3), np.uint8)])
  assert batch.shape == (2, 1344, 1088, 3) and batch.dtype == np.float32
  np.testing.assert_array_equal(meta.resized_size, [[800, 1066], [1333, 399]])
  np.testing.assert_array_equal(meta.orig_size, [[480, 640], [1000, 300]])
  np.testing.assert_array_equal(meta.pad, 0)
  assert meta.scale[0] == np.float32(1.6666667461395264)
  # black pixels normalise to -mean / std, the padding stays 0
  np.testing.assert_allclose(batch[0, 0, 0], -np.array(faster_rcnn.TORCHVISION_MEAN)
                             / faster_rcnn.TORCHVISION_STD, rtol=1e-6)
  assert np.all(batch[0, 800:] == 0) and np.all(batch[0, :, 1066:] == 0)
  d2 = faster_rcnn.FasterRCNN(convention="detectron2")
  batch, meta = d2.preprocess([img])
  assert batch.shape == (1, 800, 1088, 3)
  np.testing.assert_array_equal(meta.resized_size, [[800, 1067]])
  np.testing.assert_allclose(batch[0, 0, 0], -np.array(faster_rcnn.DETECTRON2_MEAN_BGR), rtol=1e-6)
  batch, meta = faster_rcnn.FasterRCNN(pad_to=1344).preprocess([img])
  assert batch.shape == (1, 1344, 1344, 3)
  np.testing.assert_array_equal(meta.resized_size, [[800, 1066]])
  with pytest.raises(errors.ConfigError, match="pad_to"):
    faster_rcnn.FasterRCNN(pad_to=1000)


def test_resize_bilinear_identity_and_constant():
  x = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
  np.testing.assert_array_equal(faster_rcnn.resize_bilinear(x, 5, 7), x)
  c = np.full((4, 6, 3), 2.5, np.float32)
  np.testing.assert_allclose(faster_rcnn.resize_bilinear(c, 9, 13), 2.5, rtol=1e-6)


@pytest.fixture(scope="module")
def random_detector():
  det = faster_rcnn.FasterRCNN(rpn_post_nms_top_n=POST_NMS, **SMALL)
  return det, det.init(jax.random.PRNGKey(0))


def test_split_equals_detect_and_shapes(random_detector):
  det, params = random_detector
  img = (np.random.default_rng(0).random((96, 150, 3)) * 255).astype(np.uint8)
  batch, meta = det.preprocess([img])
  assert batch.shape == (1, 128, 192, 3)
  pyramid = det.part1(params, jnp.asarray(batch))
  assert {k: v.shape for k, v in pyramid.items()} == {
      "p2": (1, 32, 48, 256), "p3": (1, 16, 24, 256), "p4": (1, 8, 12, 256), "p5": (1, 4, 6, 256)}
  a = det.part2(params, pyramid, meta)
  b = det.detect(params, jnp.asarray(batch), meta)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert a.boxes.shape == (1, 100, 4) and a.classes.dtype == jnp.int32
  boxes, _, valid = det.proposals(params, pyramid, meta)
  assert boxes.shape == (1, POST_NMS, 4) and 0 < int(valid.sum()) <= POST_NMS
  v = np.asarray(boxes[0])[np.asarray(valid[0])]
  assert v[:, 2].max() <= 191 and v[:, 3].max() <= 122 and v.min() >= 0  # clipped to 122 x 191


def test_orbax_checkpoint_round_trip(random_detector, tmp_path):
  """Converted params saved as an orbax directory load back identical, settings included."""
  det, params = random_detector
  path = faster_rcnn.save(tmp_path / "frcnn", det, params)
  det2, params2 = faster_rcnn.load(path)
  assert det2 == det
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(errors.CheckpointError, match="refusing to overwrite"):
    faster_rcnn.save(path, det, params)
  (path / "detector.json").write_text('{"detector": "yolov5", "fields": {}}')
  with pytest.raises(errors.CheckpointError, match="not a Faster R-CNN"):
    faster_rcnn.load(path)


def test_interface_and_errors(random_detector):
  det, params = random_detector
  assert det.num_classes == 90 and list(det.coco_category_ids) == list(range(1, 91))
  assert len(faster_rcnn.FasterRCNN(convention="detectron2").coco_category_ids) == 80
  with pytest.raises(errors.InvalidInputError):
    det.part1(params, jnp.zeros((1, 100, 96, 3)))
  with pytest.raises(errors.InvalidInputError):
    det.part2(params, {"p2": jnp.zeros((1, 8, 8, 256))}, None)
  with pytest.raises(errors.InvalidInputError):
    det.preprocess([np.zeros((10, 10), np.uint8)])
  with pytest.raises(errors.ConfigError):
    faster_rcnn.FasterRCNN(convention="mmdet")


def test_factory_config_errors(tmp_path):
  det, params = factory.build({"name": "faster_rcnn", "weights": "random", "convention":
                               "detectron2", "min_size": 128})
  assert det.convention == "detectron2" and det.min_size == 128 and "rpn" in params
  with pytest.raises(errors.ConfigError, match="not found"):
    factory.build({"name": "faster_rcnn", "weights": str(tmp_path / "none.pth")})
  with pytest.raises(errors.ConfigError, match="weights"):
    factory.build({"name": "faster_rcnn", "weights": ""})
  with pytest.raises(errors.ConfigError, match="depth"):
    factory.build({"name": "faster_rcnn", "weights": "random", "depth": 34})


def test_converter_errors_and_detectron2_names():
  rng = np.random.default_rng(0)
  tv = {"rpn.head.conv.weight": rng.normal(size=(256, 256, 3, 3)), "rpn.head.conv.bias":
        np.zeros(256), "rpn.head.cls_logits.weight": rng.normal(size=(3, 256, 1, 1)),
        "rpn.head.cls_logits.bias": np.zeros(3),
        "rpn.head.bbox_pred.weight": rng.normal(size=(12, 256, 1, 1)),
        "rpn.head.bbox_pred.bias": np.zeros(12),
        "roi_heads.box_head.fc6.weight": rng.normal(size=(16, 256 * 49)),
        "roi_heads.box_head.fc6.bias": np.zeros(16),
        "roi_heads.box_head.fc7.weight": rng.normal(size=(16, 16)),
        "roi_heads.box_head.fc7.bias": np.zeros(16),
        "roi_heads.box_predictor.cls_score.weight": rng.normal(size=(81, 16)),
        "roi_heads.box_predictor.cls_score.bias": np.zeros(81),
        "roi_heads.box_predictor.bbox_pred.weight": rng.normal(size=(320, 16)),
        "roi_heads.box_predictor.bbox_pred.bias": np.zeros(320)}
  heads = convert.convert_heads(tv, background_last=True)
  w6 = tv["roi_heads.box_head.fc6.weight"].reshape(16, 256, 7, 7)
  np.testing.assert_allclose(heads["roi_heads"]["fc6"]["kernel"][(2 * 7 + 3) * 256 + 5],
                             w6[:, 5, 2, 3], rtol=1e-6)  # NHWC row (y 2, x 3, c 5)
  assert heads["rpn"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  with pytest.raises(errors.CheckpointError, match="bbox_pred"):
    convert.convert_heads(tv)  # torchvision layout wants 4 * 81 box outputs
  d2 = {k.replace("rpn.head.conv.", "proposal_generator.rpn_head.conv.")
        .replace("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits.")
        .replace("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas.")
        .replace("fc6", "fc1").replace("fc7", "fc2"): v for k, v in tv.items()}
  renamed = {}
  for k, v in d2.items():
    for pattern, repl in convert._D2_HEADS:  # pylint: disable=protected-access
      k = k.replace(pattern.replace("\\", ""), repl)
    renamed[k] = v
  assert set(renamed) == set(tv)
  missing = dict(tv)
  del missing["roi_heads.box_head.fc7.bias"]
  with pytest.raises(errors.CheckpointError, match="fc7.bias"):
    convert.convert_heads(missing, background_last=True)
  bad = dict(tv, **{"rpn.head.cls_logits.weight": np.full((3, 256, 1, 1), np.nan)})
  with pytest.raises(errors.CheckpointError, match="NaN"):
    convert.convert_heads(bad, background_last=True)


# -------------------------------------------------------------------------- torch reference


def _iou(a, b):
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), -1)
  area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
  return inter / (area(a)[:, None] + area(b)[None] - inter)


def _match(ref_boxes, ref_scores, boxes, scores, ref_labels=None, labels=None):
  """Every reference row matched to a row with IoU > 0.99, |score diff| <= 1e-4 (same label).
  Returns (max box error, max score error) over the matched pairs; robust to near-tie order."""
  iou = _iou(ref_boxes, boxes)
  ok = (iou > 0.99) & (np.abs(ref_scores[:, None] - scores[None]) <= 1e-4)
  if ref_labels is not None:
    ok &= ref_labels[:, None] == labels[None]
  assert ok.any(1).all(), f"{(~ok.any(1)).sum()} of {len(ref_boxes)} reference rows unmatched"
  j = np.argmax(np.where(ok, iou, -1), 1)
  return (float(np.abs(ref_boxes - boxes[j]).max()), float(np.abs(ref_scores - scores[j]).max()))


@pytest.fixture(scope="module")
def torch_frcnn():
  """Seeded random torchvision-layout Faster R-CNN and its converted params."""
  _, ref = _reference()
  model = ref.randomize_heads(
      ref.randomize(ref.FasterRCNNReference(rpn_post_nms_top_n=POST_NMS), seed=0), seed=0)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  return model, convert.convert_frcnn_state_dict(state)


def _compare(model, params, batch_nchw, image_sizes, original_sizes, jax_batch=None, meta=None,
             det=None):
  torch, _ = _reference()
  with torch.no_grad():
    out = model(batch_nchw, image_sizes, original_sizes)
  det = det or faster_rcnn.FasterRCNN(rpn_post_nms_top_n=POST_NMS, **SMALL)
  label_offset = 1 if det.torchvision else 0
  if meta is None:
    meta = faster_rcnn.FasterRCNNMeta(
        np.asarray(original_sizes, np.int32), np.ones(len(image_sizes), np.float32),
        np.zeros((len(image_sizes), 2), np.float32), np.asarray(image_sizes, np.int32))
  x = jnp.asarray(batch_nchw.numpy().transpose(0, 2, 3, 1)) if jax_batch is None else jax_batch
  pyramid = det.part1(params, x)
  pboxes, pscores, pvalid = (np.asarray(a) for a in det.proposals(params, pyramid, meta))
  dets = det.part2(params, pyramid, meta).per_image()
  errs = {}
  for i in range(len(image_sizes)):
    tb, ts = out["proposals"][i].numpy(), out["proposal_scores"][i].numpy()
    assert abs(int(pvalid[i].sum()) - len(tb)) <= 2, (pvalid[i].sum(), len(tb))
    assert len(tb) >= 100, "too few proposals: the comparison would be weak"
    jb, js = pboxes[i][pvalid[i]], pscores[i][pvalid[i]]
    np.testing.assert_allclose(js[:50], ts[:50], rtol=1e-4, atol=1e-5)
    errs["proposal_box"], errs["proposal_score"] = _match(tb[:50], ts[:50], jb, js)
    d = out["detections"][i]
    rb, rs, rl = d["boxes"].numpy(), d["scores"].numpy(), d["labels"].numpy()
    assert len(rb) >= 10 and abs(len(dets[i]["boxes"]) - len(rb)) <= 2
    n = min(50, len(rb))
    errs["det_box"], errs["det_score"] = _match(rb[:n], rs[:n], dets[i]["boxes"],
                                                dets[i]["scores"], rl[:n],
                                                dets[i]["classes"] + label_offset)
  assert errs["proposal_box"] <= 1e-3 and errs["det_box"] <= 1e-3, errs
  return errs


@pytest.mark.slow
def test_matches_reference_on_normalised_tensor(torch_frcnn):
  """1 x 3 x 128 x 192 normalised input, image size = batch size."""
  torch, _ = _reference()
  model, params = torch_frcnn
  x = torch.randn((1, 3, 128, 192), generator=torch.Generator().manual_seed(1))
  _compare(model, params, x, [(128, 192)], [(128, 192)])


def test_matches_reference_through_preprocess(torch_frcnn):
  """A 96 x 150 image through torchvision's transform (resize 1.28 -> 122 x 191, pad 128 x 192)
  and through `preprocess`: same batch, same detections in original pixels."""
  torch, ref = _reference()
  model, params = torch_frcnn
  img = (np.random.default_rng(3).random((96, 150, 3)) * 255).astype(np.uint8)
  batch, sizes, orig = ref.transform([torch.from_numpy(img / np.float32(255)).permute(2, 0, 1)
                                      .float()], **SMALL)
  ours, meta = faster_rcnn.FasterRCNN(**SMALL).preprocess([img])
  assert sizes == [tuple(meta.resized_size[0])] == [(122, 191)]
  np.testing.assert_allclose(ours, batch.numpy().transpose(0, 2, 3, 1), atol=2e-5)
  _compare(model, params, batch, sizes, orig, jnp.asarray(ours), meta)


def test_resize_matches_torchvision_transform():
  """Output sizes of torchvision's resize (float32 reciprocal scale, floor) for COCO-like sizes."""
  torch, ref = _reference()
  det = faster_rcnn.FasterRCNN()
  for h, w in [(480, 640), (427, 640), (640, 481), (333, 500), (200, 1333), (612, 612)]:
    _, sizes, _ = ref.transform([torch.zeros(1, h, w)])
    assert det.resized_shape(h, w)[1:] == sizes[0], (h, w)


@pytest.mark.slow
def test_matches_reference_on_a_real_image(torch_frcnn, shared):
  """One COCO image, resized by both transforms to a 128-pixel short side."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  torch, ref = _reference()
  path = sorted(shared("data", "coco-mini", "val2017").glob("*.jpg"))[0]
  img = np.asarray(Image.open(path).convert("RGB"))
  model, params = torch_frcnn
  batch, sizes, orig = ref.transform([torch.from_numpy(img / np.float32(255)).permute(2, 0, 1)
                                      .float()], **SMALL)
  ours, meta = faster_rcnn.FasterRCNN(**SMALL).preprocess([img])
  np.testing.assert_allclose(ours, batch.numpy().transpose(0, 2, 3, 1), atol=2e-5)
  _compare(model, params, batch, sizes, orig, jnp.asarray(ours), meta)


def test_load_torchvision_pth(torch_frcnn, tmp_path):
  torch, _ = _reference()
  model, params = torch_frcnn
  path = tmp_path / "frcnn.pth"
  torch.save(model.state_dict(), path)
  det, loaded = factory.build({"name": "faster_rcnn", "weights": str(path), "depth": 50})
  assert det.convention == "torchvision" and det.arch == "resnet50"
  assert isinstance(det, faster_rcnn.FasterRCNN)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  # A maskrcnn_resnet50_fpn state_dict: the box path converts, the mask head is left out.
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  state["roi_heads.mask_head.mask_fcn1.0.weight"] = np.zeros((256, 256, 3, 3), np.float32)
  state["roi_heads.mask_predictor.mask_fcn_logits.weight"] = np.zeros((91, 256, 1, 1), np.float32)
  masked = convert.convert_frcnn_state_dict(state)
  for a, b in zip(jax.tree.leaves(masked), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_detectron2_convention_runs():
  det = faster_rcnn.FasterRCNN(convention="detectron2", stride_in_1x1=True, **SMALL)
  params = det.init(jax.random.PRNGKey(1))
  batch, meta = det.preprocess([np.full((96, 150, 3), 128, np.uint8)])
  out = det.detect(params, jnp.asarray(batch), meta)
  assert out.boxes.shape == (1, 100, 4) and out.classes.shape == (1, 100)


def test_detectron2_checkpoint_conversion(torch_frcnn, tmp_path):
  """A detectron2-named .pkl (backbone + heads, 81-way predictor) -> the same backbone, RPN and
  fc6/fc7 params as the torchvision names, predictor background last."""
  _reference()
  spec = importlib.util.spec_from_file_location(
      "test_resnet_fpn_names", Path(__file__).with_name("test_resnet_fpn.py"))
  names = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(names)
  model, params = torch_frcnn
  heads = {"rpn.head.conv.0.0.": "proposal_generator.rpn_head.conv.",
           "rpn.head.cls_logits.": "proposal_generator.rpn_head.objectness_logits.",
           "rpn.head.bbox_pred.": "proposal_generator.rpn_head.anchor_deltas.",
           "roi_heads.box_head.fc6.": "roi_heads.box_head.fc1.",
           "roi_heads.box_head.fc7.": "roi_heads.box_head.fc2."}
  d2 = {}
  for k, v in model.state_dict().items():
    if k.startswith("roi_heads.box_predictor."):
      continue
    for a, b in heads.items():
      k = k.replace(a, b)
    if k.startswith("backbone."):
      k = names._d2_name(k)  # pylint: disable=protected-access
    d2[k] = v.numpy()
  rng = np.random.default_rng(0)
  d2.update({"roi_heads.box_predictor.cls_score.weight": rng.normal(size=(81, 1024)),
             "roi_heads.box_predictor.cls_score.bias": rng.normal(size=81),
             "roi_heads.box_predictor.bbox_pred.weight": rng.normal(size=(320, 1024)),
             "roi_heads.box_predictor.bbox_pred.bias": rng.normal(size=320)})
  import pickle  # pylint: disable=g-import-not-at-top
  path = tmp_path / "model_final.pkl"
  path.write_bytes(pickle.dumps({"model": d2, "__author__": "test"}))
  det, loaded = faster_rcnn.load(path)
  assert det.convention == "detectron2" and det.stride_in_1x1 and det.num_logits == 81
  for part in ("backbone", "rpn"):
    for a, b in zip(jax.tree.leaves(loaded[part]), jax.tree.leaves(params[part])):
      np.testing.assert_array_equal(a, b)
  for k in ("fc6", "fc7"):
    np.testing.assert_array_equal(loaded["roi_heads"][k]["kernel"],
                                  params["roi_heads"][k]["kernel"])
  np.testing.assert_allclose(loaded["roi_heads"]["cls_score"]["kernel"],
                             d2["roi_heads.box_predictor.cls_score.weight"].T, rtol=1e-6)
  assert loaded["roi_heads"]["bbox_pred"]["kernel"].shape == (1024, 320)


@pytest.mark.slow
def test_full_size_input_runs():
  """Default settings on a 480 x 640 image: 800 x 1088 batch, P6 13 x 17, 1000 proposals."""
  det = faster_rcnn.FasterRCNN()
  params = det.init(jax.random.PRNGKey(2))
  img = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
  batch, meta = det.preprocess([img])
  pyramid = det.part1(params, jnp.asarray(batch))
  boxes, _, valid = det.proposals(params, pyramid, meta)
  assert boxes.shape == (1, 1000, 4) and int(valid.sum()) > 100
  out = det.part2(params, pyramid, meta)
  assert out.boxes.shape == (1, 100, 4)
  kept = np.asarray(out.boxes[0])[np.asarray(out.valid[0])]
  assert np.all(kept[:, 2] <= 640 + 1e-3) and np.all(kept[:, 3] <= 480 + 1e-3)


@pytest.mark.slow
def test_detectron2_convention_matches_reference(tmp_path):
  """detectron2 semantics (MSRA blocks, unrounded anchors, logits, RoIAlignV2, background last,
  clipped output) against the reference's detectron2 mode, through a detectron2-named .pkl."""
  torch, ref = _reference()
  spec = importlib.util.spec_from_file_location(
      "test_resnet_fpn_names", Path(__file__).with_name("test_resnet_fpn.py"))
  names = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(names)
  model = ref.randomize_heads(ref.randomize(ref.FasterRCNNReference(
      rpn_post_nms_top_n=POST_NMS, detectron2=True, stride_in_1x1=True), seed=4), seed=4)
  heads = {"rpn.head.conv.0.0.": "proposal_generator.rpn_head.conv.",
           "rpn.head.cls_logits.": "proposal_generator.rpn_head.objectness_logits.",
           "rpn.head.bbox_pred.": "proposal_generator.rpn_head.anchor_deltas.",
           "roi_heads.box_head.fc6.": "roi_heads.box_head.fc1.",
           "roi_heads.box_head.fc7.": "roi_heads.box_head.fc2."}
  d2 = {}
  for k, v in model.state_dict().items():
    for a, b in heads.items():
      k = k.replace(a, b)
    if k.startswith("backbone."):
      k = names._d2_name(k)  # pylint: disable=protected-access
    d2[k] = v.numpy()
  import pickle  # pylint: disable=g-import-not-at-top
  path = tmp_path / "model_final.pkl"
  path.write_bytes(pickle.dumps({"model": d2}))
  det, params = faster_rcnn.load(path, rpn_post_nms_top_n=POST_NMS, **SMALL)
  assert det.convention == "detectron2" and det.stride_in_1x1
  x = torch.randn((1, 3, 128, 192), generator=torch.Generator().manual_seed(5))
  errs = _compare(model, params, x, [(120, 180)], [(96, 144)], det=det)
  assert errs["det_score"] <= 1e-4, errs
