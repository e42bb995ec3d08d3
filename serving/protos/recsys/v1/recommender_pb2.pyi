from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "exclude_seen", "genres", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    k: int
    exclude_seen: bool
    genres: _containers.RepeatedScalarFieldContainer[str]
    explain: bool
    def __init__(self, user_id: _Optional[int] = ..., k: _Optional[int] = ..., exclude_seen: bool = ..., genres: _Optional[_Iterable[str]] = ..., explain: bool = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("movie_id", "title", "score", "predicted_rating", "sources", "reason", "genres", "year")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_RATING_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    title: str
    score: float
    predicted_rating: float
    sources: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    genres: _containers.RepeatedScalarFieldContainer[str]
    year: int
    def __init__(self, movie_id: _Optional[int] = ..., title: _Optional[str] = ..., score: _Optional[float] = ..., predicted_rating: _Optional[float] = ..., sources: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., genres: _Optional[_Iterable[str]] = ..., year: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "degraded", "batch_version", "cold_start")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    BATCH_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    model_version: str
    degraded: bool
    batch_version: str
    cold_start: bool
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., model_version: _Optional[str] = ..., degraded: bool = ..., batch_version: _Optional[str] = ..., cold_start: bool = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user_id", "movie_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MOVIE_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    movie_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, user_id: _Optional[int] = ..., movie_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "model_version", "degraded")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    model_version: str
    degraded: bool
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., model_version: _Optional[str] = ..., degraded: bool = ...) -> None: ...

class SimilarMoviesRequest(_message.Message):
    __slots__ = ("movie_id", "k")
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    movie_id: int
    k: int
    def __init__(self, movie_id: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class SimilarMoviesResponse(_message.Message):
    __slots__ = ("items", "degraded")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    degraded: bool
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., degraded: bool = ...) -> None: ...

class RecordRatingRequest(_message.Message):
    __slots__ = ("user_id", "movie_id", "rating", "timestamp", "idempotency_key")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MOVIE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    movie_id: int
    rating: float
    timestamp: int
    idempotency_key: str
    def __init__(self, user_id: _Optional[int] = ..., movie_id: _Optional[int] = ..., rating: _Optional[float] = ..., timestamp: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RecordRatingResponse(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...
