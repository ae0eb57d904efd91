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
Codecs then call `check_model` to refuse a bitstream made by another codec or other parameters, and
validate every other field against what their model writes (`check_metadata`, `Template`) before
they use it. Nothing is allocated from a header number beyond `LIMITS` (`DecodeLimits`).

Version 2 (2026-12): learned codecs' metadata carries the feature sizes ("pyramid"), from which a
decoder derives every tensor shape instead of trusting the header's; version 1 is refused.
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
FORMAT_VERSION = 2
FINGERPRINT_BYTES = 16
_PREAMBLE = struct.Struct(">4sBI")
_CRC = struct.Struct(">I")
_MAX_NDIM = 8
_MAX_INT = 2**63 - 1


@dataclasses.dataclass
class DecodeLimits:
  """The largest inputs a decoder accepts; a bitstream asking for more is refused with
  `DecodeLimitError` before anything is allocated. Change them with `set_decode_limits`.

  Attributes:
    max_image_side: original image height and width.
    max_feature_side: height and width of each feature map.
    max_feature_values: H x W x C summed over the scales of one decoded pyramid (the default,
      2^25 float32 values = 128 MiB, holds a 640x640 YOLOv5n pyramid 47 times, a 1333x800 FPN one).
  """

  max_image_side: int = 16384
  max_feature_side: int = 4096
  max_feature_values: int = 1 << 25


LIMITS = DecodeLimits()


def set_decode_limits(**changes: int) -> DecodeLimits:
  """Changes fields of `LIMITS` (e.g. `max_image_side=32768`); returns the previous limits."""
  old = dataclasses.replace(LIMITS)
  for k, v in changes.items():
    if not hasattr(LIMITS, k) or isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise errors.ConfigError(f"decode limit {k}={v!r}: expected one of "
                               f"{[f.name for f in dataclasses.fields(LIMITS)]} with a positive int")
    setattr(LIMITS, k, v)
  return old


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def check_image_size(size: Any) -> tuple[int, int]:
  """(H, W) of an original image read from a bitstream, checked against `LIMITS`."""
  if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
    raise errors.CorruptBitstreamError(f"image size {size!r} is not two integers")
  h, w = size
  if h < 1 or w < 1:
    raise errors.CorruptBitstreamError(f"image size {h}x{w} is empty")
  if max(h, w) > LIMITS.max_image_side:
    raise errors.DecodeLimitError(f"image size {h}x{w} exceeds the decoder's limit of "
                                  f"{LIMITS.max_image_side} (bitstream.set_decode_limits)")
  return int(h), int(w)


def _check_sides(sizes: Any) -> None:
  """Each (H, W) non-empty and within `LIMITS.max_feature_side`."""
  for h, w in sizes:
    if h < 1 or w < 1:
      raise errors.CorruptBitstreamError(f"feature size {h}x{w} is empty")
    if max(h, w) > LIMITS.max_feature_side:
      raise errors.DecodeLimitError(f"feature size {h}x{w} exceeds the decoder's limit of "
                                    f"{LIMITS.max_feature_side} (bitstream.set_decode_limits)")


def check_feature_sizes(sizes: Any, channels: Any) -> tuple[tuple[int, int], ...]:
  """Per-scale (H, W) feature sizes read from a bitstream: one pair of positive ints per channel
  count, within `LIMITS` (side and total values)."""
  channels = [int(c) for c in channels]
  if (not isinstance(sizes, (list, tuple)) or len(sizes) != len(channels)
      or not all(isinstance(s, (list, tuple)) and len(s) == 2 and all(_is_int(v) for v in s)
                 for s in sizes)):
    raise errors.CorruptBitstreamError(
        f"feature sizes {sizes!r} are not one (height, width) pair per scale ({len(channels)})")
  out = tuple((int(h), int(w)) for h, w in sizes)
  _check_sides(out)
  values = sum(h * w * c for (h, w), c in zip(out, channels))
  if values > LIMITS.max_feature_values:
    raise errors.DecodeLimitError(
        f"feature sizes {out} hold {values} values, over the decoder's limit of "
        f"{LIMITS.max_feature_values} (bitstream.set_decode_limits)")
  return out


