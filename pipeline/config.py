"""The one typed configuration of the project.

Every default lives here and only here: the commented sample file
(``recsys.example.toml``) is *generated* from these dataclasses
(``recsys config sample``) and a test checks that the committed sample equals the
generated one, so documentation and code cannot drift apart (the Gorse lesson).

Precedence, lowest first:

1. the defaults below;
2. a TOML file: ``--config PATH``, else ``$RECSYS_HOME/recsys.toml`` when present;
3. environment variables ``RECSYS_<SECTION>_<KEY>`` (for example
   ``RECSYS_RECALL_ALS_RANK=32`` or ``RECSYS_REDIS_URL=redis://host:6379/0``);
4. explicit command-line flags.

Unknown sections or keys are errors (Feast's ``extra="forbid"``): a typo in a config
file must not silently fall back to a default.

Example::

    cfg = load_config(home="var", overrides={"recall": {"als_top_n": 300}})
    cfg.recall.als_top_n  # 300
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ENV_PREFIX = "RECSYS_"


class ConfigError(ValueError):
    """A configuration value, file or variable is invalid; the message names it."""


def _f(default: Any, doc: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its documentation (used to write the sample file)."""
    meta = {"doc": doc, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SparkConfig:
    """How the batch plane gets its Spark session."""

    master: str = _f("local[*]", "Spark master URL; local[*] is the embedded default, spark://, yarn or k8s:// in production.")
    driver_memory: str = _f("4g", "spark.driver.memory for local runs (ignored by spark-submit, which sets its own).")
    shuffle_partitions: int = _f(8, "spark.sql.shuffle.partitions; small on one machine, raise it on a cluster.")
    log_level: str = _f("WARN", "Spark's log level.", ("ERROR", "WARN", "INFO", "DEBUG"))


@dataclass(frozen=True)
class DataConfig:
    """Reading MovieLens and preparing it for the evaluation protocols."""

    on_bad_rows: str = _f("fail", "What a malformed input row does: 'fail' names the file and line; 'skip' counts and drops it.", ("fail", "skip"))
    min_movie_ratings: int = _f(5, "5-core filter (docs/evaluation.md): movies with fewer ratings are dropped first ...")
    min_user_ratings: int = _f(5, "... then users with fewer ratings (one pass).")
    split: str = _f("none", "'none' trains on everything (serving); 'p1' holds out each user's last two events (leave-one-out evaluation); 'p2' holds out a seeded random 10% of ratings (rating-prediction evaluation); 'p3' holds out every event after the 90th-percentile timestamp for streaming replay.", ("none", "p1", "p2", "p3"))
    p2_test_fraction: float = _f(0.1, "P2: share of ratings held out as test (seeded by samples.seed).")
    p2_val_fraction: float = _f(0.05, "P2: share of ratings held out for early stopping.")
    p3_replay_fraction: float = _f(0.1, "P3: share of the timeline (latest events) held out and replayed through the gateway.")


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic MovieLens generator; defaults match ML-1M's published shape."""

    users: int = _f(6040, "Number of users (ML-1M: 6,040).")
    movies: int = _f(3883, "Number of listed movies (ML-1M: 3,883, of which 3,706 are rated).")
    ratings: int = _f(1_000_209, "Number of ratings (ML-1M: 1,000,209).")
    seed: int = _f(42, "Random seed; the same seed writes byte-identical files.")
    min_user_ratings: int = _f(20, "Every user has at least this many ratings (ML-1M: 20).")
    unrated_fraction: float = _f(0.0456, "Share of listed movies nobody rated (ML-1M: 177 of 3,883).")
    popularity_exponent: float = _f(1.0, "Weight of log-popularity in a user's choice; higher = more skewed popularity.")
    taste_strength: float = _f(2.6, "Weight of the user's latent taste (and demographic genre effects) in choices (2.6 and sequence_strength 2.3: the baselines' ratios of real MovieLens, docs/architecture.md).")
    sequence_strength: float = _f(2.3, "How tightly the order of a user's ratings follows their drifting taste (higher = more sequential signal; 0 = random order).")
    latent_dim: int = _f(16, "Dimension of the latent user/movie taste vectors.")
    session_gap_minutes: float = _f(2.0, "Mean gap between two ratings of one session.")
    sessions_per_user: float = _f(4.0, "Mean number of rating sessions per user.")
    start_date: str = _f("2000-04-25", "Earliest rating date (ML-1M: 2000-04-25).")
    end_date: str = _f("2003-02-28", "Latest rating date (ML-1M: 2003-02-28).")


@dataclass(frozen=True)
class FeatureConfig:
    """Feature definitions shared by batch, stream and serving (pipeline.features)."""

    history_len: int = _f(50, "How many recent ratings a user's published history keeps.")
    genre_half_life_days: float = _f(30.0, "Half-life of the time decay in genre affinity, in days.")
    title_max_tokens: int = _f(8, "Title tokens kept per movie.")


@dataclass(frozen=True)
class RecallConfig:
    """Recall channels: which run, how many candidates each gives, how they merge."""

    channels: list = _f(["sequential", "item_similar", "als", "genre_popular", "demographic_popular", "popular", "trending"],
                        "Channels merged for a known user, in priority order (names in pipeline.recall.CHANNELS); 'trending' is empty until the stream job runs.")
    cold_start_channels: list = _f(["demographic_popular", "genre_popular", "trending", "popular"], "Channels for a user without history.")
    merged_size: int = _f(500, "Candidates handed to ranking after merging and de-duplicating the channels.")
    als_top_n: int = _f(200, "ALS candidates stored per user.")
    als_rank: int = _f(64, "ALS latent factors.")
    als_reg: float = _f(0.5, "ALS regularisation.")
    als_iters: int = _f(10, "ALS iterations.")
    als_implicit: bool = _f(True, "Implicit-feedback ALS (every rating is an interaction); see README for why.")
    als_alpha: float = _f(5.0, "Confidence scale of implicit ALS.")
    similar_k: int = _f(50, "Similar movies stored per movie (item factors + item2vec).")
    item2vec: bool = _f(True, "Also learn item2vec (Spark Word2Vec over user sequences) for similar movies.")
    item2vec_dim: int = _f(32, "item2vec vector size.")
    sequential_k: int = _f(50, "'Rated next' movies stored per movie.")
    sequential_window: int = _f(3, "How many following ratings count as 'next' (weights 1, 1/2, 1/3, ...).")
    recent_items: int = _f(10, "How many of the user's latest movies seed the item-to-item channels.")
    popular_n: int = _f(300, "Length of the popular / top-rated lists (overall, per genre, per demographic).")
    toprated_min_count: int = _f(20, "Minimum ratings for a movie to enter a top-rated list.")
    quotas: dict = _f({"sequential": 300, "item_similar": 250, "als": 200, "genre_popular": 100,
                       "demographic_popular": 60, "popular": 60, "trending": 50},
                      "Maximum candidates each channel contributes before merging.")


@dataclass(frozen=True)
class SamplesConfig:
    """Training examples for the ranking model."""

    history_len: int = _f(30, "Movies of history (strictly before the event) attached to each example.")
    negatives: int = _f(4, "Sampled negatives per positive example.")
    negative_sampling: str = _f("uniform", "How negatives are drawn from movies the user never rated.", ("uniform", "popularity"))
    seed: int = _f(7, "Seed of negative sampling (examples are reproducible).")


@dataclass(frozen=True)
class ModelConfig:
    """The ranking model (model/): architecture sizes, training, ablations. Seed-paper values noted."""

    embedding_dim: int = _f(64, "Embedding width (seed paper: 64).")
    hidden: int = _f(128, "Width of the interaction MLP and residual blocks.")
    dropout: float = _f(0.2, "Dropout in residual blocks (seed paper: 0.2).")
    user_id_dropout: float = _f(0.1, "Share of training rows whose user id is hidden, so unseen users get a learned embedding.")
    attention_heads: int = _f(2, "Heads of the self-attention over the history.")
    residual_blocks: int = _f(2, "Residual blocks after the interaction layer.")
    batch_size: int = _f(512, "Examples per step (seed paper: 64; 512 keeps a 1M-example epoch near 10 min on 2 CPU cores; its effect on quality is not measured).")
    learning_rate: float = _f(0.001, "Adam learning rate; halved when validation loss stalls.")
    epochs: int = _f(8, "Maximum epochs (early stopping usually ends sooner).")
    patience: int = _f(2, "Early-stopping patience in epochs (seed paper: 10; each 1M-rating epoch costs minutes on CPU).")
    score_weight: float = _f(1.0, "Weight of the interaction (BCE) loss.")
    rating_weight: float = _f(0.5, "Weight of the rating (MSE) loss.")
    ablate: list = _f([], "Blocks switched off (user_id, demographics, genre_conv, movie_id, decade, title_cnn, movie_stats, attention, lstm, target_attention, residual, history).")
    cold_movie_rate: float = _f(0.05, "Share of training candidates shown as brand-new movies (no id, no statistics), so new movies get sensible scores.")
    cold_user_rate: float = _f(0.05, "Share of training rows shown as brand-new users (no id, no history; demographics and interest genres kept).")
    max_train_examples: int = _f(0, "Train on a seeded sample of at most this many examples (0 = all).")
    epoch_examples: int = _f(250_000, "Examples per ranker epoch at most (0 = all): on a large set an epoch is a slice of the reshuffled stream, so early stopping, the learning-rate schedule and the time budget act every few minutes instead of once per pass.")
    train_budget_s: int = _f(1080, "Wall-clock bound of `recsys train` in seconds (0 = none): 18 min, so a 1M-rating set trains within 20 min on 2 CPU cores. Each model stops at the epoch that would overrun its share; the development sets fit inside it.")
    sequence_budget_share: float = _f(0.5, "Share of `train_budget_s` for the next-movie model, which trains first; the ranker (and the rating prior) get what it leaves, less a reserve for choosing the mix and saving. With a fixed ranker share (0.35) the ranker stopped after 2 epochs on ML-100K while the next-movie model needed 111 s of its time.")
    seed: int = _f(1234, "Seed of initialisation and shuffling.")
    sequence_epochs: int = _f(60, "Maximum epochs of the next-movie sequence model (0 = train the ranker alone); early stopping on validation NDCG@10 usually ends sooner.")
    sequence_patience: int = _f(4, "Epochs without a better validation NDCG@10 before the sequence model stops.")
    sequence_dim: int = _f(64, "Embedding width of the sequence model.")
    sequence_blocks: int = _f(2, "Causal self-attention blocks of the sequence model.")
    sequence_lstm: bool = _f(False, "An LSTM after the attention blocks (seed block; off: it bought nothing on the development sets).")
    sequence_batch_size: int = _f(128, "Windows per step of the sequence model.")
    sequence_window_stride: int = _f(10, "Movies between the ends of a user's training windows (each window holds the history length); below it windows overlap, so a target is also predicted from a longer context. Sequence model alone, P1 test HR@10 / NDCG@10: ML-100K 0.2206 / 0.1166 at 10 against 0.2036 / 0.1049 at 30 (no overlap), ml-latest-small 0.1148 / 0.0585 against 0.1000 / 0.0551; 5 overfits sooner.")
    sequence_learning_rate: float = _f(0.003, "Adam learning rate of the sequence model (its own: on ml-latest-small 0.003 reached validation NDCG@10 0.080 in 300 s of training where 0.001 reached 0.024 in 160 s and 0.074 after 48 epochs; 0.006 gave 0.078).")
    sequence_mix: float = _f(-1.0, "Share of the sequence model's log-probability in the exported score, 0..1; -1 = chosen on validation.")
    mix_users: int = _f(1000, "Validation users the mix is chosen on (a seeded sample).")
    neighbour_weight: float = _f(-1.0, "Weight of the neighbour prior (EASE + last-movie transition, standardised per user; model/neighbours.py) in the exported score's logit, >= 0; -1 = chosen on validation jointly with sequence_mix, 0 = no prior. Exported only with the next-movie model (model.sequence_epochs > 0), beside which its weight is chosen.")
    neighbour_max_movies: int = _f(5000, "Movies the neighbour prior covers (the most-rated; its EASE table is dense: 5,000 movies = 100 MB of float32).")
    neighbour_successors: int = _f(50, "Likeliest next movies kept per movie in the neighbour prior's transition table.")
    hard_negatives: int = _f(4, "Extra negatives per ranker example drawn from the successors of its latest history movie (what recall proposes at that moment; model/neighbours.py), never a movie the user rated; 0 = the batch's uniform negatives only. With listwise_weight 1, ML-100K P1 through the gateway went from 0.2206 / 0.1192 to 0.2365 / 0.1280 full HR@10 / NDCG@10 (ml-latest-small 0.1262 / 0.0650 -> 0.1197 / 0.0660, within noise); validation NDCG@10 rose on both.")
    listwise_weight: float = _f(1.0, "Weight of a listwise loss for the ranker (softmax cross-entropy of the rated movie over its example's candidate list), added to the interaction BCE; 0 = pointwise only.")


@dataclass(frozen=True)
class PublishConfig:
    """Loading batch outputs into Redis."""

    keep_versions: int = _f(2, "Published versions kept in Redis and on disk; at least 2 (the current one and its predecessor, so a reader that resolved the previous version mid-switch never reads deleted keys).")
    pipeline_size: int = _f(2000, "Redis commands per pipeline round trip while publishing.")
    lock_seconds: float = _f(60.0, "TTL of the Redis publish lock, renewed every third of it while a publish runs; a killed publish's lock expires after it.")


@dataclass(frozen=True)
class RedisConfig:
    """Where Redis is."""

    url: str = _f("", "Redis URL (redis://host:port/db). Empty: start the home's embedded redis-server.")
    key_prefix: str = _f("rs", "Prefix of every key (pipeline.keys); two deployments can share one Redis with different prefixes.")


@dataclass(frozen=True)
class EventsConfig:
    """The rating event log between the gateway (writer) and the stream job (reader)."""

    log: str = _f("spool", "Event log: 'spool' (JSON-lines segment files under the home, the embedded default) or 'kafka' (production). The one choice: the gateway writes this log and the stream job reads it.", ("spool", "kafka"))
    spool_dir: str = _f("", "Spool directory of rolled segments; empty = <home>/events/spool.")
    dead_letter_dir: str = _f("", "Where malformed events go with their reason; empty = <home>/events/dead-letter.")
    roll_seconds: float = _f(1.0, "A spool segment is closed and made visible (atomic rename) after this many seconds ...")
    roll_events: int = _f(500, "... or this many events, whichever comes first.")
    retain_hours: float = _f(24.0, "A spool segment is deleted once a completed checkpoint of the stream job has consumed it and it has been in the spool this many hours (the margin for replays and inspection; 0 = as soon as consumed). Run by `recsys stream` every minute and by `recsys events prune`.")
    dead_letter_keep_days: float = _f(7.0, "Dead-letter files older than this many days are deleted by the same retention step (0 = no age limit).")
    dead_letter_max_mb: float = _f(1024.0, "... and the oldest ones while all of them together exceed this many MiB (0 = no size limit).")
    kafka_bootstrap: str = _f("", "Kafka bootstrap servers (host:port,...) when log = 'kafka'.")
    kafka_topic: str = _f("ratings", "Kafka topic of rating events.")


@dataclass(frozen=True)
class ServingConfig:
    """The gateway (gRPC + HTTP) and the model server it calls."""

    bind: str = _f("127.0.0.1", "Address the gateway's gRPC and HTTP servers listen on; anything beyond loopback (0.0.0.0, a LAN address) also needs api_token.")
    grpc_port: int = _f(50051, "gRPC port of recsys.v1.Recommender (0 = any free port).")
    http_port: int = _f(8080, "HTTP port of the JSON API, /healthz, /metrics and the web UI (0 = any free port).")
    model_server: str = _f("", "host:port of a TensorFlow Serving (or compatible) gRPC endpoint; empty = start the embedded model server as a child process; 'in-process' = the same server inside the gateway's process, called without gRPC (one process fewer, but one GIL: on 2 cores it measured no cheaper per request and a lower capacity, README Serving; a model crash then takes the gateway down).")
    model_name: str = _f("ranker", "Model name in the model server (TF Serving's model_config name).")
    model_port: int = _f(8500, "gRPC port of the embedded model server (TF Serving's default; 0 = any free port).")
    model_poll_seconds: float = _f(2.0, "How often the embedded model server polls the model base path for new versions.")
    max_batch: int = _f(8, "Embedded model server: most concurrent Predict calls merged into one model call.")
    batch_timeout_ms: float = _f(2.0, "Embedded model server: how long a lone request waits for others to batch with.")
    model_intra_op_threads: int = _f(1, "Embedded model server: TensorFlow threads inside one op (0 = TensorFlow's default, one per core). 1 measured best under concurrent load on 2 cores: model CPU per Recommend 11.6 vs 14.1 ms, Predict p99 at 200/s 35 vs 68 ms (README, Benchmarks).")
    model_inter_op_threads: int = _f(0, "Embedded model server: TensorFlow threads running independent ops (0 = TensorFlow's default).")
    model_max_in_flight: int = _f(32, "Embedded model server: Predict calls worked on at once; one more is refused at once with RESOURCE_EXHAUSTED (the gateway's breaker counts it) instead of queueing to its deadline (0 = no bound). Measured: Predict alone offered 400/s on 2 cores without a bound queued 2,533 of 4,000 calls past their 2 s deadline (README, Serving).")
    deadline_ms: int = _f(2000, "Default deadline of a gateway call when the client sets none.")
    redis_timeout_ms: int = _f(250, "Socket timeout of the gateway's Redis calls; beyond it the Redis fallback answers.")
    model_timeout_ms: int = _f(1000, "Deadline of one Predict call; beyond it the recall order answers (degraded).")
    model_breaker_failures: int = _f(5, "Failed Predict calls in a row (down, refusing, erroring, or past model_timeout_ms) after which the gateway stops calling the model server for model_breaker_seconds and answers degraded at once; 0 = no breaker.")
    model_breaker_seconds: float = _f(1.0, "How long the open breaker skips the model server before one trial call.")
    precomputed_candidates: bool = _f(True, "Rank through the export's rank_ids signature (user inputs and candidate ids; the candidate tower was computed at export) whenever that is exact: movies the model knows, and the model's batch version served. Off, or otherwise: serving_default with every candidate's features.")
    candidates: int = _f(400, "How many merged recall candidates are ranked per Recommend call.")
    grpc_max_in_flight: int = _f(6, "gRPC calls one gateway process works on at once; a call beyond it is refused at once with RESOURCE_EXHAUSTED instead of queueing to its deadline. About 3 per core: measured on 2 cores at twice the capacity, 32 in flight queued accepted calls to p50 354 ms and refusals to p99 171 ms, 6 kept them at 51 ms and 15 ms for the same goodput (README, Serving).")
    recall_weight: float = _f(0.0, "Blend: final = model score + recall_weight * normalised recall score.")
    model_recall: int = _f(300, "Candidates the model's next_movies signature (the sequence model) adds to recall; 0 = off.")
    model_recall_kept: bool = _f(True, "Rank every one of those candidates (they join after the fused cut of the other channels, so up to candidates + model_recall are ranked); off: they compete in the fusion like any channel and most are cut.")
    genre_cap: float = _f(1.0, "Most of a Recommend list one genre may fill (share of k; 1.0 = no cap). Off by default: measured through the gateway, a 0.5 cap cost 14 % full HR@10 on ml-latest-small (0.131 -> 0.113) for +2 % on ML-100K; a site that wants variety sets it.")
    rank_cold_start: bool = _f(False, "Re-rank cold-start users' lists with the model (off: their recall order stands; the model's cold-user slice measured below popularity).")
    max_k: int = _f(100, "Largest k a caller may ask for.")
    version_check_seconds: float = _f(1.0, "How often the gateway checks Redis for a newly published batch version.")
    idempotency_keys: int = _f(100_000, "RecordRating idempotency keys one gateway process remembers (the oldest are forgotten first); a retry with a remembered key appends nothing.")
    idempotency_hours: float = _f(24.0, "How long a gateway remembers a RecordRating idempotency key. Beyond it (or in another gateway process) a retry is appended again with the same event id, which the stream job drops within stream.dedup_ttl_hours.")
    api_token: str = _f("", "Bearer token service callers send (gRPC metadata or HTTP header 'authorization: Bearer <token>') for every recsys.v1 call and /api; empty = no token, allowed only while bind is loopback.")
    http_read_timeout_seconds: float = _f(5.0, "HTTP: a request's head and body must arrive within this many seconds of its first byte (or of the connection), else 408 and close.")
    http_keep_alive_seconds: int = _f(5, "HTTP: an idle keep-alive connection is closed after this many seconds.")
    http_max_in_flight: int = _f(32, "HTTP /api calls one gateway process answers at once; one more is refused at once with 429 (retry-after 1) instead of queueing to its deadline.")
    http_max_connections: int = _f(200, "HTTP: concurrent connections and requests beyond this are answered 503.")
    http_max_body_bytes: int = _f(1048576, "HTTP: largest request body (413 beyond it).")
    tls_certfile: str = _f("", "PEM certificate for HTTPS on the HTTP port (with tls_keyfile); session cookies are then Secure.")
    tls_keyfile: str = _f("", "PEM private key of tls_certfile.")


@dataclass(frozen=True)
class WebConfig:
    """The web pages served beside /api: accounts, sessions, sign-in limits."""

    database_url: str = _f("", "SQLAlchemy URL of the accounts database (e.g. postgresql://...); empty = SQLite at <home>/web/accounts.db.")
    session_secret: str = _f("", "Key that signs session cookies; empty = a random key generated once into <home>/web/session.key.")
    session_days: int = _f(14, "How long a sign-in lasts.")
    account_id_base: int = _f(1_000_000_000, "New accounts get user ids from here up (dataset ids stay below; a dataset id at or above it is refused at sign-up).")
    demo: bool = _f(True, "Offer 'try the demo': sign in as a dataset user without an account (turn off on a public site).")
    login_attempts: int = _f(5, "Failed sign-ins per account, and 4x this per client address, allowed per login_window_seconds.")
    login_window_seconds: int = _f(300, "Window of the sign-in rate limit.")
    page_size: int = _f(24, "Movies per search result page.")


@dataclass(frozen=True)
class StreamConfig:
    """The Flink job that turns rating events into online features in Redis."""

    kafka_jar: str = _f("", "Path of flink-sql-connector-kafka-*.jar (needed when events.log = 'kafka'), or comma-separated jars: flink-connector-kafka-*.jar,kafka-clients-*.jar.")
    parallelism: int = _f(1, "Flink parallelism.")
    checkpoint_interval_ms: int = _f(5000, "Checkpoint interval; state and source position survive a restart.")
    checkpoint_dir: str = _f("", "Checkpoint directory; empty = <home>/stream/checkpoints.")
    monitor_interval_ms: int = _f(500, "How often the FileSource looks for new spool segments.")
    trending_window_minutes: int = _f(60, "Sliding window of the trending counts (per movie) ...")
    trending_slide_minutes: int = _f(5, "... and how often it slides.")
    sink_batch: int = _f(2000, "Redis writes (distinct keys) buffered into one pipeline before a flush ...")
    publish_interval_ms: int = _f(200, "... and the longest a buffered write waits: the job flushes at every tick of this processing-time timer (freshness against per-key timer work).")
    dedup_ttl_hours: int = _f(72, "How long a seen event id is remembered (replays within it count once).")
    online_ttl_hours: int = _f(720, "Expiry of the online keys the job writes per user and movie (online:hist, online:user, online:movie), refreshed by every write: a user or movie without events for this long leaves Redis (the batch keys still serve it; keep it longer than the batch cadence). 0 = no expiry.")
    reorder_events: int = _f(64, "Per user, how many latest events are kept to re-apply in time order when events arrive out of order (spool segments of a backlog are read in no fixed order).")


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``home`` is where every artifact of a run lives."""

    home: Path
    spark: SparkConfig = field(default_factory=SparkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    web: WebConfig = field(default_factory=WebConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)

    def replace(self, section: str, **values: Any) -> "Config":
        """A copy with some values of one section changed (validated like a file)."""
        return _merge(self, {section: values}, source="replace()")


_SECTION_TYPES: dict[str, type] = {
    "spark": SparkConfig, "data": DataConfig, "synth": SynthConfig, "features": FeatureConfig,
    "recall": RecallConfig, "samples": SamplesConfig, "model": ModelConfig, "publish": PublishConfig,
    "redis": RedisConfig, "events": EventsConfig, "serving": ServingConfig, "web": WebConfig,
    "stream": StreamConfig,
}


def _coerce(value: Any, typ: Any, where: str, choices: tuple[str, ...] | None) -> Any:
    """Convert a file or environment value to the field's type, or fail naming it."""
    origin = typing.get_origin(typ) or typ
    try:
        if origin is bool or typ == "bool":
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                out = value.lower() in ("1", "true", "yes", "on")
            else:
                raise ValueError("expected true or false")
        elif origin is int or typ == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            out = int(value)
            if isinstance(value, float) and value != out:
                raise ValueError("expected an integer")
        elif origin is float or typ == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            out = float(value)
        elif origin is str or typ == "str":
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError("expected a string")
            out = str(value)
        elif origin is list or typ == "list":
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list):
                raise ValueError("expected a list")
            out = list(value)
        elif origin is dict or typ == "dict":
            if isinstance(value, str):
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                value = {k.strip(): int(v) for k, v in pairs}
            if not isinstance(value, dict):
                raise ValueError("expected a table")
            out = {str(k): int(v) for k, v in value.items()}
        else:  # pragma: no cover - every field type is listed above
            out = value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: invalid value {value!r} ({exc})") from None
    if choices and out not in choices:
        raise ConfigError(f"{where}: {out!r} is not one of {', '.join(choices)}")
    return out


