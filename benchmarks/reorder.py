"""HSSC channel reordering: bits at equal QP with and without reordering, on real YOLOv5n features.

  python benchmarks/reorder.py [--qps 22 27 32 37 42] [--local_weight 1.0] [--limit N]
                               [--out benchmarks/reorder.md]
  python benchmarks/reorder.py --compact hssc_paper --qps 47 37 27 --out benchmarks/reorder_compact.md

With `--compact <zoo model>` the tiled maps are that HSSC paper-form model's compact
representation (`hssc_jax.codecs.hssc_paper`: SFTNet of the normalized pyramid, one (h, w, C) map
per image) instead of the raw pyramid, with the model's fitted 10-bit range.

Features: YOLOv5n P3-P5 of `shared/data/coco-mini/val2017` through the Flax port
(`hssc_jax.detectors.yolov5`: `preprocess` + `part1`); the 10-bit range, and the fixed channel
orders, are fitted on the features of `shared/data/coco-mini/train2017`. The HEVC feature anchor
(libx265 `qp=NN:keyint=1:ipratio=1:info=0`) codes every image with each order:

  none                  the plain anchor (channel k in raster cell k)
  global / per_image    greedy chain + 2-opt on the image's own whole-map CCC, serpentine placement;
                        the permutations are sent (stream "perm", 338 bytes an image)
  global+local / ...    then pairwise swaps maximising whole-map + tile-border CCC of grid neighbours
  ... / fixed           the same, fitted once on the training features; nothing is sent

Reported: pooled bpp (sum of stream bits, "perm" included, / sum of original pixels), its change
against "none" at the same QP, the frame-only bpp, the mean squared error of the decoded 10-bit
codes (distortion at equal QP), and the encoder time per image (ordering included).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor import machine, REPO, SHARED, yolo_features  # pylint: disable=g-import-not-at-top,wrong-import-position

from hssc_jax import bitstream  # pylint: disable=g-import-not-at-top,wrong-import-position
from hssc_jax.codecs import anchor as anchor_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from hssc_jax.codecs import FeatureAnchor  # pylint: disable=g-import-not-at-top,wrong-import-position


def compact_maps(name: str, val: list, train: list) -> tuple[list, list, tuple[float, float]]:
  """The pyramids of `val` and `train` replaced by zoo model `name`'s compact representations."""
  from hssc_jax import zoo  # pylint: disable=g-import-not-at-top
  model = zoo.load(name)
  codec, params = model.codec, model.params
  as_compact = lambda items: [(n, img, {"compact": codec.compact(params, codec.prepare(f))[0]})
                              for n, img, f in items]
  return as_compact(val), as_compact(train), tuple(codec.compact_range)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--qps", nargs="+", type=int, default=[22, 27, 32, 37, 42])
  p.add_argument("--local_weight", type=float, default=1.0)
  p.add_argument("--limit", type=int, default=None, help="images per folder (default: all)")
  p.add_argument("--out", default=str(REPO / "benchmarks" / "reorder.md"))
  p.add_argument("--compact", default="", help="an HSSC paper-form zoo model: tile its compact "
                 "representation instead of the pyramid")
  args = p.parse_args()

  val, why = yolo_features([SHARED / "data" / "coco-mini" / "val2017"], args.limit)
  if val is None:
    sys.exit(f"reorder benchmark needs real YOLOv5n features: {why}")
  train, _ = yolo_features([SHARED / "data" / "coco-mini" / "train2017"], args.limit)
  what = "real YOLOv5n P3-P5 (Flax port)"
  if args.compact:
    val, train, value_range = compact_maps(args.compact, val, train)
    what = f"the compact representation of zoo model {args.compact!r} (SFTNet of YOLOv5n P3-P5)"
  train_feats = [f for _, _, f in train]
  if not args.compact:
    value_range = anchor_lib.fit_range(train_feats)
  anchors = {"none": FeatureAnchor(value_range)}
  fit_s = {}
  for mode in ("global", "global+local"):
    anchors[f"{mode} / per_image"] = FeatureAnchor(value_range, reorder=mode,
                                                   local_weight=args.local_weight)
    t0 = time.perf_counter()
    anchors[f"{mode} / fixed"] = FeatureAnchor.fit(train_feats, reorder=mode, reorder_fit="fixed",
                                                   local_weight=args.local_weight)
    fit_s[mode] = time.perf_counter() - t0
  print(f"range {value_range}; fixed orders fitted in {fit_s}", flush=True)

  rows = []
  for qp in args.qps:
    base_bpp = None
    for name, anchor in anchors.items():
      bits = frame_bits = pixels = 0
      sq, n_codes, enc = 0.0, 0, []
      for _, img, feats in val:
        h, w = img.shape[:2]
        t = time.perf_counter()
        data = anchor.compress(feats, (h, w), qp)
        enc.append(time.perf_counter() - t)
        out = anchor.decompress(data)
        c = bitstream.unpack(data)
        bits += sum(c.stream_bits.values())
        frame_bits += c.stream_bits["frame"]
        pixels += h * w
        for k, x in feats.items():
          d = (anchor_lib.quantize(out[k], value_range).astype(np.float64)
               - anchor_lib.quantize(x, value_range))
          sq += float((d ** 2).sum())
          n_codes += d.size
      bpp = bits / pixels
      if name == "none":
        base_bpp = bpp
      rows.append(dict(qp=qp, name=name, bpp=bpp, frame_bpp=frame_bits / pixels,
                       change=100 * (bpp / base_bpp - 1), mse=sq / n_codes,
                       enc_ms=1e3 * statistics.mean(enc)))
      print(rows[-1], flush=True)

  lines = [
      f"## HSSC channel reordering: bits at equal QP (HEVC, {what.split(' (')[0]})", "",
      f"Machine: {machine()}. Command: `python benchmarks/{Path(__file__).name} "
      f"{' '.join(sys.argv[1:])}`.", "",
      f"Maps: {what} of {len(val)} coco-mini val2017 images; range "
      f"({value_range[0]:.5f}, {value_range[1]:.5f}) and fixed orders fitted on {len(train)} "
      f"coco-mini train2017 images (fit time: "
      + ", ".join(f"{k} {v:.1f} s" for k, v in fit_s.items()) + f"); local weight "
      f"{args.local_weight}. bpp = sum of stream bits (the permutations included) / sum of "
      "original pixels; MSE of the decoded 10-bit codes.", "",
      "| QP | order | bpp | vs none | frame-only bpp | MSE (codes^2) | encode ms/image |",
      "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['qp']} | {r['name']} | {r['bpp']:.5f} | {r['change']:+.2f}% | "
                 f"{r['frame_bpp']:.5f} | {r['mse']:.2f} | {r['enc_ms']:.0f} |")
  if len(args.qps) >= 4:  # BD-rate over the QPs, quality = PSNR of the decoded 10-bit codes
    from hssc_jax.metrics import rd  # pylint: disable=g-import-not-at-top
    curve = lambda name: (np.array([r["bpp"] for r in rows if r["name"] == name]),
                          np.array([10 * np.log10(1023 ** 2 / r["mse"]) for r in rows
                                    if r["name"] == name]))
    lines += ["", "BD-rate against no reordering (quality: PSNR of the decoded 10-bit codes): "
              + ", ".join(f"{name} {rd.bd_metrics(curve('none'), curve(name))['bd_rate']:+.2f}%"
                          for name in anchors if name != "none") + "."]
  if args.compact:  # the training proxy's noise (P1 of hssc_paper) beside the real error above
    from hssc_jax.codecs import hssc_paper  # pylint: disable=g-import-not-at-top
    lines += ["", "Training proxy (hssc_paper, P1): noise variance s(QP)^2 in codes^2 "
              + ", ".join(f"QP {qp}: {hssc_paper.default_noise(qp) ** 2:.1f}" for qp in args.qps)
              + " (the MSE column is the real codec's error at that QP on these held-out images)."]
  Path(args.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
