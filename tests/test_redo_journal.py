"""The redo journal of ``--commit-sync journal`` (docs/one-sync.md), piece by piece: its
records' framing (a torn record is never replayed), its ring (a record never overwrites
the one still needed), its replay at open (exact, idempotent, never into a restored
backup), and the recording transaction (every write path of the engine is recorded:
replaying the records of a workload onto an empty database gives the same database).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
from pathlib import Path
from typing import Any, cast

import lmdb
import pytest

from tests.support.eventually import eventually
from turnstore.server.storage.batches import DeleteOp, DeletePrefixOp, SaveOp
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.errors import VersionConflictError
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.commit_sync import CommitSync, DurableMark
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.lmdb.recording import apply_ops, decode_ops
from turnstore.server.storage.lmdb.redo_journal import (
    ALIGN,
    JOURNAL_FILE,
    META_REDO_POSITION,
    Position,
    RedoJournal,
    find_next,
    frame,
    read_position,
)
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb

SALT = b"saltsalt"


def event(text: str) -> NewEvent:
    message = pb.EventEnvelope(event_id=f"id-{text}", type="t", body=text.encode())
    return NewEvent(message.event_id, message.SerializeToString())


def ring(records: list[tuple[int, bytes]], size: int) -> bytes:
    """A journal file of ``size`` bytes holding (offset, record) pairs."""
    data = bytearray(size)
    for offset, record in records:
        data[offset : offset + len(record)] = record
    return bytes(data)


def test_the_next_record_is_found_after_the_last_or_at_the_start() -> None:
    first = frame(SALT, 1, b"one")
    second = frame(SALT, 2, b"two")
    data = ring([(0, first), (len(first), second)], 4 * ALIGN)
    found = find_next(data, Position(1, 0, len(first), SALT))
    assert found == (Position(2, len(first), len(first) + len(second), SALT), b"two")
    # Wrapped: the record is at 0.
    data = ring([(0, second), (3 * ALIGN, first)], 4 * ALIGN)
    assert find_next(data, Position(1, 3 * ALIGN, 4 * ALIGN, SALT)) == (
        Position(2, 0, len(second), SALT),
        b"two",
    )


@pytest.mark.parametrize("damage", ["payload", "header", "truncated", "salt", "sequence"])
def test_a_torn_or_foreign_record_is_never_replayed(damage: str) -> None:
    record = bytearray(frame(SALT, 5, b"x" * 300))
    if damage == "payload":
        record[100] ^= 1
    elif damage == "header":
        record[20] ^= 1
    elif damage == "truncated":
        record[200:] = bytes(len(record) - 200)  # the sectors after the first never landed
    data = ring([(ALIGN, bytes(record))], 4 * ALIGN)
    salt = b"othersal" if damage == "salt" else SALT
    sequence = 5 if damage == "sequence" else 4  # a stale record of the next one's place
    assert find_next(data, Position(sequence, 0, ALIGN, salt)) is None


def test_the_ring_wraps_but_never_over_the_record_still_needed(tmp_path: Path) -> None:
    journal = RedoJournal(tmp_path, Position(0, 0, 0, SALT), capacity=5 * ALIGN)
    try:
        small = b"s" * 100  # one block with its header
        large = b"L" * (2 * ALIGN)  # three blocks
        huge = b"H" * (4 * ALIGN)  # five blocks: the whole file
        placed = []
        for payload in (small, large, small, small):
            record = journal.place(payload)
            assert record is not None
            journal.committed(record)
            placed.append(record.position.start // ALIGN)
        # Each after the last; the fourth does not fit after the third: back to 0.
        assert placed == [0, 1, 4, 0]
        # Five blocks fit only from 0, over the last record (the fourth, still needed
        # until the next commit's data sync): refused, the writer syncs in full.
        assert journal.place(huge) is None
        # Once a commit was synced in full, the last record is needed no more.
        journal.synced_in_full()
        last = journal.place(huge)
        assert last is not None and last.position.start == 0
        # Larger than the file: never.
        assert journal.place(huge + bytes(ALIGN)) is None
        # Records are written and synced by the journal's thread.
        fourth = journal.place(small)
        assert fourth is not None
        journal.start_write(fourth)
        assert journal.wait() is None
    finally:
        journal.close()
    data = (tmp_path / JOURNAL_FILE).read_bytes()
    assert len(data) == 5 * ALIGN
    before = Position(fourth.position.sequence - 1, 0, ALIGN, SALT)
    assert find_next(data, before) == (fourth.position, small)


def config(data_dir: Path, **changes: Any) -> EngineConfig:
    """An engine in journal mode (not the default) unless ``changes`` say otherwise."""
    return dataclasses.replace(
        EngineConfig(data_dir=data_dir, initial_map_bytes=8 << 20, commit_sync="journal"),
        **changes,
    )


def position_of(engine: LmdbEngine) -> Position:
    """The journal's position in LMDB (the engine's own environment: one per process)."""
    state = engine._state
    with state.read() as txn:
        position = read_position(txn, state.dbs[schema.META])
    assert position is not None
    return position


def contents(data_dir: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every named database's pairs (the journal's own position left out)."""
    with lmdb.open(str(data_dir), max_dbs=len(schema.ALL_DATABASES), readonly=True) as env:
        out = {}
        for name in schema.ALL_DATABASES:
            db = env.open_db(name, create=False, dupsort=name in schema.DUPSORT_DATABASES)
            with env.begin() as txn:
                pairs = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
            out[name] = [pair for pair in pairs if pair[0] != META_REDO_POSITION]
        return out


