"""hssc_jax: feature coding for machines in JAX/Flax.

The public surface (everything else is reachable through these modules):

  hssc_jax.zoo.load("hssc", quality=3)            trained codecs by name (`zoo`)
  hssc_jax.build_codec(name, kwargs, scales, channels), hssc_jax.register_codec(name, cls)
  hssc_jax.codecs                                 the five paper codecs, the anchors, `FeatureCodec`
  hssc_jax.bitstream, hssc_jax.errors             the container and its errors

Submodules load on first use, so `import hssc_jax` stays light.
"""

import importlib
from typing import Any

from hssc_jax import errors
from hssc_jax.errors import BitstreamError, HsscError

_MODULES = ("bitstream", "codecs", "zoo", "train_lib", "codec_eval", "detectors", "entropy")
_ATTRS = {"build_codec": ("hssc_jax.codecs.registry", "build_codec"),
          "register_codec": ("hssc_jax.codecs.registry", "register"),
          "FeatureCodec": ("hssc_jax.codecs.base", "FeatureCodec")}

__all__ = ["BitstreamError", "HsscError", "errors", *_MODULES, *_ATTRS]


def __getattr__(name: str) -> Any:
  if name in _MODULES:
    return importlib.import_module(f"hssc_jax.{name}")
  if name in _ATTRS:
    module, attr = _ATTRS[name]
    return getattr(importlib.import_module(module), attr)
  raise AttributeError(f"module 'hssc_jax' has no attribute {name!r}")
