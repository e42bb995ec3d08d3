#!/usr/bin/env bash
# Submit one batch step (or the whole plane) to any Spark master.
#
#   deploy/spark-submit.sh <step> [spark-submit options...] -- [job options...]
#   deploy/spark-submit.sh ingest --master spark://host:7077 -- --home /shared/recsys --data /shared/ml-25m
#   deploy/spark-submit.sh recall --master yarn --deploy-mode client -- --home /shared/recsys --version v2026...
#
# The project's packages travel as --py-files, so executors need only the pinned
# third-party packages (numpy, pandas, pyarrow) in the Python that PYSPARK_PYTHON names.
# The home must be a path every executor sees (a shared filesystem) on a real cluster.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
step=${1:?usage: deploy/spark-submit.sh <ingest|prepare|features|recall|samples|publish> [spark options] -- [job options]}
shift
spark_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do spark_opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
venv_python="$here/.venv/bin/python"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$venv_python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$venv_python}"
bundle=$(mktemp -d)/recsys-py.zip
trap 'rm -rf "$(dirname "$bundle")"' EXIT
(cd "$here" && "$venv_python" -c "import sys, zipfile, pathlib
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    for pkg in ('pipeline', 'spark_jobs'):
        for f in pathlib.Path(pkg).rglob('*.py'):
            z.write(f)" "$bundle")
exec "$here/.venv/bin/spark-submit" --py-files "$bundle" "${spark_opts[@]}" "$here/spark_jobs/main.py" "$step" "$@"
