"""The interface of the traditional (inner) codecs, and the frame handling they share.

An inner codec turns one frame into the elementary stream of a standard codec and back:

  data = codec.encode(frame, qp)                      # bytes: HEVC Annex-B, AV1 OBUs, VVC Annex-B
  frame_hat = codec.decode(data, frame.shape, frame.dtype)

Frames come in three kinds, told apart by shape and dtype:

  2-D uint16, values 0..1023   "gray10"  single-plane 10-bit (feature anchor: tiled feature maps)
  2-D uint8                     "gray8"   single-plane 8-bit
  (H, W, 3) uint8 RGB           "rgb"     coded as yuv420p 8-bit (image anchor); BT.601, limited
                                          range both ways, bilinear chroma resampling (libswscale)

Sizes. Each codec has a minimum size and an alignment (e.g. even sizes for 4:2:0); a frame is padded
by edge replication to satisfy them and the decoded frame is cropped back. A frame larger than the
codec allows (`max_frame`: HEVC level 6.2, the SVT-AV1 limits) is *split*, never refused: it is cut
into a raster grid of pieces no larger than the limit, each piece is coded as its own intra frame
(own parameter sets), and the stream is their concatenation, which is still a legal Annex-B / OBU
stream. The decoder recomputes the same grid from the frame shape.

Every failure (missing encoder or binary, refused options, non-zero exit, empty output, undecodable
stream) raises `InnerCodecError` naming the codec and the QP.

PyAV (`av`) is imported only under this package; `_av()` is its one door.
"""

import abc
import dataclasses
from fractions import Fraction
from typing import Any, ClassVar, Sequence

import numpy as np

from hssc_jax import errors

GRAY10, GRAY8, RGB = "gray10", "gray8", "rgb"
_KIND_DTYPE = {GRAY10: np.uint16, GRAY8: np.uint8, RGB: np.uint8}


def _av():
  """Imports PyAV or raises InnerCodecError with the fix."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - av is pinned in requirements.txt
    raise errors.InnerCodecError(
        "PyAV (`av`) is not installed; it provides libx265, SVT-AV1 and the decoders: "
        "pip install av (see requirements.txt)") from e
  return av


def frame_kind(shape: Sequence[int], dtype: Any) -> str:
  """The kind of a frame of this shape and dtype, or InvalidInputError."""
  dtype = np.dtype(dtype)
  shape = tuple(int(d) for d in shape)
  if len(shape) == 2 and dtype == np.uint16:
    kind = GRAY10
  elif len(shape) == 2 and dtype == np.uint8:
    kind = GRAY8
  elif len(shape) == 3 and shape[2] == 3 and dtype == np.uint8:
    kind = RGB
  else:
    raise errors.InvalidInputError(
        f"an inner-codec frame must be 2-D uint16 (10-bit gray), 2-D uint8 (8-bit gray) or "
        f"(H, W, 3) uint8 (RGB); got shape {shape} dtype {dtype}")
  if shape[0] < 1 or shape[1] < 1:
    raise errors.InvalidInputError(f"frame has an empty side: shape {shape}")
  return kind


def split_grid(height: int, width: int, max_h: int, max_w: int,
               max_pixels: int) -> list[tuple[int, int, int, int]]:
  """Raster grid of (y0, y1, x0, x1) pieces covering an HxW frame within the size limits.

  Pieces have width min(W, max_w) and the largest height (a multiple of 64 when cut) that keeps
  height <= max_h and height * width <= max_pixels; the last row/column takes the remainder.
  """
  pw = min(width, max_w)
  ph_max = min(max_h, max_pixels // pw)
  if height <= ph_max:
    ph = height
  else:
    ph = max(64, ph_max // 64 * 64)
  return [(y, min(y + ph, height), x, min(x + pw, width))
          for y in range(0, height, ph) for x in range(0, width, pw)]


def _padded_size(n: int, align: int, minimum: int) -> int:
  return max(minimum, -(-n // align) * align)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What an inner codec accepts.

  Attributes:
    qp_range: inclusive range of accepted QPs.
    min_size: smallest side the encoder accepts (frames are padded up to it).
    max_size: (max height, max width) of one coded frame; larger frames are split.
    max_pixels: most luma samples of one coded frame; larger frames are split.
    lossless: whether the codec has a mathematically lossless mode (field `lossless`).
  """

  qp_range: tuple[int, int] = (0, 51)
  min_size: int = 16
  max_size: tuple[int, int] = (8192, 8192)
  max_pixels: int = 8192 * 8192
  lossless: bool = False


