"""The versioned bitstream container every hssc_jax codec writes.

Layout (all integers big-endian):

```
  0   4  magic  b"HSJX"
  4   1  format version
  5   4  total length N of the whole bitstream, checksum included
  9   *  header: codec id, model fingerprint (16 bytes), original image size (H, W),
           named tensor shapes, named stream lengths, JSON metadata
  *   *  the streams, concatenated in header order
N-4   4  CRC-32 of bytes [0, N-4)
```

`unpack` checks, in order: empty input, magic, version, length (truncation or trailing bytes),
checksum, then the header's own consistency; each failure raises its own `BitstreamError` subclass.
Codecs then call `check_model` to refuse a bitstream made by another codec or other parameters.
"""

import dataclasses
import hashlib
import json
import struct
import zlib
from typing import Any, Mapping

import numpy as np

from hssc_jax import errors

MAGIC = b"HSJX"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 16
_PREAMBLE = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")
_MAX_NDIM = 8


@dataclasses.dataclass(frozen=True)
class Container:
  """The parsed content of one bitstream.

  Attributes:
    codec_id: name of the codec that wrote it, e.g. "hyperprior".
    fingerprint: 16-byte digest of the model parameters, CDF tables and config (see `fingerprint`).
    image_size: (height, width) of the original image, for bits per pixel.
    shapes: named tensor shapes the decoder needs (e.g. latent shapes).
    streams: named byte strings (e.g. range-coded "y" and "z").
    metadata: small JSON-serialisable dict (e.g. a channel permutation, a QP).
  """

  codec_id: str
  fingerprint: bytes
  image_size: tuple[int, int]
  shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
  streams: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def stream_bits(self) -> dict[str, int]:
    """Bits of each stream (payload only)."""
    return {k: 8 * len(v) for k, v in self.streams.items()}


def _put_str(out: list[bytes], s: str) -> None:
  b = s.encode("utf-8")
  if len(b) > 0xFFFF:
    raise ValueError(f"name too long for the container: {s[:40]!r}...")
  out.append(struct.pack(">H", len(b)) + b)


def pack(c: Container) -> bytes:
  """Serialises a `Container` to bytes."""
  if len(c.fingerprint) != FINGERPRINT_BYTES:
    raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes, got {len(c.fingerprint)}")
  h, w = (int(v) for v in c.image_size)
  if not (0 < h < 2**32 and 0 < w < 2**32):
    raise ValueError(f"image size must be positive, got {c.image_size}")
  head: list[bytes] = []
  _put_str(head, c.codec_id)
  head.append(bytes(c.fingerprint))
  head.append(struct.pack(">II", h, w))
  head.append(struct.pack(">H", len(c.shapes)))
  for name, shape in c.shapes.items():
    shape = tuple(int(d) for d in shape)
    if len(shape) > _MAX_NDIM or any(d < 0 or d >= 2**32 for d in shape):
      raise ValueError(f"cannot store shape {shape} of {name!r}")
    _put_str(head, name)
    head.append(struct.pack(">B", len(shape)) + struct.pack(f">{len(shape)}I", *shape))
  head.append(struct.pack(">H", len(c.streams)))
  for name, data in c.streams.items():
    _put_str(head, name)
    head.append(struct.pack(">I", len(data)))
  meta = json.dumps(dict(c.metadata), sort_keys=True, separators=(",", ":")).encode("utf-8")
  head.append(struct.pack(">I", len(meta)) + meta)
  body = b"".join(head) + b"".join(bytes(v) for v in c.streams.values())
  total = _PREAMBLE.size + len(body) + _CRC.size
  if total >= 2**32:
    raise ValueError("bitstream larger than 4 GiB")
  data = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, total) + body
  return data + _CRC.pack(zlib.crc32(data))


class _Reader:
  """Bounds-checked reads from the header; overruns are corruption (the checksum already passed)."""

  def __init__(self, data: bytes, pos: int, end: int):
    self.data, self.pos, self.end = data, pos, end

  def take(self, n: int, what: str) -> bytes:
    if n < 0 or self.pos + n > self.end:
      raise errors.CorruptBitstreamError(f"header field {what!r} runs past the end of the header")
    out = self.data[self.pos:self.pos + n]
    self.pos += n
    return out

  def unpack(self, fmt: str, what: str):
    s = struct.Struct(fmt)
    return s.unpack(self.take(s.size, what))

  def string(self, what: str) -> str:
    (n,) = self.unpack(">H", what)
    try:
      return self.take(n, what).decode("utf-8")
    except UnicodeDecodeError as e:
      raise errors.CorruptBitstreamError(f"header field {what!r} is not valid UTF-8") from e


