#!/usr/bin/env bash
# Ablation study: the model with each seed block switched off in turn, evaluated under P1 side by side
# (offline, every run's exported score over the whole catalogue: the gateway equals it with no genre cap).
#
#   bench/ablations.sh [HOME] [MAX_TRAIN_EXAMPLES|full] [EPOCHS] [USERS|all]
#
# `full` trains every row with the defaults (the full budget, as `recsys train` does) and adds the
# next-movie model's rows (off; with the seed's LSTM after the attention; the LSTM instead of attention);
# a number trains every row on that many sampled examples for EPOCHS epochs (a quick, noisy look).
# Needs a P1 build in HOME (`recsys --home HOME batch --data DIR --split p1`). Prints the table and
# writes HOME/eval-ablations.json and bench/results/$ABLATIONS_NAME-<time>.json (with the machine);
# the training summaries stay in HOME/models/runs/abl-*.
set -euo pipefail
home=${1:-var}; examples=${2:-100000}; epochs=${3:-2}; users=${4:-1000}
recsys=${RECSYS:-.venv/bin/recsys}
blocks=(history attention lstm residual genre_conv title_cnn demographics movie_id decade)
budget=()
[ "$examples" = full ] || budget=(--max-train-examples "$examples" --epochs "$epochs")
limit=()
[ "$users" = all ] || limit=(--max-users "$users")
runs=()
row() {  # row NAME [VAR=VALUE ...] -- [TRAIN ARGS ...]: one training run, skipped when its summary exists
  local name=$1; shift; local env=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do env+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  runs+=("$name")
  if [ -f "$home/models/runs/$name/summary.json" ]; then echo "== $name: trained already"; return; fi
  echo "== $name ($(date +%T))"
  env "${env[@]}" "$recsys" --home "$home" train --run "$name" "${budget[@]}" "$@" >"$home/logs/$name.log" 2>&1 \
    || { echo "$name failed: see $home/logs/$name.log"; exit 1; }
}
mkdir -p "$home/logs"
row abl-full
if [ "$examples" = full ]; then
  row abl-next-movie-lstm-only RECSYS_MODEL_SEQUENCE_LSTM=true RECSYS_MODEL_SEQUENCE_BLOCKS=0
  row abl-next-movie-with-lstm RECSYS_MODEL_SEQUENCE_LSTM=true
  row abl-no-next-movie RECSYS_MODEL_SEQUENCE_EPOCHS=0
fi
for b in "${blocks[@]}"; do
  row "abl-no-$b" -- --ablate "$b"
done
"$recsys" --home "$home" evaluate --stage model --no-baselines "${limit[@]}" \
  --runs "$(IFS=,; echo "${runs[*]}")" --json "$home/eval-ablations.json"
# the same table with the machine's description, next to the other benchmark results
"${PYTHON:-.venv/bin/python}" - "$home/eval-ablations.json" "${ABLATIONS_NAME:-ablations}" <<'PY'
import json, sys
from bench.machine import describe, write_result
result = json.load(open(sys.argv[1]))
result["machine"] = describe()
print("wrote", write_result(result, "bench/results", sys.argv[2]))
PY
