"""Feature and image anchors through the container: lossless bound, rate, checks, reordering."""

import numpy as np
import pytest

from hssc_jax import bitstream
from hssc_jax import errors
from hssc_jax.codecs import anchor as anchor_lib
from hssc_jax.codecs import FeatureAnchor
from hssc_jax.codecs import ImageAnchor
from hssc_jax.codecs import inner
from hssc_jax.codecs import reorder
from hssc_jax.codecs import tiling

SHAPES = {"p3": (16, 16, 16), "p4": (8, 8, 32), "p5": (4, 4, 64)}
RANGE = (-0.27846, 8.0)
IMAGE = (60, 75)


def pyramid(seed=0, batch=True, shapes=SHAPES):
  """SiLU-like maps: smooth per-channel structure, a floor at -0.278, a long positive tail."""
  rng = np.random.default_rng(seed)
  out = {}
  for n, (h, w, c) in shapes.items():
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    freq = rng.uniform(1, 4, (2, c))
    pre = 2 * np.sin(freq[0] * 3 * x[..., None] + freq[1] * 2 * y[..., None]) + rng.normal(
        0, 0.3, (h, w, c)) + rng.normal(0, 1, c)
    m = (pre / (1 + np.exp(-pre))).astype(np.float32)
    out[n] = m[None] if batch else m
  return out


def test_quantize_is_the_reference_formula_and_fill_is_the_code_of_zero():
  x = np.linspace(-1, 9, 1001, dtype=np.float32)
  lo, hi = RANGE
  ref = np.rint(np.clip((x - lo) / (hi - lo), 0, 1) * 1023)
  np.testing.assert_array_equal(anchor_lib.quantize(x, RANGE), ref)
  a = FeatureAnchor(RANGE)
  assert a.fill_code == int(np.rint(-lo / (hi - lo) * 1023))
  assert FeatureAnchor((-0.27846, 32.37097)).fill_code == 9


def test_lossless_path_error_is_at_most_half_a_step():
  a = FeatureAnchor(RANGE, codec=inner.HEVC(lossless=True))
  feats = pyramid()
  out = a.decompress(a.compress(feats, IMAGE, 22))
  half = (RANGE[1] - RANGE[0]) / 1023 / 2
  for n, x in feats.items():
    assert out[n].shape == x.shape and out[n].dtype == np.float32
    err = np.abs(out[n] - np.clip(x, *RANGE))
    assert err.max() <= half * (1 + 1e-5), (n, err.max() / half)
    np.testing.assert_array_equal(anchor_lib.quantize(out[n], RANGE), anchor_lib.quantize(x, RANGE))


def test_values_outside_the_range_are_clipped():
  a = FeatureAnchor(RANGE, codec=inner.HEVC(lossless=True))
  feats = pyramid()
  feats["p3"][0, 0, 0, 0], feats["p4"][0, 1, 1, 1] = 100.0, -5.0
  out = a.decompress(a.compress(feats, IMAGE, 22))
  assert out["p3"][0, 0, 0, 0] == pytest.approx(RANGE[1], abs=1e-5)
  assert out["p4"][0, 1, 1, 1] == pytest.approx(RANGE[0], abs=1e-5)


def test_bytes_fall_as_qp_rises():
  a = FeatureAnchor(RANGE)
  feats = pyramid(1)
  sizes = [anchor_lib.rate(a.compress(feats, IMAGE, qp))["stream_bits"] for qp in (22, 27, 32, 37, 42)]
  assert all(s > t for s, t in zip(sizes, sizes[1:])), sizes


def test_rate_counts_streams_and_the_container():
  a = FeatureAnchor(RANGE)
  data = a.compress(pyramid(), IMAGE, 32)
  r = anchor_lib.rate(data)
  frame = bitstream.unpack(data).streams["frame"]
  assert r["streams"] == {"frame": 8 * len(frame)} and r["stream_bits"] == 8 * len(frame)
  assert r["container_bits"] == 8 * len(data)
  assert r["overhead_bits"] == 8 * 166          # the overhead stated in the anchor's docstring
  assert r["stream_bpp"] == pytest.approx(8 * len(frame) / (IMAGE[0] * IMAGE[1]))


def test_hwc_input_comes_back_hwc():
  a = FeatureAnchor(RANGE)
  out = a.decompress(a.compress(pyramid(batch=False), IMAGE, 27))
  assert {n: o.shape for n, o in out.items()} == SHAPES


