"""Detector evaluation: the harness with a small stand-in detector, and the real YOLOv5n on coco-mini."""

import importlib.util
import json
from pathlib import Path
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from hssc_jax import detector_eval
from hssc_jax import errors
from hssc_jax import eval_lib
from hssc_jax.data import pipeline
from hssc_jax.data import synthetic
from hssc_jax.detectors.base import Detections, ImageMeta
from hssc_jax.metrics import coco

REPO = Path(__file__).resolve().parents[1]


def _config_module():
  spec = importlib.util.spec_from_file_location("detector_config",
                                                REPO / "configs" / "eval" / "detector.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class SaturationDetector:
  """A stand-in detector for generated sets with one shape per image (a harness, not a model).

  It works from pixels alone: letterbox to `size` (like YOLO's preprocessing), saturation
  max(RGB) - min(RGB) as the one-level "pyramid", then the box of the saturated pixels mapped back
  through the letterbox geometry, and the class from how much of the box the shape fills (star
  < triangle < circle < square).
  """

  name = "saturation"
  feature_names = ("p3",)
  num_classes = 4
  coco_category_ids = (1, 2, 3, 4)
  # fill-ratio bins (star, triangle, circle, square) -> index into synthetic.CATEGORIES
  _BIN_TO_CLASS = np.array([3, 2, 0, 1])

  def __init__(self, size: int = 96):
    self.size = size

  def init(self):
    return dict(threshold=jnp.float32(80 / 255), fill_edges=jnp.array([0.44, 0.66, 0.9]))

  def preprocess(self, images):
    s = self.size
    batch = np.full((len(images), s, s, 3), 114 / 255, np.float32)
    orig, scale, pad = [], [], []
    for i, im in enumerate(images):
      h, w = im.shape[:2]
      r = min(s / h, s / w)
      nh, nw = round(h * r), round(w * r)
      top, left = (s - nh) // 2, (s - nw) // 2
      resized = Image.fromarray(im).resize((nw, nh), Image.BILINEAR)
      batch[i, top:top + nh, left:left + nw] = np.asarray(resized, np.float32) / 255
      orig.append((h, w))
      scale.append(r)
      pad.append((top, left))
    return batch, ImageMeta(orig_size=np.asarray(orig, np.int32),
                            scale=np.asarray(scale, np.float32), pad=np.asarray(pad, np.float32))

  def part1(self, params, batch):
    del params
    return {"p3": (batch.max(-1) - batch.min(-1))[..., None]}

  def part2(self, params, features, meta):
    mask = features["p3"][..., 0] > params["threshold"]
    n = mask.shape[1]
    rows, cols = mask.any(2), mask.any(1)
    y1, y2 = jnp.argmax(rows, 1), n - jnp.argmax(rows[:, ::-1], 1)
    x1, x2 = jnp.argmax(cols, 1), n - jnp.argmax(cols[:, ::-1], 1)
    fill = mask.sum((1, 2)) / jnp.maximum((y2 - y1) * (x2 - x1), 1)
    classes = jnp.asarray(self._BIN_TO_CLASS)[jnp.digitize(fill, params["fill_edges"])]
    boxes = jnp.stack([x1, y1, x2, y2], -1).astype(jnp.float32)
    top, left = meta.pad[:, 0:1], meta.pad[:, 1:2]
    boxes = (boxes - jnp.concatenate([left, top, left, top], 1)) / meta.scale[:, None]
    h, w = meta.orig_size[:, 0:1], meta.orig_size[:, 1:2]
    boxes = jnp.clip(boxes, 0, jnp.concatenate([w, h, w, h], 1).astype(jnp.float32))
    return Detections(boxes=boxes[:, None], scores=jnp.ones_like(fill)[:, None],
                      classes=classes[:, None].astype(jnp.int32), valid=mask.any((1, 2))[:, None])

  def detect(self, params, batch, meta):
    return self.part2(params, self.part1(params, batch), meta)


def _shapes_config(root, data_dir, **data):
  config = _config_module().get_config()
  config.unlock()
  config.detector.name = "saturation"
  config.data.root = str(root)
  config.data.split = "val"
  config.data.data_dir = str(data_dir)
  config.batch_size = 3
  config.progress = False
  for k, v in data.items():
    config.data[k] = v
  config.lock()
  return config


def test_harness_with_stand_in_detector(tmp_path, capsys):
  root = tmp_path / "shapes"
  synthetic.make_shapes_dataset(root, split="val", num_images=9, image_size=(120, 160),
                                vary_size=True, max_objects=1, seed=0)
  config = _shapes_config(root, tmp_path / "tfds", max_images=7)  # batches of 3, 3, 1 (padded)
  detector = SaturationDetector()
  metrics = detector_eval.evaluate_detector(config, tmp_path / "work", detector=detector,
                                            params=detector.init())
  out = capsys.readouterr().out
  assert "mAP@[.5:.95]" in out and "images/s" in out
  assert metrics["num_images"] == 7 and metrics["num_detections"] == 7
  assert metrics["AP50"] > 0.6  # a crude detector, but a working one
  assert metrics["images_per_s"] > 0
  written = json.loads((tmp_path / "work" / "metrics.json").read_text())
  assert written["mAP"] == metrics["mAP"] and written["detector"] == "saturation"
  results = json.loads((tmp_path / "work" / "detections.json").read_text())
  assert len(results) == 7 and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
  # The written detections score as reported, on exactly the evaluated images.
  ids = sorted({r["image_id"] for r in results})
  again = coco.coco_evaluate(root / "annotations" / "instances_val.json", results, image_ids=ids)
  assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-3)
  # Boxes came back through the letterbox geometry: the ones of the right class overlap.
  gt = json.loads((root / "annotations" / "instances_val.json").read_text())
  truth = {a["image_id"]: a for a in gt["annotations"]}
  for r in results:
    t = truth[r["image_id"]]
    (x, y, w, h), (gx, gy, gw, gh) = r["bbox"], t["bbox"]
    inter = max(0, min(x + w, gx + gw) - max(x, gx)) * max(0, min(y + h, gy + gh) - max(y, gy))
    assert inter / (w * h + gw * gh - inter) > 0.6


