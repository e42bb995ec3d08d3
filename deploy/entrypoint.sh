#!/usr/bin/env bash
# The image's entry point: `recsys` with the container's arguments.
#
# One exception, which no user types: Spark on Kubernetes starts executor pods from the
# driver's image with the single argument `executor` and expects the image to launch
# Spark's KubernetesExecutorBackend (what Spark's own images do in their entrypoint).
set -euo pipefail
if [ "${1:-}" = "executor" ] && [ -n "${SPARK_EXECUTOR_ID:-}" ]; then
  shift
  java_opts=()
  while IFS='=' read -r name value; do
    java_opts+=("$value")
  done < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/^SPARK_JAVA_OPT_[0-9]*=/x=/')
  exec "$JAVA_HOME/bin/java" "${java_opts[@]}" -Xms"$SPARK_EXECUTOR_MEMORY" -Xmx"$SPARK_EXECUTOR_MEMORY" \
    -cp "${SPARK_CLASSPATH:-$SPARK_HOME/jars/*}" \
    org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
    --driver-url "$SPARK_DRIVER_URL" --executor-id "$SPARK_EXECUTOR_ID" --cores "$SPARK_EXECUTOR_CORES" \
    --app-id "$SPARK_APPLICATION_ID" --hostname "$SPARK_EXECUTOR_POD_IP" \
    --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "$SPARK_EXECUTOR_POD_NAME" "$@"
fi
exec recsys "$@"
