#!/usr/bin/env bash
# Trains (or resumes) the variable-rate model of every method in the background, then exports each
# finished one into the zoo (hssc_jax/assets/zoo/<method>.hsz; the base codec, MFIBA, L-MFC and
# HSSC then get their per-quality z priors, scripts/fit_z_priors.py). Logs: $RUNS/<method>.log.
#
#   scripts/train_zoo.sh                       # every method, 2 at a time, 1600 steps each
#   METHODS="base lmfc" STEPS=3000 PARALLEL=1 scripts/train_zoo.sh
#
# Rerunning it resumes every unfinished run from its last orbax checkpoint (the same batches as an
# uninterrupted run) and re-exports. Progress: tail -f $RUNS/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs/zoo_train}
STEPS=${STEPS:-1600}
PARALLEL=${PARALLEL:-2}
METHODS=${METHODS:-"base lmfc hssc hsc mfiba hssc_paper"}
PY=${PY:-.venv/bin/python}
mkdir -p "$RUNS"
train_one() {
  m=$1
  args="steps=$STEPS"
  case $m in
    base|mfiba) args="cross,$args";;  # the zoo's base and MFIBA are cross-scale
    lmfc) args="refine,refine_from=2,$args";;  # its P5 refinement from quality 2 up (stop 62)
    hssc) args="refine,refine_from=4,$args";;  # its P5 refinement from quality 4 up (stop 63)
  esac
  "$PY" train.py --config "configs/$m.py:$args" --workdir "$RUNS/$m" \
    --config.data.cache_dir="$RUNS/feature_cache" --config.progress=False >> "$RUNS/$m.log" 2>&1
  "$PY" -c "from hssc_jax import zoo; print(zoo.export('$RUNS/$m', '$m'))" >> "$RUNS/$m.log" 2>&1
  case $m in base|mfiba|lmfc|hssc)  # their zoo files code z with one prior per quality (stops 54-55)
    "$PY" scripts/fit_z_priors.py "$m" --out hssc_jax/assets/zoo \
      --config.data.cache_dir="$RUNS/feature_cache" >> "$RUNS/$m.log" 2>&1;;
  esac
}
export -f train_one
export RUNS STEPS PY
nohup bash -c "printf '%s\n' $METHODS | xargs -P $PARALLEL -I{} bash -c 'train_one {}'" \
  > "$RUNS/train_zoo.log" 2>&1 &
echo "training $METHODS in the background ($PARALLEL at a time); logs in $RUNS/"