def test_unknown_mode_and_detector(tmp_path):
  config = _config_module().get_config()
  config.unlock()
  config.mode = "nonsense"
  with pytest.raises(errors.ConfigError, match="config.mode must be one of"):
    eval_lib.evaluate(config, tmp_path)
  config.mode = "detector"
  config.detector.name = "nonsense"
  with pytest.raises(errors.ConfigError, match="unknown detector 'nonsense'"):
    eval_lib.evaluate(config, tmp_path)


def test_config_variants():
  module = _config_module()
  config = module.get_config()
  assert (config.mode, config.detector.size, config.detector.img_size) == ("detector", "n", 640)
  assert config.data.split == "val2017" and config.data.max_images is None
  assert config.detector.weights.endswith("weights/yolov5n-coco-v6.0.pt")
  smoke = module.get_config("smoke")
  assert (smoke.data.max_images, smoke.batch_size) == (4, 2)
  assert module.get_config("size=s,max_images=16").detector.weights.endswith("yolov5s-coco-v6.0.pt")
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("colour=red")
  with pytest.raises(AttributeError):
    config.new_field = 1  # locked


def test_eval_py_with_shapes_net(tmp_path):
  """`python eval.py` end to end, offline: the project's trained ShapesNet on a generated set."""
  from hssc_jax.detectors import shapes_net_train  # pylint: disable=g-import-not-at-top
  if not shapes_net_train.ASSET.exists():
    pytest.skip(f"ShapesNet checkpoint not built: {shapes_net_train.ASSET}")
  root = tmp_path / "shapes"
  synthetic.make_shapes_dataset(root, split="val", num_images=12, image_size=128, seed=11)
  work = tmp_path / "work"
  cmd = [sys.executable, str(REPO / "eval.py"), "--config", "configs/eval/detector.py",
         f"--workdir={work}", "--config.detector.name=shapes_net", "--config.detector.weights=",
         f"--config.data.root={root}", "--config.data.split=val",
         f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.progress=False"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "mAP@[.5:.95]" in proc.stdout
  metrics = json.loads((work / "metrics.json").read_text())
  assert metrics["detector"] == "shapes_net" and metrics["num_images"] == 12
  assert metrics["mAP"] > 0.5  # a trained detector on its own kind of images
  results = json.loads((work / "detections.json").read_text())
  again = coco.coco_evaluate(root / "annotations" / "instances_val.json", results)
  assert again["mAP"] == pytest.approx(metrics["mAP"], abs=1e-3)


def test_yolov5n_on_four_coco_mini_images(coco_mini, yolov5n_weights, shared, tmp_path):
  """The real path: YOLOv5n from the ultralytics weights, 4 images, against the upstream result."""
  pytest.importorskip("hssc_jax.detectors.yolov5", reason="the YOLOv5 port is not in the tree")
  config = _config_module().get_config("smoke")  # 4 images, batches of 2, square 640
  config.unlock()
  config.data.root = str(coco_mini)
  config.data.data_dir = str(tmp_path / "tfds")
  config.detector.weights = str(yolov5n_weights)
  config.progress = False
  config.lock()
  metrics = detector_eval.evaluate_detector(config, tmp_path / "work")
  assert metrics["num_images"] == 4 and metrics["num_detections"] > 0
  # The same 4 images (the pipeline's order is deterministic), scored from the upstream
  # PyTorch predictions with the same settings.
  data = pipeline.eval_data(coco_mini, "val2017", batch_size=4, max_images=4,
                            data_dir=tmp_path / "tfds", shard_index=0, num_shards=1)
  ids = [int(i) for b in data for i in b["ids"]]
  ref = [r for r in json.loads(shared("reference", "yolov5n-coco-mini", "predictions.json")
                               .read_text()) if r["image_id"] in ids]
  expected = coco.coco_evaluate(data.annotation_path, ref, image_ids=ids)
  assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=0.02)
  assert metrics["AP50"] == pytest.approx(expected["AP50"], abs=0.02)
  results = json.loads((tmp_path / "work" / "detections.json").read_text())
  assert {r["image_id"] for r in results} <= set(ids)
