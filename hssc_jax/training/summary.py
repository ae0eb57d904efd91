"""Run reporting: a parameter overview at start and TensorBoard scalars."""

from pathlib import Path
from typing import Any, Mapping

import flax
import numpy as np


def parameter_overview(params: Any, depth: int = 2) -> str:
  """A table of parameter counts grouped by the first `depth` levels of the tree."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  groups: dict[str, list[int]] = {}
  for path, v in flat.items():
    key = "/".join(str(p) for p in path[:depth])
    groups.setdefault(key, [0, 0])
    groups[key][0] += int(np.prod(np.shape(v)))
    groups[key][1] += 1
  width = max([len(k) for k in groups] + [6])
  lines = [f"{'module':<{width}}  {'params':>12}  {'arrays':>6}", "-" * (width + 22)]
  for k in sorted(groups):
    lines.append(f"{k:<{width}}  {groups[k][0]:>12,}  {groups[k][1]:>6}")
  total = sum(g[0] for g in groups.values())
  lines.append(f"{'total':<{width}}  {total:>12,}  {sum(g[1] for g in groups.values()):>6}")
  return "\n".join(lines)


class Writer:
  """TensorBoard event files under workdir/tb (written through TensorFlow's summary API)."""

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self._writer = None
    if enabled:
      from hssc_jax._tf import tf  # pylint: disable=g-import-not-at-top
      self._tf = tf()
      self._writer = self._tf.summary.create_file_writer(str(Path(workdir) / "tb"))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    with self._writer.as_default():
      for k, v in values.items():
        self._tf.summary.scalar(k, v, step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
