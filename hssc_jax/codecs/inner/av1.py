"""AV1 intra coding through PyAV's bundled SVT-AV1 (libsvtav1) and dav1d (libdav1d) decoder.

Every frame is coded alone as a key frame (gop size 1) in SVT-AV1's constant-QP mode:

  options  qp=NN  preset=P  [svtav1-params=lossless=1]

QP mapping. `qp` is SVT-AV1's `--qp` quantizer, an integer in [1, 63], *not* an HEVC QP: FFmpeg
passes it as SVT-AV1's CQP with adaptive quantization off, and SVT-AV1 maps it to the AV1 frame
quantizer index base_q_idx through its quantizer_to_qindex table (about 4 x qp; 63 -> 255; the
smallest step, qp 1, is already near-lossless). Equal-rate QPs against HEVC are measured in
benchmarks/anchor.md, not assumed. (CRF is SVT-AV1's default mode, with adaptive quantization; it
is not used so the step size is the same everywhere in the frame.)

Bit depth. SVT-AV1 takes yuv420p and yuv420p10le only, so 10-bit gray frames *are* coded at 10
bits, as the luma of a yuv420p10le picture whose chroma planes are the constant 512 (a few bytes;
SVT-AV1 has no 4:0:0 input); 8-bit gray likewise with chroma 128; RGB as yuv420p. Sizes are padded
to even, at least 32: SVT-AV1 4.1 (as bundled with PyAV 18.1) accepts sides >= 4 but never returns
a packet (PyAV's encode call hangs) when one side is below ~26 and the other above 64 (e.g. 24x72,
16x200). SVT-AV1 accepts width <= 16384 and height <= 8704; larger frames are split (see `base`). Lossless: SVT-AV1 >= 2.x `lossless=1` (base_q_idx 0, no filters).

The stream is AV1 low-overhead OBUs (temporal delimiter, sequence header, frame), as in an IVF/MP4
sample, without a container.
"""

import dataclasses
import os

from hssc_jax.codecs.inner import base

# SVT-AV1 logs its configuration to stderr at "info" level on every encoder it creates; keep errors
# only (SVT_LOG: 1 error, 2 warn, 3 info). A user's own SVT_LOG wins.
os.environ.setdefault("SVT_LOG", "1")


@dataclasses.dataclass(frozen=True)
class AV1(base.InnerCodec):
  """SVT-AV1 intra-only AV1.

  Attributes:
    preset: SVT-AV1 speed preset, 0 (slowest) .. 13 (fastest); 8 is FFmpeg's default.
    lossless: code losslessly (SVT-AV1 `lossless=1`); the QP is then ignored.
    extra_params: more `svtav1-params` (key=value:key=value), e.g. "tune=1".
    decoder: FFmpeg decoder name, "libdav1d" (default) or "av1" (FFmpeg's own, hardware-oriented).
    max_frame: (height, width) override of the largest single coded frame.
  """

  name = "av1"
  limits = base.Limits(qp_range=(1, 63), min_size=32, max_size=(8704, 16384),
                       max_pixels=35_651_584, lossless=True)

  preset: int = 8
  lossless: bool = False
  extra_params: str = ""
  decoder: str = "libdav1d"
  max_frame: tuple[int, int] | None = None

  def align(self, kind):
    del kind
    return 2  # always coded as 4:2:0

  def options(self, qp: int) -> dict[str, str]:
    opts = {"qp": str(int(qp)), "preset": str(int(self.preset))}
    params = [p for p in (("lossless=1" if self.lossless else ""), self.extra_params.strip(":")) if p]
    if params:
      opts["svtav1-params"] = ":".join(params)
    return opts

  def _encode_frames(self, frames, kind, qp):
    pix_fmt = "yuv420p10le" if kind == base.GRAY10 else "yuv420p"
    what = self.describe(qp)
    return [base.pyav_encode("libsvtav1", base.to_av_frame(f, kind, pix_fmt), self.options(qp),
                             what, gop_size=1) for f in frames]

  def _decode_frames(self, data, kind, qp, sizes):
    del sizes
    what = self.describe(qp)
    return [base.from_av_frame(f, kind) for f in base.pyav_decode(self.decoder, data, what)]
