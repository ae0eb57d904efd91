"""COCO box metrics: perfect detections, perturbations with values worked out by hand, mappings.

COCOeval averages, per category and IoU threshold t in {.50, .55, ..., .95}, the interpolated
precision at the 101 recall levels r in {0, .01, ..., 1}. When every detection that matches
outranks every one that does not, precision is 1 up to the recall reached R and 0 beyond, so
AP(t) = #{r <= R} / 101; with R = 1/2 that is 51/101.
"""

import json

import numpy as np
import pytest

from hssc_jax.data import synthetic
from hssc_jax.errors import InvalidInputError
from hssc_jax.metrics import coco

HALF = 51 / 101


@pytest.fixture
def gt_path(tmp_path):
  """4 images x 4 medium-sized boxes, categories 3 and 7 (two boxes of each per image)."""
  images, annotations = [], []
  rng = np.random.default_rng(0)
  for image_id in range(1, 5):
    images.append(dict(id=image_id, file_name=f"{image_id}.png", height=400, width=400))
    for k in range(4):
      w, h = rng.uniform(40, 80, size=2)
      x, y = 90.0 * k + 5, rng.uniform(0, 300)
      annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=(3, 7)[k % 2],
                              bbox=[x, y, w, h], area=w * h, iscrowd=0))
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(dict(images=images, annotations=annotations,
                                  categories=[dict(id=3, name="a"), dict(id=7, name="b")])))
  return path


def _gt_results(path, score=1.0):
  data = json.loads(path.read_text())
  return [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=list(a["bbox"]),
               score=score) for a in data["annotations"] if not a.get("iscrowd", 0)]


def test_ground_truth_scores_one(gt_path):
  metrics = coco.coco_evaluate(gt_path, _gt_results(gt_path))
  for name in ("mAP", "AP50", "AP75", "APm", "AR100"):
    assert metrics[name] == pytest.approx(1.0)
  assert metrics["APs"] == metrics["APl"] == -1  # no ground truth of those sizes
  assert (metrics["num_images"], metrics["num_detections"]) == (4, 16)


def test_ground_truth_of_generated_set_scores_one(tmp_path):
  path = synthetic.make_shapes_dataset(tmp_path, num_images=8, seed=1)
  assert coco.coco_evaluate(path, _gt_results(path))["mAP"] == pytest.approx(1.0)


def test_ground_truth_of_coco_mini_scores_one(coco_mini):
  path = coco_mini / "annotations" / "instances_val2017.json"
  metrics = coco.coco_evaluate(path, _gt_results(path))
  assert metrics["mAP"] == pytest.approx(1.0) and metrics["AR100"] == pytest.approx(1.0)


def test_half_the_detections_dropped(gt_path):
  # Boxes alternate categories 3, 7, 3, 7 in each image: keep the first of each.
  results = [r for i, r in enumerate(_gt_results(gt_path)) if i % 4 < 2]
  metrics = coco.coco_evaluate(gt_path, results)
  assert metrics["mAP"] == pytest.approx(HALF, abs=1e-9)
  assert metrics["AP50"] == pytest.approx(HALF, abs=1e-9)
  assert metrics["AR100"] == pytest.approx(0.5, abs=1e-9)


def test_half_the_boxes_shifted(gt_path):
  """Half the boxes move right by 0.2 of their width: IoU = 0.8 / 1.2 = 2/3.

  They still match at t <= .65 (AP 1 at 4 thresholds) and are false positives at t >= .70, where
  the exact boxes, scored higher, give AP 51/101 (6 thresholds).
  """
  results = _gt_results(gt_path)
  for r in (r for i, r in enumerate(results) if i % 4 >= 2):  # half of each category
    r["bbox"][0] += 0.2 * r["bbox"][2]
    r["score"] = 0.5
  metrics = coco.coco_evaluate(gt_path, results)
  assert metrics["AP50"] == pytest.approx(1.0, abs=1e-9)
  assert metrics["AP75"] == pytest.approx(HALF, abs=1e-9)
  assert metrics["mAP"] == pytest.approx((4 * 1.0 + 6 * HALF) / 10, abs=1e-9)


def test_empty_detections_score_zero(gt_path):
  metrics = coco.coco_evaluate(gt_path, [])
  assert metrics["mAP"] == metrics["AP50"] == metrics["AR100"] == 0.0
  assert metrics["num_detections"] == 0


