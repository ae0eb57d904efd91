r"""Turns a folder of unlabelled images into a COCO-format folder labelled by the uncompressed
detector (`hssc_jax.data.pseudo_labels`), so `eval.py` can score the zoo and the anchors on it.

  python scripts/pseudo_labels.py --images ../shared/data/kodak --root runs/kodak --split kodak
  python eval.py --config configs/eval/zoo.py:root=runs/kodak,split=kodak --workdir runs/eval_kodak

The detector is configs/eval/detector.py's (YOLOv5n v6.0, square 640 letterbox, NMS at confidence
0.001, IoU 0.6); its detections with score >= --conf become the labels. Category names are taken
from --names-from (a COCO instances json; default coco-mini's when present).
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.eval import detector as detector_config  # pylint: disable=wrong-import-position
from hssc_jax import detector_eval  # pylint: disable=wrong-import-position
from hssc_jax.data import pseudo_labels  # pylint: disable=wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", required=True, help="folder of png/jpg images")
  parser.add_argument("--root", required=True, help="the COCO-format folder to write")
  parser.add_argument("--split", default="images")
  parser.add_argument("--conf", type=float, default=0.25)
  parser.add_argument("--size", default="n", help="YOLOv5 size (weights yolov5<size>-coco-v6.0.pt)")
  default_names = detector_config.SHARED / "data" / "coco-mini" / "annotations" / "instances_val2017.json"
  parser.add_argument("--names-from", default=str(default_names))
  args = parser.parse_args(argv)

  config = detector_config.get_config(f"size={args.size}")
  detector, params = detector_eval.build_detector(config)
  names = ()
  if Path(args.names_from).is_file():
    by_id = {c["id"]: c["name"] for c in json.loads(Path(args.names_from).read_text())["categories"]}
    if set(by_id) >= set(detector.coco_category_ids):
      names = [by_id[c] for c in detector.coco_category_ids]
  summary = pseudo_labels.label_folder(args.images, args.root, args.split, detector, params,
                                       conf=args.conf, category_names=names,
                                       batch_size=config.batch_size)
  print(f"{summary['images']} images, {summary['labels']} labels (score >= {args.conf}) of "
        f"{summary['detections']} detections -> {summary['annotation_path']}")


if __name__ == "__main__":
  main()