def replay_record(journal: bytes, position: Position, target: lmdb.Environment) -> None:
    """Apply the record at ``position`` of ``journal`` to ``target``."""
    before = Position(position.sequence - 1, 0, position.start, position.salt)
    found = find_next(journal, before)
    assert found is not None and found[0] == position
    with target.begin(write=True) as txn:
        dbs = {
            name: target.open_db(name, txn=txn, dupsort=name in schema.DUPSORT_DATABASES)
            for name in schema.ALL_DATABASES
        }
        apply_ops(txn, dbs, decode_ops(found[1]))


def test_every_write_path_is_recorded_and_replays_exactly(tmp_path: Path) -> None:
    """Replaying each commit's record onto a copy of the database as it was before the
    first write leaves it equal to the database: no write path bypasses the recorder
    (appends, finishes, clears, snapshots, batches with a nested transaction that is
    committed or aborted, deletes of dupsort entries through cursors, retention)."""
    source = tmp_path / "source"
    engine = LmdbEngine.open(config(source, retain_threads_for_seconds=3600.0))
    shadow_dir = tmp_path / "shadow"
    shutil.copytree(
        source, shadow_dir, ignore=shutil.ignore_patterns("*.lock", "lock.mdb", JOURNAL_FILE)
    )
    shadow = lmdb.open(str(shadow_dir), max_dbs=len(schema.ALL_DATABASES), map_size=8 << 20)
    last = position_of(engine)

    def step(future: Any) -> None:
        nonlocal last
        # A batch refused whole: its nested transaction was aborted.
        with contextlib.suppress(VersionConflictError):
            future.result(timeout=30)
        position = position_of(engine)
        if position != last:
            replay_record((source / JOURNAL_FILE).read_bytes(), position, shadow)
            last = position

    try:
        for n in range(5):
            step(engine.append(f"thread-{n % 2}", 1, [event(f"a{n}"), event(f"b{n}")]))
        step(engine.append("thread-0", 1, [event("a0")]))  # idempotent: nothing new
        step(engine.finish_turn("thread-0", 1))
        step(engine.append("thread-0", 2, [event("c")], finish=True))
        for n in range(6):  # more than the versions kept: old ones deleted
            step(engine.save_snapshot(f"key-{n % 3}", b"data%d" % n, "text/plain"))
        step(engine.apply_batch([SaveOp("batch-a", b"x", "t"), SaveOp("batch-b", b"y", "t")]))
        step(engine.apply_batch([SaveOp("batch-c", b"z", "t"), DeleteOp("batch-a", 7)]))
        step(engine.apply_batch([DeleteOp("key-0"), DeletePrefixOp("batch-")]))
        step(engine.delete_snapshots("key-1"))
        step(engine.clear("thread-1"))
        step(engine.append("thread-1", 1, [event("after-clear")]))
        step(engine.remove_thread_if_idle("thread-1", cutoff_ns=2**62))
        step(engine.remove_conversation_if_idle("key-2", cutoff_ns=2**62))
    finally:
        engine.close()
        shadow.close()
    assert last.sequence > 15
    assert contents(shadow_dir) == contents(source)


