r"""What a zoo model's training objective sees on whole images: per quality, the task distortion
(`training.loss.task_distortion`, the object-weighted distillation of YOLOv5's head outputs that
training minimises) and the MSE of each scale's normalised features, on the 640x640 letterboxed
images of one or more splits, without range coding (the estimated rate from the entropy models).

  python scripts/task_distortion.py lmfc --qualities 2,3,4,5 --splits val2017,train2017

A quality whose task distortion falls but whose mAP does not rise (by the table's command) is one
the objective cannot tell apart from its neighbour; one whose task distortion rises on evaluation
images but not on training images is a train/test gap (as HSC's quality 5 was, README zoo notes).
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.eval import zoo as zoo_config  # pylint: disable=wrong-import-position
from hssc_jax import detector_eval  # pylint: disable=wrong-import-position
from hssc_jax import zoo  # pylint: disable=wrong-import-position
from hssc_jax.detectors import factory  # pylint: disable=wrong-import-position
from hssc_jax.training import loss as loss_lib  # pylint: disable=wrong-import-position


def split_features(model: str, split: str) -> tuple[list[dict[str, np.ndarray]], object, object]:
  """Part-1 features of every image of `split` (as the zoo evaluation prepares them)."""
  return detector_eval.split_features(zoo_config.get_config(
      f"models={model},split={split},anchors=false,image_anchor=false"))


def measure(model: str, quality: int, feats, det, det_vars, folder=None) -> dict[str, float]:
  """Image-weighted means over `feats`: task distortion, normalised MSE per scale, estimated bpp
  (of the 640x640 input)."""
  m = zoo.load(model, quality, folder)
  forward = jax.jit(lambda p, f: m.codec.apply({"params": p}, f, False))
  heads = jax.jit(lambda f: factory.task_outputs(det, det_vars, f))
  sums, images = {}, 0
  for f in feats:
    n = len(next(iter(f.values())))
    norm = m.codec.normalize(f)
    out = forward(m.params, norm)
    hat = m.codec.denormalize(out["features_hat"])
    row = {"task": float(loss_lib.task_distortion(heads(f), heads(hat)))}
    row.update({f"mse_{s}": float(jnp.mean(jnp.square(norm[s] - out["features_hat"][s])))
                for s in f})
    row["bpp"] = float(sum(jnp.sum(v) for v in out["bits"].values())) / n / 640 ** 2
    for k, v in row.items():
      sums[k] = sums.get(k, 0.0) + v * n
    images += n
  return {k: v / images for k, v in sums.items()}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("model")
  ap.add_argument("--qualities", default="0,1,2,3,4,5")
  ap.add_argument("--splits", default="val2017")
  ap.add_argument("--folder", default=None, help="zoo folder (default: the shipped zoo)")
  args = ap.parse_args(argv)
  for split in args.splits.split(","):
    feats, det, det_vars = split_features(args.model, split)
    for q in (int(v) for v in args.qualities.split(",")):
      row = measure(args.model, q, feats, det, det_vars, args.folder)
      print(f"{split} {args.model} q{q}: " + "  ".join(f"{k} {v:.5g}" for k, v in row.items()),
            flush=True)


if __name__ == "__main__":
  main()
