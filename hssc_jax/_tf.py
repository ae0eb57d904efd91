"""The one door through which hssc_jax imports TensorFlow.

TensorFlow only hosts tf.data and the range-coding ops here. It must never claim accelerator memory
that JAX needs, so every GPU is hidden from it before first use (as big_vision does).
"""

import functools
import os


@functools.lru_cache(maxsize=None)
def tf():
  """Returns the `tensorflow` module with all GPUs hidden from it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf_module  # pylint: disable=g-import-not-at-top
  try:
    tf_module.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # Devices were already initialised; TF was imported elsewhere first.
  return tf_module