def test_container_checks_raise_their_specific_errors():
  a = FeatureAnchor(RANGE)
  data = a.compress(pyramid(), IMAGE, 32)
  with pytest.raises(errors.TruncatedBitstreamError):
    a.decompress(data[:-10])
  with pytest.raises(errors.ModelMismatchError, match="other parameters"):
    FeatureAnchor((RANGE[0], RANGE[1] + 1.0)).decompress(data)
  with pytest.raises(errors.ModelMismatchError, match="feature_anchor/hevc"):
    FeatureAnchor(RANGE, codec=inner.AV1()).decompress(data)
  with pytest.raises(errors.ModelMismatchError):
    FeatureAnchor(RANGE, reorder="global").decompress(data)
  bad = bytearray(data)
  bad[len(bad) // 2] ^= 0x40
  with pytest.raises(errors.CorruptBitstreamError, match="checksum"):
    a.decompress(bytes(bad))
  with pytest.raises(errors.EmptyBitstreamError):
    a.decompress(b"")
  with pytest.raises(errors.ModelMismatchError):
    a.decompress(ImageAnchor().compress(np.zeros((16, 16, 3), np.uint8), 30))


def test_bad_features_raise_invalid_input():
  a = FeatureAnchor(RANGE)
  for bad_value in (np.nan, np.inf):
    feats = pyramid()
    feats["p4"][0, 2, 2, 2] = bad_value
    with pytest.raises(errors.InvalidInputError, match="p4.*NaN/inf"):
      a.compress(feats, IMAGE, 32)
  feats = pyramid()
  feats["p5"] = np.zeros((2, 4, 4, 64), np.float32)
  with pytest.raises(errors.InvalidInputError, match="p5"):
    a.compress(feats, IMAGE, 32)
  feats["p5"] = np.zeros((4, 64), np.float32)
  with pytest.raises(errors.InvalidInputError, match="p5"):
    a.compress(feats, IMAGE, 32)
  with pytest.raises(errors.InvalidInputError, match="expects"):
    FeatureAnchor(RANGE, scales=("p3", "p4", "p5")).compress({"p3": pyramid()["p3"]}, IMAGE, 32)
  with pytest.raises(errors.InvalidInputError):
    a.compress({}, IMAGE, 32)


def test_inner_codec_failure_surfaces_as_inner_codec_error():
  with pytest.raises(errors.InnerCodecError, match=r"hevc \(QP 60\)"):
    FeatureAnchor(RANGE).compress(pyramid(), IMAGE, 60)


def test_config_errors():
  with pytest.raises(errors.ConfigError, match="max > min"):
    FeatureAnchor((1.0, 1.0))
  with pytest.raises(errors.ConfigError, match="reorder"):
    FeatureAnchor(RANGE, reorder="local")
  with pytest.raises(errors.ConfigError, match="permutations"):
    FeatureAnchor(RANGE, reorder="global", reorder_fit="fixed")
  with pytest.raises(errors.ConfigError, match="bit_depth"):
    FeatureAnchor(RANGE, bit_depth=12)


def test_fit_range_and_json_round_trip(tmp_path):
  pyrs = [pyramid(s) for s in range(3)]
  lo, hi = anchor_lib.fit_range(pyrs)
  assert lo == min(float(m.min()) for p in pyrs for m in p.values())
  assert hi == max(float(m.max()) for p in pyrs for m in p.values())
  a = FeatureAnchor.fit(pyrs, codec=inner.HEVC(preset="fast"))
  assert a.value_range == (lo, hi)
  a.save(tmp_path / "anchor.json")
  b = FeatureAnchor.load(tmp_path / "anchor.json")
  assert b == a and b.fingerprint() == a.fingerprint()
  data = a.compress(pyrs[0], IMAGE, 27)
  for n, x in b.decompress(data).items():
    np.testing.assert_array_equal(x, a.decompress(data)[n])
  (tmp_path / "bad.json").write_text('{"type": "feature_anchor", "version": 1, "value_range": '
                                     '[0, 1], "codec": {"name": "hevc"}, "qp": 3}')
  with pytest.raises(errors.ConfigError, match="unknown"):
    FeatureAnchor.load(tmp_path / "bad.json")


@pytest.mark.parametrize("mode", ["global", "global+local"])
def test_per_image_reordering_is_exactly_undone(mode):
  feats = pyramid(2)
  plain = FeatureAnchor(RANGE, codec=inner.HEVC(lossless=True))
  reo = FeatureAnchor(RANGE, codec=inner.HEVC(lossless=True), reorder=mode)
  data = reo.compress(feats, IMAGE, 22)
  c = bitstream.unpack(data)
  assert len(c.streams["perm"]) == sum(reorder.permutation_bytes(s[2]) for s in SHAPES.values())
  assert c.metadata["reorder"] == mode
  expected = plain.decompress(plain.compress(feats, IMAGE, 22))
  got = reo.decompress(data)
  for n in SHAPES:
    np.testing.assert_array_equal(got[n], expected[n])
  # The frame really is in another channel order.
  frame_plain = bitstream.unpack(plain.compress(feats, IMAGE, 22)).streams["frame"]
  assert c.streams["frame"] != frame_plain


def test_fixed_reordering_is_fitted_saved_and_sends_nothing(tmp_path):
  train = [pyramid(s) for s in range(4)]
  a = FeatureAnchor.fit(train, codec=inner.HEVC(lossless=True), reorder="global+local",
                        reorder_fit="fixed")
  assert sorted(a.permutations) == ["p3", "p4", "p5"]
  a.save(tmp_path / "a.json")
  b = FeatureAnchor.load(tmp_path / "a.json")
  assert b.fingerprint() == a.fingerprint()
  data = a.compress(train[0], IMAGE, 22)
  assert list(bitstream.unpack(data).streams) == ["frame"]
  plain = FeatureAnchor(a.value_range, codec=inner.HEVC(lossless=True))
  expected = plain.decompress(plain.compress(train[0], IMAGE, 22))
  for n, x in b.decompress(data).items():
    np.testing.assert_array_equal(x, expected[n])
  other = dict(a.permutations, p3=tuple(reversed(a.permutations["p3"])))
  with pytest.raises(errors.ModelMismatchError):
    FeatureAnchor(a.value_range, codec=inner.HEVC(lossless=True), reorder="global+local",
                  reorder_fit="fixed", permutations=other).decompress(data)


def test_av1_anchor_round_trip_is_close_at_high_quality():
  a = FeatureAnchor(RANGE, codec=inner.AV1())
  feats = pyramid(3)
  out = a.decompress(a.compress(feats, IMAGE, 4))
  step = (RANGE[1] - RANGE[0]) / 1023
  for n, x in feats.items():
    assert np.abs(out[n] - x).mean() < 2 * step


def test_eight_bit_anchor_and_custom_grids():
  a = FeatureAnchor(RANGE, codec=inner.HEVC(lossless=True), bit_depth=8, grids={"p5": (4, 16)})
  feats = pyramid(4)
  assert a.layout({n: s for n, s in SHAPES.items()}).band("p5").cols == 16
  out = a.decompress(a.compress(feats, IMAGE, 22))
  half = (RANGE[1] - RANGE[0]) / 255 / 2
  for n, x in feats.items():
    assert np.abs(out[n] - np.clip(x, *RANGE)).max() <= half * (1 + 1e-5)


def test_yolov5n_shapes_make_the_reference_frame():
  shapes = {"p3": (80, 80, 64), "p4": (40, 40, 128), "p5": (20, 20, 256)}
  assert FeatureAnchor(RANGE).layout(shapes) == tiling.make_layout(shapes)
  assert tiling.make_layout(shapes).frame_shape == (1280, 640)


def smooth_image(h, w):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([128 + 100 * np.sin(x / 7), 128 + 100 * np.cos(y / 5), (x + y) % 256],
                  -1).astype(np.uint8)


def test_image_anchor_round_trip_with_odd_size():
  img = smooth_image(45, 67)
  ia = ImageAnchor()
  data = ia.compress(img, 17)
  out = ia.decompress(data)
  assert out.shape == img.shape and out.dtype == np.uint8
  assert np.abs(out.astype(int) - img).mean() < 5.0
  c = bitstream.unpack(data)
  assert c.codec_id == "image_anchor/hevc" and c.image_size == (45, 67)
  sizes = [len(ia.compress(img, qp)) for qp in (17, 32, 47)]
  assert sizes[0] > sizes[1] > sizes[2]


def test_image_anchor_errors():
  ia = ImageAnchor()
  with pytest.raises(errors.InvalidInputError, match="uint8"):
    ia.compress(np.zeros((16, 16, 3), np.float32), 22)
  with pytest.raises(errors.InvalidInputError):
    ia.compress(np.zeros((16, 16), np.uint8), 22)
  data = ia.compress(smooth_image(32, 32), 22)
  with pytest.raises(errors.ModelMismatchError):
    ImageAnchor(codec=inner.AV1()).decompress(data)
  with pytest.raises(errors.TruncatedBitstreamError):
    ia.decompress(data[:20])
  av1 = ImageAnchor(codec=inner.AV1())
  assert av1.decompress(av1.compress(smooth_image(33, 35), 20)).shape == (33, 35, 3)
