#!/usr/bin/env bash
# The whole batch plane through spark-submit, one step per submission (as a scheduler runs it).
#
#   deploy/spark-batch.sh [spark-submit options...] -- [job options...]
#   deploy/spark-batch.sh --master spark://host:7077 -- --home /shared/recsys --data /shared/ml-1m
#   deploy/spark-batch.sh --master k8s://https://kubernetes.default.svc --deploy-mode client \
#       --conf spark.kubernetes.container.image=recsys:0.1.0 -- --home /data
#
# `ingest` starts a new batch version and prints it; the five later steps run inside
# that version (--version), each through deploy/spark-submit.sh, and `publish` switches
# Redis over to it. A failed step stops the run (exit status of spark-submit) and
# leaves the previous version serving; rerun a step with
# `deploy/spark-submit.sh <step> ... -- --home H --version V`. Progress goes to stderr,
# the last step's JSON summary to stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
spark_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do spark_opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
python="${PYSPARK_DRIVER_PYTHON:-$here/.venv/bin/python}"
summary_version() {  # the "version" field of the JSON summary a step prints last
  "$python" -c 'import json, sys; text = sys.stdin.read(); print(json.loads(text[text.index("{"):])["version"])'
}
echo "batch: ingest" >&2
out=$("$here/deploy/spark-submit.sh" ingest "${spark_opts[@]}" -- "$@")
version=$(summary_version <<<"$out")
echo "batch: version $version" >&2
job_args=()
while [ $# -gt 0 ]; do  # --data belongs to ingest only
  case "$1" in --data) shift 2 ;; --data=*) shift ;; *) job_args+=("$1"); shift ;; esac
done
for step in prepare features recall samples publish; do
  echo "batch: $step" >&2
  out=$("$here/deploy/spark-submit.sh" "$step" "${spark_opts[@]}" -- "${job_args[@]}" --version "$version")
done
printf '%s\n' "$out"
