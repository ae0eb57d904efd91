"""Inner codecs: exact lossless round trips, rate falls with QP, sizes, splitting, failure paths."""

import re
import shutil

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hssc_jax import errors
from hssc_jax.codecs import inner


def smooth_gray10(h, w, seed=0):
  """Structured 10-bit content (smooth gradients plus texture), as tiled features look."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  base = 400 + 300 * np.sin(x / 9.0) * np.cos(y / 13.0)
  return np.clip(base + rng.normal(0, 20, (h, w)), 0, 1023).astype(np.uint16)


def smooth_rgb(h, w, seed=0):
  g = smooth_gray10(h, w, seed) >> 2
  return np.stack([g, g[::-1], 255 - g], -1).astype(np.uint8)


def hevc_nal_types(data: bytes) -> list[int]:
  return [(data[m.end()] >> 1) & 0x3F for m in re.finditer(b"\x00\x00\x01", data)]


@pytest.mark.parametrize("codec", [inner.HEVC(lossless=True), inner.AV1(lossless=True)],
                         ids=["hevc", "av1"])
def test_lossless_round_trip_is_exact(codec):
  x = smooth_gray10(48, 80)
  x[0, 0], x[-1, -1] = 0, 1023
  data = codec.encode(x, 30)
  y = codec.decode(data, x.shape, np.uint16)
  assert y.dtype == np.uint16 and y.shape == x.shape
  np.testing.assert_array_equal(y, x)


def test_lossless_gray8_is_exact():
  x = (smooth_gray10(40, 56) >> 2).astype(np.uint8)
  c = inner.HEVC(lossless=True)
  np.testing.assert_array_equal(c.decode(c.encode(x, 0), x.shape, np.uint8), x)


def test_hevc_bytes_fall_as_qp_rises():
  x = smooth_gray10(64, 128)
  c = inner.HEVC()
  sizes = [len(c.encode(x, qp)) for qp in (12, 22, 32, 42, 51)]
  assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes


def test_hevc_lossy_error_grows_with_qp():
  x = smooth_gray10(64, 128)
  c = inner.HEVC()
  err = [np.abs(c.decode(c.encode(x, qp), x.shape).astype(int) - x).mean() for qp in (12, 32, 51)]
  assert err[0] < err[1] < err[2], err
  assert err[0] < 4.0


def test_hevc_stream_is_annex_b_without_info_sei():
  data = inner.HEVC().encode(smooth_gray10(32, 32), 32)
  assert data.startswith(b"\x00\x00\x00\x01")
  types = hevc_nal_types(data)
  assert types[:3] == [32, 33, 34], types        # VPS, SPS, PPS
  assert 39 not in types, "x265's info SEI (prefix SEI) must be off (info=0)"
  assert 19 in types or 20 in types               # one IDR picture


def test_av1_high_quality_round_trip_bounded():
  x = smooth_gray10(64, 96)
  c = inner.AV1()
  y = c.decode(c.encode(x, 4), x.shape)
  err = np.abs(y.astype(int) - x)
  assert err.mean() < 2.0 and err.max() <= 16, (err.mean(), err.max())
  sizes = [len(c.encode(x, qp)) for qp in (10, 30, 50, 63)]
  assert all(a > b for a, b in zip(sizes, sizes[1:])), sizes


@pytest.mark.parametrize("codec", [inner.HEVC(), inner.AV1()], ids=["hevc", "av1"])
def test_rgb_round_trip_keeps_odd_size(codec):
  img = smooth_rgb(45, 67)
  out = codec.decode(codec.encode(img, 12), img.shape, np.uint8)
  assert out.shape == img.shape and out.dtype == np.uint8
  assert np.abs(out.astype(int) - img).mean() < 6.0


@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (37, 53), (17, 200)])
def test_small_and_odd_gray_frames_are_padded_and_cropped(shape):
  x = smooth_gray10(*shape, seed=sum(shape))
  for c in (inner.HEVC(lossless=True), inner.AV1(lossless=True)):
    np.testing.assert_array_equal(c.decode(c.encode(x, 20), shape), x)


def test_frame_over_the_limit_is_split_into_several_frames():
  x = smooth_gray10(150, 100)
  c = inner.HEVC(lossless=True, max_frame=(64, 48))
  data = c.encode(x, 0)
  assert hevc_nal_types(data).count(33) == len(c._pieces(x.shape)) == 9  # one SPS per piece
  np.testing.assert_array_equal(c.decode(data, x.shape), x)
  whole = inner.HEVC(lossless=True).encode(x, 0)  # one frame where the split codec expects 9
  with pytest.raises(errors.InnerCodecError, match="1 frame.*expected 9"):
    c.decode(whole, x.shape)


def test_av1_split_round_trip():
  x = smooth_gray10(70, 90)
  c = inner.AV1(lossless=True, max_frame=(32, 64))
  np.testing.assert_array_equal(c.decode(c.encode(x, 1), x.shape), x)


@given(h=st.integers(1, 3000), w=st.integers(1, 3000), mh=st.integers(64, 1024),
       mw=st.integers(16, 1024))
@settings(max_examples=50, deadline=None)
def test_split_grid_covers_the_frame_within_limits(h, w, mh, mw):
  pieces = inner.split_grid(h, w, mh, mw, mh * mw)
  cover = np.zeros((h, w), int)
  for y0, y1, x0, x1 in pieces:
    assert 0 < y1 - y0 <= mh and 0 < x1 - x0 <= mw
    cover[y0:y1, x0:x1] += 1
  assert (cover == 1).all()


def test_qp_out_of_range_raises_inner_codec_error():
  x = smooth_gray10(32, 32)
  with pytest.raises(errors.InnerCodecError, match=r"hevc \(QP 52\)"):
    inner.HEVC().encode(x, 52)
  with pytest.raises(errors.InnerCodecError, match=r"av1 \(QP 0\)"):
    inner.AV1().encode(x, 0)
  with pytest.raises(errors.InnerCodecError, match="integer"):
    inner.HEVC().encode(x, 22.5)


def test_encoder_refusal_raises_inner_codec_error():
  x = smooth_gray10(32, 32)
  with pytest.raises(errors.InnerCodecError, match=r"hevc \(QP 22\).*libx265 refused"):
    inner.HEVC(extra_params="ctu=7").encode(x, 22)  # x265 rejects the value
  with pytest.raises(errors.InnerCodecError, match=r"av1 \(QP 22\)"):
    inner.AV1(preset=99).encode(x, 22)


def test_undecodable_streams_raise_inner_codec_error():
  c = inner.HEVC()
  with pytest.raises(errors.InnerCodecError, match="hevc"):
    c.decode(b"", (32, 32))
  with pytest.raises(errors.InnerCodecError, match=r"hevc \(QP 7\)"):
    c.decode(bytes(range(256)) * 4, (32, 32), qp=7)
  data = c.encode(smooth_gray10(32, 32), 30)
  with pytest.raises(errors.InnerCodecError, match="decoded frame is 32x32, expected 64x64"):
    c.decode(data, (64, 64))
  with pytest.raises(errors.InnerCodecError, match="av1"):
    inner.AV1().decode(b"\x12\x00garbage" * 8, (32, 32))


def test_bad_frames_raise_invalid_input():
  c = inner.HEVC()
  with pytest.raises(errors.InvalidInputError, match="uint16"):
    c.encode(np.zeros((16, 16), np.float32), 22)
  with pytest.raises(errors.InvalidInputError, match="1023"):
    c.encode(np.full((16, 16), 1024, np.uint16), 22)
  with pytest.raises(errors.InvalidInputError):
    c.encode(np.zeros((16, 16, 4), np.uint8), 22)


def test_vvc_without_its_encoder_raises_naming_codec_qp_and_binary():
  c = inner.VVC(encoder="hssc-no-such-vvencapp")
  assert "hssc-no-such-vvencapp" in c.missing()
  with pytest.raises(errors.InnerCodecError, match=r"vvc \(QP 32\).*hssc-no-such-vvencapp"):
    c.encode(smooth_gray10(32, 32), 32)


def test_vvc_round_trip_when_vvenc_is_installed():
  reason = inner.VVC().missing()
  if reason:
    pytest.skip(reason)
  x = smooth_gray10(40, 72)
  sizes = []
  for decoder in ("auto", "pyav"):
    c = inner.VVC(decoder=decoder, preset="faster")
    for qp in (12, 32, 50):
      data = c.encode(x, qp)
      y = c.decode(data, x.shape, qp=qp)
      assert y.shape == x.shape
      if qp == 12:
        assert np.abs(y.astype(int) - x).mean() < 4.0
      sizes.append(len(data))
  assert sizes[0] > sizes[1] > sizes[2], sizes
  split = inner.VVC(max_frame=(32, 48), preset="faster")
  assert split.decode(split.encode(x, 20), x.shape).shape == x.shape
  with pytest.raises(errors.InnerCodecError, match=r"vvc \(QP 64\)"):
    split.encode(x, 64)


def test_vvc_skip_reason_is_clear():
  reason = inner.VVC().missing()
  if shutil.which("vvencapp") is None:
    assert reason and "vvencapp" in reason and "vvc" in reason
  else:
    assert reason is None or "vvdec" in reason


@pytest.mark.parametrize("codec", [inner.HEVC(preset="fast", lossless=True),
                                   inner.AV1(preset=10, extra_params="tune=1"),
                                   inner.VVC(encoder="/opt/vvencapp", extra_args=("-t", "2"))])
def test_config_round_trip(codec):
  assert inner.from_config(codec.config()) == codec


def test_unknown_codec_or_option_is_a_config_error():
  with pytest.raises(errors.ConfigError, match="unknown inner codec"):
    inner.get("h264")
  with pytest.raises(errors.ConfigError, match="hevc"):
    inner.get("hevc", crf=20)