def test_open_replays_the_commit_whose_meta_page_was_lost_once(tmp_path: Path) -> None:
    """Rolling LMDB back one commit (its meta page as before it) and opening again redoes
    that commit from the journal, exactly, and a second open redoes nothing."""
    data_dir = tmp_path / "data"
    engine = LmdbEngine.open(config(data_dir))
    engine.append("t", 1, [event("first")]).result(timeout=30)
    engine.close()
    before = (data_dir / "data.mdb").read_bytes()
    engine = LmdbEngine.open(config(data_dir))
    engine.append("t", 1, [event("second")]).result(timeout=30)
    engine.close()
    expected = contents(data_dir)
    # The meta pages as they were before the last commit: its meta page lost.
    after = bytearray((data_dir / "data.mdb").read_bytes())
    psize = 4096
    after[: 2 * psize] = before[: 2 * psize]
    (data_dir / "data.mdb").write_bytes(bytes(after))
    assert contents(data_dir) != expected
    engine = LmdbEngine.open(config(data_dir))
    try:
        assert engine.startup_report().get("redo_journal_replayed_commits") == 1
        assert engine.event_count("t") == 2
    finally:
        engine.close()
    assert contents(data_dir) == expected
    engine = LmdbEngine.open(config(data_dir))
    try:
        assert "redo_journal_replayed_commits" not in engine.startup_report()
    finally:
        engine.close()


def test_a_restored_backup_never_replays_a_journal_beside_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    backups = tmp_path / "backups"
    backups.mkdir()
    engine = LmdbEngine.open(config(data_dir, backup_dir=backups))
    engine.append("t", 1, [event("one")]).result(timeout=30)
    result = engine.backup(str(backups / "b1"))
    engine.append("t", 1, [event("two")]).result(timeout=30)
    engine.close()
    restored = backups / "b1"
    # The live directory's journal copied beside the backup (an operator's mistake):
    # its next record has the sequence the backup's position asks for, but another salt.
    shutil.copy(data_dir / JOURNAL_FILE, restored / JOURNAL_FILE)
    engine = LmdbEngine.open(config(restored))
    try:
        assert "redo_journal_replayed_commits" not in engine.startup_report()
        assert engine.event_count("t") == 1
    finally:
        engine.close()
    assert result.bytes > 0 if hasattr(result, "bytes") else True


# Where a write transaction may begin: anywhere else, its changes would bypass the
# recorder (or, for the backup's copy and the open-time writes, a full sync).
WRITE_TRANSACTIONS_MAY_BEGIN = {
    "writer.py": 2,  # the group commit (recorded) and the no-op tick (loses nothing)
    "opening.py": 1,  # _prepare, synced in full before anything else commits
    "redo_recovery.py": 2,  # replay (synced in full) and reading the position at open
    "recording.py": 2,  # begin_nested: a child of the (recorded or not) writer transaction
    "backups.py": 1,  # the backup's own copy, synced
}


