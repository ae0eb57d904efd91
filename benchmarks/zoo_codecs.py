"""Encode and decode time per 640x640 image of every zoo model, next to the HEVC feature anchor.

  python benchmarks/zoo_codecs.py [--models base lmfc ...] [--quality -1] [--qp 37] [--limit 16]
                                  [--out benchmarks/zoo_codecs.md]

Features: YOLOv5n P3/P4/P5 (square 640 letterbox) of the first `--limit` images of
`shared/data/coco-mini/val2017`. Each zoo model codes them at `--quality` (-1: the middle
quality), the feature anchor at `--qp`, in the same process, one after the other. Times are the
wall clock of `compress` (normalization, analysis, hyperprior, range coding, container) and
`decompress` per image after one untimed warm-up image (compilation); the table gives the mean and
the median, and the bytes per image.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "benchmarks"):
  if str(p) not in sys.path:
    sys.path.insert(0, str(p))

import anchor as anchor_bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from hssc_jax import zoo  # pylint: disable=g-import-not-at-top,wrong-import-position
from hssc_jax.codecs import FeatureAnchor, inner  # pylint: disable=g-import-not-at-top


def timed(compress, decompress, data) -> dict:
  name, img, feats = data[0]
  decompress(compress(feats, img.shape[:2]))  # warm-up: compilation, templates
  enc, dec, size = [], [], []
  for _, img, feats in data:
    t0 = time.perf_counter()
    blob = compress(feats, img.shape[:2])
    t1 = time.perf_counter()
    decompress(blob)
    t2 = time.perf_counter()
    enc.append(t1 - t0)
    dec.append(t2 - t1)
    size.append(len(blob))
  return dict(enc=1e3 * statistics.mean(enc), enc_med=1e3 * statistics.median(enc),
              dec=1e3 * statistics.mean(dec), dec_med=1e3 * statistics.median(dec),
              bytes=float(np.mean(size)))


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", nargs="*", default=None)
  ap.add_argument("--quality", type=int, default=-1)
  ap.add_argument("--qp", type=int, default=37)
  ap.add_argument("--limit", type=int, default=16)
  ap.add_argument("--out", default=str(REPO / "benchmarks" / "zoo_codecs.md"))
  args = ap.parse_args()
  data, why = anchor_bench.yolo_features([anchor_bench.SHARED / "data" / "coco-mini" / "val2017"],
                                         args.limit)
  if data is None:
    sys.exit(f"cannot run: {why}")
  rows = []
  fa = FeatureAnchor(anchor_bench.REFERENCE_RANGE, codec=inner.get("hevc"))
  r = timed(lambda f, s: fa.compress(f, s, args.qp), fa.decompress, data)
  rows.append((f"feature anchor (HEVC, QP {args.qp})", r))
  for name in args.models or zoo.names():
    q = args.quality
    if q < 0:
      q = max(int(zoo.read_info(zoo.path_of(name))["codec_kwargs"].get("qualities", 1)), 1) // 2
    model = zoo.load(name, q)
    rows.append((f"{name} (quality {q})", timed(model.compress, model.decompress, data)))
  lines = [f"Machine: {anchor_bench.machine()}.",
           f"Command: `python benchmarks/zoo_codecs.py --limit {args.limit} --qp {args.qp}`; "
           f"{len(data)} coco-mini val2017 images, YOLOv5n P3-P5 at 640x640.", "",
           "| codec | encode ms (mean / median) | decode ms (mean / median) | bytes/image |",
           "|---|---:|---:|---:|"]
  for label, r in rows:
    lines.append(f"| {label} | {r['enc']:.1f} / {r['enc_med']:.1f} | {r['dec']:.1f} / "
                 f"{r['dec_med']:.1f} | {r['bytes']:.0f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  Path(args.out).write_text(text)


if __name__ == "__main__":
  main()
