"""The MPEG-style feature anchor: quantise, tile, code with a traditional codec (host-side).

The anchor of the MPEG feature-coding (FCM / VCM) tests, as measured in
`shared/reference/anchors-coco-mini`:

  x (pyramid) -> q = rint(clip((x - min) / (max - min), 0, 1) * (2^b - 1))        (b = 10 bits)
              -> [optional HSSC channel reordering per scale, `reorder`]
              -> tile every scale into a near-square grid, stack the scales  (`tiling`)
              -> one gray frame -> inner codec (HEVC by default) at a QP -> bytes
  bytes -> decode -> untile -> undo the reordering -> x_hat = q / (2^b - 1) * (max - min) + min

The range (min, max) is one global pair fitted once on training features (`fit_range`) and is part
of the anchor's configuration (saved and loaded as JSON with it, and in the bitstream fingerprint).

Bitstream: the project container (`hssc_jax.bitstream`), codec id "feature_anchor/<inner codec>",
fingerprint of the configuration (range, bit depth, layout options, reordering, inner codec and its
settings), the original image size, the pyramid shapes, stream "frame" (the inner codec's
elementary stream) and, for per-image reordering, stream "perm" (Lehmer-coded permutations),
metadata {"qp": QP, "reorder": mode}.

Rate. `rate(data)` reports both conventions: *stream* bits (the elementary stream(s), what the
reference anchors count: Annex-B bytes x 8) and *container* bits (the whole bitstream). For
YOLOv5n P3-P5 (1HWC shapes, two-digit QP, no reordering) the container adds 166 bytes (1,328 bits,
0.0043 bpp on a 640x480 image): preamble and CRC 13, codec id 21, fingerprint 16, image size 8,
shapes 2 + 3 x 21, stream table 2 + 11, metadata 4 + 26. Per-image reordering adds stream "perm"
(338 bytes for 64/128/256 channels) and its 11-byte entry. Note that the reference CSVs average
rate over a set as total bits / total pixels (not the mean of per-image bpp, which is ~3.5% higher
on coco-mini val because small images cost more bits per pixel).
"""

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import inner
from hssc_jax.codecs import reorder as reorder_lib
from hssc_jax.codecs import tiling

REORDER_FITS = ("per_image", "fixed")
_JSON_VERSION = 1



def decode_payload(codec: Any, data: bytes, shape: Sequence[int], dtype: Any, qp: int
                   ) -> np.ndarray:
  """The inner codec's frame of a bitstream; CorruptPayloadError when its decoder refuses the
  payload or returns another frame than the header describes."""
  try:
    return codec.decode(data, shape, dtype, qp=qp)
  except errors.InnerCodecError as e:
    if isinstance(e, errors.BitstreamError):
      raise
    raise errors.CorruptPayloadError(str(e)) from e

def scale_order(names: Iterable[str]) -> list[str]:
  """Natural order of scale names ("p2" < "p3" < ... < "p10")."""
  def key(n: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)]
  return sorted(names, key=key)


def _maps(features: Mapping[str, Any], scales: Sequence[str] | None = None
          ) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
  """Validated {name: (H, W, C) float32} and the shapes as given (HWC or 1HWC)."""
  if not isinstance(features, Mapping) or not features:
    raise errors.InvalidInputError(
        f"features must be a non-empty dict of arrays, got {type(features).__name__}")
  if scales is not None and set(features) != set(scales):
    raise errors.InvalidInputError(
        f"feature pyramid has scales {scale_order(features)}, the anchor expects {list(scales)}")
  maps, shapes = {}, {}
  for name in scale_order(features):
    a = np.asarray(features[name])
    if a.ndim == 4 and a.shape[0] == 1:
      m = a[0]
    elif a.ndim == 3:
      m = a
    else:
      raise errors.InvalidInputError(
          f"feature {name!r} must be HxWxC or 1xHxWxC (one image), got shape {a.shape}")
    if min(m.shape) < 1:
      raise errors.InvalidInputError(f"feature {name!r} is empty: shape {a.shape}")
    if not np.issubdtype(m.dtype, np.floating) and not np.issubdtype(m.dtype, np.integer):
      raise errors.InvalidInputError(f"feature {name!r} has non-numeric dtype {m.dtype}")
    if not np.all(np.isfinite(m)):
      raise errors.InvalidInputError(f"feature {name!r} holds NaN/inf values")
    maps[name] = m.astype(np.float32, copy=False)
    shapes[name] = tuple(int(d) for d in a.shape)
  return maps, shapes


