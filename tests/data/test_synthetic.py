"""The generated shapes set: real COCO format, exact boxes and areas, deterministic from the seed."""

import json

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
import pytest

from hssc_jax.data import synthetic


def _load(path):
  return json.loads(path.read_text())


def _saturation(pixels):
  return pixels.max(-1).astype(int) - pixels.min(-1)


def test_real_coco_format(tmp_path):
  path = synthetic.make_shapes_dataset(tmp_path, split="val", num_images=6, seed=3)
  assert path == tmp_path / "annotations" / "instances_val.json"
  gt = COCO(str(path))
  assert sorted(gt.getCatIds()) == [1, 2, 3, 4]
  assert [c["name"] for c in gt.loadCats([1, 2, 3, 4])] == list(synthetic.CATEGORIES)
  assert len(gt.getImgIds()) == 6
  data = _load(path)
  assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
  for im in data["images"]:
    with Image.open(tmp_path / "val" / im["file_name"]) as f:
      assert (f.height, f.width, f.mode, f.format) == (im["height"], im["width"], "RGB", "PNG")
  ann_ids = [a["id"] for a in data["annotations"]]
  assert len(set(ann_ids)) == len(ann_ids)
  assert all(a["iscrowd"] == 0 and len(a["segmentation"][0]) >= 6 for a in data["annotations"])


def test_boxes_and_areas_are_exact(tmp_path):
  """Shape pixels are the only saturated ones; each box is their tight extent, area their count."""
  path = synthetic.make_shapes_dataset(tmp_path, num_images=10, image_size=(96, 120), seed=5)
  data = _load(path)
  by_image = {}
  for a in data["annotations"]:
    by_image.setdefault(a["image_id"], []).append(a)
  for im in data["images"]:
    pixels = np.asarray(Image.open(tmp_path / "train" / im["file_name"]))
    mask = _saturation(pixels) > 80
    covered = np.zeros_like(mask)
    for a in by_image[im["id"]]:
      x, y, w, h = a["bbox"]
      # The box grown by one pixel holds no saturated pixel outside the box itself...
      grown = mask[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1].copy()
      inner = mask[y:y + h, x:x + w]
      assert grown.sum() == inner.sum() == a["area"]
      # ... and the box is tight: every border row and column of it touches the shape.
      assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
      covered[y:y + h, x:x + w] = True
    assert not (mask & ~covered).any(), "saturated pixels outside every box"


def test_deterministic_from_seed(tmp_path):
  a = synthetic.make_shapes_dataset(tmp_path / "a", num_images=4, seed=7, vary_size=True)
  b = synthetic.make_shapes_dataset(tmp_path / "b", num_images=4, seed=7, vary_size=True)
  c = synthetic.make_shapes_dataset(tmp_path / "c", num_images=4, seed=8, vary_size=True)
  assert a.read_bytes() == b.read_bytes()
  assert a.read_bytes() != c.read_bytes()
  for im in _load(a)["images"]:
    name = im["file_name"]
    assert (tmp_path / "a/train" / name).read_bytes() == (tmp_path / "b/train" / name).read_bytes()


def test_options(tmp_path):
  path = synthetic.make_shapes_dataset(tmp_path, split="s", num_images=8, image_size=64,
                                       vary_size=True, image_format="jpeg", max_objects=1,
                                       category_ids=[10, 20, 30, 40], first_image_id=100, seed=1)
  data = _load(path)
  assert [im["id"] for im in data["images"]] == list(range(100, 108))
  assert len({(im["height"], im["width"]) for im in data["images"]}) > 1
  assert all(48 <= im["height"] <= 80 and 48 <= im["width"] <= 80 for im in data["images"])
  assert len(data["annotations"]) == 8  # max_objects=1: exactly one shape per image
  assert {a["category_id"] for a in data["annotations"]} <= {10, 20, 30, 40}
  with Image.open(tmp_path / "s" / data["images"][0]["file_name"]) as f:
    assert f.format == "JPEG"


@pytest.mark.parametrize("kwargs", [dict(num_images=0), dict(image_format="gif"),
                                    dict(category_ids=[1, 1, 2, 3])])
def test_bad_arguments(tmp_path, kwargs):
  with pytest.raises(ValueError):
    synthetic.make_shapes_dataset(tmp_path, **kwargs)
