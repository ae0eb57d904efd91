r"""Bootstrap intervals of the BD-rates of an `eval.py` codecs run (`hssc_jax.metrics.bootstrap`):
how much another set of as many images could move each method's BD-rate against an anchor.

  python scripts/bootstrap_bd.py --workdir runs/eval_zoo --samples 200
  python scripts/bootstrap_bd.py --workdir runs/eval_kodak --anchor base --threshold -30

Reads each point's per-image record (`points/<method>/<point>.detections.json`, written by eval.py
since it keeps them); points measured before that are named and left out.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hssc_jax import codec_eval  # pylint: disable=wrong-import-position
from hssc_jax.data import coco_folder  # pylint: disable=wrong-import-position
from hssc_jax.metrics import bootstrap  # pylint: disable=wrong-import-position
from hssc_jax.metrics import coco  # pylint: disable=wrong-import-position


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="an eval.py codecs workdir")
  parser.add_argument("--anchor", default="feature anchor (HEVC)")
  parser.add_argument("--samples", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threshold", type=float, default=-85.0,
                      help="report the share of draws at or below this BD-rate (%%)")
  args = parser.parse_args(argv)

  workdir = Path(args.workdir)
  reference = json.loads((workdir / "uncompressed.json").read_text())
  gt = coco.load_ground_truth(coco_folder.annotation_path(reference["dataset"], reference["split"]))
  results = json.loads((workdir / "results.json").read_text())
  scores, missing = {}, []
  for row in results["points"]:
    record_path = codec_eval.detections_path(
        codec_eval.point_path(workdir, row["method"], row["point"]))
    if not record_path.exists():
      missing.append(f"{row['method']} {row['point']}")
      continue
    record = json.loads(record_path.read_text())
    if record.get("source") != row.get("source"):
      missing.append(f"{row['method']} {row['point']} (record of another model)")
      continue
    scores.setdefault(row["method"], {})[row["point"]] = bootstrap.PointScores.of(gt, record)
  if missing:
    print(f"left out (no per-image record; rerun eval.py to write them): {', '.join(missing)}")
  image_ids = sorted(gt.getImgIds())
  observed = bootstrap.bd_rates(scores, args.anchor, image_ids)
  draws = bootstrap.bootstrap_bd(scores, args.anchor, image_ids, samples=args.samples,
                                 seed=args.seed)
  print(f"BD-rate (%) against {args.anchor} on {len(image_ids)} images of "
        f"{reference['dataset']} {reference['split']}, {args.samples} bootstrap draws of images")
  print(f"{'method':<24} {'measured':>9} {'median':>9} {'5%':>9} {'95%':>9} "
        f"{f'<= {args.threshold:g}%':>10} {'no BD':>6}")
  for row in bootstrap.summarize(draws, args.threshold):
    print(f"{row['method']:<24} {observed[row['method']]:>9.2f} {row['median']:>9.2f} "
          f"{row['p5']:>9.2f} {row['p95']:>9.2f} {row['at_or_below']:>10.2f} {row['missing']:>6.2f}")


if __name__ == "__main__":
  main()
