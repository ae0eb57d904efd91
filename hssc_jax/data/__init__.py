"""Data: a TFDS builder for COCO-format folders, input pipelines, and a generated shapes set.

- `coco_folder`: `CocoFolder` builder, `load_coco_folder(root, split)`, `annotation_path`.
- `pipeline`: `eval_data` (original images for evaluation; `eval_data_of(config)` from an eval
  config), `train_dataset`/`train_batches`
  (augmented square crops for codec training).
- `synthetic`: `make_shapes_dataset`, a procedurally generated COCO-format detection set.
- `pseudo_labels`: `label_folder`, a folder of unlabelled images made a COCO-format folder whose
  labels are the uncompressed detector's detections (scores fidelity to it, e.g. on Kodak).
"""

from hssc_jax.data import coco_folder
from hssc_jax.data import pipeline
from hssc_jax.data import pseudo_labels
from hssc_jax.data import synthetic
from hssc_jax.data.coco_folder import annotation_path
from hssc_jax.data.coco_folder import CocoFolder
from hssc_jax.data.coco_folder import load_coco_folder
from hssc_jax.data.pipeline import eval_data
from hssc_jax.data.pipeline import eval_data_of
from hssc_jax.data.pipeline import EvalData
from hssc_jax.data.pipeline import train_batches
from hssc_jax.data.pipeline import train_dataset
from hssc_jax.data.synthetic import make_shapes_dataset