def _fits(value: Any, expected: Any) -> bool:
  """Whether a JSON value has the type skeleton of `expected` (same types, list lengths, keys)."""
  if isinstance(expected, bool) or expected is None or isinstance(expected, str):
    return type(value) is type(expected)
  if isinstance(expected, int):
    return _is_int(value) and abs(value) <= _MAX_INT
  if isinstance(expected, float):
    return (isinstance(value, float) or _is_int(value)) and abs(value) < float("inf")
  if isinstance(expected, list):
    return (isinstance(value, list) and len(value) == len(expected)
            and all(_fits(v, e) for v, e in zip(value, expected)))
  if isinstance(expected, dict):
    return (isinstance(value, dict) and sorted(value) == sorted(expected)
            and all(_fits(value[k], e) for k, e in expected.items()))
  return False


def check_metadata(metadata: Any, expected: Mapping[str, Any]) -> None:
  """CorruptBitstreamError unless `metadata` has exactly the keys of `expected` (what the model
  writes), each value of the same JSON type (lists of the same length, ints within int64)."""
  if not isinstance(metadata, Mapping):
    raise errors.CorruptBitstreamError("bitstream metadata is not a JSON object")
  if sorted(metadata) != sorted(expected):
    raise errors.CorruptBitstreamError(
        f"bitstream metadata has keys {sorted(metadata)}, this model writes {sorted(expected)}")
  for k, e in expected.items():
    if not _fits(metadata[k], e):
      raise errors.CorruptBitstreamError(
          f"bitstream metadata {k!r} = {str(metadata[k])[:60]} is not of the form this model "
          f"writes ({type(e).__name__}{f' of {len(e)}' if isinstance(e, list) else ''})")


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
        f"bitstream format version {version}; this library reads version {FORMAT_VERSION}"
        + (" (version 1 bitstreams, written before 2026-12, lack the feature sizes that version 2 "
           "decoders derive shapes from: re-encode them)" if version == 1 else ""))
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
  image_size = check_image_size(r.unpack(">II", "image size"))
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
  except RecursionError as e:
    raise errors.CorruptBitstreamError("bitstream metadata is nested too deeply") from e
  if not isinstance(metadata, dict):
    raise errors.CorruptBitstreamError("bitstream metadata is not a JSON object")
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


# ---- the compact container (format version 2) ----------------------------------------------------
#
# What a model and the feature grid determine is not sent: the codec id (bound by the fingerprint),
# tensor shapes, stream names and the metadata's keys and types come from a *template*, the
# container the same model writes for the same feature sizes (`Template`, made by the codec). Layout:
#
#   0  2  magic b"Hj"            2  1  version 2           3  4  fingerprint (first 4 bytes)
#   *     varint H, varint W of the original image
#   *     feature sizes: a byte k; k = 0: varint h, w of the first scale, every next scale
#         ceil(h / 2), ceil(w / 2) (a pyramid); k > 0: k explicit (h, w) varint pairs
#   *     varint lengths of every stream but the last, in template order
#   *     metadata: a bitmap (one bit per key, sorted) of values equal to the template's, then the
#         other values in key order (ints as zigzag varints of their difference to the template's,
#         lists element-wise, strings; the per-stream index digests folded into one, `base`)
#   *     the streams        N-4  4  CRC-32 of bytes [0, N-4)

COMPACT_MAGIC = b"Hj"
COMPACT_VERSION = 2
SHORT_FINGERPRINT_BYTES = 4
_COMPACT_HEAD = struct.Struct(">2sB4s")
MAX_IMAGE_SIDE = 1 << 16  # larger images are written in the full container


@dataclasses.dataclass(frozen=True)
class Template:
  """What a model writes for given feature sizes, apart from the data-dependent values."""

  codec_id: str
  shapes: Mapping[str, tuple[int, ...]]
  stream_names: tuple[str, ...]
  metadata: Mapping[str, Any]
  folded: tuple[str, ...] = ()  # metadata keys the codec sends as one combined value


