from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_TURN_FINISHED: _ClassVar[ErrorReason]
    ERROR_REASON_TURN_ALREADY_FINISHED: _ClassVar[ErrorReason]
    ERROR_REASON_EVENT_ID_CONFLICT: _ClassVar[ErrorReason]
    ERROR_REASON_VERSION_CONFLICT: _ClassVar[ErrorReason]
    ERROR_REASON_THREAD_CLEARED: _ClassVar[ErrorReason]
    ERROR_REASON_STORAGE_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_FOLLOWER_TOO_SLOW: _ClassVar[ErrorReason]
    ERROR_REASON_SHUTTING_DOWN: _ClassVar[ErrorReason]
    ERROR_REASON_DATA_DIR_LOCKED: _ClassVar[ErrorReason]
    ERROR_REASON_DISK_ERROR: _ClassVar[ErrorReason]
    ERROR_REASON_BACKUP_FAILED: _ClassVar[ErrorReason]
    ERROR_REASON_UNAUTHENTICATED: _ClassVar[ErrorReason]
    ERROR_REASON_INTERNAL: _ClassVar[ErrorReason]
    ERROR_REASON_DATABASE_UNAVAILABLE: _ClassVar[ErrorReason]
    ERROR_REASON_CURSOR_OUT_OF_RANGE: _ClassVar[ErrorReason]
    ERROR_REASON_PERMISSION_DENIED: _ClassVar[ErrorReason]

class EventEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_ENCODING_UNSPECIFIED: _ClassVar[EventEncoding]
    EVENT_ENCODING_JSON_ROWS: _ClassVar[EventEncoding]

class EventOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_ORDER_UNSPECIFIED: _ClassVar[EventOrder]
    EVENT_ORDER_COMMIT: _ClassVar[EventOrder]
    EVENT_ORDER_TURN: _ClassVar[EventOrder]
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_TURN_FINISHED: ErrorReason
ERROR_REASON_TURN_ALREADY_FINISHED: ErrorReason
ERROR_REASON_EVENT_ID_CONFLICT: ErrorReason
ERROR_REASON_VERSION_CONFLICT: ErrorReason
ERROR_REASON_THREAD_CLEARED: ErrorReason
ERROR_REASON_STORAGE_FULL: ErrorReason
ERROR_REASON_FOLLOWER_TOO_SLOW: ErrorReason
ERROR_REASON_SHUTTING_DOWN: ErrorReason
ERROR_REASON_DATA_DIR_LOCKED: ErrorReason
ERROR_REASON_DISK_ERROR: ErrorReason
ERROR_REASON_BACKUP_FAILED: ErrorReason
ERROR_REASON_UNAUTHENTICATED: ErrorReason
ERROR_REASON_INTERNAL: ErrorReason
ERROR_REASON_DATABASE_UNAVAILABLE: ErrorReason
ERROR_REASON_CURSOR_OUT_OF_RANGE: ErrorReason
ERROR_REASON_PERMISSION_DENIED: ErrorReason
EVENT_ENCODING_UNSPECIFIED: EventEncoding
EVENT_ENCODING_JSON_ROWS: EventEncoding
EVENT_ORDER_UNSPECIFIED: EventOrder
EVENT_ORDER_COMMIT: EventOrder
EVENT_ORDER_TURN: EventOrder

class EventEnvelope(_message.Message):
    __slots__ = ("event_id", "sequence", "timestamp", "type", "body", "content_type")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    sequence: int
    timestamp: str
    type: str
    body: bytes
    content_type: str
    def __init__(self, event_id: _Optional[str] = ..., sequence: _Optional[int] = ..., timestamp: _Optional[str] = ..., type: _Optional[str] = ..., body: _Optional[bytes] = ..., content_type: _Optional[str] = ...) -> None: ...

