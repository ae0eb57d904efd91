"""`evaluate(config, workdir)`: the one entry point of eval.py, dispatching on `config.mode`.

Modes:
  detector   the detector alone, no codec (`detector_eval.evaluate_detector`).
  codecs     operating points of learned codecs and anchors from real bitstreams: mAP vs bpp,
             feature MSE/PSNR, times, CSV/JSON, RD plot, BD-rate (`codec_eval.evaluate_codecs`).
"""

import os
from typing import Any, Callable

import ml_collections

from hssc_jax import errors


def _detector(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  from hssc_jax import detector_eval  # pylint: disable=g-import-not-at-top
  return detector_eval.evaluate_detector(config, workdir)


def _codecs(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  from hssc_jax import codec_eval  # pylint: disable=g-import-not-at-top
  return codec_eval.evaluate_codecs(config, workdir)


# mode -> function(config, workdir).
_MODES: dict[str, Callable[[ml_collections.ConfigDict, str | os.PathLike], Any]] = {
    "detector": _detector,
    "codecs": _codecs,
}


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Any:
  """Runs the evaluation `config.mode` names, writing its outputs into `workdir`."""
  mode = config.get("mode")
  if mode not in _MODES:
    raise errors.ConfigError(f"config.mode must be one of {sorted(_MODES)}, got {mode!r}")
  return _MODES[mode](config, workdir)