@dataclasses.dataclass(frozen=True)
class InnerCodec(abc.ABC):
  """Base class; subclasses are frozen dataclasses whose fields are their whole configuration.

  Class attributes a subclass sets: `name`, the short codec name used in container codec ids
  (e.g. "hevc"), and its `limits`.
  """

  name: ClassVar[str] = "inner"
  limits: ClassVar[Limits] = Limits()

  # --- what subclasses implement -------------------------------------------------------------
  def align(self, kind: str) -> int:
    """Sizes of coded frames of this kind are padded to a multiple of this."""
    return 1 if kind in (GRAY10, GRAY8) else 2

  @abc.abstractmethod
  def _encode_frames(self, frames: list[np.ndarray], kind: str, qp: int) -> list[bytes]:
    """Encodes each padded piece as one intra frame; one byte string per piece."""

  @abc.abstractmethod
  def _decode_frames(self, data: bytes, kind: str, qp: int | None,
                     sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Decodes a stream into its frames (padded pieces of `sizes`, in coding order)."""

  # --- shared ----------------------------------------------------------------------------------
  def config(self) -> dict[str, Any]:
    """Name and fields: what the anchors fingerprint and save."""
    return {"name": self.name, **dataclasses.asdict(self)}

  def frame_limits(self) -> tuple[int, int, int]:
    """(max height, max width, max pixels) of one coded frame."""
    limit = getattr(self, "max_frame", None)
    if limit is not None:
      h, w = (int(v) for v in limit)
      return h, w, h * w
    return self.limits.max_size[0], self.limits.max_size[1], self.limits.max_pixels

  def describe(self, qp: int | None) -> str:
    """'hevc (QP 32)' for error messages."""
    if getattr(self, "lossless", False):
      return f"{self.name} (lossless)"
    return f"{self.name} (QP {qp})" if qp is not None else f"{self.name}"

  def check_qp(self, qp: Any) -> int:
    """The QP as an int, or InnerCodecError when it is not one this codec accepts."""
    lo, hi = self.limits.qp_range
    if isinstance(qp, bool) or not isinstance(qp, (int, np.integer)) or not lo <= int(qp) <= hi:
      raise errors.InnerCodecError(
          f"{self.name} (QP {qp!r}): QP must be an integer in [{lo}, {hi}] for this codec")
    return int(qp)

  def _pieces(self, shape: Sequence[int]) -> list[tuple[int, int, int, int]]:
    max_h, max_w, max_px = self.frame_limits()
    return split_grid(int(shape[0]), int(shape[1]), max_h, max_w, max_px)

  def _padded(self, piece: tuple[int, int, int, int], kind: str) -> tuple[int, int]:
    a = self.align(kind)
    y0, y1, x0, x1 = piece
    m = self.limits.min_size
    return _padded_size(y1 - y0, a, m), _padded_size(x1 - x0, a, m)

  def encode(self, frame: np.ndarray, qp: int) -> bytes:
    """One frame -> the codec's elementary stream (bytes).

    Raises InvalidInputError for a frame of the wrong shape/dtype or 10-bit values above 1023, and
    InnerCodecError for a QP out of range or any encoder failure.
    """
    frame = np.asarray(frame)
    kind = frame_kind(frame.shape, frame.dtype)
    if kind == GRAY10 and frame.size and int(frame.max()) > 1023:
      raise errors.InvalidInputError(
          f"10-bit gray frame holds {int(frame.max())}, above the 10-bit maximum 1023")
    qp = self.check_qp(qp)
    pieces = []
    for piece in self._pieces(frame.shape):
      y0, y1, x0, x1 = piece
      ph, pw = self._padded(piece, kind)
      p = frame[y0:y1, x0:x1]
      pad = [(0, ph - (y1 - y0)), (0, pw - (x1 - x0))] + [(0, 0)] * (frame.ndim - 2)
      pieces.append(np.ascontiguousarray(np.pad(p, pad, mode="edge")))
    streams = self._encode_frames(pieces, kind, qp)
    if len(streams) != len(pieces) or any(not s for s in streams):
      raise errors.InnerCodecError(f"{self.describe(qp)}: the encoder produced empty output")
    return b"".join(streams)

  def decode(self, data: bytes, shape: Sequence[int], dtype: Any = None,
             qp: int | None = None) -> np.ndarray:
    """Stream -> frame of `shape` and `dtype` (default: uint16 for 2-D, uint8 for RGB).

    `qp` only names the stream in error messages. Raises InnerCodecError when the stream does not
    decode to the frames the shape implies.
    """
    shape = tuple(int(d) for d in shape)
    if dtype is None:
      dtype = np.uint16 if len(shape) == 2 else np.uint8
    kind = frame_kind(shape, dtype)
    if not data:
      raise errors.InnerCodecError(f"{self.describe(qp)}: cannot decode an empty stream")
    pieces = self._pieces(shape)
    sizes = [self._padded(p, kind) for p in pieces]
    frames = self._decode_frames(bytes(data), kind, qp, sizes)
    if len(frames) != len(pieces):
      raise errors.InnerCodecError(
          f"{self.describe(qp)}: stream decoded to {len(frames)} frame(s), expected {len(pieces)} "
          f"for a {shape[0]}x{shape[1]} frame")
    out = np.empty(shape, _KIND_DTYPE[kind])
    for f, piece, (ph, pw) in zip(frames, pieces, sizes):
      y0, y1, x0, x1 = piece
      if f.shape[:2] != (ph, pw):
        raise errors.InnerCodecError(
            f"{self.describe(qp)}: decoded frame is {f.shape[0]}x{f.shape[1]}, expected {ph}x{pw}")
      out[y0:y1, x0:x1] = f[:y1 - y0, :x1 - x0]
    return out


# --- PyAV helpers (the codecs in this package share them) ------------------------------------------

_RGB_CONVERSION = dict(src_colorspace="ITU601", dst_colorspace="ITU601",
                       src_color_range="MPEG", dst_color_range="MPEG")


def to_av_frame(x: np.ndarray, kind: str, pix_fmt: str):
  """A numpy frame -> an av.VideoFrame in `pix_fmt` (exact for gray: planes are copied).

  Gray frames coded as 4:2:0 (AV1 has no 4:0:0 in SVT-AV1) get neutral chroma (512 or 128).
  """
  av = _av()
  h, w = x.shape[:2]
  if kind == RGB:
    rgb = av.VideoFrame.from_ndarray(x, format="rgb24")
    return rgb.reformat(format=pix_fmt, **_RGB_CONVERSION)
  if pix_fmt in ("gray10le", "gray"):
    return av.VideoFrame.from_ndarray(x, format=pix_fmt)
  f = av.VideoFrame(w, h, pix_fmt)
  ten = pix_fmt.endswith("10le")
  neutral = 512 if ten else 128
  dt = np.uint16 if ten else np.uint8
  for i, plane in enumerate(f.planes):
    stride = plane.line_size // dt().itemsize
    buf = np.frombuffer(plane, dt).reshape(-1, stride)
    if i == 0:
      buf[:h, :w] = x
    else:
      buf[:] = neutral
  return f


def from_av_frame(f, kind: str) -> np.ndarray:
  """An av.VideoFrame -> numpy (gray: the luma plane exactly; RGB via BT.601 limited range)."""
  if kind == RGB:
    return f.to_ndarray(format="rgb24", **_RGB_CONVERSION)
  ten = f.format.name.endswith("10le")
  if (kind == GRAY10) != ten:
    raise errors.InnerCodecError(
        f"decoded a {f.format.name} frame where a {kind} frame was expected")
  dt = np.uint16 if ten else np.uint8
  plane = f.planes[0]
  stride = plane.line_size // dt().itemsize
  return np.frombuffer(plane, dt).reshape(-1, stride)[:f.height, :f.width].copy()


def pyav_encode(encoder: str, frame, options: dict[str, str], what: str,
                gop_size: int | None = None) -> bytes:
  """Encodes one av.VideoFrame with a fresh encoder context; the packets joined."""
  av = _av()
  try:
    ctx = av.CodecContext.create(encoder, "w")
  except Exception as e:  # pylint: disable=broad-except
    raise errors.InnerCodecError(f"{what}: encoder {encoder!r} is not in this PyAV build: {e}") from e
  ctx.width, ctx.height = frame.width, frame.height
  ctx.pix_fmt = frame.format.name
  ctx.time_base = Fraction(1, 25)
  if gop_size is not None:
    ctx.gop_size = gop_size
  ctx.options = dict(options)
  frame.pts = 0
  try:
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
  except av.error.FFmpegError as e:
    raise errors.InnerCodecError(f"{what}: {encoder} refused the frame or options {options}: {e}"
                                 ) from e
  return b"".join(bytes(p) for p in packets)


def pyav_decode(decoder: str, data: bytes, what: str) -> list:
  """Decodes an elementary stream (parsed into access units) into av.VideoFrames."""
  av = _av()
  try:
    ctx = av.CodecContext.create(decoder, "r")
  except Exception as e:  # pylint: disable=broad-except
    raise errors.InnerCodecError(f"{what}: decoder {decoder!r} is not in this PyAV build: {e}") from e
  try:
    packets = list(ctx.parse(data)) + list(ctx.parse(None))
    frames = []
    for p in packets:
      frames += ctx.decode(p)
    frames += ctx.decode(None)
  except av.error.FFmpegError as e:
    raise errors.InnerCodecError(f"{what}: the {decoder} decoder failed: {e}") from e
  return frames

