"""The TFDS builder for COCO-format folders: contents, reuse, sharding, conversions, errors."""

import json
from pathlib import Path
import shutil

import numpy as np
from PIL import Image
import pytest

from hssc_jax.data import coco_folder
from hssc_jax.data import synthetic
from hssc_jax.errors import DatasetError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes")
  synthetic.make_shapes_dataset(root, split="val", num_images=12, image_size=(72, 96),
                                vary_size=True, seed=2)
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _examples(ds):
  return {int(ex["image/id"]): ex for ex in ds.as_numpy_iterator()}


def _copy(src, dst):
  shutil.copytree(src, dst)
  return dst


def test_examples_match_json_and_files(shapes, data_dir):
  ds = coco_folder.load_coco_folder(shapes, "val", data_dir=data_dir, shard_index=0, num_shards=1)
  examples = _examples(ds)
  data = json.loads(coco_folder.annotation_path(shapes, "val").read_text())
  assert sorted(examples) == sorted(im["id"] for im in data["images"])
  for im in data["images"]:
    ex = examples[im["id"]]
    assert ex["image/filename"].decode() == im["file_name"]
    assert tuple(ex["image/size"]) == (im["height"], im["width"])
    assert ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"], np.asarray(Image.open(shapes / "val" / im["file_name"])))
    anns = sorted((a for a in data["annotations"] if a["image_id"] == im["id"]), key=lambda a: a["id"])
    order = np.argsort(ex["objects"]["id"])
    np.testing.assert_array_equal(ex["objects"]["id"][order], [a["id"] for a in anns])
    np.testing.assert_allclose(ex["objects"]["bbox"][order], [a["bbox"] for a in anns])
    np.testing.assert_array_equal(ex["objects"]["category_id"][order], [a["category_id"] for a in anns])
    np.testing.assert_array_equal(ex["objects"]["label"][order], [a["category_id"] - 1 for a in anns])
    np.testing.assert_allclose(ex["objects"]["area"][order], [a["area"] for a in anns])
    assert not ex["objects"]["is_crowd"].any()


def test_builder_exposes_json_and_categories(shapes, data_dir):
  builder = coco_folder.prepare(shapes, "val", data_dir=data_dir)
  assert builder.annotation_path == shapes / "annotations" / "instances_val.json"
  assert builder.category_ids == [1, 2, 3, 4]
  assert builder.info.features["objects"]["label"].names == list(synthetic.CATEGORIES)
  assert builder.info.splits["val"].num_examples == 12


def test_prepared_files_are_reused(shapes, data_dir):
  first = coco_folder.prepare(shapes, "val", data_dir=data_dir)
  info = Path(first.data_path) / "dataset_info.json"
  stamp = info.stat().st_mtime_ns
  second = coco_folder.prepare(shapes, "val", data_dir=data_dir)
  assert second.data_path == first.data_path
  assert info.stat().st_mtime_ns == stamp


def test_changed_json_is_prepared_again(shapes, tmp_path):
  root = _copy(shapes, tmp_path / "copy")
  before = coco_folder.prepare(root, "val", data_dir=tmp_path / "tfds")
  path = coco_folder.annotation_path(root, "val")
  data = json.loads(path.read_text())
  data["annotations"][0]["bbox"] = [1.0, 2.0, 3.0, 4.0]
  path.write_text(json.dumps(data))
  ds = coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds", shard_index=0,
                                    num_shards=1)
  after = coco_folder.prepare(root, "val", data_dir=tmp_path / "tfds")
  assert after.data_path != before.data_path
  ex = _examples(ds)[data["annotations"][0]["image_id"]]
  assert [1.0, 2.0, 3.0, 4.0] in ex["objects"]["bbox"].tolist()


def test_shards_partition_the_split(shapes, data_dir):
  ids = [set(_examples(coco_folder.load_coco_folder(shapes, "val", data_dir=data_dir,
                                                     shard_index=i, num_shards=3)))
         for i in range(3)]
  assert sum(len(s) for s in ids) == 12 and set.union(*ids) == set(range(1, 13))
  assert all(len(s) == 4 for s in ids)
  head = coco_folder.load_coco_folder(shapes, "val", data_dir=data_dir, max_images=5,
                                      shard_index=0, num_shards=1)
  assert len(_examples(head)) == 5
  with pytest.raises(ValueError, match="shard_index"):
    coco_folder.split_spec("val", shard_index=3, num_shards=3)


def test_non_rgb_images_decode_to_rgb(tmp_path):
  """Grayscale JPEG keeps its bytes; CMYK JPEG and palette/alpha PNG are converted to RGB."""
  root = tmp_path / "odd"
  (root / "s").mkdir(parents=True)
  (root / "annotations").mkdir()
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
  gray = Image.fromarray(rgb[..., 0])
  gray.save(root / "s" / "gray.jpg", quality=95)
  Image.fromarray(rgb).convert("CMYK").save(root / "s" / "cmyk.jpg", quality=95)
  Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "s" / "pal.png")
  Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(root / "s" / "rgba.png")
  names = ["gray.jpg", "cmyk.jpg", "pal.png", "rgba.png"]
  images = [dict(id=i + 1, file_name=n, height=24, width=32) for i, n in enumerate(names)]
  (root / "annotations" / "instances_s.json").write_text(json.dumps(dict(
      images=images, annotations=[], categories=[dict(id=1, name="x")])))
  gray_bytes, _ = coco_folder.read_image_bytes(root / "s" / "gray.jpg")
  assert gray_bytes == (root / "s" / "gray.jpg").read_bytes()
  ex = _examples(coco_folder.load_coco_folder(root, "s", data_dir=tmp_path / "tfds",
                                              shard_index=0, num_shards=1))
  for i, name in enumerate(names):
    image = ex[i + 1]["image"]
    assert image.shape == (24, 32, 3) and image.dtype == np.uint8
    with Image.open(root / "s" / name) as f:
      expected = np.asarray(f.convert("RGB"))
    np.testing.assert_array_equal(image, expected, err_msg=name)  # PIL's own RGB conversion
    assert len(ex[i + 1]["objects"]["id"]) == 0
  np.testing.assert_array_equal(ex[1]["image"][..., 0], ex[1]["image"][..., 2])  # gray -> RGB


