"""A TFDS builder for any COCO-format folder, and `load_coco_folder` to read one split of it.

A COCO-format folder holds one image folder per split and one instances json per split:

```
root/<split>/<file_name>                     (or root/images/<split>/<file_name>)
root/annotations/instances_<split>.json      {"images", "annotations", "categories", ...}
```

`CocoFolder(root, split)` is a `tfds.core.GeneratorBasedBuilder` whose one split is `split`. Its
examples (one per json image, in TFDS's deterministic key-hash order, not json order) are:

  image           uint8 (H, W, 3) RGB. The file's original bytes are stored (JPEG or PNG, RGB or
                  grayscale; grayscale decodes to RGB); any other format or mode (CMYK, palette,
                  alpha, 16-bit) is converted to RGB by PIL and stored as PNG. JPEGs decode with
                  libjpeg's accurate IDCT (`decode_image`), i.e. to the pixels PIL/OpenCV give.
  image/id        int64, the json image id.
  image/filename  the json file_name.
  image/size      int32 (2,), original (height, width), checked against the decoded image.
  objects         a sequence of: id (int64, annotation id), bbox (float32 (4,), COCO [x, y, w, h]
                  in original-image PIXELS, exactly as in the json), category_id (int64, COCO id),
                  label (ClassLabel: contiguous 0..C-1 in the order of sorted category ids, e.g.
                  0..79 for COCO), is_crowd (bool), area (float32, as in the json).

The prepared files live under `data_dir/coco_folder/<config>/1.0.0/` (default `data_dir`: TFDS's,
`$TFDS_DATA_DIR` or ~/tensorflow_datasets). The config name is `<folder>_<split>_<digest>`, where the
digest is a SHA-256 of the json bytes and of the (file name, byte size) of every image it lists: the
same folder is prepared once and reused, a changed json or a replaced image file (of another size)
gets a new config and is prepared afresh. Old configs are left on disk. An image rewritten in place
with the exact same byte size is not detected. The json is parsed and validated on every load
(under a second for COCO val2017, seconds for the 450 MB train2017 json); evaluation reads the
same json through `annotation_path(root, split)`.
"""

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image, UnidentifiedImageError

from hssc_jax._tf import tf as _tf
from hssc_jax.errors import DatasetError

tf = _tf()  # TensorFlow (with GPUs hidden) before TFDS touches it.
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top,wrong-import-position

_VERSION = "1.0.0"
_KEEP_FORMATS = ("JPEG", "PNG")
_KEEP_MODES = ("RGB", "L")


def annotation_path(root: str | os.PathLike, split: str) -> Path:
  """The instances json of `split` (what pycocotools reads for evaluation)."""
  return Path(root) / "annotations" / f"instances_{split}.json"


def available_splits(root: str | os.PathLike) -> list[str]:
  """Splits that have an `annotations/instances_<split>.json` under `root`."""
  ann = Path(root) / "annotations"
  if not ann.is_dir():
    return []
  return sorted(p.name[len("instances_"):-len(".json")] for p in ann.glob("instances_*.json"))


def image_dir(root: str | os.PathLike, split: str) -> Path:
  """`root/<split>`, or `root/images/<split>` when only that exists."""
  root = Path(root)
  for d in (root / split, root / "images" / split):
    if d.is_dir():
      return d
  return root / split


@dataclasses.dataclass(frozen=True)
class CocoIndex:
  """A validated instances json and the facts derived from it.

  Attributes:
    root, split, json_path, image_dir: where things are.
    images: the json's image dicts, in json order.
    annotations: image id -> list of annotation dicts (with defaults filled in).
    category_ids: sorted COCO category ids; label i is category_ids[i].
    category_names: names in the same order (made unique).
    digest: SHA-256 hex of the json bytes and of the listed images' (file name, size).
  """

  root: Path
  split: str
  json_path: Path
  image_dir: Path
  images: list[dict[str, Any]]
  annotations: dict[int, list[dict[str, Any]]]
  category_ids: list[int]
  category_names: list[str]
  digest: str

  @property
  def num_annotations(self) -> int:
    return sum(len(v) for v in self.annotations.values())


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(cond: bool, path: Path, what: str) -> None:
  if not cond:
    raise DatasetError(f"{path}: {what}")


