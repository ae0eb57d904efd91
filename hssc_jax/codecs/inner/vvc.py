"""H.266/VVC intra coding through the external Fraunhofer vvenc encoder (and vvdec decoder).

No VVC encoder ships with PyAV, so this codec runs binaries found on PATH (names or paths are
configurable):

  vvencapp -i in.yuv -s WxH -c yuv400_10|yuv400|yuv420 -f 1 --intraperiod 1 --qp NN --qpa 0
           --preset P --internal-bitdepth 10|8 -o out.266 -v 1
  vvdecapp -b out.266 -o rec.yuv -v 1

- QP in [0, 63] (VVC's range at 10 bits), constant QP: `--qpa 0` turns off vvenc's default
  perceptual QP adaptation (XPSNR), which would otherwise vary the QP inside the frame.
- `--intraperiod 1` selects the all-intra configuration; with vvenc's default random-access GOP
  the SPS of a lone frame carries the GOP's reference picture lists (about 200 bytes more).
- 10-bit gray frames are coded as 4:0:0 10-bit, 8-bit gray as 4:0:0 8-bit (internal bit depth 8),
  RGB as yuv420p 8-bit (BT.601, limited range). Sizes are padded to multiples of 8.
- No lossless mode: vvencapp has none (VTM's CostMode=lossless is not exposed by vvenc).
- Decoding: `decoder="auto"` runs vvdecapp when it is on PATH and otherwise FFmpeg's own VVC
  decoder bundled with PyAV (`decoder="pyav"`); any other value is a vvdec binary name or path.
- Frames beyond level 6.2 (35,651,584 samples) are split (see `base`); vvdecapp then decodes the
  access units one by one (FFmpeg's VVC parser splits them).
- VTM's EncoderApp/DecoderApp take other options and a configuration file; they are not driven
  here (vvenc and VTM write the same standard bitstream; use vvenc).

Missing binaries raise InnerCodecError naming the codec, the QP and the binary; `VVC().missing()`
says why the codec cannot run here (None when it can), for tests to skip with that reason.
"""

import dataclasses
import os
import shutil
import subprocess
import tempfile

import numpy as np

from hssc_jax import errors
from hssc_jax.codecs.inner import base


@dataclasses.dataclass(frozen=True)
class VVC(base.InnerCodec):
  """vvenc/vvdec intra-only VVC.

  Attributes:
    encoder: vvencapp binary name (looked up on PATH) or path.
    decoder: "auto", "pyav" (FFmpeg's VVC decoder), or a vvdecapp binary name or path.
    preset: vvenc preset: faster, fast, medium, slow, slower.
    extra_args: more vvencapp arguments, e.g. ("--threads", "2").
    max_frame: (height, width) override of the largest single coded frame.
    timeout_s: seconds before a binary is killed (InnerCodecError).
  """

  name = "vvc"
  limits = base.Limits(qp_range=(0, 63), min_size=8, max_size=(16384, 16384),
                       max_pixels=35_651_584, lossless=False)

  encoder: str = "vvencapp"
  decoder: str = "auto"
  preset: str = "medium"
  extra_args: tuple[str, ...] = ()
  max_frame: tuple[int, int] | None = None
  timeout_s: float = 3600.0

  def align(self, kind):
    del kind
    return 8

  def _decoder_binary(self) -> str | None:
    """The vvdec binary to run, or None for PyAV's decoder."""
    if self.decoder == "pyav":
      return None
    if self.decoder == "auto":
      return shutil.which("vvdecapp")
    return shutil.which(self.decoder) or self.decoder

  def missing(self) -> str | None:
    """Why this codec cannot run here (a binary not found), or None."""
    if shutil.which(self.encoder) is None:
      return (f"vvc: encoder binary {self.encoder!r} not found on PATH (build Fraunhofer vvenc, "
              "https://github.com/fraunhoferhhi/vvenc, or pass encoder=/path/to/vvencapp)")
    dec = self._decoder_binary()
    if dec is not None and shutil.which(dec) is None:
      return f"vvc: decoder binary {dec!r} not found on PATH (or use decoder='pyav')"
    return None

  def _run(self, args: list[str], what: str, tool: str) -> None:
    try:
      r = subprocess.run(args, capture_output=True, timeout=self.timeout_s, check=False)
    except FileNotFoundError as e:
      raise errors.InnerCodecError(
          f"{what}: {tool} binary {args[0]!r} not found (install vvenc/vvdec or set its path)"
      ) from e
    except subprocess.TimeoutExpired as e:
      raise errors.InnerCodecError(f"{what}: {tool} ran past {self.timeout_s} s") from e
    if r.returncode != 0:
      tail = (r.stderr or r.stdout).decode(errors="replace").strip()[-400:]
      raise errors.InnerCodecError(f"{what}: {tool} exited with {r.returncode}: {tail}")

  def _encode_frames(self, frames, kind, qp):
    what = self.describe(qp)
    if shutil.which(self.encoder) is None:
      raise errors.InnerCodecError(
          f"{what}: encoder binary {self.encoder!r} not found on PATH; VVC needs Fraunhofer vvenc "
          "(https://github.com/fraunhoferhhi/vvenc) or encoder=/path/to/vvencapp")
    fmt = {base.GRAY10: "yuv400_10", base.GRAY8: "yuv400", base.RGB: "yuv420"}[kind]
    depth = "10" if kind == base.GRAY10 else "8"
    out = []
    with tempfile.TemporaryDirectory(prefix="hssc_vvc_") as tmp:
      src, dst = os.path.join(tmp, "in.yuv"), os.path.join(tmp, "out.266")
      for f in frames:
        h, w = f.shape[:2]
        with open(src, "wb") as fh:
          fh.write(_raw(f, kind))
        if os.path.exists(dst):
          os.remove(dst)
        self._run([self.encoder, "-i", src, "-s", f"{w}x{h}", "-c", fmt, "-f", "1",
                   "--intraperiod", "1", "--qp", str(qp), "--qpa", "0", "--preset", self.preset,
                   "--internal-bitdepth", depth, "-o", dst, "-v", "1", *self.extra_args],
                  what, "vvencapp")
        if not os.path.exists(dst) or os.path.getsize(dst) == 0:
          raise errors.InnerCodecError(f"{what}: vvencapp wrote no bitstream")
        with open(dst, "rb") as fh:
          out.append(fh.read())
    return out

  def _decode_frames(self, data, kind, qp, sizes):
    what = self.describe(qp)
    binary = self._decoder_binary()
    if binary is None:
      return [base.from_av_frame(f, kind) for f in base.pyav_decode("vvc", data, what)]
    units = [data] if len(sizes) == 1 else _access_units(data, what)
    if len(units) != len(sizes):
      raise errors.InnerCodecError(
          f"{what}: stream holds {len(units)} access unit(s), expected {len(sizes)}")
    out = []
    with tempfile.TemporaryDirectory(prefix="hssc_vvc_") as tmp:
      src, dst = os.path.join(tmp, "in.266"), os.path.join(tmp, "rec.yuv")
      for unit, (h, w) in zip(units, sizes):
        with open(src, "wb") as fh:
          fh.write(unit)
        if os.path.exists(dst):
          os.remove(dst)
        self._run([binary, "-b", src, "-o", dst, "-v", "1"], what, "vvdecapp")
        if not os.path.exists(dst):
          raise errors.InnerCodecError(f"{what}: vvdecapp wrote no picture")
        with open(dst, "rb") as fh:
          out.append(_unraw(fh.read(), kind, h, w, what))
    return out