def is_compact(data: bytes) -> bool:
  return bytes(data[:len(COMPACT_MAGIC)]) == COMPACT_MAGIC


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _read_varint(r: "_Reader", what: str) -> int:
  n = shift = 0
  for _ in range(10):
    (b,) = r.take(1, what)
    n |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return n
  raise errors.CorruptBitstreamError(f"header field {what!r} is not a valid varint")


def pyramid_sizes_code(sizes: Any) -> bytes:
  """The compact encoding of per-scale (h, w) feature sizes."""
  sizes = [tuple(int(v) for v in s) for s in sizes]
  h, w = sizes[0]
  rule = [(h, w)]
  for _ in sizes[1:]:
    h, w = -(-h // 2), -(-w // 2)
    rule.append((h, w))
  if rule == sizes:
    return b"\0" + _varint(sizes[0][0]) + _varint(sizes[0][1])
  if not 0 < len(sizes) < 256:
    raise ValueError(f"cannot store {len(sizes)} feature sizes")
  return bytes([len(sizes)]) + b"".join(_varint(a) + _varint(b) for a, b in sizes)


def _read_sizes(r: "_Reader", num_scales: int) -> tuple[tuple[int, int], ...]:
  (k,) = r.take(1, "feature sizes")
  if k == 0:
    h, w = _read_varint(r, "feature height"), _read_varint(r, "feature width")
    out = [(h, w)]
    for _ in range(num_scales - 1):
      h, w = -(-h // 2), -(-w // 2)
      out.append((h, w))
  elif k != num_scales:
    raise errors.CorruptBitstreamError(f"bitstream has {k} feature sizes, the model codes "
                                       f"{num_scales} scales")
  else:
    out = [(_read_varint(r, "feature height"), _read_varint(r, "feature width"))
           for _ in range(k)]
  _check_sides(out)  # sides first (the codec checks the values against its channels)
  return tuple(out)


def _encode_value(value: Any, tmpl: Any) -> bytes | None:
  """`value` in the shape of `tmpl`, or None when it does not fit (the caller falls back)."""
  if isinstance(tmpl, bool) or isinstance(value, bool):
    return bytes([int(value)]) if isinstance(value, bool) and isinstance(tmpl, bool) else None
  if isinstance(tmpl, int):  # zigzag varint of the difference to the template's value
    if not isinstance(value, int) or isinstance(value, bool):
      return None
    d = value - tmpl
    return _varint(2 * d if d >= 0 else -2 * d - 1)
  if isinstance(tmpl, str):
    if not isinstance(value, str):
      return None
    b = value.encode("utf-8")
    return _varint(len(b)) + b
  if isinstance(tmpl, list):
    if not isinstance(value, list) or len(value) != len(tmpl):
      return None
    parts = [_encode_value(v, t) for v, t in zip(value, tmpl)]
    return None if any(p is None for p in parts) else b"".join(parts)
  return None


def _decode_value(r: "_Reader", tmpl: Any, what: str) -> Any:
  if isinstance(tmpl, bool):
    (b,) = r.take(1, what)
    if b > 1:
      raise errors.CorruptBitstreamError(f"metadata {what!r} is not a boolean")
    return bool(b)
  if isinstance(tmpl, int):
    z = _read_varint(r, what)
    v = tmpl + (z // 2 if z % 2 == 0 else -(z + 1) // 2)
    if abs(v) > _MAX_INT:
      raise errors.CorruptBitstreamError(f"metadata {what!r} is out of range")
    return v
  if isinstance(tmpl, str):
    n = _read_varint(r, what)
    try:
      return r.take(n, what).decode("utf-8")
    except UnicodeDecodeError as e:
      raise errors.CorruptBitstreamError(f"metadata {what!r} is not valid UTF-8") from e
  return [_decode_value(r, t, what) for t in tmpl]


def pack_compact(c: Container, sizes: Any, template: Template) -> bytes | None:
  """`c` in the compact format, or None when it does not fit `template` (use `pack` then)."""
  if (c.codec_id != template.codec_id or dict(c.shapes) != dict(template.shapes)
      or tuple(c.streams) != template.stream_names or sorted(c.metadata) != sorted(template.metadata)
      or not template.stream_names):
    return None
  h, w = (int(v) for v in c.image_size)
  if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
    return None
  head = [_COMPACT_HEAD.pack(COMPACT_MAGIC, COMPACT_VERSION,
                             bytes(c.fingerprint[:SHORT_FINGERPRINT_BYTES])),
          _varint(h), _varint(w), pyramid_sizes_code(sizes)]
  head += [_varint(len(c.streams[k])) for k in template.stream_names[:-1]]
  keys = sorted(template.metadata)
  bitmap = bytearray((len(keys) + 7) // 8)
  values = []
  for i, k in enumerate(keys):
    if c.metadata[k] == template.metadata[k] and type(c.metadata[k]) is type(template.metadata[k]):
      bitmap[i // 8] |= 1 << (i % 8)
      continue
    v = _encode_value(c.metadata[k], template.metadata[k])
    if v is None:
      return None
    values.append(v)
  body = b"".join(head) + bytes(bitmap) + b"".join(values)
  data = body + b"".join(bytes(c.streams[k]) for k in template.stream_names)
  return data + _CRC.pack(zlib.crc32(data))


@dataclasses.dataclass(frozen=True)
class CompactPreamble:
  """The fields of a compact bitstream that come before its model-dependent part."""

  short_fingerprint: bytes
  image_size: tuple[int, int]
  sizes: tuple[tuple[int, int], ...]
  end: int  # offset of the first byte after the feature sizes


def read_compact_preamble(data: bytes, num_scales: int) -> CompactPreamble:
  """The preamble of a compact bitstream, after checking its magic, version and checksum; every
  field is range-checked before anything is allocated."""
  data = bytes(data)
  if not is_compact(data):
    raise errors.BadMagicError(f"not a compact hssc_jax bitstream: starts with {data[:2]!r}")
  if len(data) < _COMPACT_HEAD.size + _CRC.size:
    raise errors.TruncatedBitstreamError(f"bitstream is {len(data)} bytes, shorter than the "
                                         f"{_COMPACT_HEAD.size + _CRC.size}-byte minimum")
  _, version, short_fp = _COMPACT_HEAD.unpack_from(data)
  if version != COMPACT_VERSION:
    raise errors.UnsupportedVersionError(
        f"compact bitstream format version {version}; this library reads {COMPACT_VERSION}")
  (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
  if zlib.crc32(data[:-_CRC.size]) != crc:
    raise errors.CorruptBitstreamError(
        "bitstream checksum mismatch: the bytes were corrupted or the bitstream was truncated")
  r = _Reader(data, _COMPACT_HEAD.size, len(data) - _CRC.size)
  h, w = check_image_size((_read_varint(r, "image height"), _read_varint(r, "image width")))
  sizes = _read_sizes(r, num_scales)
  return CompactPreamble(short_fp, (h, w), sizes, r.pos)


def unpack_compact(data: bytes, preamble: CompactPreamble, template: Template) -> Container:
  """Parses the rest of a compact bitstream whose `read_compact_preamble` passed, against
  `template` (the model's, for the preamble's feature sizes).

  The returned container carries the 4-byte fingerprint prefix padded with zeros; callers compare
  the preamble's `short_fingerprint` instead.
  """
  data = bytes(data)
  r = _Reader(data, preamble.end, len(data) - _CRC.size)
  lengths = [_read_varint(r, f"length of stream {k}") for k in template.stream_names[:-1]]
  keys = sorted(template.metadata)
  bitmap = r.take((len(keys) + 7) // 8, "metadata bitmap")
  metadata = {}
  for i, k in enumerate(keys):
    same = bitmap[i // 8] >> (i % 8) & 1
    metadata[k] = template.metadata[k] if same else _decode_value(r, template.metadata[k], k)
  rest = r.end - r.pos
  if sum(lengths) > rest:
    raise errors.CorruptBitstreamError(
        f"stream lengths in the header ({sum(lengths)} bytes) run past the end of the bitstream")
  lengths.append(rest - sum(lengths))
  streams = {k: r.take(n, f"stream {k}") for k, n in zip(template.stream_names, lengths)}
  fp = preamble.short_fingerprint + bytes(FINGERPRINT_BYTES - SHORT_FINGERPRINT_BYTES)
  return Container(template.codec_id, fp, preamble.image_size, dict(template.shapes), streams,
                   metadata)