def test_write_transactions_begin_only_where_they_are_recorded_or_synced() -> None:
    lmdb_dir = Path(LmdbEngine.__module__.replace(".", "/")).parent
    root = Path(__file__).resolve().parents[1] / "server" / lmdb_dir
    found = {}
    for source in sorted(root.glob("*.py")):
        count = source.read_text().count("begin(write=True")
        if count:
            found[source.name] = count
    assert found == WRITE_TRANSACTIONS_MAY_BEGIN


def test_a_reader_waits_for_a_commit_still_syncing() -> None:
    mark = DurableMark()
    mark.enable(5)
    mark.wait_for(5)  # durable: at once
    waited = threading.Event()

    def reader() -> None:
        mark.wait_for(6)
        waited.set()

    thread = threading.Thread(target=reader)
    thread.start()
    assert not waited.wait(0.05)
    mark.advance(6)
    assert waited.wait(10)
    thread.join()


class FailingCommit:
    """A write transaction whose commit fails (as LMDB's may, map full at commit)."""

    def __init__(self, txn: lmdb.Transaction) -> None:
        self.txn = txn

    def id(self) -> int:
        return int(self.txn.id())

    def put(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self.txn.put(*args, **kwargs))

    def commit(self) -> None:
        self.txn.abort()
        raise lmdb.MapFullError("map full at commit")


def test_a_commit_that_fails_leaves_no_record_to_replay(tmp_path: Path) -> None:
    """Its record was written (in parallel) before the commit failed: it is erased before
    the failure is reported, so a power cut then never redoes a write reported failed."""
    env = lmdb.open(str(tmp_path), max_dbs=len(schema.ALL_DATABASES), metasync=False)
    try:
        with env.begin(write=True) as txn:
            dbs = {
                name: env.open_db(name, txn=txn, dupsort=name in schema.DUPSORT_DATABASES)
                for name in schema.ALL_DATABASES
            }
        start = Position(0, 0, 0, SALT)
        journal = RedoJournal(tmp_path, start, capacity=4 * ALIGN)
        sync = CommitSync(env, dbs, journal, DurableMark())
        txn = env.begin(write=True)
        target = sync.target(txn)
        target.put(b"k", b"v", db=dbs[schema.META])
        with pytest.raises(lmdb.MapFullError):
            sync.commit(cast(lmdb.Transaction, FailingCommit(txn)), target)
        assert find_next((tmp_path / JOURNAL_FILE).read_bytes(), start) is None
        # The next commit takes the same sequence number and place, and is replayable.
        txn = env.begin(write=True)
        target = sync.target(txn)
        target.put(b"k", b"w", db=dbs[schema.META])
        sync.commit(txn, target)
        found = find_next((tmp_path / JOURNAL_FILE).read_bytes(), start)
        assert found is not None and found[0].sequence == 1
        assert decode_ops(found[1]) == [(1, schema.META, b"k", b"w", 3)]
        sync.close()
    finally:
        env.close()


def test_a_reader_never_sees_a_commit_whose_journal_sync_has_not_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LMDB shows a commit to new readers once its (unsynced) meta page is written; the
    journal's sync may still be running then, and a power cut would take the commit
    back. A read that begins on it waits for that sync."""
    engine = LmdbEngine.open(config(tmp_path / "data"))
    syncing, release = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:  # only Python code calls it: the journal's thread
        syncing.set()
        release.wait(30)
        real_fdatasync(fd)

    try:
        monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
        env = engine._state.env
        before = int(env.info()["last_txnid"])
        appended = engine.append("t", 1, [event("unsynced")])
        assert syncing.wait(30)
        eventually(
            lambda: int(env.info()["last_txnid"]) > before or None,
            what="LMDB's commit published to new readers",
        )
        counts: list[int] = []
        reader = threading.Thread(target=lambda: counts.append(engine.event_count("t")))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive() and not counts and not appended.done()
        release.set()
        reader.join(30)
        assert counts == [1] and appended.result(timeout=30) == [0]
    finally:
        release.set()
        monkeypatch.undo()
        engine.close()
