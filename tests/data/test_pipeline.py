"""Input pipelines: evaluation batches of original images, and deterministic training crops."""

import itertools

import ml_collections
import numpy as np
from PIL import Image
import pytest

from hssc_jax.data import pipeline
from hssc_jax.data import synthetic


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
  root = tmp_path_factory.mktemp("shapes")
  synthetic.make_shapes_dataset(root, split="val", num_images=10, image_size=(72, 96),
                                vary_size=True, seed=4)
  synthetic.make_shapes_dataset(root, split="train", num_images=12, image_size=(64, 80), seed=5,
                                first_image_id=1000)
  return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _original(root, split, image_id):
  return np.asarray(Image.open(root / split / f"{image_id:012d}.png"))


def test_eval_data_yields_original_images(shapes, data_dir):
  data = pipeline.eval_data(shapes, "val", batch_size=4, data_dir=data_dir, shard_index=0,
                            num_shards=1)
  assert (data.num_images, len(data)) == (10, 3)
  assert data.category_ids == [1, 2, 3, 4]
  assert data.annotation_path == shapes / "annotations" / "instances_val.json"
  batches = list(data)
  assert [len(b["images"]) for b in batches] == [4, 4, 2]
  ids = np.concatenate([b["ids"] for b in batches])
  assert sorted(ids.tolist()) == list(range(1, 11))
  for b in batches:
    assert b["ids"].dtype == np.int64 and b["sizes"].dtype == np.int32
    for image, image_id, size in zip(b["images"], b["ids"], b["sizes"]):
      assert image.dtype == np.uint8 and tuple(size) == image.shape[:2]
      np.testing.assert_array_equal(image, _original(shapes, "val", image_id))
  # The same order every time; max_images keeps a prefix of it.
  assert np.array_equal(ids, np.concatenate([b["ids"] for b in data]))
  head = pipeline.eval_data(shapes, "val", batch_size=4, data_dir=data_dir, max_images=3,
                            shard_index=0, num_shards=1)
  assert np.array_equal(np.concatenate([b["ids"] for b in head]), ids[:3])
  everything = pipeline.eval_data(shapes, "val", batch_size=4, data_dir=data_dir, max_images=50,
                                  shard_index=0, num_shards=1)
  assert everything.num_images == 10
  # From an evaluation config: its data settings and batch size, every image in one shard.
  config = ml_collections.ConfigDict(dict(
      batch_size=2, data=dict(root=str(shapes), split="val", data_dir=str(data_dir), max_images=5)))
  of_config = pipeline.eval_data_of(config)
  assert (of_config.num_images, len(of_config)) == (5, 3)
  assert np.array_equal(np.concatenate([b["ids"] for b in of_config]), ids[:5])


def _take(it, n):
  return list(itertools.islice(it, n))


def _train(shapes, data_dir, **kwargs):
  kwargs = dict(dict(size=48, batch_size=4, seed=0, data_dir=data_dir, shard_index=0,
                     num_shards=1), **kwargs)
  return pipeline.train_batches(shapes, "train", **kwargs)


def test_train_batches_shapes_and_dtypes(shapes, data_dir):
  for batch in _take(_train(shapes, data_dir), 4):  # 16 > 12 examples: repeats
    assert batch["image"].shape == (4, 48, 48, 3) and batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["orig_size"].shape == (4, 2) and batch["orig_size"].dtype == np.int32
    assert (batch["orig_size"] == (64, 80)).all()
    assert batch["scale"].shape == (4,) and batch["id"].shape == (4,)
    assert ((batch["scale"] >= 48 / 64 - 1e-6) & (batch["scale"] <= 1.5 * 48 / 64 + 0.02)).all()
    np.testing.assert_allclose(batch["image"] * 255, np.round(batch["image"] * 255), atol=1e-3)
  batch = next(_train(shapes, data_dir, dtype="uint8"))
  assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 48, 48, 3)


def test_train_batches_are_deterministic(shapes, data_dir):
  a = _take(_train(shapes, data_dir, seed=3), 4)
  b = _take(_train(shapes, data_dir, seed=3), 4)
  c = _take(_train(shapes, data_dir, seed=4), 4)
  for x, y in zip(a, b):
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])
  assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
  # Epochs are reshuffled: the second pass over the 12 examples is in another order.
  ids = np.concatenate([x["id"] for x in _take(_train(shapes, data_dir, seed=3), 6)])
  assert sorted(ids[:12]) == sorted(ids[12:]) and not np.array_equal(ids[:12], ids[12:])


def test_crops_are_windows_of_the_original(shapes, data_dir):
  """No scale jitter and short side == size: each crop is a window of the image or its mirror."""
  batches = _take(_train(shapes, data_dir, size=64, scale_range=(1.0, 1.0), dtype="uint8"), 3)
  flips = 0
  for batch in batches:
    np.testing.assert_allclose(batch["scale"], 1.0)
    for crop, image_id in zip(batch["image"], batch["id"]):
      original = _original(shapes, "train", image_id)
      found = None
      for flipped, img in ((False, original), (True, original[:, ::-1])):
        for x0 in range(original.shape[1] - 64 + 1):
          if np.array_equal(crop, img[:, x0:x0 + 64]):
            found = flipped
      assert found is not None, f"crop of image {image_id} is no window of it"
      flips += found
  assert 0 < flips < 12  # both flipped and unflipped crops occur


def test_small_scale_pads_with_pad_value(shapes, data_dir):
  batch = next(_train(shapes, data_dir, size=64, scale_range=(0.5, 0.5), dtype="uint8",
                      hflip=False))
  for crop in batch["image"]:  # 32x40 content centred in 64x64
    assert (crop[:16] == 114).all() and (crop[-16:] == 114).all()
    assert (crop[:, :12] == 114).all() and (crop[:, -12:] == 114).all()
    assert not (crop[16:48, 12:52] == 114).all()


def test_shards_are_disjoint(shapes, data_dir):
  ids = []
  for shard in range(2):
    it = _train(shapes, data_dir, batch_size=1, shard_index=shard, num_shards=2, repeat=False)
    ids.append({int(b["id"][0]) for b in it})
  assert not ids[0] & ids[1] and ids[0] | ids[1] == set(range(1000, 1012))


@pytest.mark.parametrize("kwargs", [dict(dtype="float16"), dict(scale_range=(2.0, 1.0)),
                                    dict(size=0)])
def test_bad_arguments(shapes, data_dir, kwargs):
  with pytest.raises(ValueError):
    _train(shapes, data_dir, **kwargs)
