r"""Bootstrap intervals of the BD-rates of an `eval.py` codecs run (`hssc_jax.metrics.bootstrap`):
how much another set of as many images could move each method's BD-rate against an anchor.

  python scripts/bootstrap_bd.py --workdir runs/eval_zoo --samples 200
  python scripts/bootstrap_bd.py --workdir runs/eval_kodak --anchor base --threshold -30
  python scripts/bootstrap_bd.py --workdir runs/eval_new --versus runs/eval_old \
    --anchor "hssc (versus)" --threshold 0   # a model against its earlier version, paired

Reads each point's per-image record (`points/<method>/<point>.detections.json`, written by eval.py
since it keeps them); points measured before that are named and left out. `--versus` adds another
workdir's points on the same images, its methods named "<method> (versus)": every draw then
scores both versions on the same images, a paired comparison.
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


def _images_of(workdir: Path) -> dict:
  """The dataset, split and image count an eval.py workdir was measured on."""
  reference = json.loads((workdir / "uncompressed.json").read_text())
  return {k: reference[k] for k in ("dataset", "split", "num_images")}


def _read_points(workdir: Path, gt, suffix: str, scores: dict, missing: list) -> None:
  """Adds the per-image scores of every point of `workdir` to `scores`, each method's name
  followed by `suffix`; points without their own per-image record go to `missing`."""
  results = json.loads((workdir / "results.json").read_text())
  for row in results["points"]:
    name = row["method"] + suffix
    record_path = codec_eval.detections_path(
        codec_eval.point_path(workdir, row["method"], row["point"]))
    if not record_path.exists():
      missing.append(f"{name} {row['point']}")
      continue
    record = json.loads(record_path.read_text())
    if record.get("source") != row.get("source"):
      missing.append(f"{name} {row['point']} (record of another model)")
      continue
    scores.setdefault(name, {})[row["point"]] = bootstrap.PointScores.of(gt, record)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="an eval.py codecs workdir")
  parser.add_argument("--anchor", default="feature anchor (HEVC)")
  parser.add_argument("--samples", type=int, default=200)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threshold", type=float, default=-85.0,
                      help="report the share of draws at or below this BD-rate (%%)")
  parser.add_argument("--versus", help="another eval.py workdir on the same images, its methods "
                      "named '<method> (versus)'")
  args = parser.parse_args(argv)

  reference = _images_of(Path(args.workdir))
  gt = coco.load_ground_truth(coco_folder.annotation_path(reference["dataset"], reference["split"]))
  scores, missing = {}, []
  _read_points(Path(args.workdir), gt, "", scores, missing)
  if args.versus:
    versus_images = _images_of(Path(args.versus))
    if versus_images != reference:
      raise SystemExit(f"--versus {args.versus} was evaluated on {versus_images}, "
                       f"{args.workdir} on {reference}: a paired comparison needs the same images")
    _read_points(Path(args.versus), gt, " (versus)", scores, missing)
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
