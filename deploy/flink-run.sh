#!/usr/bin/env bash
# Submit the stream job (its one entry, flink_jobs/main.py) to a Flink cluster with `flink run -py`.
#
#   deploy/flink-run.sh [flink run options...] -- [job options...]
#   deploy/flink-run.sh -m jobmanager:8081 -d -- --home /shared/recsys
#   deploy/flink-run.sh -m jobmanager:8081 -d -- --home /shared/recsys --from-start
#
# The project's packages travel as a -pyfs zip, so TaskManagers need only the pinned
# third-party packages (apache-flink, redis) in the Python named by PYFLINK_PYTHON
# (default: this checkout's .venv/bin/python, right for a cluster on this machine); its
# site-packages become python.pythonpath (PYFLINK_PYTHONPATH overrides, a path on the TaskManagers).
# The job reads its configuration like every recsys command (--home / --config /
# RECSYS_* variables); on a cluster, Redis is RECSYS_REDIS_URL and the home a path
# every TaskManager sees. The Flink CLI is $FLINK_HOME/bin/flink, else the one inside
# the apache-flink wheel; FLINK_CONF_DIR picks the cluster's configuration as usual.
# Job options: --home, --config, --from-start (ignore retained checkpoints; by default
# the job resumes from the newest one under stream.checkpoint_dir).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
flink_opts=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do flink_opts+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
venv_python="$here/.venv/bin/python"
client_python="${PYFLINK_CLIENT_EXECUTABLE:-$venv_python}"
worker_python="${PYFLINK_PYTHON:-$venv_python}"
if [ -n "${FLINK_HOME:-}" ] && [ -x "$FLINK_HOME/bin/flink" ]; then
  flink="$FLINK_HOME/bin/flink"
else
  flink="$("$client_python" -c 'import os, pyflink; print(os.path.join(os.path.dirname(pyflink.__file__), "bin", "flink"))')"
fi
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
bundle="$workdir/recsys-py.zip"
(cd "$here" && "$client_python" -c "import sys, zipfile, pathlib
with zipfile.ZipFile(sys.argv[1], 'w') as z:
    for pkg in ('pipeline', 'flink_jobs'):
        for f in pathlib.Path(pkg).rglob('*.py'):
            z.write(f)" "$bundle")
export PYFLINK_CLIENT_EXECUTABLE="$client_python"
# The job's functions run in thread mode, inside the TaskManager's JVM: its embedded interpreter
# finds the third-party packages (pemja, redis) only through python.pythonpath.
worker_site="${PYFLINK_PYTHONPATH:-$("$worker_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')}"
"$flink" run "${flink_opts[@]}" -D "python.pythonpath=$worker_site" -pyclientexec "$client_python" \
  -pyexec "$worker_python" -pyfs "$bundle" -py "$here/flink_jobs/main.py" "$@"