def test_restricted_to_evaluated_images(gt_path):
  results = [r for r in _gt_results(gt_path) if r["image_id"] in (1, 2)]
  assert coco.coco_evaluate(gt_path, results, image_ids=[1, 2])["mAP"] == pytest.approx(1.0)
  assert coco.coco_evaluate(gt_path, results)["mAP"] == pytest.approx(HALF, abs=1e-9)
  # Detections on images outside image_ids are ignored.
  metrics = coco.coco_evaluate(gt_path, _gt_results(gt_path), image_ids=[3])
  assert (metrics["mAP"], metrics["num_images"], metrics["num_detections"]) == (1.0, 1, 4)


def test_category_mapping_round_trip(gt_path):
  category_ids = coco.category_ids_of(gt_path)
  assert category_ids == [3, 7]
  rng = np.random.default_rng(1)
  per_image = []
  for _ in range(3):
    xy = rng.uniform(0, 100, (5, 2))
    per_image.append(dict(boxes=np.concatenate([xy, xy + rng.uniform(1, 50, (5, 2))], axis=1),
                          scores=rng.uniform(size=5), classes=rng.integers(0, 2, 5)))
  results = coco.detections_to_coco([1, 2, 3], per_image, category_ids)
  assert {r["category_id"] for r in results} == {3, 7}
  assert all(r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in results)
  back = coco.coco_to_detections(results, [1, 2, 3], category_ids)
  for a, b in zip(per_image, back):
    np.testing.assert_allclose(b["boxes"], a["boxes"], rtol=1e-12)
    np.testing.assert_array_equal(b["scores"], a["scores"])
    np.testing.assert_array_equal(b["classes"], a["classes"])
  # Perfect detections given as contiguous classes score 1 once mapped to the category ids.
  data = json.loads(gt_path.read_text())
  dets = []
  for image_id in (1, 2, 3, 4):
    anns = [a for a in data["annotations"] if a["image_id"] == image_id]
    xywh = np.asarray([a["bbox"] for a in anns])
    dets.append(dict(boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                     scores=np.ones(len(anns)),
                     classes=np.asarray([category_ids.index(a["category_id"]) for a in anns])))
  results = coco.detections_to_coco([1, 2, 3, 4], dets, category_ids)
  assert coco.coco_evaluate(gt_path, results)["mAP"] == pytest.approx(1.0)


def test_bad_inputs(gt_path):
  det = dict(boxes=np.zeros((1, 4)), scores=np.ones(1), classes=np.array([2]))
  with pytest.raises(InvalidInputError, match="class index"):
    coco.detections_to_coco([1], [det], [3, 7])
  with pytest.raises(InvalidInputError, match="image ids"):
    coco.detections_to_coco([1, 2], [det], [3, 7])
  with pytest.raises(InvalidInputError, match="NaN"):
    coco.detections_to_coco([1], [dict(det, boxes=np.full((1, 4), np.nan), classes=[0])], [3, 7])
  with pytest.raises(InvalidInputError, match="image id 99"):
    coco.coco_evaluate(gt_path, [dict(image_id=99, category_id=3, bbox=[0, 0, 1, 1], score=1)])
  with pytest.raises(InvalidInputError, match="not in the ground truth"):
    coco.coco_evaluate(gt_path, [], image_ids=[5])


def test_quiet_unless_verbose(gt_path, capsys):
  coco.coco_evaluate(gt_path, _gt_results(gt_path))
  assert capsys.readouterr().out == ""
  coco.coco_evaluate(gt_path, _gt_results(gt_path), verbose=True)
  assert "Average Precision" in capsys.readouterr().out


def test_reference_predictions_reproduce_reference_metrics(shared):
  """The upstream YOLOv5n predictions on coco-mini give the upstream numbers through this path."""
  ref = shared("reference", "yolov5n-coco-mini")
  gt = shared("data", "coco-mini", "annotations", "instances_val2017.json")
  expected = json.loads((ref / "metrics_square.json").read_text())
  metrics = coco.coco_evaluate(gt, json.loads((ref / "predictions.json").read_text()))
  for name in coco.METRIC_NAMES:
    assert metrics[name] == pytest.approx(expected[name], abs=6e-5), name
  assert metrics["num_detections"] == expected["detections"]
