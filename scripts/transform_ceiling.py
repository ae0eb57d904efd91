r"""How much mAP a zoo model's transforms allow, whatever the rate: each quality evaluated with its
latents rounded (as coded, without the range coder) and with them not quantized at all, next to
the uncompressed detector, on the 640x640 letterboxed images of one split. With `--pca` it also
prints the reconstruction floor of a linear transform as wide as each scale's latent: the share of
the feature variance that a PCA of the patches one latent element covers leaves out.

  python scripts/transform_ceiling.py base:5 hssc:5 --pca --per-scale
  python scripts/transform_ceiling.py base:5 --folder runs/s42/cand --split train2017
  python scripts/transform_ceiling.py lmfc:5 base:5 --root runs/s46/kodak --split kodak --per-scale

A quality whose unquantized mAP is no higher than its rounded one has reached what its transforms
can carry: more rate (a higher gain) buys nothing there, only wider latents do.
"""

import argparse
import contextlib
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.eval import zoo as zoo_config  # pylint: disable=wrong-import-position
from hssc_jax import detector_eval  # pylint: disable=wrong-import-position
from hssc_jax import zoo  # pylint: disable=wrong-import-position
from hssc_jax.data import pipeline  # pylint: disable=wrong-import-position
from hssc_jax.entropy import quantization  # pylint: disable=wrong-import-position
from hssc_jax.metrics import coco  # pylint: disable=wrong-import-position


@contextlib.contextmanager
def unquantized():
  """Within the block, "round" passes latents through unchanged (the training modes are kept)."""
  rounding = quantization.quantize

  def identity(x, mode, rng=None, offset=0.0):
    return (x, x) if mode == "round" else rounding(x, mode, rng, offset)

  quantization.quantize = identity
  try:
    yield
  finally:
    quantization.quantize = rounding


class Split:
  """The part-1 features of one split, and the mAP of the detector's part 2 on any map of them."""

  def __init__(self, model: str, split: str, root: str = ""):
    config = zoo_config.get_config(f"models={model},split={split},root={root},anchors=false,"
                                   "image_anchor=false")
    self.det, self.det_vars = detector_eval.build_detector(config)
    self.data = pipeline.eval_data_of(config)
    part1 = jax.jit(self.det.part1)
    self.part2 = jax.jit(self.det.part2)
    self.batches = []
    for batch in self.data:
      n = len(batch["images"])
      images = list(batch["images"]) + [batch["images"][-1]] * (self.data.batch_size - n)
      x, meta = self.det.preprocess(images)
      feats = {s: np.asarray(a) for s, a in part1(self.det_vars, x).items()}
      self.batches.append((n, [int(i) for i in batch["ids"]], meta, feats))

  def mean_ap(self, transform=lambda f: f) -> float:
    results, ids = [], []
    for n, batch_ids, meta, feats in self.batches:
      dets = self.part2(self.det_vars, transform(feats), meta)
      results += coco.detections_to_coco(batch_ids, dets.per_image()[:n],
                                         list(self.det.coco_category_ids))
      ids += batch_ids
    return coco.coco_evaluate(self.data.annotation_path, results, image_ids=ids)["mAP"]


def codec_transform(model: zoo.ZooModel):
  forward = jax.jit(lambda p, f: model.codec.apply({"params": p}, f, False))

  def transform(feats):
    out = forward(model.params, model.codec.normalize(feats))
    return {s: np.asarray(v) for s, v in model.codec.denormalize(out["features_hat"]).items()}
  return transform


def with_original(transform, scale: str):
  """`transform` with one scale's features passed through as they are."""
  return lambda feats: dict(transform(feats), **{scale: feats[scale]})


def per_scale(model: zoo.ZooModel) -> bool:
  """Whether the model has one latent per scale (the base codec, MFIBA), which `pca_floor` needs."""
  widths = model.info["codec_kwargs"].get("latent_channels")
  return isinstance(widths, (list, tuple)) and len(widths) == len(model.codec.scales)


def pca_floor(split: Split, model: zoo.ZooModel) -> dict[str, tuple[int, int, float]]:
  """{scale: (patch values per latent element, latent channels, share of variance a PCA onto that
  many components leaves out)} for a codec whose latent grid is 2^stages coarser per scale."""
  kwargs = model.info["codec_kwargs"]
  out = {}
  for i, s in enumerate(model.codec.scales):
    k = 2 ** int(np.broadcast_to(kwargs["stages"], (len(model.codec.scales),))[i])
    width = int(kwargs["latent_channels"][i])
    a = np.concatenate([f[s][:n] for n, _, _, f in split.batches])
    a = a[:, :a.shape[1] - a.shape[1] % k, :a.shape[2] - a.shape[2] % k]
    n, h, w, c = a.shape
    patches = a.reshape(n, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(-1, k * k * c).astype(np.float64)
    eig = np.linalg.eigvalsh(np.cov(patches - patches.mean(0), rowvar=False))[::-1]
    out[s] = (k * k * c, width, float(1 - eig[:width].sum() / eig.sum()))
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("points", nargs="+", help="model:quality, e.g. base:5")
  ap.add_argument("--split", default="val2017")
  ap.add_argument("--root", default="", help="a COCO-format folder other than coco-mini (e.g. "
                  "the pseudo-labelled Kodak of scripts/pseudo_labels.py)")
  ap.add_argument("--folder", default=None, help="zoo folder (default: the shipped zoo)")
  ap.add_argument("--pca", action="store_true", help="also the linear floor of each latent width")
  ap.add_argument("--per-scale", action="store_true",
                  help="also the unquantized mAP with each scale in turn left uncompressed")
  args = ap.parse_args(argv)
  split = Split(args.points[0].split(":")[0], args.split, args.root)
  print(f"{args.split} uncompressed mAP {split.mean_ap():.4f}", flush=True)
  shown = set()
  for point in args.points:
    name, _, quality = point.partition(":")
    model = zoo.load(name, int(quality) if quality else None, args.folder)
    rounded = split.mean_ap(codec_transform(model))
    exact_transform = codec_transform(model)  # traced (and compiled) once, inside the block
    with unquantized():
      exact = split.mean_ap(exact_transform)
    print(f"{args.split} {point}: mAP rounded {rounded:.4f}, unquantized {exact:.4f}", flush=True)
    if args.per_scale:
      for s in model.codec.scales:
        kept = split.mean_ap(with_original(exact_transform, s))
        print(f"  unquantized, {s} left uncompressed: mAP {kept:.4f}", flush=True)
    if args.pca and name not in shown and per_scale(model):
      shown.add(name)
      for s, (dims, width, left) in pca_floor(split, model).items():
        print(f"  {s}: PCA of {dims}-value patches onto {width} components leaves "
              f"{100 * left:.1f}% of the variance", flush=True)


if __name__ == "__main__":
  main()
