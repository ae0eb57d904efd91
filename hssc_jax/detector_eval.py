"""Detector-only evaluation: run a split detector over a COCO-format split and score it with COCOeval.

```
EvalData batches --detector.preprocess--> batch, meta --jit(detect)--> Detections
  --> COCO results (original pixels, category ids) --> coco_evaluate --> metrics.json, detections.json
```

This is the upper bound every codec is measured against (`part2(part1(x))` with no coding between).
Batches keep one shape (the last one is padded by repeating its final image and the padding rows
are dropped), so `detect` compiles once. Every process runs the whole split and only process 0
writes; detector evaluation is cheap next to codec evaluation.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from hssc_jax import errors
from hssc_jax.data import pipeline
from hssc_jax.detectors.base import SplitDetector
from hssc_jax.metrics import coco


def build_detector(config: ml_collections.ConfigDict) -> tuple[SplitDetector, Any]:
  """The detector named by `config.detector` and its parameters (`detectors.factory.build`)."""
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  return factory.build(config.detector)


def split_features(config: ml_collections.ConfigDict
                   ) -> tuple[list[dict[str, Any]], SplitDetector, Any]:
  """(part-1 features of every image of `config`'s split, one pyramid of numpy arrays per batch
  without padding rows, detector, its parameters): the pyramids an evaluation codes."""
  det, det_vars = build_detector(config)
  part1 = jax.jit(det.part1)
  feats = []
  for batch in pipeline.eval_data_of(config):
    n = len(batch["images"])
    x, _ = det.preprocess(list(batch["images"]))
    feats.append({s: np.asarray(a)[:n] for s, a in part1(det_vars, x).items()})
  return feats, det, det_vars


def run_detector(detector: SplitDetector, params: Any, data: pipeline.EvalData, *,
                 progress: bool = True) -> tuple[list[dict[str, Any]], list[int], dict[str, float]]:
  """Runs `detector.detect` over `data`.

  Returns:
    (COCO result dicts, image ids in the order run, timing: "seconds" (whole loop, compile
    included) and "images_per_s" (after the first batch, i.e. without compilation, when there
    is more than one batch)).
  """
  detect = jax.jit(detector.detect)
  category_ids = list(detector.coco_category_ids)
  results, image_ids = [], []
  start = time.perf_counter()
  after_first, first_n = None, 0
  for batch in tqdm.tqdm(data, total=len(data), disable=not progress, unit="batch",
                         desc=f"{detector.name} on {data.num_images} images"):
    images, n = list(batch["images"]), len(batch["images"])
    images += [images[-1]] * (data.batch_size - n)
    x, meta = detector.preprocess(images)
    per_image = detect(params, x, meta).per_image()[:n]  # to host: waits for the device
    ids = [int(i) for i in batch["ids"]]
    results += coco.detections_to_coco(ids, per_image, category_ids)
    image_ids += ids
    if after_first is None:
      after_first, first_n = time.perf_counter(), n
  end = time.perf_counter()
  timed_images = len(image_ids) - first_n
  timing = dict(seconds=end - start,
                images_per_s=(timed_images / (end - after_first) if timed_images else
                              len(image_ids) / max(end - start, 1e-9)))
  return results, image_ids, timing


def evaluate_detector(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                      detector: SplitDetector | None = None, params: Any = None) -> dict[str, Any]:
  """Evaluates the detector of `config` on `config.data`; writes metrics.json and detections.json.

  Args:
    config: see configs/eval/detector.py (`detector`, `data`, `batch_size`, `progress`,
      `verbose`).
    workdir: output folder (created).
    detector, params: an already built detector (default: `build_detector(config)`).

  Returns:
    The metrics dict written to metrics.json.
  """
  if detector is None:
    detector, params = build_detector(config)
  data_cfg = config.data
  data = pipeline.eval_data_of(config)
  known = set(data.category_ids)
  if not known & set(detector.coco_category_ids):
    raise errors.ConfigError(
        f"detector {detector.name!r} predicts category ids {list(detector.coco_category_ids)[:10]}"
        f"... none of which is in {data.annotation_path} ({sorted(known)[:10]}...)")
  results, image_ids, timing = run_detector(detector, params, data,
                                            progress=config.get("progress", True))
  metrics = coco.coco_evaluate(data.annotation_path, results, image_ids=image_ids,
                               verbose=config.get("verbose", False))
  metrics.update(
      images_per_s=timing["images_per_s"], seconds=timing["seconds"], detector=detector.name,
      dataset=str(data_cfg.root), split=data_cfg.split, batch_size=config.batch_size,
      device=str(jax.devices()[0].platform))
  print(f"{detector.name} on {data_cfg.root} {data_cfg.split} ({metrics['num_images']} images, "
        f"{metrics['num_detections']} detections)")
  print(f"  mAP@[.5:.95] {metrics['mAP']:.4f}  AP50 {metrics['AP50']:.4f}  "
        f"AP75 {metrics['AP75']:.4f}")
  print(f"  AP small {metrics['APs']:.4f}  medium {metrics['APm']:.4f}  "
        f"large {metrics['APl']:.4f}  AR100 {metrics['AR100']:.4f}")
  print(f"  {metrics['images_per_s']:.2f} images/s ({metrics['seconds']:.1f} s in all, "
        f"compilation included)")
  if jax.process_index() == 0:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    coco.write_results(workdir / "detections.json", results)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"  wrote {workdir / 'metrics.json'} and {workdir / 'detections.json'}")
  return metrics

