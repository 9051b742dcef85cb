"""The redo journal of ``--commit-sync journal`` (docs/one-sync.md): one record per
commit, synced in parallel with LMDB's own data sync, replayed at open for the one
commit whose meta page (written by LMDB without a sync) a power cut may have lost.

The file (``redo.log`` beside ``data.mdb``) is preallocated with zeros and synced
once, so each record costs one ``pwrite`` and one ``fdatasync`` of data blocks only.
A record is a header (magic, the database's journal salt, the commit's sequence
number, the payload's length, a CRC32 of all of it) and the payload
(:func:`~.recording.encode_ops`), padded to :data:`ALIGN` bytes. LMDB's ``meta``
database holds, in the same transaction as the commit's writes, the last
journaled commit's :class:`Position` (sequence number, where its record is, the
salt). The next record goes right after it, or at 0 when it does not fit; so at
open, the record to replay (sequence + 1) is at one of two offsets, and nothing
has to be scanned. The record of commit *n* is needed only until commit *n+1*'s
LMDB data sync has made *n*'s meta page durable, so *n+1*'s record must not
overwrite it (:meth:`RedoJournal.place` refuses; the writer then syncs that commit
in full instead) but *n+2*'s may.
"""

from __future__ import annotations

import os
import queue
import secrets
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import lmdb

JOURNAL_FILE: Final = "redo.log"
# Records start on 4 KiB boundaries: a record never shares a sector with another.
ALIGN: Final = 4096
DEFAULT_CAPACITY: Final = 8 << 20
MAGIC: Final = b"TSREDO01"
# magic, salt, sequence number, payload length, CRC32 (of the rest of the header + payload)
_HEADER: Final = struct.Struct("<8s8sQII")
# The key in LMDB's ``meta`` database holding the last journaled commit's Position.
META_REDO_POSITION: Final = b"redo_journal_position"
_POSITION: Final = struct.Struct("<QQQ8s")


@dataclass(frozen=True)
class Position:
    """Where the journal stands: the last journaled commit's sequence number, its record's
    byte range, and the salt every record of this database carries (drawn anew for a
    restored backup, so records of another life of the data never match)."""

    sequence: int
    start: int
    end: int
    salt: bytes

    def pack(self) -> bytes:
        return _POSITION.pack(self.sequence, self.start, self.end, self.salt)

    @classmethod
    def unpack(cls, value: bytes) -> Position:
        return cls(*_POSITION.unpack(value))

    @classmethod
    def fresh(cls) -> Position:
        return cls(0, 0, 0, secrets.token_bytes(8))


def read_position(txn: lmdb.Transaction, meta: Any) -> Position | None:
    value = txn.get(META_REDO_POSITION, db=meta)
    return None if value is None else Position.unpack(bytes(value))


def frame(salt: bytes, sequence: int, payload: bytes) -> bytes:
    """A record: header and payload, zero-padded to a multiple of :data:`ALIGN`."""
    header = _HEADER.pack(MAGIC, salt, sequence, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header[: _HEADER.size - 4]))
    record = _HEADER.pack(MAGIC, salt, sequence, len(payload), crc) + payload
    return record + bytes(-len(record) % ALIGN)


def parse_at(data: bytes, offset: int, salt: bytes, sequence: int) -> bytes | None:
    """The payload of the record of ``sequence`` at ``offset``, or None when there is no
    whole, valid record of it there (a torn record fails its CRC)."""
    if offset + _HEADER.size > len(data):
        return None
    magic, found_salt, found_sequence, length, crc = _HEADER.unpack_from(data, offset)
    if magic != MAGIC or found_salt != salt or found_sequence != sequence:
        return None
    end = offset + _HEADER.size + length
    if end > len(data):
        return None
    payload = data[offset + _HEADER.size : end]
    header = _HEADER.pack(MAGIC, salt, sequence, length, 0)[: _HEADER.size - 4]
    if zlib.crc32(payload, zlib.crc32(header)) != crc:
        return None
    return payload


