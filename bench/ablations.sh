#!/usr/bin/env bash
# Ablation study: the ranker with each seed block switched off in turn, trained with the
# same (reduced) budget as a full-model reference run, evaluated under P1 side by side.
#
#   bench/ablations.sh [HOME] [MAX_TRAIN_EXAMPLES] [EPOCHS] [USERS]
#
# Needs a P1 build in HOME (`recsys --home HOME batch --split p1`). Prints the table and
# writes HOME/eval-ablations.json.
set -euo pipefail
home=${1:-var}; examples=${2:-100000}; epochs=${3:-2}; users=${4:-1000}
recsys=${RECSYS:-.venv/bin/recsys}
blocks=(history attention lstm target_attention genre_conv title_cnn residual user_id)
runs=(abl-full)
$recsys --home "$home" train --run abl-full --max-train-examples "$examples" --epochs "$epochs"
for b in "${blocks[@]}"; do
  $recsys --home "$home" train --run "abl-no-$b" --ablate "$b" --max-train-examples "$examples" --epochs "$epochs"
  runs+=("abl-no-$b")
done
$recsys --home "$home" evaluate --stage model --no-baselines --max-users "$users" \
  --runs "$(IFS=,; echo "${runs[*]}")" --json "$home/eval-ablations.json"
