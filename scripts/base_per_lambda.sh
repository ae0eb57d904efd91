#!/usr/bin/env bash
# Variable-rate against per-lambda models of the base codec (README, "Variable rate against
# per-lambda models"): one 1,000-step model per lambda of qualities 0, 2 and 4 of LAMBDAS, on the
# same batches and schedule as the variable-rate `full` run of scripts/base_ablation.sh, each exported
# into a side zoo folder and evaluated on coco-mini val2017 at its one quality.
#
#   scripts/base_per_lambda.sh          # about 100 minutes on 2 CPU cores, one run at a time
#   LAMBDAS="0.015 0.15 1.5 5.0" scripts/base_per_lambda.sh     # quality 5 too (compared at 0/2/4/5)
#
# Needs runs/zoo_train/feature_cache (built by the first training run if absent).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/base_per_lambda}
PY=${PY:-.venv/bin/python}
LAMBDAS=${LAMBDAS:-"0.015 0.15 1.5"}
mkdir -p "$RUNS"
for l in $LAMBDAS; do
  "$PY" train.py --config "configs/base.py:steps=1000,lmbda=$l" --workdir "$RUNS/l$l" \
    --config.data.cache_dir=runs/zoo_train/feature_cache --config.progress=False \
    > "$RUNS/l$l.log" 2>&1
  "$PY" -c "from hssc_jax import zoo; print(zoo.export('$RUNS/l$l', 'base_l$l', 'runs/zoo_base_per_lambda'))"
done
"$PY" eval.py --config configs/eval/zoo.py:folder=runs/zoo_base_per_lambda,anchors=False,qualities=0 \
  --workdir runs/eval_base_per_lambda
# One curve of the per-lambda points against the variable-rate `full` curve of the ablation at the
# same qualities (LAMBDAS index -> quality).
QUALITIES=$("$PY" -c "
import sys; sys.path.insert(0, '.'); from configs import common
print(' '.join('q%d' % common.LAMBDAS.index(float(l)) for l in '$LAMBDAS'.split()))")
QUALITIES="$QUALITIES" "$PY" - <<'PY'
import os
from hssc_jax.metrics import rd
keep = os.environ["QUALITIES"].split()
full = [r for r in rd.read_csv("runs/eval_base_ablation/results.csv")
        if r["method"] == "base_full" and r["point"] in keep]
per = [dict(r, method="per-lambda", point=r["method"])
       for r in rd.read_csv("runs/eval_base_per_lambda/results.csv")]
for r in sorted(full + per, key=lambda r: (r["method"], r["bpp"])):
  print(f"{r['method']:12s} {r['point']:14s} bpp {r['bpp']:.4f} mAP {r['mAP']:.4f}")
full_curve, per_curve = rd.curve(full, "base_full"), rd.curve(per, "per-lambda")
for first in range(len(keep) - 1):  # every quality from the lowest, then without the lowest ones
  bd = rd.bd_metrics(tuple(c[first:] for c in full_curve), tuple(c[first:] for c in per_curve))
  print(f"per-lambda against variable-rate, {keep[first]} and up: BD-rate {bd['bd_rate']:+.2f}% "
        f"BD-mAP {bd['bd_map']:+.3f} ({bd['note'] or 'full overlap'})")
PY