def read_index(root: str | os.PathLike, split: str) -> CocoIndex:
  """Reads and validates `split` of a COCO-format folder.

  Raises:
    DatasetError: the folder or json is missing, the json is not valid JSON or not COCO instances
      (which entry and field is wrong is named), an image file it lists is missing, or it lists no
      images.
  """
  root = Path(root).expanduser()
  if not root.is_dir():
    raise DatasetError(f"COCO-format folder {root} does not exist (or is not a folder)")
  if not re.fullmatch(r"[\w-]+", split):
    raise DatasetError(f"split name {split!r} must be letters, digits, '_' or '-'")
  path = annotation_path(root, split)
  if not path.is_file():
    found = available_splits(root)
    raise DatasetError(f"annotation file {path} does not exist; splits found under {root}: "
                       f"{found or 'none (no annotations/instances_<split>.json)'}")
  raw = path.read_bytes()
  try:
    data = json.loads(raw)
  except json.JSONDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
  except UnicodeDecodeError as e:
    raise DatasetError(f"{path}: not valid JSON: {e}") from e
  _check(isinstance(data, dict), path, f"top level must be a JSON object, got {type(data).__name__}")
  for key in ("images", "categories"):
    _check(key in data, path, f"missing the {key!r} list (keys present: {sorted(data)})")
    _check(isinstance(data[key], list), path, f"{key!r} must be a list")
  anns = data.get("annotations", [])
  _check(isinstance(anns, list), path, "'annotations' must be a list")

  images, ids = data["images"], set()
  _check(len(images) > 0, path, "lists no images ('images' is empty)")
  for i, im in enumerate(images):
    where = f"images[{i}]"
    _check(isinstance(im, dict), path, f"{where} must be an object")
    for key in ("id", "file_name", "height", "width"):
      _check(key in im, path, f"{where} has no {key!r}")
    _check(_is_int(im["id"]), path, f"{where}: 'id' must be an integer, got {im['id']!r}")
    _check(im["id"] not in ids, path, f"{where}: duplicate image id {im['id']}")
    ids.add(im["id"])
    _check(isinstance(im["file_name"], str) and im["file_name"], path,
           f"{where}: 'file_name' must be a non-empty string")
    for key in ("height", "width"):
      _check(_is_int(im[key]) and im[key] > 0, path,
             f"{where} (id {im['id']}): {key!r} must be a positive integer, got {im[key]!r}")

  cats = data["categories"]
  _check(len(cats) > 0, path, "lists no categories ('categories' is empty)")
  names = {}
  for i, c in enumerate(cats):
    _check(isinstance(c, dict) and _is_int(c.get("id")), path,
           f"categories[{i}] must be an object with an integer 'id'")
    _check(c["id"] not in names, path, f"categories[{i}]: duplicate category id {c['id']}")
    names[c["id"]] = str(c.get("name", c["id"]))
  category_ids = sorted(names)
  category_names = [names[c] for c in category_ids]
  if len(set(category_names)) != len(category_names):
    category_names = [f"{n}_{c}" for n, c in zip(category_names, category_ids)]

  by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
  for i, a in enumerate(anns):
    where = f"annotations[{i}]"
    _check(isinstance(a, dict), path, f"{where} must be an object")
    where = f"annotations[{i}] (id {a.get('id')})"
    for key in ("image_id", "category_id", "bbox"):
      _check(key in a, path, f"{where} has no {key!r}")
    _check(a["image_id"] in by_image, path, f"{where}: image_id {a['image_id']!r} is not in 'images'")
    _check(a["category_id"] in names, path,
           f"{where}: category_id {a['category_id']!r} is not in 'categories'")
    box = a["bbox"]
    _check(isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box), path,
           f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {box!r}")
    _check(box[2] >= 0 and box[3] >= 0, path, f"{where}: 'bbox' has negative width/height: {box}")
    crowd = a.get("iscrowd", 0)
    _check(crowd in (0, 1), path, f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
    area = a.get("area", box[2] * box[3])
    _check(_is_number(area), path, f"{where}: 'area' must be a finite number, got {area!r}")
    by_image[a["image_id"]].append(dict(id=int(a.get("id", i)), bbox=[float(v) for v in box],
                                        category_id=a["category_id"], iscrowd=bool(crowd),
                                        area=float(area)))

  idir = image_dir(root, split)
  if not idir.is_dir():
    raise DatasetError(f"image folder {idir} of split {split!r} does not exist "
                       f"({path} lists {len(images)} images)")
  sizes = {e.name: e.stat().st_size for e in os.scandir(idir) if e.is_file()}
  missing = []
  hasher = hashlib.sha256(raw)
  for im in images:
    name = im["file_name"]
    size = sizes.get(name)
    if size is None and "/" in name and (idir / name).is_file():
      size = (idir / name).stat().st_size
    if size is None:
      missing.append(im)
    else:
      hasher.update(f"\0{name}\0{size}".encode())
  if missing:
    if not sizes:
      raise DatasetError(f"image folder {idir} holds no image files, but {path} lists "
                         f"{len(images)} images")
    examples = []
    for im in missing[:3]:
      refs = [a["id"] for a in by_image[im["id"]]]
      examples.append(f"{im['file_name']} (image id {im['id']}, referenced by "
                      f"{len(refs)} annotation(s){' e.g. id ' + str(refs[0]) if refs else ''})")
    raise DatasetError(f"{len(missing)} image file(s) listed in {path} are missing from {idir}: "
                       + "; ".join(examples))
  return CocoIndex(root=root, split=split, json_path=path, image_dir=idir, images=images,
                   annotations=by_image, category_ids=category_ids,
                   category_names=category_names, digest=hasher.hexdigest())


def read_image_bytes(path: Path) -> tuple[bytes, tuple[int, int]]:
  """The bytes to store for one image file, and its (height, width).

  JPEG or PNG files in RGB or grayscale keep their original bytes; anything else (CMYK JPEG,
  palette or alpha PNG, other formats) is converted to RGB by PIL and re-encoded as PNG (lossless).
  """
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as im:
      size = (im.height, im.width)
      if im.format in _KEEP_FORMATS and im.mode in _KEEP_MODES:
        return data, size
      out = io.BytesIO()
      im.convert("RGB").save(out, format="PNG")
      return out.getvalue(), size
  except (UnidentifiedImageError, OSError) as e:
    raise DatasetError(f"{path}: not a readable image: {e}") from e


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Stored image bytes (JPEG or PNG) -> uint8 (H, W, 3) RGB.

  JPEGs are decoded with libjpeg's accurate integer IDCT (its default, and what PIL and OpenCV
  give), not TensorFlow's fast default, which differs by up to ~20 levels per pixel.
  """
  image = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_png(encoded, channels=3))
  image.set_shape([None, None, 3])
  return image


@tfds.decode.make_decoder()
def _accurate_decoder(serialized_image, feature):
  del feature
  return decode_image(serialized_image)


def default_decoders() -> dict[str, Any]:
  """`decoders` for `as_dataset`: images through `decode_image`."""
  return {"image": _accurate_decoder()}


@dataclasses.dataclass
class CocoFolderConfig(tfds.core.BuilderConfig):
  """One split of one COCO-format folder (`root`), identified by its content digest."""

  root: str = ""
  split: str = ""
  digest: str = ""


def _config_name(index: CocoIndex) -> str:
  slug = re.sub(r"[^a-z0-9]+", "_", index.root.resolve().name.lower()).strip("_") or "root"
  return f"{slug}_{index.split}_{index.digest[:16]}"


class CocoFolder(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for one split of a COCO-format folder (see the module docstring)."""

  VERSION = tfds.core.Version(_VERSION)
  RELEASE_NOTES = {_VERSION: "Images (original bytes), ids, sizes, COCO boxes in pixels."}

  def __init__(self, root: str | os.PathLike, split: str, *,
               data_dir: str | os.PathLike | None = None):
    self.index = read_index(root, split)
    config = CocoFolderConfig(
        name=_config_name(self.index), version=_VERSION, root=str(self.index.root.resolve()),
        split=split, digest=self.index.digest,
        description=f"{self.index.json_path} ({len(self.index.images)} images)")
    # TFDS logs a warning with the whole config for every config not in BUILDER_CONFIGS, which
    # for this builder is every one: keep it quiet.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
      super().__init__(config=config, data_dir=None if data_dir is None else os.fspath(data_dir))
    finally:
      absl_logger.setLevel(level)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # No download checksums to look up next to the code. (TFDS's own lookup needs the
    # `importlib_resources` backport for classes outside tensorflow_datasets.)
    return None

  @property
  def annotation_path(self) -> Path:
    return self.index.json_path

  @property
  def num_examples(self) -> int:
    """Images in the split."""
    return len(self.index.images)

  @property
  def category_ids(self) -> list[int]:
    """Contiguous label -> COCO category id."""
    return list(self.index.category_ids)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="A COCO-format folder: images with instance boxes.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "image/id": np.int64,
            "image/filename": tfds.features.Text(),
            "image/size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "objects": tfds.features.Sequence({
                "id": np.int64,
                "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "category_id": np.int64,
                "label": tfds.features.ClassLabel(names=self.index.category_names),
                "is_crowd": np.bool_,
                "area": np.float32,
            }),
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the folder is local.
    return {self.index.split: self._generate_examples()}

  def _generate_examples(self):
    index = self.index
    label_of = {c: i for i, c in enumerate(index.category_ids)}
    for im in index.images:
      path = index.image_dir / im["file_name"]
      encoded, size = read_image_bytes(path)
      if size != (im["height"], im["width"]):
        raise DatasetError(f"{path}: image is {size[0]}x{size[1]} (HxW) but {index.json_path} "
                           f"says {im['height']}x{im['width']} for image id {im['id']}")
      anns = index.annotations[im["id"]]
      yield im["id"], {
          "image": encoded,
          "image/id": im["id"],
          "image/filename": im["file_name"],
          "image/size": np.asarray(size, np.int32),
          "objects": {
              "id": np.asarray([a["id"] for a in anns], np.int64),
              "bbox": np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4),
              "category_id": np.asarray([a["category_id"] for a in anns], np.int64),
              "label": np.asarray([label_of[a["category_id"]] for a in anns], np.int64),
              "is_crowd": np.asarray([a["iscrowd"] for a in anns], np.bool_),
              "area": np.asarray([a["area"] for a in anns], np.float32),
          },
      }