def fit_range(pyramids: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
  """Global (min, max) over every value of every scale of every pyramid (a training set)."""
  lo, hi, n = np.inf, -np.inf, 0
  for pyr in pyramids:
    maps, _ = _maps(pyr)
    for m in maps.values():
      lo, hi = min(lo, float(m.min())), max(hi, float(m.max()))
    n += 1
  if n == 0:
    raise errors.InvalidInputError("cannot fit a range on an empty set of pyramids")
  return lo, hi


def quantize(x: np.ndarray, value_range: Sequence[float], bit_depth: int = 10) -> np.ndarray:
  """rint(clip((x - min) / (max - min), 0, 1) * (2^b - 1)) as uint16 codes."""
  lo, hi = (float(v) for v in value_range)
  top = (1 << bit_depth) - 1
  t = np.clip((np.asarray(x, np.float64) - lo) / (hi - lo), 0.0, 1.0)
  return np.rint(t * top).astype(np.uint16)


def dequantize(q: np.ndarray, value_range: Sequence[float], bit_depth: int = 10) -> np.ndarray:
  """q / (2^b - 1) * (max - min) + min, float32."""
  lo, hi = (float(v) for v in value_range)
  top = (1 << bit_depth) - 1
  return (np.asarray(q, np.float64) / top * (hi - lo) + lo).astype(np.float32)


def rate(data: bytes) -> dict[str, Any]:
  """Bits of a bitstream: per stream, stream total, whole container, and their bpp."""
  c = bitstream.unpack(data)
  h, w = c.image_size
  bits = c.stream_bits
  stream_bits = sum(bits.values())
  container_bits = 8 * len(data)
  return {"streams": bits, "stream_bits": stream_bits, "container_bits": container_bits,
          "overhead_bits": container_bits - stream_bits,
          "stream_bpp": stream_bits / (h * w), "container_bpp": container_bits / (h * w)}


@dataclasses.dataclass(frozen=True)
class FeatureAnchor:
  """The feature anchor's configuration, and compress / decompress of one image's pyramid.

  Attributes:
    value_range: (min, max) of the 10-bit quantiser, fitted on training features (`fit_range`).
    codec: the inner codec (`inner.HEVC()` by default: libx265, qp=NN:keyint=1:ipratio=1:info=0).
    bit_depth: 10 (uint16 gray10 frames) or 8 (uint8 gray frames).
    scales: stacking order of the scales; None: every scale of the input in natural order.
    grids: optional {scale: (rows, cols)} overriding `tiling.grid_shape`.
    reorder: HSSC channel reordering, "none", "global" or "global+local" (see `reorder`).
    reorder_fit: "per_image" (order from each image's own features, sent as stream "perm") or
      "fixed" (`permutations` fitted on training data with `fit`; nothing sent).
    permutations: {scale: perm} for reorder_fit="fixed".
    local_weight: weight of the local (tile-border) term for "global+local" (encoder only).
  """

  value_range: tuple[float, float]
  codec: inner.InnerCodec = dataclasses.field(default_factory=inner.HEVC)
  bit_depth: int = 10
  scales: tuple[str, ...] | None = None
  grids: Mapping[str, tuple[int, int]] | None = None
  reorder: str = "none"
  reorder_fit: str = "per_image"
  permutations: Mapping[str, tuple[int, ...]] | None = None
  local_weight: float = 1.0

  def __post_init__(self):
    lo, hi = (float(v) for v in self.value_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
      raise errors.ConfigError(f"value_range must be finite with max > min, got {self.value_range}")
    object.__setattr__(self, "value_range", (lo, hi))
    if not isinstance(self.codec, inner.InnerCodec):
      raise errors.ConfigError(f"codec must be an inner codec, got {type(self.codec).__name__}")
    if self.bit_depth not in (8, 10):
      raise errors.ConfigError(f"bit_depth must be 8 or 10, got {self.bit_depth}")
    if self.reorder not in reorder_lib.MODES:
      raise errors.ConfigError(f"reorder {self.reorder!r} is not one of {reorder_lib.MODES}")
    if self.reorder_fit not in REORDER_FITS:
      raise errors.ConfigError(f"reorder_fit {self.reorder_fit!r} is not one of {REORDER_FITS}")
    if self.scales is not None:
      object.__setattr__(self, "scales", tuple(self.scales))
    if self.grids is not None:
      object.__setattr__(self, "grids", {k: tuple(int(x) for x in v) for k, v in self.grids.items()})
    if self.reorder != "none" and self.reorder_fit == "fixed":
      if not self.permutations:
        raise errors.ConfigError(
            "reorder_fit='fixed' needs `permutations` (fit them with FeatureAnchor.fit)")
      perms = {k: tuple(int(x) for x in reorder_lib.check_permutation(v, len(v), f"permutation {k}"))
               for k, v in self.permutations.items()}
      object.__setattr__(self, "permutations", perms)
      if self.scales is not None and set(perms) != set(self.scales):
        raise errors.ConfigError(f"permutations for {sorted(perms)} but scales are {self.scales}")
    elif self.permutations is not None:
      raise errors.ConfigError("`permutations` are only used with reorder != 'none' and "
                               "reorder_fit='fixed'")

  # --- configuration -----------------------------------------------------------------------------
  @property
  def codec_id(self) -> str:
    return f"feature_anchor/{self.codec.name}"

  @property
  def fill_code(self) -> int:
    """The code of zero: what fills grid cells and band parts without a channel."""
    return int(quantize(np.zeros(()), self.value_range, self.bit_depth))

  def to_dict(self) -> dict[str, Any]:
    return {
        "type": "feature_anchor", "version": _JSON_VERSION,
        "value_range": list(self.value_range), "codec": self.codec.config(),
        "bit_depth": self.bit_depth,
        "scales": None if self.scales is None else list(self.scales),
        "grids": None if self.grids is None else {k: list(v) for k, v in self.grids.items()},
        "reorder": self.reorder, "reorder_fit": self.reorder_fit,
        "permutations": (None if self.permutations is None else
                         {k: list(v) for k, v in self.permutations.items()}),
        "local_weight": self.local_weight,
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "FeatureAnchor":
    d = dict(d)
    if d.pop("type", None) != "feature_anchor" or d.pop("version", None) != _JSON_VERSION:
      raise errors.ConfigError(f"not a version-{_JSON_VERSION} feature anchor configuration")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise errors.ConfigError(f"unknown feature anchor option(s) {unknown}")
    d["codec"] = inner.from_config(d["codec"])
    d["value_range"] = tuple(d["value_range"])
    return cls(**d)

  def save(self, path: str | Path) -> None:
    Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

  @classmethod
  def load(cls, path: str | Path) -> "FeatureAnchor":
    try:
      d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
      raise errors.ConfigError(f"{path} is not valid JSON: {e}") from e
    return cls.from_dict(d)

  def fingerprint(self) -> bytes:
    """What a decoder must share with the encoder (local_weight is encoder-only)."""
    d = self.to_dict()
    d.pop("local_weight")
    if self.reorder == "none":
      d.pop("reorder_fit")
    return bitstream.fingerprint(self.codec_id, d)

  @classmethod
  def fit(cls, pyramids: Sequence[Mapping[str, Any]], **kwargs) -> "FeatureAnchor":
    """An anchor whose range (and, for reorder_fit="fixed", channel order) is fitted on a training
    set. `pyramids` is iterated twice when a fixed order is fitted (pass a list)."""
    pyramids = list(pyramids)
    anchor_kw = dict(kwargs)
    anchor_kw["value_range"] = fit_range(pyramids)
    if anchor_kw.get("reorder", "none") != "none" and anchor_kw.get("reorder_fit") == "fixed":
      first, _ = _maps(pyramids[0], anchor_kw.get("scales"))
      grids = {n: (anchor_kw.get("grids") or {}).get(n) or tiling.grid_shape(m.shape[-1])
               for n, m in first.items()}
      perms = reorder_lib.fit((_maps(p, list(first))[0] for p in pyramids), grids,
                              anchor_kw["reorder"], anchor_kw.get("local_weight", 1.0))
      anchor_kw["permutations"] = {k: tuple(int(x) for x in v) for k, v in perms.items()}
    return cls(**anchor_kw)

  # --- coding --------------------------------------------------------------------------------------
  def layout(self, hwc_shapes: Mapping[str, Sequence[int]]) -> tiling.Layout:
    ordered = {n: tuple(hwc_shapes[n]) for n in (self.scales or scale_order(hwc_shapes))}
    return tiling.make_layout(ordered, self.grids)

  def _order(self, maps: Mapping[str, np.ndarray], layout: tiling.Layout) -> dict[str, np.ndarray]:
    if self.reorder == "none":
      return {}
    if self.reorder_fit == "fixed":
      perms = {}
      for b in layout.bands:
        if b.name not in self.permutations or len(self.permutations[b.name]) != b.channels:
          raise errors.InvalidInputError(
              f"scale {b.name!r} has {b.channels} channels; the fixed order has "
              f"{len(self.permutations.get(b.name, ()))}")
        perms[b.name] = np.asarray(self.permutations[b.name])
      return perms
    return {b.name: reorder_lib.order(reorder_lib.ChannelStats(b.channels).update(maps[b.name])
                                      .similarities(), b.cols, self.reorder, self.local_weight)
            for b in layout.bands}

  def encode_maps(self, maps: Mapping[str, np.ndarray], qp: int) -> dict[str, bytes]:
    """Validated {scale: (H, W, C) float32} -> streams: "frame" (the inner codec's elementary
    stream) and, for per-image reordering, "perm" (the Lehmer-coded permutations)."""
    layout = self.layout({n: m.shape for n, m in maps.items()})
    codes = {n: quantize(m, self.value_range, self.bit_depth) for n, m in maps.items()}
    perms = self._order(maps, layout)
    codes = {n: reorder_lib.apply(c, perms[n]) if n in perms else c for n, c in codes.items()}
    frame = tiling.tile(layout, codes, self.fill_code)
    if self.bit_depth == 8:
      frame = frame.astype(np.uint8)
    streams = {"frame": self.codec.encode(frame, qp)}
    if perms and self.reorder_fit == "per_image":
      streams["perm"] = b"".join(reorder_lib.encode_permutation(perms[b.name])
                                 for b in layout.bands)
    return streams

  def compress(self, features: Mapping[str, Any], image_size: Sequence[int], qp: int) -> bytes:
    """One image's pyramid -> bitstream. `image_size` is the original image's (H, W)."""
    maps, shapes = _maps(features, self.scales)
    meta = {"qp": int(qp), "reorder": self.reorder}
    return bitstream.pack(bitstream.Container(
        self.codec_id, self.fingerprint(), tuple(int(v) for v in image_size), shapes,
        self.encode_maps(maps, qp), meta))

  def unpack(self, data: bytes) -> bitstream.Container:
    """The container, checked: format, then codec id and fingerprint (ModelMismatchError)."""
    c = bitstream.unpack(data)
    bitstream.check_model(c, self.codec_id, self.fingerprint())
    return c

  def decompress(self, data: bytes) -> dict[str, np.ndarray]:
    """Bitstream -> pyramid (float32, the shapes given to `compress`)."""
    c = self.unpack(data)
    qp = c.metadata.get("qp")
    if not isinstance(qp, int) or isinstance(qp, bool):
      raise errors.CorruptBitstreamError("feature anchor bitstream lacks an integer 'qp'")
    if self.scales is not None and set(c.shapes) != set(self.scales):
      raise errors.CorruptBitstreamError(
          f"bitstream has scales {sorted(c.shapes)}, the anchor expects {list(self.scales)}")
    hwc = {}
    for n, s in c.shapes.items():
      if not (len(s) == 3 or (len(s) == 4 and s[0] == 1)) or min(s) < 1:
        raise errors.CorruptBitstreamError(f"shape {s} of scale {n!r} is not HWC or 1HWC")
      hwc[n] = tuple(s[-3:])
    bitstream.check_feature_sizes([s[:2] for s in hwc.values()], [s[2] for s in hwc.values()])
    return {n: m.reshape(c.shapes[n]) for n, m in self.decode_maps(c.streams, hwc, qp).items()}

  def decode_maps(self, streams: Mapping[str, bytes], hwc: Mapping[str, Sequence[int]], qp: int
                  ) -> dict[str, np.ndarray]:
    """Streams of `encode_maps` -> {scale: (H, W, C) float32} for the (checked) shapes `hwc`."""
    if "frame" not in streams:
      raise errors.CorruptBitstreamError("feature anchor bitstream lacks stream 'frame'")
    layout = self.layout(hwc)
    dtype = np.uint8 if self.bit_depth == 8 else np.uint16
    frame = decode_payload(self.codec, streams["frame"], layout.frame_shape, dtype, qp)
    codes = tiling.untile(layout, frame)
    perms: dict[str, np.ndarray] = {}
    if self.reorder != "none" and self.reorder_fit == "fixed":
      perms = self._order({}, layout)
    elif self.reorder != "none":
      data_p = streams.get("perm")
      if data_p is None:
        raise errors.CorruptBitstreamError("bitstream lacks stream 'perm' (per-image reordering)")
      sizes = [reorder_lib.permutation_bytes(b.channels) for b in layout.bands]
      if len(data_p) != sum(sizes):
        raise errors.CorruptBitstreamError(
            f"stream 'perm' has {len(data_p)} bytes, expected {sum(sizes)}")
      pos = 0
      for b, n in zip(layout.bands, sizes):
        perms[b.name] = reorder_lib.decode_permutation(data_p[pos:pos + n], b.channels)
        pos += n
    return {n: dequantize(reorder_lib.undo(q, perms[n]) if n in perms else q, self.value_range,
                          self.bit_depth) for n, q in codes.items()}
