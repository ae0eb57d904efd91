"""Tiling a feature pyramid into one gray frame for a traditional codec, and back.

Each scale's C channel maps (H x W) are laid out as a rows x cols grid (rows * cols >= C, channel k
in raster cell k); the scales' bands are stacked vertically in pyramid order, left-aligned; the
frame is as wide as the widest band. Cells and band parts without a channel hold a fill value.

Grid rule (`grid_shape`): the most square exact factorisation rows x cols = C with
rows <= cols <= 2 rows; when C has none (e.g. a prime), ceil(sqrt(C)) columns and as many rows as
needed. For the MPEG-style YOLOv5n anchor this gives the reference layout, a 640 x 1280 (W x H)
frame:

  rows    0..639   P3: 64 maps of 80x80 as  8 x  8  (640 wide)
  rows  640..959   P4: 128 maps of 40x40 as  8 x 16  (640 wide)
  rows  960..1279  P5: 256 maps of 20x20 as 16 x 16  (320 wide, then 320 of fill)

and for FPN P2-P5 with 256 channels each, four 16 x 16 bands. `untile` inverts `tile` exactly.
"""

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from hssc_jax import errors


def grid_shape(channels: int) -> tuple[int, int]:
  """(rows, cols) of the near-square grid for `channels` maps (see the module docstring)."""
  c = int(channels)
  if c < 1:
    raise errors.InvalidInputError(f"cannot tile {c} channels")
  for rows in range(math.isqrt(c), 0, -1):
    if c % rows == 0:
      cols = c // rows
      if cols <= 2 * rows:
        return rows, cols
      break
  cols = math.isqrt(c - 1) + 1
  return -(-c // cols), cols


@dataclasses.dataclass(frozen=True)
class Band:
  """Where one scale sits in the frame: maps of height x width, a rows x cols grid from row `top`."""

  name: str
  channels: int
  height: int
  width: int
  rows: int
  cols: int
  top: int

  @property
  def band_height(self) -> int:
    return self.rows * self.height

  @property
  def band_width(self) -> int:
    return self.cols * self.width


@dataclasses.dataclass(frozen=True)
class Layout:
  """The frame layout of a whole pyramid: bands in stacking order and the frame size."""

  bands: tuple[Band, ...]
  frame_height: int
  frame_width: int

  @property
  def frame_shape(self) -> tuple[int, int]:
    return self.frame_height, self.frame_width

  def band(self, name: str) -> Band:
    for b in self.bands:
      if b.name == name:
        return b
    raise KeyError(name)


def make_layout(shapes: Mapping[str, Sequence[int]],
                grids: Mapping[str, Sequence[int]] | None = None) -> Layout:
  """Layout for maps of `shapes` {name: (H, W, C)} stacked in the mapping's order.

  `grids` optionally fixes (rows, cols) per scale (rows * cols >= C), instead of `grid_shape`.
  """
  grids = dict(grids or {})
  unknown = sorted(set(grids) - set(shapes))
  if unknown:
    raise errors.ConfigError(f"grids given for scales {unknown} that are not in {list(shapes)}")
  bands, top = [], 0
  for name, shape in shapes.items():
    if len(shape) != 3 or any(int(d) < 1 for d in shape):
      raise errors.InvalidInputError(f"scale {name!r} must have shape (H, W, C) > 0, got {shape}")
    h, w, c = (int(d) for d in shape)
    if name in grids:
      rows, cols = (int(v) for v in grids[name])
      if rows < 1 or cols < 1 or rows * cols < c:
        raise errors.ConfigError(f"grid {rows}x{cols} of scale {name!r} cannot hold {c} channels")
    else:
      rows, cols = grid_shape(c)
    bands.append(Band(name, c, h, w, rows, cols, top))
    top += rows * h
  if not bands:
    raise errors.InvalidInputError("cannot tile an empty pyramid")
  return Layout(tuple(bands), top, max(b.band_width for b in bands))


def tile(layout: Layout, maps: Mapping[str, np.ndarray], fill: Any = 0) -> np.ndarray:
  """{name: (H, W, C)} -> (frame_height, frame_width) frame of the maps' dtype."""
  dtype = np.result_type(*[np.asarray(m).dtype for m in maps.values()])
  frame = np.full(layout.frame_shape, fill, dtype)
  for b in layout.bands:
    m = np.asarray(maps[b.name])
    if m.shape != (b.height, b.width, b.channels):
      raise errors.InvalidInputError(
          f"scale {b.name!r} has shape {m.shape}, layout expects {(b.height, b.width, b.channels)}")
    cells = b.rows * b.cols
    if cells > b.channels:
      m = np.concatenate([m, np.full((b.height, b.width, cells - b.channels), fill, dtype)], -1)
    # (H, W, rows*cols) -> (rows, H, cols, W): cell (r, c) holds channel r * cols + c.
    grid = m.reshape(b.height, b.width, b.rows, b.cols).transpose(2, 0, 3, 1)
    frame[b.top:b.top + b.band_height, :b.band_width] = grid.reshape(b.band_height, b.band_width)
  return frame


def untile(layout: Layout, frame: np.ndarray) -> dict[str, np.ndarray]:
  """The inverse of `tile`: frame -> {name: (H, W, C)}."""
  frame = np.asarray(frame)
  if frame.shape != layout.frame_shape:
    raise errors.InvalidInputError(
        f"frame has shape {frame.shape}, layout expects {layout.frame_shape}")
  out = {}
  for b in layout.bands:
    band = frame[b.top:b.top + b.band_height, :b.band_width]
    grid = band.reshape(b.rows, b.height, b.cols, b.width).transpose(1, 3, 0, 2)
    out[b.name] = np.ascontiguousarray(
        grid.reshape(b.height, b.width, b.rows * b.cols)[..., :b.channels])
  return out
