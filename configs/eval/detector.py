r"""Evaluates a detector alone (no codec) on a COCO-format folder: the mAP ceiling of every codec.

Default: YOLOv5n (v6.0 COCO weights from ../shared/weights) on ../shared/data/coco-mini val2017,
square 640 letterbox, confidence 0.001, IoU 0.6, at most 300 detections (the reference settings:
mAP 0.338, AP50 0.490 in ../shared/reference/yolov5n-coco-mini/metrics_square.json).

  python eval.py --config configs/eval/detector.py --workdir /tmp/x

Variants (comma-separated, after a colon):
  configs/eval/detector.py:size=s            another YOLOv5 size (weights yolov5<size>-coco-v6.0.pt)
  configs/eval/detector.py:smoke             4 images, batch 2: a seconds-long check
  configs/eval/detector.py:max_images=16,split=val2017
Any field can also be overridden on the command line, e.g. `--config.detector.weights=/ckpt/dir`
(an orbax directory of converted parameters or an ultralytics .pt), `--config.data.root=/coco`,
`--config.data.data_dir=~/tensorflow_datasets`, `--config.batch_size=16`.

Writes `metrics.json` and `detections.json` (COCO result format) into the workdir. The shared
folder is `$HSSC_SHARED` when set, else `../shared` beside the repository.
"""

import os
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from configs.common import parse_arg  # one parser for every config (the eval configs use it too)

_REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("HSSC_SHARED", _REPO.parent / "shared"))

_DEFAULTS = dict(size="n", smoke=False, max_images=0, split="val2017")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The locked config of `python eval.py --config configs/eval/detector.py[:arg]`."""
  arg = parse_arg(arg, **_DEFAULTS)
  config = ml_collections.ConfigDict()
  config.mode = "detector"

  config.detector = ml_collections.ConfigDict()
  config.detector.name = "yolov5"
  config.detector.size = arg.size
  config.detector.num_classes = 80
  config.detector.img_size = 640
  config.detector.weights = str(SHARED / "weights" / f"yolov5{arg.size}-coco-v6.0.pt")
  config.detector.conf_threshold = 0.001
  config.detector.iou_threshold = 0.6
  config.detector.max_detections = 300

  config.data = ml_collections.ConfigDict()
  config.data.root = str(SHARED / "data" / "coco-mini")
  config.data.split = arg.split
  config.data.data_dir = config_dict.placeholder(str)  # None: TFDS's ($TFDS_DATA_DIR or ~/tensorflow_datasets)
  config.data.max_images = config_dict.placeholder(int)  # None: the whole split
  if arg.max_images:
    config.data.max_images = arg.max_images

  config.batch_size = 8
  config.progress = True  # tqdm progress bar
  config.verbose = False  # print pycocotools' own summary table

  if arg.smoke:
    config.data.max_images = 4
    config.batch_size = 2
  config.lock()
  return config
