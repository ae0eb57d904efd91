"""The interface every learned feature codec implements, and the helpers they share.

A codec is a Flax module over a named feature pyramid ({"p3": NHWC, ...}, any set of scales):

  out = codec.apply(variables, features, training, rngs={"noise": key})   # pure, jit/grad
  out["features_hat"]  -> pyramid of the same shapes
  out["bits"]          -> {stream: (N,) bits per image}   (estimates from the entropy models)

  tables = codec.build_tables(params)                      # host, once after training
  data = codec.compress(params, tables, features, image_size)   # host: real bitstream (bytes)
  features_hat = codec.decompress(params, tables, data)          # host

Rate is reported in bits per pixel of the original image (`bits_per_pixel`), the convention of the
MPEG feature-coding tests and CompressAI-Vision. The loss lives outside the module (train_lib).
"""

import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from hssc_jax import bitstream
from hssc_jax import errors

Pyramid = Mapping[str, Any]


def bits_per_pixel(bits: Any, image_size: Sequence[int]) -> Any:
  """bits / (H x W) of the original image (before any resizing)."""
  h, w = image_size
  return bits / float(h * w)


def check_pyramid(features: Pyramid, names: Sequence[str], batch: int | None = None,
                  finite: bool = True) -> dict[str, np.ndarray]:
  """Host-side validation of a pyramid; returns it as float32 numpy arrays.

  Raises InvalidInputError for a missing or extra scale, a non-NHWC array, a batch size other than
  `batch`, or NaN/inf values.
  """
  if not isinstance(features, Mapping):
    raise errors.InvalidInputError(f"features must be a dict of arrays, got {type(features).__name__}")
  missing = [n for n in names if n not in features]
  extra = [n for n in features if n not in names]
  if missing or extra:
    raise errors.InvalidInputError(
        f"feature pyramid has scales {sorted(features)}, codec expects {list(names)}")
  out = {}
  for n in names:
    a = np.asarray(features[n])
    if a.ndim != 4:
      raise errors.InvalidInputError(f"feature {n!r} must be NHWC (rank 4), got shape {a.shape}")
    if batch is not None and a.shape[0] != batch:
      raise errors.InvalidInputError(f"feature {n!r} has batch {a.shape[0]}, expected {batch}")
    if finite and not np.all(np.isfinite(a)):
      raise errors.InvalidInputError(f"feature {n!r} holds NaN/inf values")
    out[n] = a.astype(np.float32, copy=False)
  return out


def module_config(module: nn.Module) -> dict[str, Any]:
  """The dataclass fields of a (sub)module that define it (for fingerprints and checkpoints)."""
  skip = {"parent", "name"}
  cfg = {}
  for f in dataclasses.fields(module):
    if f.name in skip:
      continue
    v = getattr(module, f.name)
    cfg[f.name] = module_config(v) if isinstance(v, nn.Module) else v
  return cfg


@functools.lru_cache(maxsize=256)
def jitted_method(module: nn.Module, method: str, static_argnums: tuple[int, ...] = ()):
  """A cached `jax.jit` of `module.apply({"params": p}, *args, method=method)`.

  `static_argnums` count `params` as argument 0.
  """
  fn = getattr(type(module), method)
  return jax.jit(lambda params, *args: module.apply({"params": params}, *args, method=fn),
                 static_argnums=static_argnums)


class FeatureCodec(nn.Module):
  """Base class: subclasses define `scales`, __call__, build_tables, compress_streams and
  decompress_streams.

  The container (magic, version, codec id, fingerprint, shapes, streams, checksum) is handled here,
  so every codec refuses truncated, corrupted or foreign bitstreams the same way.
  """

  codec_id: ClassVar[str] = "codec"

  @nn.nowrap
  def fingerprint(self, params: Any, tables: Any) -> bytes:
    return bitstream.fingerprint(self.codec_id, module_config(self), params, tables)

  @nn.nowrap
  def compress(self, params: Any, tables: Any, features: Pyramid,
               image_size: Sequence[int]) -> bytes:
    """Host: one image's pyramid (batch 1) -> a self-describing bitstream."""
    feats = check_pyramid(features, self.scales, batch=1)
    streams, shapes, meta = self.compress_streams(params, tables, feats)
    return bitstream.pack(bitstream.Container(
        self.codec_id, self.fingerprint(params, tables), tuple(image_size), shapes, streams, meta))

  @nn.nowrap
  def decompress(self, params: Any, tables: Any, data: bytes) -> dict[str, np.ndarray]:
    """Host: bitstream -> pyramid. Raises a BitstreamError subclass for any bad input."""
    c = self.unpack(params, tables, data)
    return self.decompress_streams(params, tables, c.streams, c.shapes, c.metadata)

  @nn.nowrap
  def unpack(self, params: Any, tables: Any, data: bytes) -> bitstream.Container:
    c = bitstream.unpack(data)
    bitstream.check_model(c, self.codec_id, self.fingerprint(params, tables))
    return c

  # To be defined by subclasses (host side).
  @nn.nowrap
  def build_tables(self, params: Any) -> dict:
    raise NotImplementedError

  @nn.nowrap
  def compress_streams(self, params, tables, features):
    raise NotImplementedError

  @nn.nowrap
  def decompress_streams(self, params, tables, streams, shapes, metadata):
    raise NotImplementedError


def require(container_dict: Mapping[str, Any], keys: Sequence[str], what: str) -> None:
  """Raises CorruptBitstreamError unless every key is present (streams, shapes or metadata)."""
  missing = [k for k in keys if k not in container_dict]
  if missing:
    raise errors.CorruptBitstreamError(f"bitstream lacks {what} {missing}")
