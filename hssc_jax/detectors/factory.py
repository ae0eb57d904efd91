"""Detectors by name, from a config: what training and evaluation call to get a split detector.

  detector, variables = factory.build(config.detector)

config.detector fields: `name` ("shapes_net" | "yolov5" | "faster_rcnn"), `weights` (a checkpoint
path; "" for the default of that detector, "random" for random initialisation, e.g. in smoke tests),
`size` (YOLOv5 n/s/m/l/x), `img_size` (network input side). Faster R-CNN: `weights` a torchvision
.pth or a detectron2 .pkl, optional `convention` ("torchvision" | "detectron2", default from the
file suffix), `depth` (50 | 101), see `faster_rcnn.build_from_config`.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from hssc_jax import errors


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  try:
    return cfg[key]
  except (KeyError, AttributeError):
    return default


def _file_digest(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:16]


def _weights_path(cfg: Any) -> Path | None:
  w = _get(cfg, "weights", "") or ""
  if w in ("", "random"):
    return None
  p = Path(w).expanduser()
  if not p.exists():
    raise errors.ConfigError(f"detector weights not found: {p}")
  return p


def identity(cfg: Any) -> dict[str, Any]:
  """What determines the detector's features (for run identity and cache keys)."""
  name = _get(cfg, "name")
  ident = {"name": name, "size": _get(cfg, "size"), "img_size": _get(cfg, "img_size"),
           "weights": _get(cfg, "weights", "") or ""}
  if name == "faster_rcnn":
    ident.update(convention=_get(cfg, "convention"), depth=_get(cfg, "depth"))
  p = _weights_path(cfg)
  if p is not None and p.is_file():
    ident["weights_sha"] = _file_digest(p)
  return ident


def build(cfg: Any) -> tuple[Any, Any]:
  """(detector, variables) for config.detector."""
  name = _get(cfg, "name")
  weights = _get(cfg, "weights", "") or ""
  if name == "shapes_net":
    from hssc_jax.detectors import shapes_net, shapes_net_train  # pylint: disable=g-import-not-at-top
    if weights == "random":
      det = shapes_net.ShapesNet()
      return det, det.init(jax.random.PRNGKey(0))
    path = _weights_path(cfg) or shapes_net_train.ASSET
    if not path.exists():
      raise errors.ConfigError(f"ShapesNet checkpoint missing: {path}")
    return shapes_net_train.load(path)
  if name == "yolov5":
    from hssc_jax.detectors import yolov5_weights  # pylint: disable=g-import-not-at-top
    return yolov5_weights.build_from_config(cfg)
  if name == "faster_rcnn":
    from hssc_jax.detectors import faster_rcnn  # pylint: disable=g-import-not-at-top
    return faster_rcnn.build_from_config(cfg)
  raise errors.ConfigError(
      f"unknown detector {name!r}; known: 'shapes_net', 'yolov5', 'faster_rcnn'")


def feature_channels(detector: Any, variables: Any = None) -> list[int]:
  """Channel count of each pyramid level, from the detector's declared or traced shapes."""
  declared = getattr(detector, "feature_channels", None)
  if declared:
    return list(declared)
  size = int(getattr(detector, "img_size", 256))
  if variables is None:
    variables = jax.eval_shape(detector.init, jax.random.PRNGKey(0))
  shapes = jax.eval_shape(detector.part1, variables, jnp.zeros((1, size, size, 3), jnp.float32))
  return [int(shapes[n].shape[-1]) for n in detector.feature_names]


def task_outputs(detector: Any, variables: Any, features: Mapping[str, jax.Array]) -> jax.Array:
  """The detector head's raw outputs on a pyramid (for the task-distillation loss)."""
  head = getattr(detector, "head", None)
  if head is None:
    raise errors.ConfigError(f"detector {detector.name!r} exposes no head for the task loss")
  return head(variables, features)


def count_images(root: str, split: str, data_dir: str | None = None) -> int:
  """Number of images of a COCO-format split (from its json)."""
  from hssc_jax.data import coco_folder  # pylint: disable=g-import-not-at-top
  path = coco_folder.annotation_path(root, split)
  if not path.exists():
    raise errors.DatasetError(f"annotation file not found: {path}")
  return len(json.loads(path.read_text()).get("images", []))
