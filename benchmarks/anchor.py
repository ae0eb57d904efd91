"""Feature anchor (and image anchor): rate and encode/decode time per image, per inner codec and QP.

  python benchmarks/anchor.py [--codecs hevc av1 vvc] [--qps 22 27 32 37 42]
                              [--av1_qps 40 45 50 55 63] [--vvc_preset faster] [--image_anchor]
                              [--limit N] [--out benchmarks/anchor.md]

Features: YOLOv5n (v6.0, square 640 letterbox) P3/P4/P5 of `shared/data/coco-mini/val2017` through
the Flax port (`hssc_jax.detectors.yolov5`: `preprocess` + `part1`); the 10-bit range is fitted on
the 160 train images of coco-mini + coco-tiny (as the reference anchor's). Without the port, the
weights or the shared data, synthetic features of the same shapes (SiLU of smooth random fields)
stand in, and the table says so.

Rate: stream bits (the inner codec's elementary stream, what the reference counts) and container
bits (the whole hssc_jax bitstream), each as pooled bpp = sum of bits / sum of original pixels over
the set (the reference CSVs' convention) and as the mean of per-image bpp. Time: wall clock of
`FeatureAnchor.compress` (quantise, tile, encode, container) and `decompress`, per image.
"""

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from hssc_jax.codecs import anchor as anchor_lib  # pylint: disable=g-import-not-at-top
from hssc_jax.codecs import FeatureAnchor, ImageAnchor, inner  # pylint: disable=g-import-not-at-top

SHARED = Path(os.environ.get("HSSC_SHARED", REPO.parent / "shared")).resolve()
REFERENCE_RANGE = (-0.27846, 32.37097)
YOLO_SHAPES = {"p3": (80, 80, 64), "p4": (40, 40, 128), "p5": (20, 20, 256)}


