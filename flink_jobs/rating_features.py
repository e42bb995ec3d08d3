"""The stream job: rating events -> online user and movie features in Redis.

Graph (operator uids in brackets; they keep state addressable across code changes)::

    spool FileSource (continuous) | KafkaSource   [source]
      -> ParseEvents                                [parse]  -- malformed --> FileSink dead letters [dead-letter]
      -> event-time timestamps + watermarks        [event-time, event-time-strip]  (Java)
      -> keyBy(user % SHARDS) UserFeatures          [user-features]  online:hist, online:user, online:stats
           -- progress records (spool source) --> FileSink  [progress]  <checkpoint dir>/progress
      -> keyBy(movie % SHARDS) MovieStats           [movie-stats]    online:movie, online:trending

Two Python functions per valid event (three with the parse); flink_jobs.operators says why the
graph has this shape. Checkpoints of the job before this layout (keyed by user id, a separate
stats operator) cannot be restored into it: start once with ``--from-start``.

This module builds the graph and its Flink configuration; it has no entry point.
The plane's one entry is ``flink_jobs/main.py`` (``recsys stream``, ``python -m
flink_jobs.main`` and ``flink run -py flink_jobs/main.py`` all go through it), and
``flink_jobs.control`` runs the job and watches its progress.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.events import dead_letter_dir, spool_dir

JOB_NAME = "recsys-rating-features"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
KAFKA_JAR_HINT = ("flink-sql-connector-kafka-<connector version>-2.0.jar (the Kafka connector built for Flink 2.x, "
                  "from Maven Central: org.apache.flink:flink-sql-connector-kafka)")


class StreamSetupError(ValueError):
    """The job cannot start as configured; the message says what to change."""


def settings_for(cfg: Config, redis_url: str):  # noqa: ANN201 - JobSettings (imported lazily: pyflink is heavy)
    from flink_jobs.operators import JobSettings

    return JobSettings(redis_url=redis_url, key_prefix=cfg.redis.key_prefix, history_len=cfg.features.history_len,
                       half_life_days=cfg.features.genre_half_life_days, reorder_events=cfg.stream.reorder_events,
                       trending_window_s=cfg.stream.trending_window_minutes * 60,
                       trending_slide_s=cfg.stream.trending_slide_minutes * 60,
                       sink_batch=cfg.stream.sink_batch, dedup_ttl_hours=cfg.stream.dedup_ttl_hours,
                       online_ttl_s=cfg.stream.online_ttl_hours * 3600, progress=cfg.events.log == "spool",
                       publish_ms=cfg.stream.publish_interval_ms)


def kafka_jars(cfg: Config) -> list[Path]:
    """The configured Kafka connector jar(s), or a StreamSetupError naming the jar and where it goes.

    One jar (the fat ``flink-sql-connector-kafka``) or several separated by commas (the thin
    ``flink-connector-kafka`` plus ``kafka-clients``, the pair the tests use)."""
    paths = [Path(p.strip()) for p in cfg.stream.kafka_jar.split(",") if p.strip()]
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        where = (f"stream.kafka_jar names {', '.join(repr(str(p)) for p in missing)}, which does not exist"
                 if missing else "stream.kafka_jar is not set")
        raise StreamSetupError(
            f"events.log = 'kafka' needs the Flink Kafka connector jar, and {where}. Download "
            f"{KAFKA_JAR_HINT} and set stream.kafka_jar in recsys.toml or RECSYS_STREAM_KAFKA_JAR to its path "
            "(the deploy image supplies it in production; `make kafka-deps` puts the thin connector and "
            "kafka-clients under .cache/kafka for the tests).")
    return [p.absolute() for p in paths]


def check_setup(cfg: Config) -> None:
    """Fail before anything starts when the configured source cannot work."""
    if cfg.events.log == "kafka":
        kafka_jars(cfg)
        if not cfg.events.kafka_bootstrap:
            raise StreamSetupError("events.log = 'kafka' needs events.kafka_bootstrap (host:port,...)")


def flink_settings(cfg: Config, restore_from: Path | None, local: bool) -> dict[str, str]:
    """Flink configuration of the job: checkpoints, restore, Python workers."""
    from flink_jobs.checkpoints import checkpoint_dir

    conf = {
        "pipeline.name": JOB_NAME,
        "execution.checkpointing.interval": f"{cfg.stream.checkpoint_interval_ms} ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.dir": checkpoint_dir(cfg).absolute().as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "state.backend.type": "hashmap",
        # The Python functions run inside the TaskManager's JVM (PEMJA), not in Beam workers:
        # ~10x the events/s of process mode here (flink_jobs/README.md, "Throughput").
        "python.execution-mode": "thread",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "1000000",
        "restart-strategy.fixed-delay.delay": "2 s",
    }
    if local:
        # Under `flink run`, -pyexec / -pyclientexec and the -pyfs bundle (deploy/flink-run.sh) decide instead.
        conf["python.executable"] = sys.executable
        conf["python.client.executable"] = sys.executable
        conf["parallelism.default"] = str(cfg.stream.parallelism)
        # Thread mode imports in the JVM's embedded interpreter, which sees only python.pythonpath
        # (not the venv's site-packages, not the working directory).
        conf["python.pythonpath"] = os.pathsep.join([sysconfig.get_paths()["purelib"], str(PROJECT_ROOT)])
    if restore_from is not None:
        conf["execution.state-recovery.path"] = restore_from.absolute().as_uri()
    return conf


def _source(env: Any, cfg: Config) -> Any:
    from pyflink.common import Duration, WatermarkStrategy

    if cfg.events.log == "kafka":
        from pyflink.common.serialization import SimpleStringSchema
        from pyflink.datastream.connectors.kafka import KafkaSource

        check_setup(cfg)
        env.add_jars(*(jar.as_uri() for jar in kafka_jars(cfg)))
        source = (KafkaSource.builder().set_bootstrap_servers(cfg.events.kafka_bootstrap)
                  .set_topics(cfg.events.kafka_topic).set_group_id(f"recsys-stream-{cfg.redis.key_prefix}")
                  .set_starting_offsets(_committed_offsets_or_earliest())
                  .set_value_only_deserializer(SimpleStringSchema()).build())
        return env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka").uid("source")
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat

    spool = spool_dir(cfg)
    spool.mkdir(parents=True, exist_ok=True)
    # Names starting with '.' (the writer's in-progress segments) are skipped by Flink's default filter.
    source = (FileSource.for_record_stream_format(StreamFormat.text_line_format(), str(spool.absolute()))
              .monitor_continuously(Duration.of_millis(cfg.stream.monitor_interval_ms)).build())
    return env.from_source(source, WatermarkStrategy.no_watermarks(), "spool").uid("source")


def _committed_offsets_or_earliest() -> Any:
    """``KafkaOffsetsInitializer.committed_offsets(EARLIEST)`` for either connector jar.

    PyFlink's wrapper names the reset strategy by its class in the fat sql jar, where kafka-clients is
    shaded (``org.apache.flink.kafka.shaded.org.apache.kafka...``); the thin connector with a plain
    kafka-clients jar has it under ``org.apache.kafka...``. Whichever class the loaded jars have is used.
    (A restored job starts from the offsets in its checkpoint; this applies to a fresh start only.)
    """
    from functools import reduce

    from py4j.java_gateway import JavaClass
    from pyflink.datastream.connectors.kafka import KafkaOffsetsInitializer
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    for name in ("org.apache.flink.kafka.shaded.org.apache.kafka.clients.consumer.OffsetResetStrategy",
                 "org.apache.kafka.clients.consumer.OffsetResetStrategy"):
        strategy = reduce(getattr, name.split("."), jvm)
        if isinstance(strategy, JavaClass):
            initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
            return KafkaOffsetsInitializer(initializer.committedOffsets(strategy.EARLIEST))
    raise StreamSetupError(f"the Kafka connector jar(s) are loaded but have no OffsetResetStrategy class; "
                           f"expected {KAFKA_JAR_HINT}")


def _checkpointed_files(out: Path, prefix: str) -> Any:
    """Exactly-once JSON-lines files in ``out``: a part file per checkpoint (only when it has lines),
    hidden while in progress, visible under ``<prefix>-<uuid>-<n>.jsonl`` when the checkpoint completes."""
    from pyflink.common.serialization import Encoder
    from pyflink.datastream.connectors.file_system import BucketAssigner, FileSink, OutputFileConfig, RollingPolicy

    out.mkdir(parents=True, exist_ok=True)
    return (FileSink.for_row_format(str(out.absolute()), Encoder.simple_string_encoder())
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
            .with_output_file_config(OutputFileConfig.builder().with_part_prefix(prefix).with_part_suffix(".jsonl").build())
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy()).build())


def _dead_letter_sink(cfg: Config) -> Any:
    return _checkpointed_files(dead_letter_dir(cfg), "dead")


def build(env: Any, cfg: Config, redis_url: str) -> None:
    """Add the whole job graph to ``env``."""
    from pyflink.common.typeinfo import Types

    from flink_jobs import operators as ops

    settings = settings_for(cfg, redis_url)
    lines = _source(env, cfg)
    parsed = lines.process(ops.ParseEvents(), output_type=ops.TIMED_EVENT_TYPE).uid("parse").name("parse")
    parsed.get_side_output(ops.DEAD_LETTER).sink_to(_dead_letter_sink(cfg)).uid("dead-letter").name("dead-letter")
    by_user = _keyed(_event_time(parsed, settings.trending_slide_s), Types.INT(), ops.EVENT_TYPE)
    users = by_user.process(ops.UserFeatures(settings), output_type=ops.KEYED_EVENT_TYPE).uid("user-features") \
        .name("user-features")
    _keyed(users, Types.INT(), ops.EVENT_TYPE).process(ops.MovieStats(settings), output_type=Types.STRING()) \
        .uid("movie-stats").name("movie-stats")
    if settings.progress:  # which spool segments completed checkpoints consumed (flink_jobs.progress)
        from flink_jobs.progress import PROGRESS_PREFIX, progress_dir

        users.get_side_output(ops.PROGRESS).sink_to(_checkpointed_files(progress_dir(cfg), PROGRESS_PREFIX)) \
            .uid("progress").name("progress")

def _keyed(rows: Any, key_type: Any, value_type: Any) -> Any:
    """A KeyedStream of ``rows`` that are already ``Row(key, value)``, keyed on the Java side.

    ``DataStream.key_by(f)`` would run ``f`` in one more Python operator for every record, only to
    build this same ``Row(key, value)``; the job's functions emit it themselves, and what remains of
    ``key_by`` (the Java ``KeyByKeySelector`` on field 0) is applied here, as PyFlink does.
    """
    from pyflink.common.typeinfo import Types
    from pyflink.datastream import KeyedStream
    from pyflink.java_gateway import get_gateway

    j_keyed = rows._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(),  # noqa: SLF001 - PyFlink's own route
                                        Types.ROW([key_type]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, rows)


def _event_time(parsed: Any, out_of_order_s: int) -> Any:
    """(Row(shard, event), ms) records -> Row(shard, event) with Flink timestamps and watermarks, on the Java side.

    ``ParseEvents`` already emits the event time next to the event, so the Java operators PyFlink
    itself uses behind ``assign_timestamps_and_watermarks`` (``CustomTimestampAssigner`` reads field
    1, ``RemoveTimestampMapFunction`` drops it) are applied directly: no Python operator for it.
    Out-of-orderness of one trending slide. One watermark generator for the whole stream
    (parallelism 1): a parallel one would wait for its slowest or idle subtask, and the PyFlink
    idleness option stops watermarks altogether (measured with Flink 2.3).
    """
    from pyflink.common import Duration, WatermarkStrategy
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    from flink_jobs import operators as ops

    eventtime = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.eventtime
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_seconds(out_of_order_s))
    stamped = DataStream(parsed._j_data_stream.assignTimestampsAndWatermarks(  # noqa: SLF001 - PyFlink's own route
        strategy._j_watermark_strategy.withTimestampAssigner(eventtime.CustomTimestampAssigner())))  # noqa: SLF001
    stamped.uid("event-time").name("event-time").set_parallelism(1)
    events = DataStream(stamped._j_data_stream.map(eventtime.RemoveTimestampMapFunction(),  # noqa: SLF001
                                                   ops.KEYED_EVENT_TYPE.get_java_type_info()))
    return events.uid("event-time-strip").name("event-time-strip").set_parallelism(1)


def make_env(cfg: Config, restore_from: Path | None, local: bool = True) -> Any:
    """A StreamExecutionEnvironment configured for this job (the mini-cluster when ``local``)."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    conf = Configuration()
    for key, value in flink_settings(cfg, restore_from, local).items():
        conf.set_string(key, value)
    if local:
        log_dir = cfg.home / "logs" / "flink"
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("FLINK_LOG_DIR", str(log_dir))  # read when the JVM gateway starts
        env = StreamExecutionEnvironment.get_execution_environment(conf)
    else:
        env = StreamExecutionEnvironment.get_execution_environment()
        env.configure(conf)
    return env