class StoredEvent(_message.Message):
    __slots__ = ("position", "turn", "stored_at_unix_nanos", "envelope")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    STORED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    position: int
    turn: int
    stored_at_unix_nanos: int
    envelope: EventEnvelope
    def __init__(self, position: _Optional[int] = ..., turn: _Optional[int] = ..., stored_at_unix_nanos: _Optional[int] = ..., envelope: _Optional[_Union[EventEnvelope, _Mapping]] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("turn", "finished", "events")
    TURN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    turn: int
    finished: bool
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    def __init__(self, turn: _Optional[int] = ..., finished: _Optional[bool] = ..., events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("thread_id", "turn", "events", "expected_next_position")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_NEXT_POSITION_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    turn: int
    events: _containers.RepeatedCompositeFieldContainer[EventEnvelope]
    expected_next_position: int
    def __init__(self, thread_id: _Optional[str] = ..., turn: _Optional[int] = ..., events: _Optional[_Iterable[_Union[EventEnvelope, _Mapping]]] = ..., expected_next_position: _Optional[int] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("positions",)
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, positions: _Optional[_Iterable[int]] = ...) -> None: ...

class FinishTurnRequest(_message.Message):
    __slots__ = ("thread_id", "turn")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    turn: int
    def __init__(self, thread_id: _Optional[str] = ..., turn: _Optional[int] = ...) -> None: ...

class FinishTurnResponse(_message.Message):
    __slots__ = ("event_count",)
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    event_count: int
    def __init__(self, event_count: _Optional[int] = ...) -> None: ...

class GetTurnRequest(_message.Message):
    __slots__ = ("thread_id", "turn")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    turn: int
    def __init__(self, thread_id: _Optional[str] = ..., turn: _Optional[int] = ...) -> None: ...

class GetTurnResponse(_message.Message):
    __slots__ = ("found", "turn")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    found: bool
    turn: Turn
    def __init__(self, found: _Optional[bool] = ..., turn: _Optional[_Union[Turn, _Mapping]] = ...) -> None: ...

class ListTurnsRequest(_message.Message):
    __slots__ = ("thread_id",)
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    def __init__(self, thread_id: _Optional[str] = ...) -> None: ...

class ListTurnsResponse(_message.Message):
    __slots__ = ("turn",)
    TURN_FIELD_NUMBER: _ClassVar[int]
    turn: Turn
    def __init__(self, turn: _Optional[_Union[Turn, _Mapping]] = ...) -> None: ...

class ReadEventsRequest(_message.Message):
    __slots__ = ("thread_id", "offset", "order", "limit", "newest_first", "encoding")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    offset: int
    order: EventOrder
    limit: int
    newest_first: bool
    encoding: EventEncoding
    def __init__(self, thread_id: _Optional[str] = ..., offset: _Optional[int] = ..., order: _Optional[_Union[EventOrder, str]] = ..., limit: _Optional[int] = ..., newest_first: _Optional[bool] = ..., encoding: _Optional[_Union[EventEncoding, str]] = ...) -> None: ...

class ReadEventsResponse(_message.Message):
    __slots__ = ("events", "events_json")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    events_json: bytes
    def __init__(self, events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ..., events_json: _Optional[bytes] = ...) -> None: ...

class EventCountRequest(_message.Message):
    __slots__ = ("thread_id",)
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    def __init__(self, thread_id: _Optional[str] = ...) -> None: ...

class EventCountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class ClearRequest(_message.Message):
    __slots__ = ("thread_id",)
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    def __init__(self, thread_id: _Optional[str] = ...) -> None: ...

class ClearResponse(_message.Message):
    __slots__ = ("removed_events",)
    REMOVED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    removed_events: int
    def __init__(self, removed_events: _Optional[int] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "content_type", "data", "saved_at_unix_nanos")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAVED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    version: int
    content_type: str
    data: bytes
    saved_at_unix_nanos: int
    def __init__(self, version: _Optional[int] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ..., saved_at_unix_nanos: _Optional[int] = ...) -> None: ...

class SaveRequest(_message.Message):
    __slots__ = ("key", "data", "content_type", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    data: bytes
    content_type: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., data: _Optional[bytes] = ..., content_type: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SaveResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class LoadRequest(_message.Message):
    __slots__ = ("key", "version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoadResponse(_message.Message):
    __slots__ = ("found", "snapshot")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    found: bool
    snapshot: Snapshot
    def __init__(self, found: _Optional[bool] = ..., snapshot: _Optional[_Union[Snapshot, _Mapping]] = ...) -> None: ...

class ReplayRequest(_message.Message):
    __slots__ = ("thread_id", "after_position", "from_turn", "to_turn", "event_types", "follow", "until_turn_finished", "max_events_per_message", "thread_epoch", "encoding")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    FROM_TURN_FIELD_NUMBER: _ClassVar[int]
    TO_TURN_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    UNTIL_TURN_FINISHED_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    THREAD_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    after_position: int
    from_turn: int
    to_turn: int
    event_types: _containers.RepeatedScalarFieldContainer[str]
    follow: bool
    until_turn_finished: int
    max_events_per_message: int
    thread_epoch: int
    encoding: EventEncoding
    def __init__(self, thread_id: _Optional[str] = ..., after_position: _Optional[int] = ..., from_turn: _Optional[int] = ..., to_turn: _Optional[int] = ..., event_types: _Optional[_Iterable[str]] = ..., follow: _Optional[bool] = ..., until_turn_finished: _Optional[int] = ..., max_events_per_message: _Optional[int] = ..., thread_epoch: _Optional[int] = ..., encoding: _Optional[_Union[EventEncoding, str]] = ...) -> None: ...

class TurnFinished(_message.Message):
    __slots__ = ("turn", "event_count", "last_position")
    TURN_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_FIELD_NUMBER: _ClassVar[int]
    turn: int
    event_count: int
    last_position: int
    def __init__(self, turn: _Optional[int] = ..., event_count: _Optional[int] = ..., last_position: _Optional[int] = ...) -> None: ...

class ReplayResponse(_message.Message):
    __slots__ = ("events", "finished_turns", "caught_up", "thread_cleared", "next_position", "thread_epoch", "events_json")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TURNS_FIELD_NUMBER: _ClassVar[int]
    CAUGHT_UP_FIELD_NUMBER: _ClassVar[int]
    THREAD_CLEARED_FIELD_NUMBER: _ClassVar[int]
    NEXT_POSITION_FIELD_NUMBER: _ClassVar[int]
    THREAD_EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[StoredEvent]
    finished_turns: _containers.RepeatedCompositeFieldContainer[TurnFinished]
    caught_up: bool
    thread_cleared: bool
    next_position: int
    thread_epoch: int
    events_json: bytes
    def __init__(self, events: _Optional[_Iterable[_Union[StoredEvent, _Mapping]]] = ..., finished_turns: _Optional[_Iterable[_Union[TurnFinished, _Mapping]]] = ..., caught_up: _Optional[bool] = ..., thread_cleared: _Optional[bool] = ..., next_position: _Optional[int] = ..., thread_epoch: _Optional[int] = ..., events_json: _Optional[bytes] = ...) -> None: ...

class AppendStreamRequest(_message.Message):
    __slots__ = ("request_id", "thread_id", "turn", "events", "finish_turn", "more", "acks_in_more", "expected_next_position")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FINISH_TURN_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    ACKS_IN_MORE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_NEXT_POSITION_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    thread_id: str
    turn: int
    events: _containers.RepeatedCompositeFieldContainer[EventEnvelope]
    finish_turn: bool
    more: _containers.RepeatedCompositeFieldContainer[AppendStreamRequest]
    acks_in_more: bool
    expected_next_position: int
    def __init__(self, request_id: _Optional[int] = ..., thread_id: _Optional[str] = ..., turn: _Optional[int] = ..., events: _Optional[_Iterable[_Union[EventEnvelope, _Mapping]]] = ..., finish_turn: _Optional[bool] = ..., more: _Optional[_Iterable[_Union[AppendStreamRequest, _Mapping]]] = ..., acks_in_more: _Optional[bool] = ..., expected_next_position: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "reason", "message", "current_version")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    code: int
    reason: str
    message: str
    current_version: int
    def __init__(self, code: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., current_version: _Optional[int] = ...) -> None: ...

class AppendStreamResponse(_message.Message):
    __slots__ = ("request_id", "positions", "error", "event_count", "more")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    error: ItemError
    event_count: int
    more: _containers.RepeatedCompositeFieldContainer[AppendStreamResponse]
    def __init__(self, request_id: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., event_count: _Optional[int] = ..., more: _Optional[_Iterable[_Union[AppendStreamResponse, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("live_followers", "open_replays", "map_size_bytes", "threads", "events", "turns", "finished_turns", "conversations", "snapshot_versions", "data_file_bytes", "retention_enabled", "retention_sweeps", "retention_removed_threads", "retention_removed_events", "retention_removed_conversations", "retention_last_error", "follower_held_bytes", "follower_ending_bytes", "followers_ended_too_slow", "used_bytes", "max_db_bytes", "write_limit_bytes")
    LIVE_FOLLOWERS_FIELD_NUMBER: _ClassVar[int]
    OPEN_REPLAYS_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TURNS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DATA_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RETENTION_ENABLED_FIELD_NUMBER: _ClassVar[int]
    RETENTION_SWEEPS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_REMOVED_THREADS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_REMOVED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_REMOVED_CONVERSATIONS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    FOLLOWER_HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    FOLLOWER_ENDING_BYTES_FIELD_NUMBER: _ClassVar[int]
    FOLLOWERS_ENDED_TOO_SLOW_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_DB_BYTES_FIELD_NUMBER: _ClassVar[int]
    WRITE_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    live_followers: int
    open_replays: int
    map_size_bytes: int
    threads: int
    events: int
    turns: int
    finished_turns: int
    conversations: int
    snapshot_versions: int
    data_file_bytes: int
    retention_enabled: bool
    retention_sweeps: int
    retention_removed_threads: int
    retention_removed_events: int
    retention_removed_conversations: int
    retention_last_error: str
    follower_held_bytes: int
    follower_ending_bytes: int
    followers_ended_too_slow: int
    used_bytes: int
    max_db_bytes: int
    write_limit_bytes: int
    def __init__(self, live_followers: _Optional[int] = ..., open_replays: _Optional[int] = ..., map_size_bytes: _Optional[int] = ..., threads: _Optional[int] = ..., events: _Optional[int] = ..., turns: _Optional[int] = ..., finished_turns: _Optional[int] = ..., conversations: _Optional[int] = ..., snapshot_versions: _Optional[int] = ..., data_file_bytes: _Optional[int] = ..., retention_enabled: _Optional[bool] = ..., retention_sweeps: _Optional[int] = ..., retention_removed_threads: _Optional[int] = ..., retention_removed_events: _Optional[int] = ..., retention_removed_conversations: _Optional[int] = ..., retention_last_error: _Optional[str] = ..., follower_held_bytes: _Optional[int] = ..., follower_ending_bytes: _Optional[int] = ..., followers_ended_too_slow: _Optional[int] = ..., used_bytes: _Optional[int] = ..., max_db_bytes: _Optional[int] = ..., write_limit_bytes: _Optional[int] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ("dest_dir",)
    DEST_DIR_FIELD_NUMBER: _ClassVar[int]
    dest_dir: str
    def __init__(self, dest_dir: _Optional[str] = ...) -> None: ...

class BackupResponse(_message.Message):
    __slots__ = ("dest_dir", "bytes_written")
    DEST_DIR_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    dest_dir: str
    bytes_written: int
    def __init__(self, dest_dir: _Optional[str] = ..., bytes_written: _Optional[int] = ...) -> None: ...

class ListThreadsRequest(_message.Message):
    __slots__ = ("start_after",)
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    start_after: str
    def __init__(self, start_after: _Optional[str] = ...) -> None: ...

class ThreadSummary(_message.Message):
    __slots__ = ("thread_id", "event_count", "finished_turns", "last_write_unix_nanos")
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_TURNS_FIELD_NUMBER: _ClassVar[int]
    LAST_WRITE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    thread_id: str
    event_count: int
    finished_turns: int
    last_write_unix_nanos: int
    def __init__(self, thread_id: _Optional[str] = ..., event_count: _Optional[int] = ..., finished_turns: _Optional[int] = ..., last_write_unix_nanos: _Optional[int] = ...) -> None: ...

class ListThreadsResponse(_message.Message):
    __slots__ = ("threads",)
    THREADS_FIELD_NUMBER: _ClassVar[int]
    threads: _containers.RepeatedCompositeFieldContainer[ThreadSummary]
    def __init__(self, threads: _Optional[_Iterable[_Union[ThreadSummary, _Mapping]]] = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ("start_after", "prefix", "end_before", "limit", "newest_first")
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    END_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    start_after: str
    prefix: str
    end_before: str
    limit: int
    newest_first: bool
    def __init__(self, start_after: _Optional[str] = ..., prefix: _Optional[str] = ..., end_before: _Optional[str] = ..., limit: _Optional[int] = ..., newest_first: _Optional[bool] = ...) -> None: ...

class KeySummary(_message.Message):
    __slots__ = ("key", "version", "last_write_unix_nanos")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_WRITE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    key: str
    version: int
    last_write_unix_nanos: int
    def __init__(self, key: _Optional[str] = ..., version: _Optional[int] = ..., last_write_unix_nanos: _Optional[int] = ...) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeySummary]
    def __init__(self, keys: _Optional[_Iterable[_Union[KeySummary, _Mapping]]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class SnapshotVersion(_message.Message):
    __slots__ = ("version", "saved_at_unix_nanos", "size_bytes", "content_type")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAVED_AT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    version: int
    saved_at_unix_nanos: int
    size_bytes: int
    content_type: str
    def __init__(self, version: _Optional[int] = ..., saved_at_unix_nanos: _Optional[int] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[SnapshotVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[SnapshotVersion, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("removed_versions",)
    REMOVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    removed_versions: int
    def __init__(self, removed_versions: _Optional[int] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("operations",)
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[BatchOperation]
    def __init__(self, operations: _Optional[_Iterable[_Union[BatchOperation, _Mapping]]] = ...) -> None: ...

class BatchOperation(_message.Message):
    __slots__ = ("save", "delete", "delete_prefix")
    SAVE_FIELD_NUMBER: _ClassVar[int]
    DELETE_FIELD_NUMBER: _ClassVar[int]
    DELETE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    save: SaveRequest
    delete: BatchDelete
    delete_prefix: BatchDeletePrefix
    def __init__(self, save: _Optional[_Union[SaveRequest, _Mapping]] = ..., delete: _Optional[_Union[BatchDelete, _Mapping]] = ..., delete_prefix: _Optional[_Union[BatchDeletePrefix, _Mapping]] = ...) -> None: ...

class BatchDelete(_message.Message):
    __slots__ = ("key", "expected_version")
    KEY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    key: str
    expected_version: int
    def __init__(self, key: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class BatchDeletePrefix(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("version", "removed_versions", "removed_keys")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REMOVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_KEYS_FIELD_NUMBER: _ClassVar[int]
    version: int
    removed_versions: int
    removed_keys: int
    def __init__(self, version: _Optional[int] = ..., removed_versions: _Optional[int] = ..., removed_keys: _Optional[int] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...