def machine() -> str:
  try:
    model = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
  except (StopIteration, OSError):
    model = platform.processor() or "unknown CPU"
  return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def images(folder: Path, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  paths = sorted(folder.glob("*.jpg"))[:limit]
  return [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in paths]


def yolo_features(folders: list[Path], limit: int | None = None):
  """[(name, original RGB image, {"p3", "p4", "p5"} 1HWC float32)] from the YOLOv5n port.

  Returns None (with the reason) when the port, the weights or the images are missing.
  """
  try:
    from hssc_jax.detectors import yolov5_weights  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f"the YOLOv5 port is not importable ({e})"
  weights = SHARED / "weights" / "yolov5n-coco-v6.0.pt"
  if not weights.exists() or not all(f.exists() for f in folders):
    return None, f"shared data missing under {SHARED}"
  det, variables = yolov5_weights.load(weights)
  out = []
  for folder in folders:
    for name, img in images(folder, limit):
      batch, _ = det.preprocess([img])
      feats = det.part1(variables, batch)
      out.append((name, img, {k: np.asarray(v, np.float32) for k, v in feats.items()}))
  return out, None


def synthetic_features(n: int, seed: int):
  """SiLU of smooth random fields with YOLOv5n shapes (a stand-in when the port is absent)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    feats = {}
    for name, (h, w, c) in YOLO_SHAPES.items():
      coarse = rng.normal(0, 2, (1, h // 4, w // 4, c)) + rng.normal(0, 1.5, c)
      pre = coarse.repeat(4, 1).repeat(4, 2) + rng.normal(0, 0.5, (1, h, w, c))
      feats[name] = (pre / (1 + np.exp(-pre))).astype(np.float32)
    out.append((f"synthetic{i}", np.zeros((480, 640, 3), np.uint8), feats))
  return out


def reference(name: str) -> dict[int, float]:
  path = SHARED / "reference" / "anchors-coco-mini" / name
  if not path.exists():
    return {}
  return {int(r["qp"]): float(r["bpp"]) for r in csv.DictReader(path.open())}


def measure(codec_obj, anchor, qp, data, image_anchor=False) -> dict:
  stream_bits, container_bits, pixels, per_image, enc, dec = 0, 0, 0, [], [], []
  for _, img, feats in data:
    h, w = img.shape[:2]
    t0 = time.perf_counter()
    bs = anchor.compress(img, qp) if image_anchor else anchor.compress(feats, (h, w), qp)
    t1 = time.perf_counter()
    anchor.decompress(bs)
    t2 = time.perf_counter()
    r = anchor_lib.rate(bs)
    stream_bits += r["stream_bits"]
    container_bits += r["container_bits"]
    pixels += h * w
    per_image.append(r["stream_bpp"])
    enc.append(t1 - t0)
    dec.append(t2 - t1)
  return dict(codec=codec_obj.name, qp=qp, n=len(data), bpp=stream_bits / pixels,
              bpp_mean=float(np.mean(per_image)), bpp_container=container_bits / pixels,
              bytes=stream_bits / 8 / len(data), enc_ms=1e3 * statistics.mean(enc),
              enc_med=1e3 * statistics.median(enc), dec_ms=1e3 * statistics.mean(dec))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--codecs", nargs="+", default=["hevc", "av1"])
  p.add_argument("--qps", nargs="+", type=int, default=[22, 27, 32, 37, 42])
  p.add_argument("--av1_qps", nargs="+", type=int, default=[40, 45, 50, 55, 63])
  p.add_argument("--vvc_preset", default="faster", help="vvenc preset (medium: ~10 s a frame)")
  p.add_argument("--image_anchor", action="store_true", help="also the HEVC image anchor")
  p.add_argument("--image_qps", nargs="+", type=int, default=[22, 27, 32, 37, 42])
  p.add_argument("--limit", type=int, default=None, help="images per folder (default: all)")
  p.add_argument("--out", default=str(REPO / "benchmarks" / "anchor.md"))
  args = p.parse_args()

  val, why = yolo_features([SHARED / "data" / "coco-mini" / "val2017"], args.limit)
  if val is not None:
    train, _ = yolo_features([SHARED / "data" / "coco-mini" / "train2017",
                              SHARED / "data" / "coco-tiny" / "train2017"], args.limit)
    source = (f"real YOLOv5n P3-P5 (Flax port) of {len(val)} coco-mini val2017 images; range "
              f"fitted on {len(train)} coco-mini + coco-tiny train2017 images")
  else:
    val, train = synthetic_features(args.limit or 20, 0), synthetic_features(20, 1)
    source = f"SYNTHETIC structured features of YOLOv5n shapes ({why})"
  value_range = anchor_lib.fit_range(f for _, _, f in train)
  print(f"{source}\nrange {value_range} (reference {REFERENCE_RANGE})", flush=True)

  ref = reference("feature_anchor_hevc.csv")
  rows = []
  for name in args.codecs:
    codec = inner.get(name, preset=args.vvc_preset) if name == "vvc" else inner.get(name)
    if name == "vvc" and codec.missing():
      print(f"skipping vvc: {codec.missing()}")
      continue
    anchor = FeatureAnchor(value_range, codec=codec)
    for qp in (args.av1_qps if name == "av1" else args.qps):
      r = measure(codec, anchor, qp, val)
      r["what"] = "feature"
      r["ref"] = ref.get(qp) if name == "hevc" else None
      rows.append(r)
      print(r, flush=True)
  if args.image_anchor and val[0][1].any():
    iref = reference("image_anchor_hevc.csv")
    ia = ImageAnchor()
    for qp in args.image_qps:
      r = measure(ia.codec, ia, qp, val, image_anchor=True)
      r["what"] = "image"
      r["ref"] = iref.get(qp)
      rows.append(r)
      print(r, flush=True)

  lines = [
      "## Feature anchor: rate and time per image", "",
      f"Machine: {machine()}. Command: `python benchmarks/{Path(__file__).name} "
      f"{' '.join(sys.argv[1:])}`.", "",
      f"Features: {source}. Range ({value_range[0]:.5f}, {value_range[1]:.5f}) (reference "
      f"{REFERENCE_RANGE}). bpp = sum of stream bits / sum of original pixels (the reference's "
      "convention); 'mean bpp' = mean of per-image bpp; 'container' counts the whole hssc_jax "
      "bitstream. HEVC: libx265 `qp=NN:keyint=1:ipratio=1:info=0`, default preset; AV1: SVT-AV1 "
      "`--qp NN` (its 1..63 scale, not HEVC's), preset 8; VVC: vvenc "
      f"{args.vvc_preset} preset, all-intra, `--qpa 0`.", "",
      "| anchor | codec | QP | images | bpp (stream) | reference bpp | diff | mean bpp | bpp "
      "(container) | bytes/image | encode ms (mean / median) | decode ms |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    ref_s = f"{r['ref']:.5f}" if r["ref"] else "-"
    diff = f"{100 * (r['bpp'] / r['ref'] - 1):+.2f}%" if r["ref"] else "-"
    lines.append(
        f"| {r['what']} | {r['codec']} | {r['qp']} | {r['n']} | {r['bpp']:.5f} | {ref_s} | {diff} | "
        f"{r['bpp_mean']:.5f} | {r['bpp_container']:.5f} | {r['bytes']:.0f} | "
        f"{r['enc_ms']:.1f} / {r['enc_med']:.1f} | {r['dec_ms']:.1f} |")
  Path(args.out).write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
