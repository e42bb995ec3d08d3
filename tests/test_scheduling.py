"""The schedulers' files: the Airflow DAG (parsed with the standard library's ast, and
imported without Airflow installed) and the cron example."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
from pathlib import Path

from spark_jobs.batch import STEPS

ROOT = Path(__file__).resolve().parents[1]
DAG_FILE = ROOT / "deploy" / "airflow" / "recsys_batch.py"


def _assigned(tree: ast.Module, name: str) -> ast.expr:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise AssertionError(f"{DAG_FILE.name} assigns no {name}")


def test_dag_file_parses_with_six_steps_and_retries() -> None:
    tree = ast.parse(DAG_FILE.read_text(), filename=str(DAG_FILE))
    assert ast.literal_eval(_assigned(tree, "STEPS")) == STEPS
    default_args = _assigned(tree, "DEFAULT_ARGS")
    retries = {k.value: v for k, v in zip(default_args.keys, default_args.values)}["retries"]
    assert ast.literal_eval(retries) >= 1
    # Airflow is imported only inside try/except ImportError, never at module level.
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] == "airflow" for n in names), ast.dump(node)
    guarded = [n for n in tree.body if isinstance(n, ast.Try)
               and any(isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in n.handlers)]
    assert guarded and "airflow" in ast.unparse(guarded[0].body[0])
    # The tasks are chained in STEPS order, each a BashOperator with task_id from STEPS.
    source = ast.unparse(tree)
    assert "BashOperator(task_id=name" in source and "previous >> task" in source and "for name in STEPS" in source


def test_dag_commands_without_airflow(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("RECSYS_SPARK_MASTER", "spark://m:7077")
    monkeypatch.setenv("RECSYS_HOME", "/shared/home")
    spec = importlib.util.spec_from_file_location("recsys_batch_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.dag is None                       # Airflow is not installed here
    commands = {s: module.step_command(s) for s in STEPS}
    assert "--data" in commands["ingest"] and "xcom_pull" not in commands["ingest"]
    for step in STEPS[1:]:
        assert f"deploy/spark-submit.sh {step} --master spark://m:7077" in commands[step]
        assert "--version {{ ti.xcom_pull(task_ids='ingest') }}" in commands[step]
        assert "--home /shared/home" in commands[step]
    # The command's version extraction works on a step's real output shape.
    out = subprocess.run(["bash", "-c", "printf 'noise\\n{\\n  \"version\": \"v1\",\\n  \"ingest\": {}\\n}\\n' | "
                          + commands["ingest"].split(" | ", 1)[1]], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "v1", out.stderr


def test_cron_example_runs_the_batch_and_the_cluster_variant() -> None:
    lines = [line for line in (ROOT / "deploy" / "recsys-batch.cron").read_text().splitlines() if line.strip()]
    jobs = [line for line in lines if not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 1 and jobs[0].split()[:5] == ["15", "2", "*", "*", "*"] and "recsys batch" in jobs[0]
    assert any("deploy/spark-batch.sh" in line for line in lines)
