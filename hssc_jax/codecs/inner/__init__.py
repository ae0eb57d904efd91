"""Traditional (inner) codecs: HEVC (libx265), AV1 (SVT-AV1) via PyAV, VVC via vvenc/vvdec.

The only package that imports PyAV (`av`); see `base` for the interface and the frame kinds.
"""

from typing import Any, Mapping

from hssc_jax import errors
from hssc_jax.codecs.inner.av1 import AV1
from hssc_jax.codecs.inner.base import frame_kind
from hssc_jax.codecs.inner.base import InnerCodec
from hssc_jax.codecs.inner.base import Limits
from hssc_jax.codecs.inner.base import split_grid
from hssc_jax.codecs.inner.hevc import HEVC
from hssc_jax.codecs.inner.vvc import VVC

CODECS: dict[str, type[InnerCodec]] = {"hevc": HEVC, "av1": AV1, "vvc": VVC}


def register(name: str) -> Any:
  """Class decorator adding an inner codec under `name` (its `name` class attribute must match,
  as bitstreams and anchors name their inner codec by it):

    @inner.register("mycodec")
    @dataclasses.dataclass(frozen=True)
    class MyCodec(inner.InnerCodec): ...
  """
  def decorate(cls: type[InnerCodec]) -> type[InnerCodec]:
    if not (isinstance(cls, type) and issubclass(cls, InnerCodec)) or cls.name != name:
      raise errors.ConfigError(f"inner codec {name!r} must be an InnerCodec subclass whose name is "
                               f"{name!r}")
    CODECS[name] = cls
    return cls
  return decorate


def get(name: str, **kwargs: Any) -> InnerCodec:
  """The inner codec `name` ("hevc", "av1", "vvc") with its options."""
  if name not in CODECS:
    raise errors.ConfigError(f"unknown inner codec {name!r}; known: {sorted(CODECS)}")
  try:
    return CODECS[name](**kwargs)
  except TypeError as e:
    raise errors.ConfigError(f"bad options for inner codec {name!r}: {e}") from e


def from_config(config: Mapping[str, Any]) -> InnerCodec:
  """Inverse of `InnerCodec.config()` (lists from JSON become tuples)."""
  cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(config).items()}
  return get(cfg.pop("name", None), **cfg)


__all__ = ["AV1", "CODECS", "HEVC", "InnerCodec", "Limits", "VVC", "frame_kind", "from_config",
           "get", "register", "split_grid"]