def find_next(data: bytes, position: Position) -> tuple[Position, bytes] | None:
    """The record after ``position`` in the journal's bytes: its Position and payload."""
    sequence = position.sequence + 1
    for offset in dict.fromkeys((position.end, 0)):
        payload = parse_at(data, offset, position.salt, sequence)
        if payload is not None:
            end = offset + len(frame(position.salt, sequence, payload))
            return Position(sequence, offset, end, position.salt), payload
    return None


@dataclass(frozen=True)
class PendingRecord:
    """A record placed but not yet known durable."""

    position: Position
    data: bytes


class RedoJournal:
    """The open journal file, and the thread that writes and syncs its records.

    :meth:`start_write` hands a record to that thread and returns at once (the
    writer then commits LMDB meanwhile); :meth:`wait` returns when it is durable.
    """

    def __init__(self, data_dir: Path, position: Position, capacity: int = DEFAULT_CAPACITY):
        self.path = data_dir / JOURNAL_FILE
        self.capacity = capacity
        self._last = position
        # Whether the last record may still be needed (False after a commit synced in full).
        self._last_needed = True
        self._fd = _open_preallocated(self.path, capacity)
        self._jobs: queue.SimpleQueue[PendingRecord | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="turnstore-redo", daemon=True)
        self._thread.start()

    def place(self, payload: bytes) -> PendingRecord | None:
        """Where the next commit's record goes; None when it would overwrite the last
        record while that is still needed, or is larger than the file."""
        sequence = self._last.sequence + 1
        record = frame(self._last.salt, sequence, payload)
        start = self._last.end if self._last.end + len(record) <= self.capacity else 0
        end = start + len(record)
        if end > self.capacity:
            return None
        last = self._last
        if start == 0 and self._last_needed and last.start < end and last.end > last.start:
            return None  # it would overwrite the last record, still needed
        return PendingRecord(Position(sequence, start, end, self._last.salt), record)

    def start_write(self, record: PendingRecord) -> None:
        self._jobs.put(record)

    def wait(self) -> BaseException | None:
        """Block until the record handed to :meth:`start_write` is durable (None) or its
        write failed (the error)."""
        return self._done.get()

    def committed(self, record: PendingRecord) -> None:
        """The commit of ``record`` is in LMDB: the next record goes after it."""
        self._last = record.position
        self._last_needed = True

    def synced_in_full(self) -> None:
        """A commit was synced in full (data and meta): the last record is needed no more."""
        self._last_needed = False

    def erase(self, record: PendingRecord) -> None:
        """Make a record whose LMDB commit failed unreadable (its header zeroed, synced), so
        it is never replayed; raises OSError when that fails."""
        os.pwrite(self._fd, bytes(_HEADER.size), record.position.start)
        os.fdatasync(self._fd)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()
        os.close(self._fd)

    def _loop(self) -> None:
        while (record := self._jobs.get()) is not None:
            try:
                os.pwrite(self._fd, record.data, record.position.start)
                os.fdatasync(self._fd)
            except BaseException as error:  # handed to the writer, which decides
                self._done.put(error)
            else:
                self._done.put(None)


def _open_preallocated(path: Path, capacity: int) -> int:
    """Open the journal file, first creating it full of zeros (synced, then renamed into
    place and the directory synced) when it is missing or not ``capacity`` bytes long."""
    try:
        if path.stat().st_size == capacity:
            return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    partial = path.with_name(path.name + ".new")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        zeros = bytes(1 << 20)
        for offset in range(0, capacity, len(zeros)):
            os.pwrite(fd, zeros[: capacity - offset], offset)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return fd


def read_journal(data_dir: Path) -> bytes:
    """The journal file's bytes (empty when there is none)."""
    try:
        return (data_dir / JOURNAL_FILE).read_bytes()
    except FileNotFoundError:
        return b""