def _raw(f: np.ndarray, kind: str) -> bytes:
  """Planar raw samples as vvencapp reads them (16-bit little-endian above 8 bits)."""
  if kind == base.GRAY10:
    return f.astype("<u2").tobytes()
  if kind == base.GRAY8:
    return f.tobytes()
  yuv = base.to_av_frame(f, kind, "yuv420p")
  h, w = f.shape[:2]
  parts = []
  for i, plane in enumerate(yuv.planes):
    ph, pw = (h, w) if i == 0 else ((h + 1) // 2, (w + 1) // 2)
    parts.append(np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:ph, :pw].tobytes())
  return b"".join(parts)


def _unraw(raw: bytes, kind: str, h: int, w: int, what: str) -> np.ndarray:
  """vvdecapp's raw output (luma only for 4:0:0; 8 or 16 bits a sample) -> a frame."""
  samples = h * w if kind != base.RGB else h * w + 2 * ((h + 1) // 2) * ((w + 1) // 2)
  if len(raw) not in (samples, 2 * samples):
    raise errors.InnerCodecError(
        f"{what}: vvdecapp wrote {len(raw)} bytes, not one {h}x{w} {kind} picture")
  wide = len(raw) == 2 * samples
  x = np.frombuffer(raw, "<u2" if wide else np.uint8)
  if kind == base.GRAY10:
    if not wide:
      raise errors.InnerCodecError(f"{what}: decoded an 8-bit picture where 10 bits were coded")
    return x.reshape(h, w).astype(np.uint16)
  if wide:
    raise errors.InnerCodecError(f"{what}: decoded a 10-bit picture where 8 bits were coded")
  if kind == base.GRAY8:
    return x.reshape(h, w).copy()
  av = base._av()  # pylint: disable=protected-access
  frame = av.VideoFrame(w, h, "yuv420p")
  pos = 0
  for i, plane in enumerate(frame.planes):
    ph, pw = (h, w) if i == 0 else ((h + 1) // 2, (w + 1) // 2)
    buf = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
    buf[:ph, :pw] = x[pos:pos + ph * pw].reshape(ph, pw)
    pos += ph * pw
  return base.from_av_frame(frame, kind)


def _access_units(data: bytes, what: str) -> list[bytes]:
  """Splits a VVC Annex-B stream into access units with FFmpeg's VVC parser."""
  av = base._av()  # pylint: disable=protected-access
  try:
    ctx = av.CodecContext.create("vvc", "r")
    return [bytes(p) for p in list(ctx.parse(data)) + list(ctx.parse(None))]
  except av.error.FFmpegError as e:
    raise errors.InnerCodecError(f"{what}: cannot split the VVC stream: {e}") from e
