"""`evaluate(config, workdir)`: the one entry point of eval.py, dispatching on `config.mode`.

Modes:
  detector   the detector alone, no codec (`detector_eval.evaluate_detector`).
Codec modes (rate-distortion points, CSV/JSON, plots, BD-rate tables) are added in `_MODES`.
"""

import os
from typing import Any, Callable

import ml_collections

from hssc_jax import errors


def _detector(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  from hssc_jax import detector_eval  # pylint: disable=g-import-not-at-top
  return detector_eval.evaluate_detector(config, workdir)


# mode -> function(config, workdir). Codec evaluation modes go here.
_MODES: dict[str, Callable[[ml_collections.ConfigDict, str | os.PathLike], Any]] = {
    "detector": _detector,
}


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  """Runs the evaluation `config.mode` names, writing its outputs into `workdir`."""
  mode = config.get("mode")
  if mode not in _MODES:
    raise errors.ConfigError(f"config.mode must be one of {sorted(_MODES)}, got {mode!r}")
  return _MODES[mode](config, workdir)
