"""Learned feature codecs by name, built from a config's keyword arguments."""

import dataclasses
import importlib
from typing import Any, Mapping, Sequence

from hssc_jax import errors
from hssc_jax.codecs.base import FeatureCodec

# name -> codec class, or "module:Class" imported on first use (keeps imports light).
CODECS: dict[str, type[FeatureCodec] | str] = {
    "hyperprior": "hssc_jax.codecs.hyperprior:HyperpriorCodec",
    "cross_scale": "hssc_jax.codecs.cross_scale:CrossScaleCodec",
    "lmfc": "hssc_jax.codecs.lmfc:LMFCCodec",
    "hssc": "hssc_jax.codecs.hssc:HSSCCodec",
    "hssc_paper": "hssc_jax.codecs.hssc_paper:HSSCPaperCodec",
    "hsc": "hssc_jax.codecs.hsc:HSCCodec",
    "mfiba": "hssc_jax.codecs.mfiba:MFIBACodec",
    "mfiba_cross": "hssc_jax.codecs.cross_scale:CrossScaleMFIBACodec",
}


def register(name: str, cls: type[FeatureCodec] | str | None = None) -> Any:
  """Adds a codec class, or its "module:Class" path, under `name`; without `cls` a class decorator:

    @registry.register("my_codec")
    class MyCodec(base.FeatureCodec): ...
  """
  if cls is None:
    def decorate(c: type[FeatureCodec]) -> type[FeatureCodec]:
      register(name, c)
      return c
    return decorate
  if not name or not isinstance(name, str):
    raise errors.ConfigError(f"a codec name must be a non-empty string, got {name!r}")
  CODECS[name] = cls
  return cls


def codec_class(name: str) -> type[FeatureCodec]:
  """The class registered as `name`; ConfigError when unknown or not importable."""
  if name not in CODECS:
    raise errors.ConfigError(f"unknown codec {name!r}; known: {sorted(CODECS)}")
  cls = CODECS[name]
  if isinstance(cls, str):
    module, _, attr = cls.partition(":")
    try:
      cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
      raise errors.ConfigError(f"codec {name!r} ({CODECS[name]}) cannot be imported: {e}") from e
    CODECS[name] = cls
  return cls


def _to_python(v: Any) -> Any:
  if hasattr(v, "to_dict"):
    v = v.to_dict()
  if isinstance(v, Mapping):
    return {k: _to_python(x) for k, x in v.items()}
  if isinstance(v, list):
    return tuple(_to_python(x) for x in v)
  return v


def build_codec(name: str, kwargs: Mapping[str, Any], scales: Sequence[str],
                channels: Sequence[int]) -> FeatureCodec:
  """The codec `name` over `scales` with `channels`, configured by `kwargs`.

  Raises ConfigError for an unknown codec or an unknown or mistyped keyword.
  """
  cls = codec_class(name)
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  kwargs = _to_python(kwargs)
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise errors.ConfigError(f"codec {name!r} has no option(s) {unknown}; options: {sorted(fields)}")
  for fixed in ("scales", "channels"):
    if fixed in kwargs:
      raise errors.ConfigError(f"codec option {fixed!r} comes from the detector; remove it")
  return cls(scales=tuple(scales), channels=tuple(channels), **kwargs)