def unpack(data: bytes) -> Container:
  """Parses and verifies a bitstream; raises a specific `BitstreamError` on any problem."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise TypeError(f"bitstream must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if not data:
    raise errors.EmptyBitstreamError("the bitstream is empty (0 bytes)")
  if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
    raise errors.BadMagicError(
        f"not an hssc_jax bitstream: starts with {data[:4]!r}, expected magic {MAGIC!r}")
  if len(data) < _PREAMBLE.size + _CRC.size:
    raise errors.TruncatedBitstreamError(
        f"bitstream is {len(data)} bytes, shorter than the {_PREAMBLE.size + _CRC.size}-byte minimum")
  _, version, total = _PREAMBLE.unpack_from(data)
  if version != FORMAT_VERSION:
    raise errors.UnsupportedVersionError(
        f"bitstream format version {version}; this library reads version {FORMAT_VERSION}")
  if len(data) < total:
    raise errors.TruncatedBitstreamError(
        f"bitstream is {len(data)} bytes but its header says {total}: it was truncated")
  if len(data) > total:
    raise errors.CorruptBitstreamError(
        f"bitstream is {len(data)} bytes but its header says {total}: trailing bytes or a corrupted "
        "length field")
  (crc,) = _CRC.unpack_from(data, total - _CRC.size)
  if zlib.crc32(data[:total - _CRC.size]) != crc:
    raise errors.CorruptBitstreamError("bitstream checksum mismatch: the bytes were corrupted")

  r = _Reader(data, _PREAMBLE.size, total - _CRC.size)
  codec_id = r.string("codec id")
  fp = r.take(FINGERPRINT_BYTES, "fingerprint")
  image_size = r.unpack(">II", "image size")
  shapes = {}
  (n_shapes,) = r.unpack(">H", "shape count")
  for _ in range(n_shapes):
    name = r.string("shape name")
    (ndim,) = r.unpack(">B", "ndim")
    if ndim > _MAX_NDIM:
      raise errors.CorruptBitstreamError(f"shape of {name!r} has {ndim} dimensions")
    shapes[name] = tuple(r.unpack(f">{ndim}I", f"shape of {name}"))
  lengths = {}
  (n_streams,) = r.unpack(">H", "stream count")
  for _ in range(n_streams):
    name = r.string("stream name")
    (lengths[name],) = r.unpack(">I", f"length of stream {name}")
  (n_meta,) = r.unpack(">I", "metadata length")
  try:
    metadata = json.loads(r.take(n_meta, "metadata").decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.CorruptBitstreamError("bitstream metadata is not valid JSON") from e
  streams = {}
  for name, n in lengths.items():
    streams[name] = r.take(n, f"stream {name}")
  if r.pos != r.end:
    raise errors.CorruptBitstreamError(
        f"stream lengths in the header account for {r.pos} of {r.end} bytes")
  return Container(codec_id, fp, tuple(image_size), shapes, streams, metadata)


def check_model(c: Container, codec_id: str, fingerprint_: bytes) -> None:
  """Raises `ModelMismatchError` unless `c` was written by this codec with these parameters."""
  if c.codec_id != codec_id:
    raise errors.ModelMismatchError(
        f"bitstream was written by codec {c.codec_id!r}, this decoder is {codec_id!r}")
  if c.fingerprint != fingerprint_:
    raise errors.ModelMismatchError(
        f"bitstream was written by codec {codec_id!r} with other parameters, tables or config "
        f"(fingerprint {c.fingerprint.hex()} != {fingerprint_.hex()})")


def check_shapes(c: Container, names: Mapping[str, int]) -> None:
  """Raises `CorruptBitstreamError` unless each named shape is present with the given rank."""
  for name, ndim in names.items():
    if name not in c.shapes:
      raise errors.CorruptBitstreamError(f"bitstream lacks the shape of {name!r}")
    if len(c.shapes[name]) != ndim:
      raise errors.CorruptBitstreamError(
          f"shape of {name!r} has rank {len(c.shapes[name])}, expected {ndim}")


def fingerprint(*objects: Any) -> bytes:
  """A 16-byte digest of pytrees of arrays, numbers, strings and dicts (order-independent keys).

  Used to bind a bitstream to the exact parameters, CDF tables and config that made it.
  """
  h = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)

  def feed(x: Any) -> None:
    if isinstance(x, Mapping):
      h.update(b"{")
      for k in sorted(x, key=str):
        h.update(str(k).encode() + b":")
        feed(x[k])
      h.update(b"}")
    elif isinstance(x, (list, tuple)):
      h.update(b"[")
      for v in x:
        feed(v)
      h.update(b"]")
    elif isinstance(x, (str, bytes, int, float, bool)) or x is None:
      h.update(repr(x).encode())
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
      feed({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
    elif hasattr(x, "to_dict"):  # ml_collections.ConfigDict
      feed(x.to_dict())
    else:
      a = np.asarray(x)
      h.update(f"{a.dtype.str}{a.shape}".encode())
      h.update(np.ascontiguousarray(a).tobytes())

  for o in objects:
    feed(o)
  return h.digest()
