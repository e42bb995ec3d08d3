"""Airflow DAG: the nightly batch plane as six spark-submit tasks, in order, with retries.

Copy this file into Airflow's dags/ folder on a machine that has the project checked
out (or the project image) and reaches the Spark master and Redis. Settings come from
the environment of the Airflow worker:

    RECSYS_ROOT           checkout or image path holding deploy/ (default /opt/recsys)
    RECSYS_HOME           the home every executor sees (default /srv/recsys)
    RECSYS_DATA           the MovieLens directory ingest reads (default /srv/movielens/ml-1m)
    RECSYS_SPARK_MASTER   spark://..., yarn or k8s://... (default spark://spark-master:7077)
    RECSYS_SPARK_SUBMIT_OPTS  more spark-submit options, e.g. "--executor-memory 4g"

`ingest` starts a new batch version and hands its name to the later steps through
XCom; each later step runs inside that version. Retrying is safe: a retried step
replaces only its own outputs (identical, seeded); a retried publish takes the Redis
lease again and removes what a killed attempt left; the version becomes current only
after publish. `recsys batch` holds a file lock per home, so a run that overlaps
another fails at once instead of interleaving (``max_active_runs=1`` avoids that).
Without Airflow installed the module still imports (``dag`` is then None), so the
project's tests can check it.
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta

STEPS = ("ingest", "prepare", "features", "recall", "samples", "publish")
ROOT = os.environ.get("RECSYS_ROOT", "/opt/recsys")
HOME = os.environ.get("RECSYS_HOME", "/srv/recsys")
DATA = os.environ.get("RECSYS_DATA", "/srv/movielens/ml-1m")
MASTER = os.environ.get("RECSYS_SPARK_MASTER", "spark://spark-master:7077")
SUBMIT_OPTS = os.environ.get("RECSYS_SPARK_SUBMIT_OPTS", "")

DEFAULT_ARGS = {
    "owner": "recsys",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=3),
}

# The JSON summary a step prints ends the output; ingest's last line is its version (-> XCom).
_VERSION_OF = ("python3 -c 'import json, sys; t = sys.stdin.read(); sys.stderr.write(t); "
               "print(json.loads(t[t.index(\"{\"):])[\"version\"])'")


def step_command(step: str) -> str:
    """The bash command of one task: deploy/spark-submit.sh <step> on the configured master."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
    submit = f"deploy/spark-submit.sh {step} --master {shlex.quote(MASTER)} {SUBMIT_OPTS}".rstrip()
    if step == "ingest":
        job = f"--home {shlex.quote(HOME)} --data {shlex.quote(DATA)}"
    else:
        job = f"--home {shlex.quote(HOME)} --version {{{{ ti.xcom_pull(task_ids='ingest') }}}}"
    return f"set -o pipefail && cd {shlex.quote(ROOT)} && {submit} -- {job} | {_VERSION_OF}"


try:  # Airflow 3 (task SDK), then Airflow 2
    try:
        from airflow.providers.standard.operators.bash import BashOperator
        from airflow.sdk import DAG
    except ImportError:
        from airflow import DAG
        from airflow.operators.bash import BashOperator
except ImportError:  # no Airflow here: the module stays importable (and testable)
    DAG = BashOperator = None

dag = None
if DAG is not None:
    with DAG(dag_id="recsys_batch", description="recsys batch plane: ingest -> ... -> publish",
             schedule="15 2 * * *", start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
             default_args=DEFAULT_ARGS, tags=["recsys"]) as dag:
        previous = None
        for name in STEPS:
            task = BashOperator(task_id=name, bash_command=step_command(name), do_xcom_push=(name == "ingest"))
            if previous is not None:
                previous >> task
            previous = task
