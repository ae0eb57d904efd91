"""H.265/HEVC intra coding through PyAV's bundled libx265 (encoder) and FFmpeg's HEVC decoder.

Every frame is coded alone as an IDR picture with

  x265-params  qp=NN:keyint=1:ipratio=1:info=0:log-level=error[:lossless=1]

- `qp=NN` constant QP (CQP, x265's "qp" rate control), NN in [0, 51];
- `ipratio=1`: without it x265 codes a lone I frame about 3 QP *below* the QP asked for;
- `info=0`: without it every stream carries x265's 2,262-byte version/options SEI;
- `lossless=1` (field `lossless`): mathematically lossless coding (transquant bypass), QP ignored.

10-bit gray frames use pix_fmt gray10le (4:0:0, 10 bits); 8-bit gray uses gray; RGB is coded as
yuv420p. x265 needs sides >= 16 (smaller frames are padded, then cropped back) and pads to its CU
size itself (conformance window), so gray frames need no alignment and 4:2:0 frames even sizes.
Frames beyond HEVC level 6.2 (MaxLumaPs 35,651,584 luma samples, sides <= 16384 here; the spec's
bound is sqrt(8 MaxLumaPs) = 16888) are split into several frames (see `base`). x265 itself codes
larger pictures with no level (e.g. 8192x8192) but not every decoder would accept them.

The stream is Annex-B (start codes; VPS, SPS, PPS, then the slice NAL units).
"""

import dataclasses

from hssc_jax.codecs.inner import base


@dataclasses.dataclass(frozen=True)
class HEVC(base.InnerCodec):
  """libx265 intra-only HEVC.

  Attributes:
    preset: x265 preset ("ultrafast" ... "placebo"); None keeps x265's default ("medium").
    lossless: code losslessly (x265 `lossless=1`); the QP is then ignored.
    extra_params: more x265 params appended to the list above, e.g. "rd=4:psy-rd=0" (FFmpeg only
      warns about unknown names; invalid values make the encoder refuse: InnerCodecError).
    max_frame: (height, width) override of the largest single coded frame (default: level 6.2).
  """

  name = "hevc"
  limits = base.Limits(qp_range=(0, 51), min_size=16, max_size=(16384, 16384),
                       max_pixels=35_651_584, lossless=True)

  preset: str | None = None
  lossless: bool = False
  extra_params: str = ""
  max_frame: tuple[int, int] | None = None

  def x265_params(self, qp: int) -> str:
    p = f"qp={int(qp)}:keyint=1:ipratio=1:info=0:log-level=error"
    if self.lossless:
      p += ":lossless=1"
    if self.extra_params:
      p += ":" + self.extra_params.strip(":")
    return p

  def _encode_frames(self, frames, kind, qp):
    pix_fmt = {base.GRAY10: "gray10le", base.GRAY8: "gray", base.RGB: "yuv420p"}[kind]
    options = {"x265-params": self.x265_params(qp)}
    if self.preset is not None:
      options["preset"] = self.preset
    what = self.describe(qp)
    return [base.pyav_encode("libx265", base.to_av_frame(f, kind, pix_fmt), options, what)
            for f in frames]

  def _decode_frames(self, data, kind, qp, sizes):
    del sizes
    what = self.describe(qp)
    return [base.from_av_frame(f, kind) for f in base.pyav_decode("hevc", data, what)]

