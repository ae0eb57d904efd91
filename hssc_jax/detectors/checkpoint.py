"""Detector variables as an orbax checkpoint directory.

```
<dir>/detector.json   what the variables are for: size, num_classes, fused, anchors, source...
<dir>/variables/      orbax StandardCheckpointer item: the Flax variables pytree
```

Converting an ultralytics `.pt` once and loading the directory afterwards skips the unpickling:

  variables, info = convert.ultralytics.convert("yolov5n.pt")
  checkpoint.save("/ckpt/yolov5n", variables, info)
  detector, variables = yolov5_weights.load("/ckpt/yolov5n")
"""

import json
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from hssc_jax import errors

INFO_FILE = "detector.json"
VARIABLES_DIR = "variables"


def save(directory: str | Path, variables: Any, info: Mapping[str, Any]) -> Path:
  """Writes `variables` and `info` (JSON-serialisable) into a new directory; returns its path."""
  directory = Path(directory).absolute()
  if (directory / VARIABLES_DIR).exists():
    raise errors.CheckpointError(f"{directory} already holds detector variables; refusing to overwrite")
  directory.mkdir(parents=True, exist_ok=True)
  variables = jax.tree.map(np.asarray, variables)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / VARIABLES_DIR, variables)
    ckptr.wait_until_finished()
  (directory / INFO_FILE).write_text(json.dumps(dict(info), indent=1, sort_keys=True))
  return directory


def load(directory: str | Path) -> tuple[Any, dict[str, Any]]:
  """(variables as numpy arrays, info) from a directory written by `save`."""
  directory = Path(directory).absolute()
  info_path, var_path = directory / INFO_FILE, directory / VARIABLES_DIR
  if not info_path.is_file() or not var_path.is_dir():
    raise errors.CheckpointError(
        f"{directory} is not a detector checkpoint (needs {INFO_FILE} and {VARIABLES_DIR}/)")
  try:
    info = json.loads(info_path.read_text())
  except json.JSONDecodeError as e:
    raise errors.CheckpointError(f"{info_path} is not valid JSON") from e
  try:
    with ocp.StandardCheckpointer() as ckptr:
      tree = ckptr.metadata(var_path).item_metadata
      tree = getattr(tree, "tree", tree)
      target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
      variables = ckptr.restore(var_path, target)
  except Exception as e:  # orbax raises several types for damaged directories
    raise errors.CheckpointError(f"cannot restore {var_path}: {e}") from e
  return jax.tree.map(np.asarray, variables), info
