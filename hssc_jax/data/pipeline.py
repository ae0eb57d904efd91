"""tf.data input pipelines over COCO-format folders: evaluation (original images) and codec training.

Evaluation (`eval_data`): original uint8 RGB images of varying size, with their COCO image id and
(height, width), grouped host-side into batches of python lists; the detector's own `preprocess`
turns a batch into network input. Every image of the split (or of its first `max_images`) is seen
exactly once across processes.

Training (`train_dataset` / `train_batches`): per example, with stateless randomness keyed by
(seed, shard, example index), so the stream is a pure function of its arguments:

  scale jitter   resize (bilinear, antialiased) so the short side is f * size, f ~ U(scale_range)
  pad            to at least size x size with `pad_value` (only when f < 1 or the image is tiny)
  random crop    size x size
  flip           horizontal, with probability 1/2

then shuffle (over encoded bytes, before decoding), repeat, batch (drop remainder) and prefetch.
Batches hold `image` ((B, size, size, 3) float32 in [0, 1] or uint8), `orig_size` ((B, 2) int32,
the source image's original height and width), `scale` ((B,) float32, resize factor applied to the
original, so the crop covers (size / scale)^2 original pixels) and `id` ((B,) int64).
"""

import dataclasses
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hssc_jax._tf import tf as _tf
from hssc_jax.data import coco_folder

tf = _tf()
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position


