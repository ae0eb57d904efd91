"""One coder protocol for every operating point, learned or traditional.

  coder = LearnedCoder(codec, params, tables)      # a trained codec (a zoo model is one too)
  coder = FeatureAnchorCoder(anchor, qp)           # pyramid -> tiles -> inner codec at a QP
  coder = ImageAnchorCoder(anchor, qp)             # the RGB image -> inner codec at a QP
  data = coder.compress(x, image_size)             # x: a pyramid (batch 1), or the RGB image
  x_hat = coder.decompress(data)                   #   where coder.input == "image"
  coder.stream_bits(data)                          # {stream: bits} ({} where none are named)
  coder.allocation(data)                           # a bit-allocating codec's choice, else None

`codec_eval` evaluates any object with these members; a new traditional inner codec needs no
coder of its own (it plugs into the anchors, `codecs.inner`).
"""

import dataclasses
from typing import Any, ClassVar, Mapping, Protocol, Sequence

from hssc_jax import bitstream


class Coder(Protocol):
  """What `codec_eval` knows of an operating point."""

  input: str  # "features" (a pyramid of batch 1) or "image" (RGB uint8 (H, W, 3))

  def compress(self, x: Any, image_size: Sequence[int]) -> bytes: ...

  def decompress(self, data: bytes) -> Any: ...

  def stream_bits(self, data: bytes) -> dict[str, float]: ...

  def allocation(self, data: bytes) -> dict | None: ...


@dataclasses.dataclass(frozen=True)
class LearnedCoder:
  """A learned feature codec with its parameters and CDF tables."""

  input: ClassVar[str] = "features"
  codec: Any
  params: Any
  tables: Any

  def compress(self, features: Mapping[str, Any], image_size: Sequence[int]) -> bytes:
    return self.codec.compress(self.params, self.tables, features, image_size)

  def decompress(self, data: bytes) -> dict[str, Any]:
    return self.codec.decompress(self.params, self.tables, data)

  def fingerprint(self) -> bytes:
    return self.codec.fingerprint(self.params, self.tables)

  def stream_bits(self, data: bytes) -> dict[str, float]:
    return self.codec.unpack(self.params, self.tables, data).stream_bits

  def allocation(self, data: bytes) -> dict | None:
    read = getattr(self.codec, "read_allocation", None)  # e.g. MFIBA's per-scale gains
    return None if read is None else read(self.params, self.tables, data)


@dataclasses.dataclass(frozen=True)
class FeatureAnchorCoder:
  """The feature anchor (`anchor.FeatureAnchor`) at one QP."""

  input: ClassVar[str] = "features"
  anchor: Any
  qp: int

  def compress(self, features: Mapping[str, Any], image_size: Sequence[int]) -> bytes:
    return self.anchor.compress(features, image_size, self.qp)

  def decompress(self, data: bytes) -> dict[str, Any]:
    return self.anchor.decompress(data)

  def stream_bits(self, data: bytes) -> dict[str, float]:
    return bitstream.unpack(data).stream_bits

  def allocation(self, data: bytes) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class ImageAnchorCoder:
  """The image anchor (`image_anchor.ImageAnchor`) at one QP; the image size is the image's."""

  input: ClassVar[str] = "image"
  anchor: Any
  qp: int

  def compress(self, image: Any, image_size: Sequence[int] = ()) -> bytes:
    return self.anchor.compress(image, self.qp)

  def decompress(self, data: bytes) -> Any:
    return self.anchor.decompress(data)

  def stream_bits(self, data: bytes) -> dict[str, float]:
    return {}

  def allocation(self, data: bytes) -> None:
    return None
