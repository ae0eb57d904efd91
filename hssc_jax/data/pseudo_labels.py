"""A COCO-format folder labelled by the uncompressed detector, for images without annotations.

Without ground truth (Kodak, a camera's own frames, COCO images whose labels are not at hand) a
codec can still be scored by how well the detector on decoded features reproduces what it finds on
the original image: the uncompressed detector's detections with score >= `conf` (0.25, YOLOv5
detect.py's default) become the boxes of an instances json, and `eval.py` scores every codec and
anchor against them with COCOeval as usual (`root=` in configs/eval/zoo.py).

What this measures is fidelity to the uncompressed detector, not accuracy: the detector itself
scores 1.0 by construction (each label is one of its own detections, ranked above the ones under
`conf`). Compare BD-rates between labelled and pseudo-labelled sets, not mAP values.

  root/<split>/<file_name>                   copies of the images
  root/annotations/instances_<split>.json    {"images", "categories", "annotations", "info"}

The json's "info" records the detector, the threshold and the source folder.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from hssc_jax import errors
from hssc_jax.data import coco_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(folder: str | os.PathLike) -> list[Path]:
  """The image files (png, jpg, jpeg) directly in `folder`, sorted by name."""
  folder = Path(folder).expanduser()
  if not folder.is_dir():
    raise errors.DatasetError(f"image folder {folder} does not exist (or is not a folder)")
  files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise errors.DatasetError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
  return files


def write_unlabelled(images: Sequence[Path], root: str | os.PathLike, split: str,
                     category_ids: Sequence[int], category_names: Sequence[str] = ()) -> Path:
  """Copies `images` into root/<split>/ and writes an instances json without annotations (ids 1..N
  in the given order). Refuses a root whose split json exists: nothing is overwritten."""
  root = Path(root).expanduser()
  path = coco_folder.annotation_path(root, split)
  if path.exists():
    raise errors.DatasetError(f"{path} exists: remove it or choose another root or split")
  entries = []
  for i, src in enumerate(images, start=1):
    try:
      with Image.open(src) as im:
        width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
      raise errors.DatasetError(f"{src}: not a readable image ({e})") from e
    entries.append(dict(id=i, file_name=src.name, height=height, width=width))
  if len({e["file_name"] for e in entries}) != len(entries):
    raise errors.DatasetError("two images share a file name")
  names = list(category_names) or [f"category {c}" for c in category_ids]
  if len(names) != len(category_ids):
    raise errors.ConfigError(f"{len(names)} category names for {len(category_ids)} category ids")
  (root / split).mkdir(parents=True, exist_ok=True)
  for src in images:
    shutil.copyfile(src, root / split / src.name)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(dict(images=entries, annotations=[], categories=[
      dict(id=int(c), name=str(n)) for c, n in zip(category_ids, names)])))
  return path


def annotations_from(results: Sequence[dict[str, Any]], conf: float) -> list[dict[str, Any]]:
  """COCO result dicts (`coco.detections_to_coco`) with score >= conf, as annotations."""
  kept = [r for r in results if r["score"] >= conf]
  return [dict(id=i, image_id=int(r["image_id"]), category_id=int(r["category_id"]),
               bbox=[float(v) for v in r["bbox"]], area=float(r["bbox"][2] * r["bbox"][3]),
               iscrowd=0) for i, r in enumerate(kept, start=1)]


def label_folder(images_dir: str | os.PathLike, root: str | os.PathLike, split: str,
                 detector: Any, params: Any, *, conf: float = 0.25, category_names: Sequence[str] = (),
                 batch_size: int = 8, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
  """Builds root as a COCO-format folder of the images in `images_dir`, labelled by `detector`.

  The detector runs through the evaluation pipeline (`pipeline.eval_data`, its own preprocessing
  and NMS), so the labels are exactly what `eval.py` gets from the uncompressed detector.

  Returns:
    {"images", "labels" (boxes kept), "detections" (boxes before the threshold), "annotation_path"}.
  """
  from hssc_jax import detector_eval  # pylint: disable=g-import-not-at-top
  from hssc_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if not 0.0 < conf < 1.0:
    raise errors.ConfigError(f"conf must be in (0, 1), got {conf}")
  images = list_images(images_dir)
  path = write_unlabelled(images, root, split, list(detector.coco_category_ids), category_names)
  try:
    data = pipeline.eval_data(root, split, batch_size=batch_size, data_dir=data_dir,
                              shard_index=0, num_shards=1)
    results, _, _ = detector_eval.run_detector(detector, params, data, progress=False)
  except BaseException:
    path.unlink()  # an unlabelled json left behind would pass for a labelled one
    raise
  coco = json.loads(path.read_text())
  coco["annotations"] = annotations_from(results, conf)
  coco["info"] = dict(description="pseudo-labels: the uncompressed detector's detections",
                      detector=str(getattr(detector, "name", type(detector).__name__)),
                      conf=conf, source=str(Path(images_dir).expanduser().resolve()))
  path.write_text(json.dumps(coco))
  return dict(images=len(images), labels=len(coco["annotations"]), detections=len(results),
              annotation_path=str(path))