@dataclasses.dataclass
class EvalData:
  """An evaluation split: iterate for batches, plus what evaluation needs besides the pixels.

  Iterating yields dicts with `images` (list of uint8 (H, W, 3) RGB arrays), `ids` ((B,) int64)
  and `sizes` ((B, 2) int32 original (height, width)); the last batch may be smaller.
  """

  dataset: tf.data.Dataset
  batch_size: int
  num_images: int
  annotation_path: Path
  category_ids: list[int]

  def __len__(self) -> int:
    return -(-self.num_images // self.batch_size)

  def __iter__(self) -> Iterator[dict]:
    images, ids, sizes = [], [], []
    for ex in self.dataset.as_numpy_iterator():
      images.append(ex["image"])
      ids.append(ex["id"])
      sizes.append(ex["size"])
      if len(images) == self.batch_size:
        yield dict(images=images, ids=np.asarray(ids, np.int64), sizes=np.asarray(sizes, np.int32))
        images, ids, sizes = [], [], []
    if images:
      yield dict(images=images, ids=np.asarray(ids, np.int64), sizes=np.asarray(sizes, np.int32))


def eval_data(root: str | os.PathLike, split: str, *, batch_size: int = 8,
              data_dir: str | os.PathLike | None = None, max_images: int | None = None,
              shard_index: int | None = None, num_shards: int | None = None) -> EvalData:
  """Original images of `split` for evaluation (see `EvalData`).

  `max_images` keeps the first that many examples in TFDS order (deterministic, not json order);
  `shard_index`/`num_shards` default to this JAX process's share.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  builder = coco_folder.prepare(root, split, data_dir=data_dir)
  ds = builder.as_dataset(
      split=coco_folder.split_spec(split, max_images=max_images, shard_index=shard_index,
                                   num_shards=num_shards, num_examples=builder.num_examples),
      decoders=coco_folder.default_decoders())
  num_images = int(ds.cardinality())
  ds = ds.map(lambda ex: dict(image=ex["image"], id=ex["image/id"], size=ex["image/size"]),
              num_parallel_calls=tf.data.AUTOTUNE).prefetch(2 * batch_size)
  return EvalData(dataset=ds, batch_size=batch_size, num_images=num_images,
                  annotation_path=builder.annotation_path, category_ids=builder.category_ids)


def eval_data_of(config) -> EvalData:
  """`eval_data` of an evaluation config: `config.data` (root, split, data_dir, max_images) and
  `config.batch_size`, the whole split in this process (one shard)."""
  data_cfg = config.data
  return eval_data(data_cfg.root, data_cfg.split, batch_size=config.batch_size,
                   data_dir=data_cfg.get("data_dir"), max_images=data_cfg.get("max_images"),
                   shard_index=0, num_shards=1)


def _augment(encoded, orig_size, seed, *, size: int, scale_range: Sequence[float], hflip: bool,
             pad_value: int, letterbox: int = 0):
  """Decode, scale-jitter, pad, crop and flip one image (all randomness from `seed`).

  With `letterbox` > 0 the image is first resized so its long side is f * letterbox and padded to
  a letterbox x letterbox square, as the detector's square letterbox at evaluation, then cropped:
  crops hold the gray borders in the proportion evaluation codes them.
  """
  image = coco_folder.decode_image(encoded)
  seeds = tf.random.experimental.stateless_split(seed, 3)
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  f = tf.random.stateless_uniform((), seeds[0], scale_range[0], scale_range[1])
  if letterbox:
    scale = f * letterbox / tf.maximum(h, w)
    target = max(size, letterbox)
  else:
    scale = f * size / tf.minimum(h, w)
    target = size
  new_hw = tf.maximum(tf.cast(tf.round(tf.stack([h, w]) * scale), tf.int32), 1)
  resized = tf.image.resize(image, new_hw, antialias=True)
  pad_h = tf.maximum(target - new_hw[0], 0)
  pad_w = tf.maximum(target - new_hw[1], 0)
  padded = tf.pad(resized, [[pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2],
                            [0, 0]], constant_values=float(pad_value))
  crop = tf.image.stateless_random_crop(padded, (size, size, 3), seeds[1])
  if hflip:
    crop = tf.image.stateless_random_flip_left_right(crop, seeds[2])
  # Effective per-axis resize factor (rounding of the new size included).
  eff_scale = tf.cast(new_hw[0], tf.float32) / h
  return tf.clip_by_value(tf.round(crop), 0, 255), orig_size, eff_scale


def train_dataset(root: str | os.PathLike, split: str, *, size: int = 256, batch_size: int = 8,
                  seed: int = 0, scale_range: Sequence[float] = (1.0, 1.5), hflip: bool = True,
                  pad_value: int = 114, dtype: str = "float32", shuffle_buffer: int = 1024,
                  data_dir: str | os.PathLike | None = None, shard_index: int | None = None,
                  num_shards: int | None = None, repeat: bool = True,
                  letterbox: int = 0) -> tf.data.Dataset:
  """Augmented, shuffled, repeated and batched square crops for codec training.

  Args:
    root, split: the COCO-format folder and split (e.g. "train2017").
    size: side of the square crops.
    batch_size: examples per batch on this process (the global batch is this times the
      number of shards).
    seed: all shuffling and augmentation derives from it (and from the shard index).
    scale_range: (lo, hi): the short side is resized to f * size with f ~ U(lo, hi);
      (1, 1) crops at the scale where the short side equals `size`.
    hflip: random horizontal flips.
    pad_value: fill used where a jittered image is smaller than the crop (114: YOLO letterbox).
    dtype: "float32" (in [0, 1]) or "uint8".
    shuffle_buffer: examples (encoded bytes) held by the shuffle buffer.
    data_dir: where TFDS keeps the prepared files.
    shard_index, num_shards: this process's share (default `jax.process_index()` of
      `jax.process_count()`).
    repeat: repeat forever (False: one pass, for tests and finite loops).
    letterbox: > 0: scale the long side to f * letterbox and pad to a letterbox square before
      cropping (crops at the evaluation scale, borders included); 0: scale the short side.
  """
  if dtype not in ("float32", "uint8"):
    raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}")
  lo, hi = (float(v) for v in scale_range)
  if not 0 < lo <= hi:
    raise ValueError(f"scale_range must be 0 < lo <= hi, got {tuple(scale_range)}")
  if size < 1 or batch_size < 1:
    raise ValueError(f"size and batch_size must be >= 1, got {size}, {batch_size}")
  shard_index, num_shards = coco_folder.resolve_shard(shard_index, num_shards)
  builder = coco_folder.prepare(root, split, data_dir=data_dir)
  ds = builder.as_dataset(
      split=coco_folder.split_spec(split, shard_index=shard_index, num_shards=num_shards),
      shuffle_files=True, read_config=tfds.ReadConfig(shuffle_seed=seed),
      decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(lambda ex: (ex["image"], ex["image/size"], ex["image/id"]))
  # One stream per (seed, shard): element i of it gets stateless seed (stream, i).
  stream = np.int64(seed) * 65537 + shard_index
  ds = ds.shuffle(shuffle_buffer, seed=int(stream % (2**31 - 1)), reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.enumerate()

  def augment(i, example):
    encoded, orig_size, image_id = example
    image, orig_size, scale = _augment(
        encoded, orig_size, tf.stack([tf.constant(stream, tf.int64), i]), size=size,
        scale_range=(lo, hi), hflip=hflip, pad_value=pad_value, letterbox=letterbox)
    image = image / 255.0 if dtype == "float32" else tf.cast(image, tf.uint8)
    return dict(image=image, orig_size=orig_size, scale=scale, id=image_id)

  ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def train_batches(root: str | os.PathLike, split: str, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """`train_dataset(root, split, **kwargs)` as an iterator of numpy batches."""
  return iter(tfds.as_numpy(train_dataset(root, split, **kwargs)))