def prepare(root: str | os.PathLike, split: str, *,
            data_dir: str | os.PathLike | None = None) -> CocoFolder:
  """Validates the folder and prepares its TFDS files (once: later calls reuse them)."""
  builder = CocoFolder(root, split, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder


def resolve_shard(shard_index: int | None, num_shards: int | None) -> tuple[int, int]:
  """(shard_index, num_shards), defaulting to this JAX process's index and the process count."""
  if shard_index is None or num_shards is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    num_shards = jax.process_count() if num_shards is None else num_shards
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
  return shard_index, num_shards


def split_spec(split: str, *, max_images: int | None = None, shard_index: int | None = None,
               num_shards: int | None = None,
               num_examples: int | None = None) -> tfds.typing.SplitArg:
  """The TFDS split to read: the first `max_images` examples, evenly sharded over processes.

  Shards do not overlap and cover every example (`tfds.split_for_jax_process`, no remainder
  dropped), so for evaluation the union over processes is the whole split. `num_examples` (the
  split's size, when known) caps `max_images`.
  """
  shard_index, num_shards = resolve_shard(shard_index, num_shards)
  if max_images is not None:
    if max_images < 1:
      raise ValueError(f"max_images must be >= 1, got {max_images}")
    if num_examples is None or max_images < num_examples:
      split = f"{split}[:{max_images}]"
  return tfds.split_for_jax_process(split, process_index=shard_index, process_count=num_shards)


def load_coco_folder(root: str | os.PathLike, split: str, *,
                     data_dir: str | os.PathLike | None = None, max_images: int | None = None,
                     shard_index: int | None = None, num_shards: int | None = None,
                     shuffle_files: bool = False, read_config: tfds.ReadConfig | None = None,
                     decoders: Any = None):
  """`split` of a COCO-format folder as a `tf.data.Dataset` of the examples described above.

  Args:
    root: the folder (with `annotations/instances_<split>.json` and `<split>/`).
    split: e.g. "val2017".
    data_dir: where TFDS keeps the prepared files (default TFDS's).
    max_images: read only the first this many examples (before sharding).
    shard_index, num_shards: this process's shard (default `jax.process_index()` of
      `jax.process_count()`).
    shuffle_files, read_config: passed to `as_dataset`.
    decoders: passed to `as_dataset`; default `default_decoders()` (accurate JPEG decoding).
      `{"image": tfds.decode.SkipDecoding()}` gives the stored bytes.
  """
  builder = prepare(root, split, data_dir=data_dir)
  return builder.as_dataset(
      split=split_spec(split, max_images=max_images, shard_index=shard_index,
                       num_shards=num_shards, num_examples=builder.num_examples),
      shuffle_files=shuffle_files, read_config=read_config,
      decoders=default_decoders() if decoders is None else decoders)
