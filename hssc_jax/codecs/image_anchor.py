"""The image anchor: the original RGB image through the same traditional codec (host-side).

  RGB uint8 (H, W, 3) -> yuv420p 8-bit (BT.601, limited range) -> inner codec at a QP -> bytes
  bytes -> decode -> RGB uint8 (H, W, 3)

As measured in `shared/reference/anchors-coco-mini/image_anchor_hevc.csv` (libx265
`qp=NN:keyint=1:ipratio=1:info=0`). Odd sizes are padded by edge replication to what the codec
needs (even sizes for 4:2:0) and cropped back; the rate still divides by the original H x W.

Bitstream: the project container, codec id "image_anchor/<inner codec>", fingerprint of the inner
codec's configuration, image size, shape "image", stream "frame", metadata {"qp": QP}.
`anchor.rate(data)` gives stream and container bits.
"""

import dataclasses
from typing import Any

import numpy as np

from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import anchor
from hssc_jax.codecs import inner


@dataclasses.dataclass(frozen=True)
class ImageAnchor:
  """compress / decompress of one RGB image with an inner codec (HEVC by default)."""

  codec: inner.InnerCodec = dataclasses.field(default_factory=inner.HEVC)

  @property
  def codec_id(self) -> str:
    return f"image_anchor/{self.codec.name}"

  def fingerprint(self) -> bytes:
    return bitstream.fingerprint(self.codec_id, self.codec.config())

  def compress(self, image: Any, qp: int) -> bytes:
    """uint8 (H, W, 3) RGB image -> bitstream."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or min(img.shape) < 1:
      raise errors.InvalidInputError(
          f"the image anchor codes (H, W, 3) uint8 RGB images, got shape {img.shape} {img.dtype}")
    frame = self.codec.encode(np.ascontiguousarray(img), qp)
    return bitstream.pack(bitstream.Container(
        self.codec_id, self.fingerprint(), img.shape[:2], {"image": img.shape}, {"frame": frame},
        {"qp": int(qp)}))

  def decompress(self, data: bytes) -> np.ndarray:
    """Bitstream -> uint8 (H, W, 3) RGB image."""
    c = bitstream.unpack(data)
    bitstream.check_model(c, self.codec_id, self.fingerprint())
    bitstream.check_shapes(c, {"image": 3})
    if "frame" not in c.streams:
      raise errors.CorruptBitstreamError("image anchor bitstream lacks stream 'frame'")
    shape = c.shapes["image"]
    if shape[2] != 3 or tuple(shape[:2]) != tuple(c.image_size):
      raise errors.CorruptBitstreamError(
          f"image shape {shape} does not match image size {c.image_size}")
    qp = c.metadata.get("qp")
    if not isinstance(qp, int) or isinstance(qp, bool):
      raise errors.CorruptBitstreamError("image anchor bitstream lacks an integer 'qp'")
    return anchor.decode_payload(self.codec, c.streams["frame"], shape, np.uint8, qp)
