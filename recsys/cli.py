"""The `recsys` command line: parses flags and hands over to ``recsys.commands``.

    recsys [--home DIR] [--config FILE] [--verbose] <command> ...
    recsys <command> ... [--home DIR] [--config FILE] [--verbose]     # the same

Commands: ``data`` (synth, inspect), ``batch``, ``evaluate``, ``train``, ``export``,
``explain``, ``serve``, ``stream``, ``events``, ``redis``, ``config``, ``demo``. Bare ``recsys``
prints this help; ``recsys --version`` the version. Errors a user can fix (bad input,
bad config, missing data) print one clear line and exit 2; nothing prints a traceback
unless ``RECSYS_DEBUG=1``. Commands that start Spark, Flink or TensorFlow send those
libraries' own output to ``<home>/logs/<command>.log`` (``recsys.quiet``);
``--verbose`` shows it instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path

from recsys.commands import batch as batch_cmd
from recsys.commands import data as data_cmd
from recsys.commands import demo as demo_cmd
from recsys.commands import evaluate as evaluate_cmd
from recsys.commands import model as model_cmd
from recsys.commands import ops as ops_cmd
from recsys.commands import serve as serve_cmd
from recsys.commands import stream as stream_cmd
from recsys.commands.ui import UsageError, console, out  # noqa: F401 - `out` is what tests capture
from flink_jobs.main import add_job_arguments
from pipeline.config import ConfigError, default_home
from pipeline.home import Home
from pipeline.store import NotPublished, StoreUnavailable
from recsys.quiet import noise_to_log


# Commands that start Spark, Flink or TensorFlow: their libraries' output goes to <home>/logs/<name>.log.
NOISY = ("batch", "evaluate", "train", "export", "explain", "serve", "stream", "demo")


def version() -> str:
    try:
        return metadata.version("recsys")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """--home, --config, --verbose: on the top parser, and again on every sub-command.

    On a sub-command they default to SUPPRESS, so ``recsys serve --home H`` and
    ``recsys --home H serve`` mean the same and a value given after the sub-command wins.
    """
    parser.add_argument("--home", default=default, help="home directory of all artifacts (default $RECSYS_HOME or ./var)")
    parser.add_argument("--config", default=default, help="TOML config file (default <home>/recsys.toml when present)")
    parser.add_argument("-v", "--verbose", action="store_true", default=False if default is None else default,
                        help="show Spark, Flink and TensorFlow output on the terminal instead of <home>/logs/")


class _Sub:
    """``add_parser`` with the global options on every level."""

    def __init__(self, action: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self.action, self.common = action, common

    def add(self, name: str, **kw: object) -> argparse.ArgumentParser:
        return self.action.add_parser(name, parents=[self.common], **kw)  # type: ignore[arg-type]


# --- parser ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description="Movie recall-and-rank pipeline: batch (Spark), "
                                     "stream (Flink), ranking (TensorFlow), serving (gRPC).",
                                     epilog="Global options may also follow the command: recsys serve --home var")
    _global_options(parser, None)
    parser.add_argument("--version", action="version", version=f"recsys {version()}")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = _Sub(parser.add_subparsers(dest="command", metavar="command"), common)

    data = sub.add("data", help="generate or inspect MovieLens-format data")
    dsub = _Sub(data.add_subparsers(dest="action", required=True, metavar="action"), common)
    synth = dsub.add("synth", help="write a synthetic dataset in the ML-1M layout")
    synth.add_argument("--out", help="output directory (default <home>/data/synthetic)")
    synth.add_argument("--users", type=int)
    synth.add_argument("--movies", type=int)
    synth.add_argument("--ratings", type=int)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    synth.set_defaults(func=data_cmd.cmd_data_synth)
    inspect = dsub.add("inspect", help="detect a dataset's layout and validate every row")
    inspect.add_argument("dir")
    inspect.add_argument("--on-bad-rows", choices=("fail", "skip"), default="fail")
    inspect.set_defaults(func=data_cmd.cmd_data_inspect)

    batch = sub.add("batch", help="run the Spark batch plane and publish to Redis")
    batch.add_argument("--data", help="MovieLens directory (default: the home's synthetic data, generated if absent)")
    batch.add_argument("--split", choices=("none", "p1", "p2", "p3"),
                       help="'p1': hold out each user's last two ratings (leave-one-out); 'p2': a random 10%% (rating "
                            "prediction); 'p3': the latest 10%% of the timeline, for streaming replay")
    batch.add_argument("--steps", help="comma-separated subset of ingest,prepare,features,recall,samples,publish")
    batch.add_argument("--version", help="rerun --steps inside this existing batch version")
    batch.add_argument("--on-bad-rows", choices=("fail", "skip"), help="malformed input rows: fail (default) or skip")
    batch.set_defaults(func=batch_cmd.cmd_batch)

    evaluate = sub.add("evaluate", help="quality under docs/evaluation.md protocols")
    evaluate.add_argument("--stage", choices=("recall", "model"), default="recall",
                          help="recall: channel coverage; model: rankers and baselines (P1 full, sampled, rating error)")
    evaluate.add_argument("--runs", help="(model) comma-separated training runs to add as rows, e.g. ablations")
    evaluate.add_argument("--no-baselines", action="store_true", help="(model) skip popularity, item-kNN and MF")
    evaluate.add_argument("--cold", action="store_true", help="(model) add the cold-start user and movie slices")
    evaluate.add_argument("--gateway", nargs="?", const="embedded", metavar="HOST:PORT",
                          help="(model) add P1 through the serving path (Recommend/Rank over gRPC): a running "
                               "gateway at HOST:PORT, or without a value one started here for the home")
    evaluate.add_argument("--protocol", choices=("p3",),
                          help="p3: streaming replay through the gateway with the stream job off and on "
                               "(needs a `--split p3` build and an export)")
    evaluate.add_argument("--max-events", type=int, default=2000, help="(p3) replay the first N held-back events")
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument("--max-users", type=int, help="evaluate a seeded sample of users (P2: of test ratings)")
    evaluate.add_argument("--json", help="also write the table as JSON here")
    evaluate.set_defaults(func=evaluate_cmd.cmd_evaluate)

    tr = sub.add("train", help="train the ranking model on the current batch version's examples")
    tr.add_argument("--version", help="batch version (default: CURRENT)")
    tr.add_argument("--run", help="run name (default: <version>-<split>-<ablation>); an interrupted run resumes")
    tr.add_argument("--ablate", help="comma-separated blocks to switch off, e.g. attention,lstm")
    tr.add_argument("--epochs", type=int)
    tr.add_argument("--batch-size", type=int)
    tr.add_argument("--patience", type=int)
    tr.add_argument("--max-train-examples", type=int, help="train on a seeded sample (0 = all)")
    tr.add_argument("--budget", type=int, dest="train_budget_s", metavar="SECONDS",
                    help="wall-clock bound of the whole training (default model.train_budget_s, 1080; 0 = none)")
    tr.set_defaults(func=model_cmd.cmd_train)

    ex = sub.add("export", help="export a trained run for TensorFlow Serving (<home>/models/ranker/<n>/)")
    ex.add_argument("--run", help="run name (default: the latest)")
    ex.set_defaults(func=model_cmd.cmd_export)

    xp = sub.add("explain", help="attention heatmap (PNG) and the history movies behind a score")
    xp.add_argument("--user", type=int, required=True)
    xp.add_argument("--movie", required=True, help="movie id, or several comma-separated")
    xp.add_argument("--out", help="PNG path (default <home>/explain/user-<U>.png)")
    xp.set_defaults(func=model_cmd.cmd_explain)

    sv = sub.add("serve", help="Redis + model server + gateway (gRPC recsys.v1.Recommender, HTTP /api) until Ctrl-C")
    sv.add_argument("--bind", help="listen address (default serving.bind, 0.0.0.0)")
    sv.add_argument("--grpc-port", type=int, help="gRPC port (default serving.grpc_port, 50051)")
    sv.add_argument("--http-port", type=int, help="HTTP port (default serving.http_port, 8080)")
    sv.add_argument("--model-server", help="host:port of a TensorFlow Serving instead of the embedded model server, or 'in-process' (the embedded one inside the gateway, no gRPC hop)")
    sv.set_defaults(func=serve_cmd.cmd_serve)

    red = sub.add("redis", help="the home's embedded redis-server")
    red.add_argument("action", choices=("start", "stop", "status"))
    red.set_defaults(func=ops_cmd.cmd_redis)

    conf = sub.add("config", help="show the effective configuration or the commented sample")
    conf.add_argument("action", choices=("show", "sample"))
    conf.set_defaults(func=ops_cmd.cmd_config)

    ev = sub.add("events", help="the event path's storage: prune deletes consumed spool segments and old dead letters")
    ev.add_argument("action", choices=("prune",))
    ev.set_defaults(func=ops_cmd.cmd_events)

    st = sub.add("stream", help="the Flink job: rating events -> online features in Redis, until Ctrl-C")
    add_job_arguments(st)  # the job's own options, the same as `python -m flink_jobs.main`
    st.set_defaults(func=stream_cmd.cmd_stream)

    demo = sub.add("demo", help="synthetic data -> batch -> ranker -> serving + stream, end to end")
    demo.add_argument("--data", help="use this MovieLens directory instead of synthetic data")
    demo.add_argument("--users", type=int, default=6040)
    demo.add_argument("--movies", type=int, default=3883)
    demo.add_argument("--ratings", type=int, default=1_000_209)
    demo.add_argument("--show", type=int, default=3, help="how many users to print")
    demo.add_argument("--k", type=int, default=10)
    demo.add_argument("--epochs", type=int, default=1, help="epochs of the demo ranker")
    demo.add_argument("--train-examples", type=int, default=200_000, help="examples the demo ranker trains on (0 = all)")
    demo.add_argument("--sequence-epochs", type=int, default=4, help="epochs of the demo's next-movie sequence model")
    demo.add_argument("--replay", type=int, default=5, help="held-back ratings of one user replayed through the stream")
    demo.add_argument("--no-stream", action="store_true", help="skip the stream part")
    demo.set_defaults(func=demo_cmd.cmd_demo)
    return parser


def log_path(args: argparse.Namespace) -> Path | None:
    """Where a command's library output goes (None: a command that starts no such library)."""
    if args.command not in NOISY:
        return None
    home = Path(args.home) if args.home else default_home()
    return Home(home).logs / f"{args.command}.log"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `recsys`: what there is to do
        parser.print_help()
        return 0
    from model.train import TrainingError
    from pipeline import movielens as ml
    from pipeline.evaluate import EvaluationError
    from pipeline.redis_server import RedisUnavailable
    from spark_jobs.batch import BatchError

    path = log_path(args)
    try:
        if path is None:
            return int(args.func(args) or 0)
        with noise_to_log(path, verbose=args.verbose or bool(os.environ.get("RECSYS_DEBUG")),
                          title=f"recsys {args.command}"):
            return int(args.func(args) or 0)
    except (UsageError, ConfigError, ml.DatasetError, EvaluationError, RedisUnavailable, BatchError, TrainingError,
            NotPublished, StoreUnavailable, ValueError, FileNotFoundError) as exc:
        if os.environ.get("RECSYS_DEBUG"):
            raise
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