# Keys that existed once, with what replaces them: a config that still sets one fails saying so.
REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("stream", "source"): "the event log is chosen once, by events.log ('spool' or 'kafka'): the gateway "
                          "writes it and the stream job reads it",
}


def _merge(cfg: Config, data: Mapping[str, Any], source: str) -> Config:
    """Apply a nested mapping {section: {key: value}} onto ``cfg``, strictly."""
    changes: dict[str, Any] = {}
    for section, values in data.items():
        if section == "home":
            changes["home"] = Path(str(values))
            continue
        if section not in _SECTION_TYPES:
            raise ConfigError(f"{source}: unknown section [{section}] (known: {', '.join(_SECTION_TYPES)})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table")
        cls = _SECTION_TYPES[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        current = getattr(cfg, section)
        updates = {}
        for key, value in values.items():
            if (section, key) in REMOVED_KEYS:
                raise ConfigError(f"{source}: {section}.{key} is gone: {REMOVED_KEYS[section, key]}")
            if key not in fields:
                raise ConfigError(f"{source}: unknown key '{key}' in [{section}] (known: {', '.join(fields)})")
            f = fields[key]
            updates[key] = _coerce(value, f.type, f"{source}: {section}.{key}", f.metadata.get("choices"))
        changes[section] = dataclasses.replace(current, **updates)
    out = dataclasses.replace(cfg, **changes)
    _validate(out)
    return out


def _validate(cfg: Config) -> None:
    """Cross-field rules that a type alone cannot express."""
    positive = [("recall", "merged_size"), ("recall", "als_top_n"), ("recall", "als_rank"), ("recall", "similar_k"),
                ("recall", "sequential_k"), ("recall", "popular_n"), ("samples", "history_len"),
                ("features", "history_len"), ("synth", "users"), ("synth", "movies"), ("synth", "ratings"),
                ("spark", "shuffle_partitions"), ("publish", "keep_versions"), ("publish", "pipeline_size"),
                ("model", "embedding_dim"), ("model", "hidden"), ("model", "batch_size"), ("model", "epochs"),
                ("model", "attention_heads"), ("events", "roll_seconds"), ("events", "roll_events"),
                ("serving", "deadline_ms"), ("serving", "redis_timeout_ms"), ("serving", "model_timeout_ms"),
                ("serving", "model_breaker_seconds"),
                ("serving", "candidates"), ("serving", "max_k"), ("serving", "max_batch"), ("serving", "genre_cap"),
                ("serving", "model_poll_seconds"), ("serving", "version_check_seconds"),
                ("serving", "idempotency_keys"), ("serving", "idempotency_hours"), ("serving", "http_read_timeout_seconds"),
                ("serving", "http_keep_alive_seconds"), ("serving", "http_max_connections"),
                ("serving", "http_max_in_flight"),
                ("serving", "http_max_body_bytes"), ("web", "session_days"), ("web", "account_id_base"),
                ("web", "login_attempts"), ("web", "login_window_seconds"), ("web", "page_size"), ("stream", "parallelism"),
                ("stream", "checkpoint_interval_ms"), ("stream", "monitor_interval_ms"),
                ("stream", "trending_window_minutes"), ("stream", "trending_slide_minutes"), ("stream", "sink_batch"),
                ("stream", "publish_interval_ms"),
                ("stream", "reorder_events")]
    for section, key in positive:
        if getattr(getattr(cfg, section), key) <= 0:
            raise ConfigError(f"{section}.{key} must be positive, got {getattr(getattr(cfg, section), key)}")
    if cfg.publish.keep_versions < 2:
        raise ConfigError(f"publish.keep_versions must be at least 2 (the current version and its predecessor, "
                          f"which readers that resolved it just before a switch still read), got {cfg.publish.keep_versions}")
    if cfg.publish.lock_seconds <= 0:
        raise ConfigError(f"publish.lock_seconds must be positive, got {cfg.publish.lock_seconds}")
    if not 0 < cfg.data.p3_replay_fraction < 1:
        raise ConfigError(f"data.p3_replay_fraction must be in (0, 1), got {cfg.data.p3_replay_fraction}")
    if cfg.model.neighbour_weight < 0 and cfg.model.neighbour_weight != -1:
        raise ConfigError(f"model.neighbour_weight must be >= 0 or -1 (chosen on validation), got {cfg.model.neighbour_weight}")
    for key in ("neighbour_max_movies", "neighbour_successors"):
        if getattr(cfg.model, key) < 1:
            raise ConfigError(f"model.{key} must be at least 1, got {getattr(cfg.model, key)}")
    if cfg.model.neighbour_max_movies > 20_000:
        raise ConfigError(f"model.neighbour_max_movies must be at most 20000 (its EASE table is dense: "
                          f"P x P floats), got {cfg.model.neighbour_max_movies}")
    if cfg.model.hard_negatives and cfg.samples.negatives < 1:
        raise ConfigError("model.hard_negatives needs samples.negatives >= 1 (a hard draw that lands on a movie "
                          "the user rated falls back to a uniform negative)")
    if not 0 < cfg.model.sequence_budget_share < 1:
        raise ConfigError(f"model.sequence_budget_share must be in (0, 1), got {cfg.model.sequence_budget_share}")
    if not 0 < cfg.serving.genre_cap <= 1:
        raise ConfigError(f"serving.genre_cap must be in (0, 1], got {cfg.serving.genre_cap}")
    if cfg.stream.trending_slide_minutes > cfg.stream.trending_window_minutes:
        raise ConfigError("stream.trending_slide_minutes must not exceed stream.trending_window_minutes")
    if bool(cfg.serving.tls_certfile) != bool(cfg.serving.tls_keyfile):
        raise ConfigError("serving.tls_certfile and serving.tls_keyfile go together")
    for section, key in (("samples", "negatives"), ("serving", "model_breaker_failures"),
                         ("serving", "model_intra_op_threads"), ("serving", "model_inter_op_threads"),
                         ("serving", "model_max_in_flight"), ("events", "retain_hours"), ("stream", "online_ttl_hours"),
                         ("events", "dead_letter_keep_days"), ("events", "dead_letter_max_mb"),
                         ("model", "epoch_examples"), ("model", "train_budget_s"), ("model", "hard_negatives"),
                         ("model", "sequence_window_stride"), ("model", "listwise_weight")):
        if getattr(getattr(cfg, section), key) < 0:
            raise ConfigError(f"{section}.{key} must be >= 0, got {getattr(getattr(cfg, section), key)}")
    from pipeline import recall as _recall  # local: recall imports config for types only

    for name in list(cfg.recall.channels) + list(cfg.recall.cold_start_channels):
        if name not in _recall.CHANNELS:
            raise ConfigError(f"recall.channels: unknown channel {name!r} (known: {', '.join(_recall.CHANNELS)})")
    for name in cfg.recall.quotas:
        if name not in _recall.CHANNELS:
            raise ConfigError(f"recall.quotas: unknown channel {name!r} (known: {', '.join(_recall.CHANNELS)})")


# Variables read outside the sections: the home (default_home) and tracebacks (the CLI).
EXTRA_ENV_VARS = ("RECSYS_HOME", "RECSYS_DEBUG")


def env_var_names() -> dict[str, tuple[str, str] | None]:
    """Every ``RECSYS_*`` variable the project reads -> its (section, key), None for the extras.

    Deployment manifests are checked against this (tests/test_deploy_manifests.py), so a
    renamed key cannot leave a manifest setting a variable nobody reads.
    """
    names: dict[str, tuple[str, str] | None] = {name: None for name in EXTRA_ENV_VARS}
    for section, cls in _SECTION_TYPES.items():
        for f in dataclasses.fields(cls):
            names[f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"] = (section, f.name)
    return names


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``RECSYS_<SECTION>_<KEY>`` variables as a nested mapping (sections are known, so no ambiguity)."""
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "RECSYS_HOME":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section, cls in _SECTION_TYPES.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
                if (section, key) in REMOVED_KEYS:
                    raise ConfigError(f"environment: {name} is gone: {REMOVED_KEYS[section, key]}")
                if key not in {f.name for f in dataclasses.fields(cls)}:
                    raise ConfigError(f"environment: {name} names no key of [{section}]")
                out.setdefault(section, {})[key] = value
                break
    return out


def default_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$RECSYS_HOME`` or ``./var``."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("RECSYS_HOME") or "var")


def load_config(home: str | Path | None = None, config_file: str | Path | None = None,
                overrides: Mapping[str, Mapping[str, Any]] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from defaults, file, environment and overrides (in that order)."""
    environ = os.environ if environ is None else environ
    home_path = Path(home) if home is not None else default_home(environ)
    cfg = Config(home=home_path.absolute())
    path = Path(config_file) if config_file else home_path / "recsys.toml"
    if config_file and not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        data.pop("home", None)  # the home is chosen by --home / RECSYS_HOME, not by a file inside it
        cfg = _merge(cfg, data, source=str(path))
    cfg = _merge(cfg, _env_overrides(environ), source="environment")
    if overrides:
        cfg = _merge(cfg, overrides, source="command line")
    return cfg


def as_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (for manifests and `recsys config show`)."""
    out: dict[str, Any] = {"home": str(cfg.home)}
    for section in _SECTION_TYPES:
        out[section] = dataclasses.asdict(getattr(cfg, section))
    return out
