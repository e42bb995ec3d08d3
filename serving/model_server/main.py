"""``python -m serving.model_server``: the model server's command line."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from pipeline.home import atomic_write_text
from serving.model_server.server import ModelServer
from serving.runtime import GcFreezer

log = logging.getLogger(__name__)

LISTEN_LINE = "model server listening on {host}:{port}"


def _label(text: str) -> tuple[str, int]:
    name, sep, version = text.partition("=")
    if not sep or not name or not version.isdigit():
        raise argparse.ArgumentTypeError(f"--label wants NAME=VERSION, got {text!r}")
    return name, int(version)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.model_server",
                                description="TensorFlow-Serving-protocol model server for one SavedModel base path.")
    p.add_argument("--base", required=True, help="model base path holding <version>/saved_model.pb directories")
    p.add_argument("--name", default="ranker", help="model name clients put in ModelSpec.name")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0 = any free port; the chosen one is printed)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="file-system poll interval for new versions")
    p.add_argument("--max-batch", type=int, default=8, help="most Predict calls merged into one model call (1 = off)")
    p.add_argument("--batch-timeout-ms", type=float, default=2.0, help="how long a request waits for others to batch with")
    p.add_argument("--batch-threads", type=int, default=1, help="threads running merged batches")
    p.add_argument("--max-in-flight", type=int, default=32,
                   help="gRPC calls worked on at once; one more is refused at once with RESOURCE_EXHAUSTED (0 = none)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="TensorFlow threads inside one op (0 = TensorFlow's default: one per core)")
    p.add_argument("--inter-op-threads", type=int, default=0,
                   help="TensorFlow threads running independent ops (0 = TensorFlow's default)")
    p.add_argument("--keep-versions", type=int, default=1, help="newest versions kept loaded (TF Serving's latest policy)")
    p.add_argument("--label", type=_label, action="append", default=[], metavar="NAME=VERSION",
                   help="a version label (ModelSpec.version_label); repeatable")
    p.add_argument("--port-file", help="write the bound port to this file (atomically) once listening")
    p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight calls get on SIGTERM/SIGINT")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def set_tf_threads(intra: int, inter: int) -> None:
    """TensorFlow's thread pools, set before anything is loaded (0 leaves TensorFlow's default).

    Why it is a knob: with many concurrent requests on few cores, one op spread over every
    core costs more in hand-offs than it gains; ``bench/serving_bench.py --intra-op-threads``
    measures it on the machine at hand.
    """
    if intra <= 0 and inter <= 0:
        return
    import tensorflow as tf

    if intra > 0:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter > 0:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    set_tf_threads(args.intra_op_threads, args.inter_op_threads)
    server = ModelServer(args.base, args.name, poll_seconds=args.poll_seconds, max_batch=args.max_batch,
                         batch_timeout_ms=args.batch_timeout_ms, keep_versions=args.keep_versions,
                         batch_threads=args.batch_threads, host=args.host, labels=dict(args.label),
                         max_in_flight=args.max_in_flight)
    try:
        port = server.start(args.port)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    print(LISTEN_LINE.format(host=args.host, port=port), flush=True)
    if args.port_file:
        atomic_write_text(Path(args.port_file), f"{port}\n")
    freezer = GcFreezer()  # the loaded versions' objects out of the collector's walks (serving.runtime)
    while not stop.wait(0.5):
        pass
    freezer.stop()
    log.info("%s received; stopping (grace %.1fs)", signal.Signals(received[0]).name, args.grace)
    server.stop(args.grace)
    log.info("model server stopped")
    return 0
