"""The LMDB storage engine on its own: what only LMDB has (map growth, the directory lock).

What every engine promises is tested once for both backends in
tests/test_storage_engine.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from turnstore.server.storage.config import MIB, EngineConfig, Limits
from turnstore.server.storage.errors import DataDirLockedError, StorageFullError
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb


def envelope(text: str, size: int = 0) -> NewEvent:
    message = pb.EventEnvelope(
        event_id=f"id-{text}", type="text_delta", body=(text + "x" * size).encode()
    )
    return NewEvent(message.event_id, message.SerializeToString())


@pytest.fixture
def engine(data_dir: Path) -> Iterator[LmdbEngine]:
    opened = LmdbEngine.open(EngineConfig(data_dir))
    yield opened
    opened.close()


def test_map_grows_then_fills_without_tearing(data_dir: Path) -> None:
    config = EngineConfig(data_dir, initial_map_bytes=1 * MIB, max_map_bytes=4 * MIB)
    engine = LmdbEngine.open(config)
    acknowledged = 0
    with pytest.raises(StorageFullError, match="ceiling"):
        for index in range(1000):
            engine.append("t", 1, [envelope(f"{index}.", 60_000)]).result()
            acknowledged += 1
    assert engine.map_size == 4 * MIB
    assert 8 < acknowledged < 70
    # Reads still work, and hold exactly the acknowledged events.
    assert engine.event_count("t") == acknowledged
    chunk = engine.get_turn("t", 1)
    assert chunk is not None
    assert len(chunk.events) == acknowledged
    # Small writes that fit still succeed or fail cleanly; then reopen cleanly.
    engine.close()
    reopened = LmdbEngine.open(config)
    assert reopened.event_count("t") == acknowledged
    reopened.close()


def test_a_second_engine_on_the_same_directory_is_refused(
    engine: LmdbEngine, data_dir: Path
) -> None:
    with pytest.raises(DataDirLockedError, match="in use by another turnstore process"):
        LmdbEngine.open(EngineConfig(data_dir))


def test_limits_must_fit_lmdb_keys() -> None:
    with pytest.raises(ValueError, match="511"):
        Limits(max_thread_id_bytes=600)
