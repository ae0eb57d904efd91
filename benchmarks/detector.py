"""Throughput of the split detectors on CPU: part 1 (edge), part 2 (server) and the whole.

  python benchmarks/detector.py [--size n] [--img-size 640] [--batch 1 8] [--repeats 5]
                                [--weights auto|random|PATH] [--out benchmarks/detector.md]
  python benchmarks/detector.py --detector faster_rcnn [--arch resnet50] [--hw 800 1216]
                                [--out benchmarks/detector_faster_rcnn.md]

Faster R-CNN runs with random weights (no COCO-trained ResNet-FPN weights are available here) on a
noise image of `--hw` pixels (800x1216 needs no resizing and pads to itself), batch 1; random
weights keep the RPN's 1000 proposals per image, the full workload of part 2.

Everything is `jax.jit`-compiled and warmed up once (compilation excluded); each number is the
median over `--repeats` runs of images / second. Weights: `auto` uses the shared YOLOv5n v6.0
checkpoint when present (and real coco-mini images as input, so NMS sees a realistic number of
candidates), else random initialisation and noise images; speed barely depends on the weights
except through NMS, whose cost grows with the number of candidates (random weights give the most).
Prints a markdown table and writes it, with the machine and the command, to `--out`.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from hssc_jax.detectors import yolov5  # pylint: disable=g-import-not-at-top,wrong-import-position
from hssc_jax.detectors import yolov5_weights  # pylint: disable=g-import-not-at-top,wrong-import-position


def _machine() -> str:
  try:
    model = next(l.split(":", 1)[1].strip() for l in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if l.startswith("Model name"))
  except (StopIteration, OSError):
    model = platform.processor() or "unknown CPU"
  return (f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"jax {jax.__version__} ({jax.devices()[0].platform})")


def _median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # warm-up: compilation
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _images(n: int, real: bool, seed: int = 0) -> list[np.ndarray]:
  if real:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    files = sorted((yolov5_weights.default_weights().parents[1] / "data" / "coco-mini" / "val2017")
                   .glob("*.jpg"))
    if files:
      return [np.asarray(Image.open(files[i % len(files)]).convert("RGB")) for i in range(n)]
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def faster_rcnn(args) -> str:
  from hssc_jax.detectors import faster_rcnn as frcnn  # pylint: disable=g-import-not-at-top
  det = frcnn.FasterRCNN(arch=args.arch)
  params = jax.device_put(det.init(jax.random.PRNGKey(0)))
  img = np.random.default_rng(0).integers(0, 256, (*args.hw, 3), dtype=np.uint8)
  x, meta = det.preprocess([img])
  part1, part2, detect = jax.jit(det.part1), jax.jit(det.part2), jax.jit(det.detect)
  feats = part1(params, x)
  t1 = _median_seconds(lambda: part1(params, x), args.repeats)
  t2 = _median_seconds(lambda: part2(params, feats, meta), args.repeats)
  tf = _median_seconds(lambda: detect(params, x, meta), args.repeats)
  shapes = ", ".join(f"{k} {tuple(v.shape[1:3])}" for k, v in feats.items())
  return "\n".join([
      f"Faster R-CNN {args.arch}-FPN (torchvision convention), random init, one noise image of "
      f"{args.hw[0]}x{args.hw[1]} (network input {tuple(x.shape[1:3])}; {shapes}); median of "
      f"{args.repeats} runs after a warm-up.", "",
      "| batch | part 1: backbone + FPN (img/s) | part 2: RPN + RoI heads (img/s) | "
      "full detector (img/s) | full (ms/img) |", "|---:|---:|---:|---:|---:|",
      f"| 1 | {1 / t1:.3f} | {1 / t2:.3f} | {1 / tf:.3f} | {1e3 * tf:.0f} |"])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--detector", default="yolov5", choices=["yolov5", "faster_rcnn"])
  parser.add_argument("--arch", default="resnet50")
  parser.add_argument("--hw", type=int, nargs=2, default=[800, 1216])
  parser.add_argument("--size", default="n")
  parser.add_argument("--img-size", type=int, default=640)
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--weights", default="auto")
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  command = "python benchmarks/detector.py " + " ".join(sys.argv[1:])
  if args.detector == "faster_rcnn":
    out = Path(args.out or REPO / "benchmarks" / "detector_faster_rcnn.md")
    table = faster_rcnn(args)
    print(table)
    out.write_text(f"## Faster R-CNN throughput (CPU)\n\nMachine: {_machine()}\n\n"
                   f"Command: `{command.strip()}`\n\n{table}\n")
    print(f"\nwrote {out}")
    return
  args.out = args.out or str(REPO / "benchmarks" / "detector.md")

  path = yolov5_weights.default_weights(args.size) if args.weights == "auto" else Path(args.weights)
  if args.weights != "random" and path.exists():
    det, variables = yolov5_weights.load(path, img_size=args.img_size)
    source = f"converted {path.name}"
  else:
    det = yolov5.YOLOv5(size=args.size, img_size=args.img_size)
    variables = det.init(jax.random.PRNGKey(0))
    source = "random init"
  real = source != "random init"
  variables = jax.device_put(variables)

  rows = []
  for b in args.batch:
    x, meta = det.preprocess(_images(b, real))
    x = jax.device_put(x)
    feats = det.part1(variables, x)
    t1 = _median_seconds(lambda: det.part1(variables, x), args.repeats)
    t2 = _median_seconds(lambda: det.part2(variables, feats, meta), args.repeats)
    tf = _median_seconds(lambda: det.detect(variables, x, meta), args.repeats)
    kept = float(np.asarray(det.detect(variables, x, meta).valid).sum(1).mean())
    rows.append((b, b / t1, b / t2, b / tf, 1e3 * tf / b, kept))

  inputs = "coco-mini val2017 images" if real else "noise images"
  lines = [
      f"YOLOv5{args.size} at {args.img_size}x{args.img_size}, {source}, {inputs}; "
      f"median of {args.repeats} runs after a warm-up.",
      "",
      "| batch | part 1 (img/s) | part 2: Detect + NMS (img/s) | full detector (img/s) | "
      "full (ms/img) | detections/img |",
      "|---:|---:|---:|---:|---:|---:|",
  ] + [f"| {b} | {p1:.2f} | {p2:.2f} | {f:.2f} | {ms:.0f} | {k:.0f} |"
       for b, p1, p2, f, ms, k in rows]
  table = "\n".join(lines)
  print(table)
  Path(args.out).write_text(
      f"# Detector throughput (CPU)\n\nMachine: {_machine()}\n\nCommand: `{command.strip()}`\n\n"
      f"{table}\n")
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
