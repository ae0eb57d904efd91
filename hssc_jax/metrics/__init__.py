"""Evaluation metrics: COCO box detection metrics (pycocotools)."""

from hssc_jax.metrics import coco
from hssc_jax.metrics.coco import coco_evaluate
from hssc_jax.metrics.coco import coco_to_detections
from hssc_jax.metrics.coco import detections_to_coco
from hssc_jax.metrics.coco import METRIC_NAMES
