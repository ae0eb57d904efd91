"""COCO box detection metrics through pycocotools' `COCOeval` (Lin et al., "Microsoft COCO", 2014).

Typical use:

```
results = detections_to_coco(image_ids, detections.per_image(), category_ids)   # list of dicts
metrics = coco_evaluate(gt_json_path, results, image_ids=image_ids)
metrics["mAP"], metrics["AP50"]
```

`coco_evaluate` returns the twelve numbers of `COCOeval.summarize()` under the names
mAP (AP@[.5:.95]), AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl. COCOeval's -1 (no
ground truth in that area range) is kept as -1. pycocotools' prints are swallowed unless
`verbose=True`.
"""

import contextlib
import copy
import io
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hssc_jax.errors import InvalidInputError

# The 80 contiguous COCO classes -> COCO category ids (upstream `utils/general.py::coco80_to_coco91_class`).
COCO80_TO_COCO91 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                    24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47,
                    48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70,
                    72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)

METRIC_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@contextlib.contextmanager
def _quiet(verbose: bool):
  if verbose:
    yield
    return
  with contextlib.redirect_stdout(io.StringIO()):
    yield


def load_ground_truth(gt: Any, verbose: bool = False) -> Any:
  """A pycocotools `COCO` from a json path (or the object itself)."""
  # pycocotools is imported where it is used: the category map above serves the detectors on
  # machines without it (e.g. scripts/gpu_sweep.py on an accelerator).
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  if isinstance(gt, COCO):
    return gt
  with _quiet(verbose):
    return COCO(os.fspath(gt))


def category_ids_of(gt: "str | os.PathLike | COCO") -> list[int]:
  """Contiguous class index -> COCO category id: the json's category ids, sorted."""
  return sorted(load_ground_truth(gt).getCatIds())


def detections_to_coco(image_ids: Sequence[int], detections: Iterable[Mapping[str, Any]],
                       category_ids: Sequence[int]) -> list[dict[str, Any]]:
  """Per-image detections -> COCO result dicts.

  Args:
    image_ids: COCO image id of each entry of `detections`.
    detections: per image, a mapping with `boxes` ((K, 4) x1 y1 x2 y2 in original-image pixels),
      `scores` ((K,)) and `classes` ((K,) contiguous indexes), e.g. `Detections.per_image()`.
    category_ids: contiguous class index -> COCO category id.

  Returns:
    [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...].
  """
  detections = list(detections)
  if len(detections) != len(image_ids):
    raise InvalidInputError(f"{len(image_ids)} image ids for {len(detections)} detection sets")
  cat = np.asarray(category_ids, np.int64)
  results = []
  for image_id, det in zip(image_ids, detections):
    boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(det["scores"], np.float64).reshape(-1)
    classes = np.asarray(det["classes"]).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
      raise InvalidInputError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores and "
                              f"{len(classes)} classes must have the same length")
    if classes.size and (classes.min() < 0 or classes.max() >= len(cat)):
      raise InvalidInputError(f"image {image_id}: class index {classes.min()}..{classes.max()} "
                              f"outside [0, {len(cat)}) of the category id list")
    if not np.all(np.isfinite(boxes)) or not np.all(np.isfinite(scores)):
      raise InvalidInputError(f"image {image_id}: boxes or scores hold NaN or inf")
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    for b, s, c in zip(xywh.tolist(), scores.tolist(), classes.tolist()):
      results.append(dict(image_id=int(image_id), category_id=int(cat[int(c)]), bbox=b, score=s))
  return results


