"""How much of the feature anchor's mAP is measurement noise: the anchor at one QP on the README's
79 coco-mini images, with the part-1 features scaled by (1 + eps) before coding.

  python scripts/anchor_sensitivity.py --qp 22 --eps=0,1e-6,-1e-6

eps = 1e-6 is a change of a few float32 ulps, the size of the differences between XLA's CPU code on
two processors: it flips a few 10-bit codes, HEVC's mode decisions follow them, and the mAP moves
at an unchanged rate. A BD-rate over a short overlap moves with it.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs.eval import zoo as zoo_config
from hssc_jax import codec_eval
from hssc_jax import detector_eval
from hssc_jax.codecs import coders
from hssc_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class ScaledAnchor(coders.FeatureAnchorCoder):
  """The feature anchor coding features * (1 + eps)."""

  eps: float = 0.0

  def compress(self, features, image_size):
    scale = np.float32(1.0 + self.eps)
    return super().compress({s: np.asarray(a, np.float32) * scale for s, a in features.items()},
                            image_size)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--qp", type=int, default=22)
  parser.add_argument("--eps", default="0,1e-6,-1e-6",
                      help="comma-separated scale offsets, e.g. 0,1e-6,-1e-6")
  parser.add_argument("--workdir", default=str(REPO / "runs" / "anchor_sensitivity"),
                      help="where the anchor's fitted 10-bit range is kept")
  args = parser.parse_args()
  config = zoo_config.get_config("anchors=False,models=base,qualities=0")
  detector, det_vars = detector_eval.build_detector(config)
  data = pipeline.eval_data_of(config)
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  anchor = codec_eval.feature_anchor(config, "hevc", detector, det_vars, workdir)
  point = codec_eval.Point("feature anchor (HEVC)", "feature_anchor", f"qp{args.qp}", qp=args.qp)
  print(f"feature anchor (HEVC), QP {args.qp}, {data.num_images} images")
  print(f"{'eps':>8} {'bpp':>8} {'mAP':>8} {'AP50':>8} {'MSE p3':>9}")
  for eps in [float(e) for e in args.eps.split(",")]:
    coder = ScaledAnchor(anchor, args.qp, eps)
    row = codec_eval.evaluate_point(point, coder, detector, det_vars, data, progress=False)
    print(f"{eps:>8g} {row['bpp']:>8.4f} {row['mAP']:>8.4f} {row['AP50']:>8.4f} "
          f"{row['mse_p3']:>9.5f}", flush=True)
    (workdir / f"qp{args.qp}_eps{eps:g}.json").write_text(json.dumps(
        {k: row[k] for k in ("bpp", "mAP", "AP50", "mse_p3", "num_images")}))


if __name__ == "__main__":
  main()
