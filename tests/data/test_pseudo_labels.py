"""Pseudo-labels: a folder of unlabelled images labelled by the uncompressed detector (ShapesNet on a
generated shapes set), then scored with COCOeval like any COCO-format folder."""

import json

import pytest

from hssc_jax import detector_eval
from hssc_jax import errors
from hssc_jax.data import pipeline
from hssc_jax.data import pseudo_labels
from hssc_jax.data import synthetic
from hssc_jax.detectors import factory
from hssc_jax.metrics import coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  from hssc_jax.detectors import shapes_net_train  # pylint: disable=g-import-not-at-top
  if not shapes_net_train.ASSET.exists():
    pytest.skip(f"ShapesNet checkpoint not built: {shapes_net_train.ASSET}")
  root = tmp_path_factory.mktemp("shapes")
  synthetic.make_shapes_dataset(root, split="val", num_images=10, image_size=(120, 160), seed=5)
  detector, params = factory.build(dict(name="shapes_net", weights=""))
  return root, detector, params, tmp_path_factory.mktemp("tfds")


def _detect(root, split, detector, params, data_dir):
  """(COCO results, image ids) of the detector on a COCO-format folder."""
  data = pipeline.eval_data(root, split, batch_size=4, data_dir=data_dir, shard_index=0,
                            num_shards=1)
  results, ids, _ = detector_eval.run_detector(detector, params, data, progress=False)
  return results, ids


def _detections_by_file(root, split, detector, params, data_dir):
  """The detector's COCO results on a COCO-format folder, keyed by (file name, rounded box)."""
  results, _ = _detect(root, split, detector, params, data_dir)
  names = {im["id"]: im["file_name"]
           for im in json.loads(coco_path(root, split).read_text())["images"]}
  return {(names[r["image_id"]], r["category_id"], tuple(round(v, 3) for v in r["bbox"])): r["score"]
          for r in results}


def coco_path(root, split):
  return root / "annotations" / f"instances_{split}.json"


def test_labels_are_the_detections_above_conf_and_score_the_detector_one(shapes, tmp_path):
  root, detector, params, data_dir = shapes
  out = tmp_path / "labelled"
  summary = pseudo_labels.label_folder(root / "val", out, "pl", detector, params, conf=0.3,
                                       batch_size=4, data_dir=data_dir)
  labelled = json.loads(coco_path(out, "pl").read_text())
  assert summary["images"] == len(labelled["images"]) == 10
  assert summary["labels"] == len(labelled["annotations"]) > 0
  assert labelled["info"]["conf"] == 0.3 and labelled["info"]["detector"] == detector.name
  names = {im["id"]: im["file_name"] for im in labelled["images"]}
  got = {(names[a["image_id"]], a["category_id"], tuple(round(v, 3) for v in a["bbox"]))
         for a in labelled["annotations"]}
  # The same detector on the original (ground-truth) folder: same files, other image ids.
  expected = {k for k, score in _detections_by_file(root, "val", detector, params, data_dir).items()
              if score >= 0.3}
  assert got == expected
  assert summary["detections"] > summary["labels"]  # the threshold dropped some

  results, ids = _detect(out, "pl", detector, params, data_dir)
  assert coco.coco_evaluate(coco_path(out, "pl"), results, image_ids=ids)["mAP"] == pytest.approx(1.0)
  # Against the generated ground truth the same detections score less: labels are not the truth.
  results, ids = _detect(root, "val", detector, params, data_dir)
  assert coco.coco_evaluate(coco_path(root, "val"), results, image_ids=ids)["mAP"] < 0.99


def test_bad_inputs_are_refused_and_leave_no_labels_behind(shapes, tmp_path):
  root, detector, params, data_dir = shapes
  with pytest.raises(errors.DatasetError, match="does not exist"):
    pseudo_labels.label_folder(tmp_path / "nowhere", tmp_path / "a", "pl", detector, params)
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DatasetError, match="holds no"):
    pseudo_labels.label_folder(tmp_path / "empty", tmp_path / "a", "pl", detector, params)
  for conf in (0.0, 1.0, -0.5):
    with pytest.raises(errors.ConfigError, match="conf"):
      pseudo_labels.label_folder(root / "val", tmp_path / "a", "pl", detector, params, conf=conf)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "broken.png").write_bytes(b"\x89PNG not an image")
  with pytest.raises(errors.DatasetError, match="broken.png"):
    pseudo_labels.label_folder(bad, tmp_path / "b", "pl", detector, params)
  assert not coco_path(tmp_path / "b", "pl").exists()

  out = tmp_path / "c"
  pseudo_labels.label_folder(root / "val", out, "pl", detector, params, batch_size=4,
                             data_dir=data_dir)
  before = coco_path(out, "pl").read_bytes()
  with pytest.raises(errors.DatasetError, match="exists"):
    pseudo_labels.label_folder(root / "val", out, "pl", detector, params)
  assert coco_path(out, "pl").read_bytes() == before

  class Failing:  # the detector fails after the unlabelled json was written: it is removed again
    name = "failing"
    coco_category_ids = detector.coco_category_ids
    detect = detector.detect

    def preprocess(self, images):
      raise RuntimeError("detector failed")

  with pytest.raises(RuntimeError, match="detector failed"):
    pseudo_labels.label_folder(root / "val", tmp_path / "d", "pl", Failing(), params,
                               data_dir=data_dir)
  assert not coco_path(tmp_path / "d", "pl").exists()