def coco_to_detections(results: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                       category_ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
  """COCO result dicts -> per-image `boxes` (x1 y1 x2 y2), `scores`, `classes` (the inverse)."""
  index = {c: i for i, c in enumerate(category_ids)}
  per = {int(i): [] for i in image_ids}
  for r in results:
    if r["category_id"] not in index:
      raise InvalidInputError(f"category id {r['category_id']} is not in the category id list")
    per[int(r["image_id"])].append(r)
  out = []
  for i in image_ids:
    rs = per[int(i)]
    xywh = np.asarray([r["bbox"] for r in rs], np.float64).reshape(-1, 4)
    out.append(dict(boxes=np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
                    scores=np.asarray([r["score"] for r in rs], np.float64),
                    classes=np.asarray([index[r["category_id"]] for r in rs], np.int64)))
  return out


def coco_evaluate(gt: "str | os.PathLike | COCO", results: Sequence[Mapping[str, Any]], *,
                  image_ids: Iterable[int] | None = None, verbose: bool = False) -> dict[str, float]:
  """COCO bbox metrics of `results` (COCO result dicts) against the ground truth `gt`.

  Args:
    gt: instances json path or a pycocotools `COCO`.
    results: [{"image_id", "category_id", "bbox": [x, y, w, h] (pixels), "score"}, ...]; may be
      empty (every AP is then 0 where ground truth exists).
    image_ids: evaluate on these images only (e.g. the ones that were run); default all images of
      the ground truth. Results on other images are ignored.
    verbose: let pycocotools print its progress and summary table.

  Returns:
    {name: value} for `METRIC_NAMES`, plus "num_images" and "num_detections".
  """
  evaluator, num_detections = per_image_evaluation(gt, results, image_ids=image_ids,
                                                   verbose=verbose)
  with _quiet(verbose):
    evaluator.accumulate()
    evaluator.summarize()
  metrics = {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}
  metrics.update(num_images=len(evaluator.params.imgIds), num_detections=num_detections)
  return metrics


def per_image_evaluation(gt: "str | os.PathLike | COCO", results: Sequence[Mapping[str, Any]], *,
                         image_ids: Iterable[int] | None = None, verbose: bool = False
                         ) -> tuple[Any, int]:
  """(pycocotools COCOeval after `evaluate()`, number of detections on `image_ids`): the per-image,
  per-category matches that `accumulate()` turns into the metrics. Arguments as `coco_evaluate`."""
  coco_gt = load_ground_truth(gt, verbose)
  known = set(coco_gt.getImgIds())
  ids = sorted(known if image_ids is None else {int(i) for i in image_ids})
  if unknown := [i for i in ids if i not in known]:
    raise InvalidInputError(f"image ids not in the ground truth: {unknown[:10]}")
  if not ids:
    raise InvalidInputError("no image ids to evaluate")
  keep = set(ids)
  dets = []
  for r in results:
    if int(r["image_id"]) not in known:
      raise InvalidInputError(f"a detection refers to image id {r['image_id']}, which is not in "
                              "the ground truth")
    if int(r["image_id"]) in keep:
      dets.append(dict(image_id=int(r["image_id"]), category_id=int(r["category_id"]),
                       bbox=[float(v) for v in r["bbox"]], score=float(r["score"])))
  from pycocotools.coco import COCO  # pylint: disable=g-import-not-at-top
  from pycocotools.cocoeval import COCOeval  # pylint: disable=g-import-not-at-top
  with _quiet(verbose):
    if dets:
      coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
    else:  # loadRes cannot take an empty list; an empty result set scores 0 where GT exists.
      coco_dt = COCO()
      coco_dt.dataset = dict(images=list(coco_gt.dataset["images"]), annotations=[],
                             categories=copy.deepcopy(coco_gt.dataset["categories"]))
      coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.imgIds = ids
    evaluator.evaluate()
  return evaluator, len(dets)


def write_results(path: "str | os.PathLike", results: Sequence[Mapping[str, Any]]) -> None:
  """Writes COCO result dicts as json (boxes rounded to 1/1000 pixel, scores to 1e-5)."""
  rounded = [dict(image_id=r["image_id"], category_id=r["category_id"],
                  bbox=[round(float(v), 3) for v in r["bbox"]], score=round(float(r["score"]), 5))
             for r in results]
  with open(path, "w") as f:
    json.dump(rounded, f)


def format_metrics(metrics: Mapping[str, float]) -> str:
  """One line: mAP, AP50, AP75, APs/m/l and AR100."""
  keys = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
  return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)

