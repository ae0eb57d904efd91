#!/usr/bin/env bash
# The recipe ablation of the base codec on COCO (README, "Recipe ablation"): four variable-rate
# runs of 1,000 steps from scratch on the same batches, each exported into a side zoo folder and
# evaluated at qualities 0/2/4/5 on coco-mini val2017 (BD-rates against the full recipe).
#
#   scripts/base_ablation.sh            # about 2 hours on 2 CPU cores (3-4 runs at a time)
#
#   full       the shipped recipe (normalization, task term 100, last 15% mixed quantization)
#   task_off   no task term (task=0)
#   norm_off   no feature normalization (raw features into g_a, raw MSE in the loss)
#   mixed_off  noise to the end: the full run's step-850 checkpoint (where its mixed phase
#              starts) continued with mixed_fraction=0, so it differs from `full` only there
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/base_ablation}
PY=${PY:-.venv/bin/python}
COMMON=(--config.data.cache_dir=runs/zoo_train/feature_cache --config.progress=False)
mkdir -p "$RUNS"
"$PY" train.py --config configs/base.py:steps=1000 --workdir "$RUNS/full" "${COMMON[@]}" \
  --config.checkpoint_every=50 --config.keep_checkpoints=25 > "$RUNS/full.log" 2>&1 &
sleep 240  # the first run builds the feature cache the others read
"$PY" train.py --config configs/base.py:steps=1000,task=0 --workdir "$RUNS/task_off" \
  "${COMMON[@]}" > "$RUNS/task_off.log" 2>&1 &
"$PY" train.py --config configs/base.py:steps=1000 --workdir "$RUNS/norm_off" \
  --config.codec.normalize=False "${COMMON[@]}" > "$RUNS/norm_off.log" 2>&1 &
while [ ! -d "$RUNS/full/checkpoints/850" ]; do sleep 20; done
sleep 30
mkdir -p "$RUNS/mixed_off/checkpoints"
cp "$RUNS/full/run.json" "$RUNS/mixed_off/"
cp -r "$RUNS/full/checkpoints/850" "$RUNS/mixed_off/checkpoints/"
"$PY" train.py --config configs/base.py:steps=1000 --workdir "$RUNS/mixed_off" \
  --config.loss.mixed_fraction=0.0 "${COMMON[@]}" > "$RUNS/mixed_off.log" 2>&1
wait
"$PY" -c "
from hssc_jax import zoo
for v in ('full', 'task_off', 'norm_off', 'mixed_off'):
  print(zoo.export('$RUNS/' + v, 'base_' + v, 'runs/zoo_base_ablation'))
"
"$PY" eval.py --config configs/eval/zoo.py:folder=runs/zoo_base_ablation,anchors=False,qualities=0+2+4+5 \
  --workdir runs/eval_base_ablation
