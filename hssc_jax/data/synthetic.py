"""A procedurally generated COCO-format detection set: coloured shapes on textured backgrounds.

For tests and the offline demo (no download, no ../shared). Every image holds 1..`max_objects`
non-overlapping filled polygons of `CATEGORIES` (circle, square, triangle, star) in saturated colours
over a muted texture (random gratings plus smooth noise). Ground truth is exact: each shape is
rasterised alone into a mask, and its box is the tight pixel extent of that mask,

  bbox = [x0, y0, x1 - x0 + 1, y1 - y0 + 1]   (COCO xywh, pixel i covers [i, i + 1)),

its area the mask's pixel count and its segmentation the drawn polygon. Shapes never overlap (their
boxes keep a margin apart), so what is drawn is exactly what is annotated. The folder layout is the
COCO one, readable by `hssc_jax.data.coco_folder`:

```
root/<split>/000000000001.png ...
root/annotations/instances_<split>.json   {"info", "licenses", "images", "annotations", "categories"}
```

Everything is a function of `seed` (numpy PCG64); PNG output is byte-for-byte reproducible.
"""

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("circle", "square", "triangle", "star")
_MARGIN = 2  # pixels kept free between the boxes of two shapes


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A muted RGB texture in [0, 255]: a tinted grey, two oriented gratings and smooth noise.

  The texture varies mostly in luminance (chroma spread stays well under that of the shapes).
  """
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  img = np.broadcast_to(rng.uniform(70, 180) + rng.uniform(-12, 12, size=3), (height, width, 3))
  img = img.copy()
  for _ in range(2):
    theta = rng.uniform(0, np.pi)
    freq = rng.uniform(0.03, 0.25)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
    img += wave[..., None] * rng.uniform(8, 25) * rng.uniform(0.9, 1.1, size=3)
  cells = 8
  noise = rng.normal(0, 16, size=(cells + 1, cells + 1, 1)) + rng.normal(0, 3, (cells + 1, cells + 1, 3))
  gy = yy / max(height - 1, 1) * cells
  gx = xx / max(width - 1, 1) * cells
  y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
  fy, fx = (gy - y0)[..., None], (gx - x0)[..., None]
  img += ((1 - fy) * (1 - fx) * noise[y0, x0] + (1 - fy) * fx * noise[y0, x0 + 1] +
          fy * (1 - fx) * noise[y0 + 1, x0] + fy * fx * noise[y0 + 1, x0 + 1])
  img += rng.normal(0, 3, size=img.shape)  # fine grain
  return np.clip(img, 0, 255)


def _polygon(category: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
  """Vertices of a shape of circumradius r (the square is axis-aligned with half-side r)."""
  if category == "circle":
    ts = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in ts]
  if category == "square":
    return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
  if category == "triangle":
    ts = angle + np.arange(3) * 2 * np.pi / 3
    return [(cx + r * math.cos(t), cy + r * math.sin(t)) for t in ts]
  if category == "star":
    ts = angle + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return [(cx + q * math.cos(t), cy + q * math.sin(t)) for q, t in zip(radii, ts)]
  raise ValueError(f"unknown shape category {category!r}; expected one of {CATEGORIES}")


def _mask(polygon, height: int, width: int) -> np.ndarray:
  canvas = Image.new("L", (width, height), 0)
  ImageDraw.Draw(canvas).polygon(polygon, fill=1)
  return np.asarray(canvas, dtype=bool)


def _shape_colour(rng: np.random.Generator) -> np.ndarray:
  """A saturated colour: one channel high, one low, one anywhere."""
  c = np.empty(3)
  hi, lo, mid = rng.permutation(3)
  c[hi], c[lo], c[mid] = rng.uniform(200, 255), rng.uniform(0, 50), rng.uniform(0, 255)
  return c


def _boxes_overlap(a, b) -> bool:
  return not (a[2] + _MARGIN < b[0] or b[2] + _MARGIN < a[0] or
              a[3] + _MARGIN < b[1] or b[3] + _MARGIN < a[1])


def make_image(rng: np.random.Generator, height: int, width: int, max_objects: int,
               categories: Sequence[str] = CATEGORIES):
  """One image and its objects.

  Returns:
    (uint8 HWC RGB image, list of dicts with `category` (index into `categories`), `bbox` (xywh),
    `area` (pixels) and `polygon` (flat [x0, y0, x1, y1, ...])).
  """
  img = _texture(rng, height, width)
  n = int(rng.integers(1, max_objects + 1))
  short = min(height, width)
  objects, extents = [], []
  for _ in range(20 * n):  # rejection sampling for non-overlapping shapes
    if len(objects) == n:
      break
    cat = int(rng.integers(len(categories)))
    r = rng.uniform(0.07, 0.22) * short
    cx, cy = rng.uniform(r + 1, width - r - 1), rng.uniform(r + 1, height - r - 1)
    polygon = _polygon(categories[cat], cx, cy, r, rng.uniform(0, 2 * np.pi))
    mask = _mask(polygon, height, width)
    ys, xs = np.nonzero(mask)
    if ys.size < 16:
      continue
    extent = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    if any(_boxes_overlap(extent, e) for e in extents):
      continue
    colour = _shape_colour(rng)
    shade = 1.0 - 0.25 * (ys - extent[1]) / max(extent[3] - extent[1], 1)  # vertical shading
    img[ys, xs] = colour * shade[:, None]
    extents.append(extent)
    x0, y0, x1, y1 = extent
    objects.append(dict(category=cat, bbox=[x0, y0, x1 - x0 + 1, y1 - y0 + 1], area=int(ys.size),
                        polygon=[round(float(v), 2) for p in polygon for v in p]))
  return np.round(img).astype(np.uint8), objects


def make_shapes_dataset(root: str | os.PathLike, *, split: str = "train", num_images: int = 32,
                        image_size: int | tuple[int, int] = 128, vary_size: bool = False,
                        max_objects: int = 4, seed: int = 0, image_format: str = "png",
                        category_ids: Sequence[int] | None = None,
                        first_image_id: int = 1) -> Path:
  """Writes `num_images` generated images and their COCO json under `root`; returns the json path.

  Args:
    root: dataset folder (created); other splits already in it are left alone.
    split: split name: images go to `root/<split>/`, annotations to
      `root/annotations/instances_<split>.json`.
    num_images: how many images.
    image_size: (height, width) or one int for square images.
    vary_size: if True, each image's height and width are drawn uniformly in [0.75, 1.25] x size.
    max_objects: each image holds between 1 and this many shapes.
    seed: the whole folder is a deterministic function of the arguments.
    image_format: "png" (lossless, default) or "jpeg" (quality 95).
    category_ids: COCO category id of each of `CATEGORIES` (default 1, 2, 3, 4).
    first_image_id: id of the first image (use distinct ranges for distinct splits).
  """
  if num_images < 1 or max_objects < 1:
    raise ValueError(f"num_images and max_objects must be >= 1, got {num_images}, {max_objects}")
  ext = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}.get(image_format)
  if ext is None:
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
  height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  category_ids = list(range(1, len(CATEGORIES) + 1)) if category_ids is None else list(category_ids)
  if len(category_ids) != len(CATEGORIES) or len(set(category_ids)) != len(category_ids):
    raise ValueError(f"category_ids must be {len(CATEGORIES)} distinct ids, got {category_ids}")
  root = Path(root)
  (root / split).mkdir(parents=True, exist_ok=True)
  (root / "annotations").mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  images, annotations = [], []
  for i in range(num_images):
    image_id = first_image_id + i
    h, w = height, width
    if vary_size:
      h, w = (int(round(s * rng.uniform(0.75, 1.25))) for s in (height, width))
    pixels, objects = make_image(rng, h, w, max_objects)
    file_name = f"{image_id:012d}.{ext}"
    pil = Image.fromarray(pixels)
    if ext == "png":
      pil.save(root / split / file_name, format="PNG")
    else:
      pil.save(root / split / file_name, format="JPEG", quality=95)
    images.append(dict(id=image_id, file_name=file_name, height=h, width=w, license=1))
    for obj in objects:
      annotations.append(dict(
          id=len(annotations) + 1, image_id=image_id, category_id=category_ids[obj["category"]],
          bbox=obj["bbox"], area=obj["area"], iscrowd=0, segmentation=[obj["polygon"]]))
  dataset = dict(
      info=dict(description=f"hssc_jax generated shapes ({split}, seed {seed})", version="1.0",
                year=2024, contributor="hssc_jax.data.synthetic"),
      licenses=[dict(id=1, name="generated, public domain", url="")],
      images=images, annotations=annotations,
      categories=[dict(id=cid, name=name, supercategory="shape")
                  for cid, name in zip(category_ids, CATEGORIES)])
  path = root / "annotations" / f"instances_{split}.json"
  path.write_text(json.dumps(dataset))
  return path
