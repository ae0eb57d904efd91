"""Tiling: the reference YOLOv5n layout, any pyramid, and the exact inverse."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hssc_jax import errors
from hssc_jax.codecs import tiling

YOLO = {"p3": (80, 80, 64), "p4": (40, 40, 128), "p5": (20, 20, 256)}


def random_maps(shapes, seed=0, dtype=np.uint16):
  rng = np.random.default_rng(seed)
  return {n: rng.integers(0, 1024, s).astype(dtype) for n, s in shapes.items()}


@pytest.mark.parametrize("c,grid", [(64, (8, 8)), (128, (8, 16)), (256, (16, 16)), (96, (8, 12)),
                                    (1, (1, 1)), (2, (1, 2)), (7, (3, 3)), (3, (2, 2)),
                                    (18, (3, 6)), (1024, (32, 32))])
def test_grid_shape(c, grid):
  assert tiling.grid_shape(c) == grid


@given(st.integers(1, 5000))
def test_grid_shape_holds_every_channel_and_is_near_square(c):
  rows, cols = tiling.grid_shape(c)
  assert rows * cols >= c and rows <= cols
  assert rows * cols - c < cols                    # no empty row
  assert cols <= 2 * rows


def test_yolov5n_reference_layout():
  layout = tiling.make_layout(YOLO)
  assert layout.frame_shape == (1280, 640)          # 640 wide, 1280 high
  p3, p4, p5 = layout.bands
  assert (p3.rows, p3.cols, p3.top) == (8, 8, 0)
  assert (p4.rows, p4.cols, p4.top) == (8, 16, 640)
  assert (p5.rows, p5.cols, p5.top) == (16, 16, 960)
  assert p5.band_width == 320


def test_tile_places_channels_and_fill_as_the_reference():
  maps = random_maps(YOLO)
  frame = tiling.tile(tiling.make_layout(YOLO), maps, fill=9)
  assert frame.shape == (1280, 640) and frame.dtype == np.uint16
  # P3 channel 10 sits in row 1, column 2 of the 8x8 grid of 80x80 maps.
  np.testing.assert_array_equal(frame[80:160, 160:240], maps["p3"][..., 10])
  # P4 channel 17: row 1, column 1 of 8x16 maps of 40x40 from row 640.
  np.testing.assert_array_equal(frame[680:720, 40:80], maps["p4"][..., 17])
  # P5 channel 255: the last cell of the 16x16 grid; the right half of its band is fill.
  np.testing.assert_array_equal(frame[1260:1280, 300:320], maps["p5"][..., 255])
  assert (frame[960:, 320:] == 9).all()


def test_untile_inverts_tile_exactly():
  layout = tiling.make_layout(YOLO)
  maps = random_maps(YOLO, 1)
  out = tiling.untile(layout, tiling.tile(layout, maps, 0))
  assert list(out) == list(YOLO)
  for n in maps:
    np.testing.assert_array_equal(out[n], maps[n])


def test_fpn_pyramid_round_trip():
  shapes = {"p2": (20, 28, 256), "p3": (10, 14, 256), "p4": (5, 7, 256), "p5": (3, 4, 256)}
  layout = tiling.make_layout(shapes)
  assert layout.frame_shape == (16 * (20 + 10 + 5 + 3), 16 * 28)
  maps = random_maps(shapes, 2)
  out = tiling.untile(layout, tiling.tile(layout, maps, 0))
  for n in maps:
    np.testing.assert_array_equal(out[n], maps[n])


@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 40)), min_size=1,
                max_size=4), st.integers(0, 2**31))
@settings(max_examples=40, deadline=None)
def test_round_trip_any_pyramid(dims, seed):
  shapes = {f"p{i}": d for i, d in enumerate(dims)}
  layout = tiling.make_layout(shapes)
  maps = {n: m.astype(np.float32) for n, m in random_maps(shapes, seed).items()}
  frame = tiling.tile(layout, maps, fill=-1.0)
  cells = sum(b.channels * b.height * b.width for b in layout.bands)
  assert (frame != -1.0).sum() == sum((m != -1.0).sum() for m in maps.values()) <= cells
  out = tiling.untile(layout, frame)
  for n in maps:
    np.testing.assert_array_equal(out[n], maps[n])


def test_grid_override_and_errors():
  layout = tiling.make_layout({"p5": (20, 20, 256)}, grids={"p5": (8, 32)})
  assert layout.frame_shape == (160, 640)
  with pytest.raises(errors.ConfigError, match="cannot hold"):
    tiling.make_layout({"p5": (20, 20, 256)}, grids={"p5": (8, 8)})
  with pytest.raises(errors.ConfigError, match="not in"):
    tiling.make_layout({"p5": (20, 20, 256)}, grids={"p9": (8, 32)})
  layout = tiling.make_layout(YOLO)
  with pytest.raises(errors.InvalidInputError, match="p4"):
    tiling.tile(layout, {**random_maps(YOLO), "p4": np.zeros((40, 40, 127), np.uint16)})
  with pytest.raises(errors.InvalidInputError, match="frame has shape"):
    tiling.untile(layout, np.zeros((1280, 641), np.uint16))