# Error cases: each names the file and what is wrong.


def _write_json(root, split, data):
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  path = root / "annotations" / f"instances_{split}.json"
  path.write_text(json.dumps(data) if not isinstance(data, str) else data)
  return path


def test_missing_folder(tmp_path):
  with pytest.raises(DatasetError, match="does not exist"):
    coco_folder.load_coco_folder(tmp_path / "nowhere", "val", data_dir=tmp_path)


def test_missing_json_lists_available_splits(shapes, tmp_path):
  with pytest.raises(DatasetError, match=r"instances_train\.json does not exist.*\['val'\]"):
    coco_folder.load_coco_folder(shapes, "train", data_dir=tmp_path)


@pytest.mark.parametrize("content,message", [
    ('{"images": [', r"not valid JSON: .* line 1 column"),
    ("[1, 2]", "top level must be a JSON object"),
    ({"annotations": [], "categories": []}, "missing the 'images' list"),
    ({"images": [], "annotations": [], "categories": [{"id": 1}]}, "lists no images"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 8}], "categories": [{"id": 1}]},
     r"images\[0\] has no 'width'"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
      "categories": [{"id": 1}],
      "annotations": [{"id": 9, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
     r"annotations\[0\] \(id 9\): image_id 2 is not in 'images'"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
      "categories": [{"id": 1}],
      "annotations": [{"id": 9, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]},
     r"'bbox' must be 4 finite numbers"),
    ({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
      "categories": [{"id": 1}],
      "annotations": [{"id": 9, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]},
     r"category_id 7 is not in 'categories'"),
])
def test_malformed_json(tmp_path, content, message):
  root = tmp_path / "bad"
  (root / "val").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(root / "val" / "a.png")
  path = _write_json(root, "val", content)
  with pytest.raises(DatasetError, match=message) as info:
    coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds")
  assert str(path) in str(info.value)


def test_annotation_to_missing_image_file(shapes, tmp_path):
  root = _copy(shapes, tmp_path / "copy")
  data = json.loads(coco_folder.annotation_path(root, "val").read_text())
  victim = data["images"][3]
  (root / "val" / victim["file_name"]).unlink()
  with pytest.raises(DatasetError, match=rf"1 image file\(s\) .* missing .*{victim['file_name']} "
                     rf"\(image id {victim['id']}, referenced by \d+ annotation"):
    coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds")


def test_folder_without_images(shapes, tmp_path):
  root = _copy(shapes, tmp_path / "copy")
  for f in (root / "val").iterdir():
    f.unlink()
  with pytest.raises(DatasetError, match="holds no image files"):
    coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds")
  shutil.rmtree(root / "val")
  with pytest.raises(DatasetError, match="image folder .* does not exist"):
    coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds")


def test_size_mismatch_and_unreadable_image(tmp_path):
  root = tmp_path / "bad"
  (root / "val").mkdir(parents=True)
  Image.new("RGB", (8, 6)).save(root / "val" / "a.png")
  _write_json(root, "val", {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
                            "categories": [{"id": 1}]})
  with pytest.raises(DatasetError, match=r"a\.png: image is 6x8 \(HxW\) but .* says 8x8"):
    coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds")
  (root / "val" / "a.png").write_bytes(b"not an image")
  with pytest.raises(DatasetError, match="not a readable image"):
    coco_folder.load_coco_folder(root, "val", data_dir=tmp_path / "tfds")


# The real COCO subset in ../shared (skips when absent).


@pytest.mark.parametrize("split,count", [("val2017", 79), ("train2017", 80)])
def test_coco_mini(coco_mini, tmp_path_factory, split, count):
  data_dir = tmp_path_factory.mktemp("tfds_coco")
  builder = coco_folder.prepare(coco_mini, split, data_dir=data_dir)
  assert len(builder.category_ids) == 80 and builder.category_ids[-1] == 90
  examples = _examples(coco_folder.load_coco_folder(coco_mini, split, data_dir=data_dir,
                                                     shard_index=0, num_shards=1))
  data = json.loads((coco_mini / "annotations" / f"instances_{split}.json").read_text())
  assert len(examples) == len(data["images"]) == count
  counts = {}
  for a in data["annotations"]:
    counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
  label = {c: i for i, c in enumerate(sorted(c["id"] for c in data["categories"]))}
  for im in data["images"]:
    ex = examples[im["id"]]
    assert tuple(ex["image/size"]) == (im["height"], im["width"]) == ex["image"].shape[:2]
    assert len(ex["objects"]["bbox"]) == counts.get(im["id"], 0)
    np.testing.assert_array_equal(ex["objects"]["label"],
                                  [label[c] for c in ex["objects"]["category_id"]])
  # Pixels are those of PIL / OpenCV (libjpeg's accurate IDCT), not TensorFlow's fast default.
  im = data["images"][0]
  expected = np.asarray(Image.open(coco_mini / split / im["file_name"]).convert("RGB"))
  np.testing.assert_array_equal(examples[im["id"]]["image"], expected)
