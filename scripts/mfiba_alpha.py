r"""Chooses MFIBA's encode-time exponent alpha (`MFIBACodec.encode_exponent`) and budget scale
(`MFIBACodec.budget_scale`) on training images.

alpha scales MFIP's log importance in the gains (M4) and weights the fitted allocation (M3) by
w^alpha; the budget scale sets the rate (M3) splits, as a multiple of what MFIP's own gains would
spend. Both change only which gains the encoder sends, so one trained model is evaluated at each
pair through real bitstreams on COCO *train* images (the model's own training data, never the
evaluation images) with the shipped base codec beside it, and the pair with the lowest BD-rate
against the base codec is the one to ship.

  python scripts/mfiba_alpha.py --alphas 0,0.25,0.5,1 --qualities 2+4 --workdir runs/mfiba_alpha
  python scripts/mfiba_alpha.py --alphas 0.5 --budget-scales 0.3,0.4,0.5,0.7,1 \
    --qualities 0+1+2+3+4+5 --workdir runs/mfiba_budget
  python scripts/mfiba_alpha.py ... --write     # also stores the chosen pair in the zoo's mfiba
  python scripts/mfiba_alpha.py --source runs/mfiba_imp/zoo/mfiba.hsz ...  # another MFIBA file
  python scripts/mfiba_alpha.py --recalibrate --cache-dir runs/zoo_train/feature_cache ...

--recalibrate first refits the zoo model's task loss-rate and rate-gain models (`mfiba.calibrate`,
what training does at its end) on the first batches of configs/mfiba.py's training stream, so a
change to the calibration reaches the shipped model without retraining; the variants (and --write)
then carry the refitted models.

Writes the variants to <workdir>/zoo, evaluates them with `eval.py` (configs/eval/zoo.py) into
<workdir>/eval and prints bpp / mAP per quality and the BD-rate against the base codec.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hssc_jax import zoo  # pylint: disable=wrong-import-position

def _name(alpha: float, budget_scale: float = 1.0) -> str:
  name = "mfiba_a" + f"{alpha:g}".replace(".", "")
  return name if budget_scale == 1.0 else name + "_b" + f"{budget_scale:g}".replace(".", "")


def write_variant(src: Path, alpha: float, folder: Path, name: str, budget_scale: float = 1.0
                  ) -> Path:
  """A copy of zoo file `src` (an MFIBA model) with encode_exponent = alpha and the budget scale,
  as `name`."""
  from hssc_jax.codecs import mfiba, registry  # pylint: disable=g-import-not-at-top
  codec = zoo.read_info(src)["codec"]
  if not issubclass(registry.codec_class(codec), mfiba.MFIBACodec):  # per-scale or cross-scale
    raise SystemExit(f"{src} does not hold an MFIBA model (codec {codec!r})")
  return zoo.resave(src, folder, name, encode_exponent=float(alpha),
                    budget_scale=float(budget_scale))


def recalibrate(src: Path, cache_dir: str, folder: Path) -> Path:
  """Zoo file `src` with its allocation models refitted on configs/mfiba.py's first training
  batches (as `train_lib` does after training), written to `folder` under the same name."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import mfiba as mfiba_config  # pylint: disable=g-import-not-at-top
  from hssc_jax import train_lib  # pylint: disable=g-import-not-at-top
  from hssc_jax.codecs import mfiba  # pylint: disable=g-import-not-at-top
  from hssc_jax.detectors import factory  # pylint: disable=g-import-not-at-top
  config = mfiba_config.get_config()
  with config.unlocked():
    config.data.cache_dir = cache_dir
  detector, det_vars = factory.build(config.detector)
  batches, kind = train_lib._image_batches(  # pylint: disable=protected-access
      config, detector, det_vars, folder, factory.identity(config.detector))
  if kind != "features":
    raise SystemExit("--recalibrate needs the feature cache (--cache-dir)")
  loaded = zoo.load(Path(src).stem, 0, Path(src).parent)
  model = loaded.codec.clone(allocation_models=None)
  it = batches(0)
  fit = [model.normalize(next(it)["features"])
         for _ in range(int(config.get("calibrate_batches", 4)))]
  task_fn = jax.jit(lambda f: factory.task_outputs(detector, det_vars, f))
  fitted = mfiba.calibrate(model, loaded.params, fit, float(config.data.size) ** 2, task_fn,
                           model.denormalize)
  return zoo.resave(src, folder, allocation_models=fitted)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--alphas", default="0,0.25,0.5,1")
  p.add_argument("--budget-scales", default="1", help="','-separated multiples of MFIP's budget")
  p.add_argument("--qualities", default="2+4", help="'+'-separated qualities")
  p.add_argument("--split", default="train2017")
  p.add_argument("--workdir", default="runs/mfiba_alpha")
  p.add_argument("--recalibrate", action="store_true",
                 help="refit the allocation models first (needs --cache-dir)")
  p.add_argument("--cache-dir", default="runs/zoo_train/feature_cache")
  p.add_argument("--source", default=None,
                 help="the MFIBA zoo file to start from (default: the zoo's mfiba)")
  p.add_argument("--write", action="store_true",
                 help="store the chosen alpha in hssc_jax/assets/zoo/mfiba.hsz")
  args = p.parse_args(argv)
  alphas = [float(a) for a in args.alphas.split(",")]
  if not alphas or any(not math.isfinite(a) or a < 0 for a in alphas):
    raise SystemExit(f"--alphas must be finite numbers >= 0, got {args.alphas!r}")
  scales = [float(b) for b in args.budget_scales.split(",")]
  if not scales or any(not math.isfinite(b) or b <= 0 for b in scales):
    raise SystemExit(f"--budget-scales must be finite numbers > 0, got {args.budget_scales!r}")
  work = Path(args.workdir)
  folder = work / "zoo"
  folder.mkdir(parents=True, exist_ok=True)
  shutil.copy(zoo.path_of("base"), folder / "base.hsz")
  source = Path(args.source) if args.source else zoo.path_of("mfiba")
  if not source.is_file():
    raise SystemExit(f"--source {source} is not a file")
  if args.recalibrate:
    source = recalibrate(source, args.cache_dir, work / "recalibrated")
  names = {(a, b): _name(a, b) for a in alphas for b in scales}
  for (a, b), n in names.items():
    write_variant(source, a, folder, n, b)
  models = "+".join(["base", *names.values()])
  cmd = [sys.executable, str(ROOT / "eval.py"), "--config",
         f"{ROOT / 'configs/eval/zoo.py'}:folder={folder},split={args.split},"
         f"qualities={args.qualities},models={models},anchors=false",
         "--workdir", str(work / "eval")]
  subprocess.run(cmd, check=True, cwd=ROOT)
  results = json.loads((work / "eval" / "results.json").read_text())
  bd = {r["method"]: r["bd_rate"] for r in results["bd"] if r["anchor"] == "base"}
  print(f"\n{'alpha':>6} {'budget':>6} {'model':<18} {'BD-rate vs base %':>18}  "
        "points (bpp / mAP)")
  for (a, b), n in names.items():
    pts = sorted((r["quality"], r["bpp"], r["mAP"]) for r in results["points"] if r["method"] == n)
    shown = "  ".join(f"q{q} {r:.4f}/{m:.4f}" for q, r, m in pts)
    print(f"{a:>6g} {b:>6g} {n:<18} {bd.get(n, math.nan):>18.2f}  {shown}")
  scored = {k: bd.get(n, math.nan) for k, n in names.items()}
  usable = {k: v for k, v in scored.items() if math.isfinite(v)}
  if not usable:
    raise SystemExit("no variant has a BD-rate against the base codec (curves do not overlap)")
  best = min(usable, key=usable.get)
  print(f"best on {args.split}: alpha {best[0]:g}, budget scale {best[1]:g} "
        f"(BD-rate vs base {usable[best]:.2f}%)")
  if args.write:
    target = zoo.path_of("mfiba")
    tmp = write_variant(source, *best, folder, "mfiba")
    shutil.copy(tmp, target)
    print(f"wrote encode_exponent={best[0]:g}, budget_scale={best[1]:g} into {target}")


if __name__ == "__main__":
  main()
