"""Writes the HSSC paper-form ablation models into a side zoo folder (never the shipped zoo).

  python scripts/hssc_paper_ablation.py --folder runs/zoo_ablation \
      [--workdirs runs/zoo_ablation_train/hssc_paper_full ...]
  python eval.py --config configs/eval/zoo.py:folder=runs/zoo_ablation,anchors=False,qualities=0+2+4+5 \
      --workdir runs/eval_ablation

From the shipped `hssc_paper` model (same SFTNet, same QPs): `hssc_paper` itself (the fixed
global+local order, the reference of the BD-rates), `hssc_paper_reorder_none` (no reordering) and
`hssc_paper_per_image` (each image's own order, sent in the bitstream). Each `--workdirs` entry
(e.g. the SFTNet ablations trained with configs/hssc_paper.py:no_inter / no_adaptive) is exported
under its folder name.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from hssc_jax import zoo  # pylint: disable=g-import-not-at-top,wrong-import-position

VARIANTS = {"hssc_paper": {},
            "hssc_paper_reorder_none": {"reorder": "none", "permutation": None},
            "hssc_paper_per_image": {"reorder_fit": "per_image", "permutation": None}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--folder", required=True)
  p.add_argument("--workdirs", nargs="*", default=[])
  args = p.parse_args()
  if Path(args.folder).resolve() == zoo.ZOO_DIR.resolve():
    sys.exit("--folder must not be the shipped zoo")
  info, params = zoo.read(zoo.path_of("hssc_paper"))
  keep = {k: info[k] for k in ("detector", "lmbdas", "steps", "final_metrics")}
  for name, change in VARIANTS.items():
    kwargs = {k: v for k, v in info["codec_kwargs"].items() if k != "header"}
    print(zoo.save(name, info["codec"], dict(kwargs, **change), info["scales"], info["channels"],
                   params, args.folder, **keep))
  for w in args.workdirs:
    print(zoo.export(w, Path(w).name, args.folder))


if __name__ == "__main__":
  main()
