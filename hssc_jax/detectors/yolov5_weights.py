"""YOLOv5 weights: the shared ultralytics checkpoint, `.pt` files (converted on load) and converted
orbax directories, as (detector, variables).

  det, variables = yolov5_weights.load("yolov5n-coco-v6.0.pt")   # or a converted orbax directory
  det, variables = yolov5_weights.build_from_config(config.detector)

Kept apart from the model (`yolov5`), so that the model never imports its converter
(`convert.ultralytics`, which builds the model to lay out the converted parameters).
"""

import os
from pathlib import Path
from typing import Any

import jax

from hssc_jax import errors
from hssc_jax.detectors.yolov5 import YOLOv5


def default_weights(size: str = "n") -> Path:
  """The shared ultralytics checkpoint of a size: `$HSSC_SHARED` or `../shared` beside the repo."""
  shared = Path(os.environ.get("HSSC_SHARED", Path(__file__).resolve().parents[3] / "shared"))
  return shared / "weights" / f"yolov5{size}-coco-v6.0.pt"


def load(path: str | os.PathLike, **overrides: Any) -> tuple[YOLOv5, Any]:
  """(detector, variables) from an ultralytics `.pt` file or a converted orbax directory.

  `overrides` set other `YOLOv5` fields (img_size, NMS settings); size, num_classes, fused and
  anchors come from the checkpoint.
  """
  path = Path(path).expanduser()
  if path.is_dir():
    from hssc_jax.detectors import checkpoint  # pylint: disable=g-import-not-at-top
    variables, info = checkpoint.load(path)
  else:
    from hssc_jax.detectors.convert import ultralytics  # pylint: disable=g-import-not-at-top
    variables, info = ultralytics.convert(path)
  for key in ("size", "num_classes"):
    if key in overrides and overrides[key] != info[key]:
      raise errors.ConfigError(
          f"{path} holds a YOLOv5{info['size']} with {info['num_classes']} classes, but "
          f"{key}={overrides[key]!r} was asked for")
  fields = dict(overrides, size=info["size"], num_classes=info["num_classes"],
                fused=info["fused"], anchors=tuple(tuple(a) for a in info["anchors"]))
  return YOLOv5(**fields), variables


def build_from_config(cfg: Any) -> tuple[YOLOv5, Any]:
  """(detector, variables) from `config.detector` (see `detectors.factory`)."""
  get = lambda k, default=None: cfg[k] if k in cfg and cfg[k] is not None else default
  kwargs = {k: get(k) for k in ("img_size", "conf_threshold", "iou_threshold", "max_detections",
                                "num_classes") if get(k) is not None}
  size = get("size", "n")
  weights = get("weights", "") or ""
  if weights == "random":
    det = YOLOv5(size=size, **kwargs)
    return det, det.init(jax.random.PRNGKey(0))
  path = Path(weights).expanduser() if weights else default_weights(size)
  if not path.exists():
    raise errors.ConfigError(f"YOLOv5 weights not found: {path} (an ultralytics .pt file or a "
                             "directory written by hssc_jax.detectors.checkpoint.save)")
  return load(path, size=size, **kwargs)
