"""How the writer makes a commit durable (``--commit-sync``, docs/one-sync.md).

- ``lmdb``: LMDB opened with ``metasync=True``: a commit syncs its data pages, then
  writes its meta page through an ``O_DSYNC`` descriptor; two syncs in sequence.
- ``journal``: LMDB opened with ``metasync=False`` (it syncs the data pages and
  writes the meta page unsynced; the next commit's data sync makes it durable),
  and the commit's changes, recorded by :class:`~.recording.RecordingTxn`, are
  written to the redo journal and synced on another thread *while* LMDB commits.
  The commit is durable once both syncs are done: one sync's latency. A commit
  too large for the journal is synced in full instead (LMDB's commit, then
  ``env.sync``).
- ``unsafe-unjournaled`` (tests only): ``metasync=False`` and no journal, so a
  power cut can lose the last acknowledged commit; it shows the power-cut test
  can fail.

Readers never see a commit before it is durable: :class:`DurableMark` holds a
read transaction that began on a commit still syncing until the sync is done
(a commit's meta page is visible to new readers as soon as LMDB writes it, which
in ``journal`` mode is before the journal's sync may have finished).
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Final, cast

import lmdb

from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.recording import RecordingTxn, encode_ops
from turnstore.server.storage.lmdb.redo_journal import META_REDO_POSITION, RedoJournal

LMDB: Final = "lmdb"
JOURNAL: Final = "journal"
UNSAFE_UNJOURNALED: Final = "unsafe-unjournaled"
MODES: Final = (JOURNAL, LMDB, UNSAFE_UNJOURNALED)


def lmdb_metasync(mode: str) -> bool:
    """Whether LMDB itself syncs the meta page of each commit in ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown commit sync mode {mode!r}")
    return mode == LMDB


class DurableMark:
    """The last transaction id known durable; read transactions on a later one wait.

    Disabled (everything durable) unless :meth:`enable` is called: in ``lmdb``
    mode a commit is visible only once its meta page is synced.
    """

    def __init__(self) -> None:
        self._txnid = sys.maxsize
        self._changed = threading.Condition()

    def enable(self, txnid: int) -> None:
        self._txnid = txnid

    def advance(self, txnid: int) -> None:
        with self._changed:
            self._txnid = max(self._txnid, txnid)
            self._changed.notify_all()

    def wait_for(self, txnid: int) -> None:
        """Return once ``txnid`` is durable (at once in the common case: no lock)."""
        if txnid <= self._txnid:
            return
        with self._changed:
            self._changed.wait_for(lambda: txnid <= self._txnid)


class CommitSync:
    """The writer's side of ``--commit-sync``: what its writes write through, and how a
    transaction is committed durably. Owns the journal (closed by :meth:`close`)."""

    def __init__(
        self,
        env: lmdb.Environment,
        dbs: dict[bytes, Any],
        journal: RedoJournal | None,
        durable: DurableMark,
    ) -> None:
        self._env = env
        self._meta = dbs[schema.META]
        self._journal = journal
        self._durable = durable
        self._names = {id(db): (name, name in schema.DUPSORT_DATABASES) for name, db in dbs.items()}

    def target(self, txn: lmdb.Transaction) -> lmdb.Transaction:
        """What the writes get: ``txn`` itself, or a recording stand-in for it."""
        if self._journal is None:
            return txn
        return cast(lmdb.Transaction, RecordingTxn(txn, self._names))

    def commit(self, txn: lmdb.Transaction, target: lmdb.Transaction) -> None:
        """Commit ``txn`` (the writes went through ``target``); return once it is durable.

        Raises what the commit raised (``lmdb.MapFullError`` among others); a
        journal record already written for it is erased first.
        """
        txnid = txn.id()
        try:
            self._commit(txn, target)
        finally:
            # Whatever happened, the state readers now see is the one to stand on.
            self._durable.advance(txnid)

    def _commit(self, txn: lmdb.Transaction, target: lmdb.Transaction) -> None:
        journal = self._journal
        recording: object = target
        if journal is None or not isinstance(recording, RecordingTxn):
            txn.commit()
            return
        if not recording.ops:
            txn.commit()  # nothing changed: LMDB writes nothing
            return
        record = journal.place(encode_ops(recording.ops))
        if record is None:  # too large for the journal: LMDB's two syncs
            txn.commit()
            self._env.sync(True)
            journal.synced_in_full()
            return
        # Not recorded: replay writes it itself from the record's place.
        txn.put(META_REDO_POSITION, record.position.pack(), db=self._meta)
        journal.start_write(record)
        try:
            txn.commit()  # LMDB's data sync, the GIL released; the journal syncs meanwhile
        except BaseException:
            if journal.wait() is None:
                journal.erase(record)  # never replay a commit reported as failed
            raise
        failed = journal.wait()
        journal.committed(record)
        if failed is not None:
            # The journal's disk failed: make the commit durable LMDB's way instead.
            self._env.sync(True)
            journal.synced_in_full()

    def after_untracked_commit(self) -> None:
        """A commit made outside :meth:`commit` (``_release_freed_pages``'s no-op): it
        rewrote nothing that matters, but readers may stand on it."""
        self._durable.advance(int(self._env.info()["last_txnid"]))

    def close(self) -> None:
        """After the last commit: its meta page synced too (a copy of the stopped
        directory's ``data.mdb`` alone is then whole), and the journal closed."""
        if self._journal is not None:
            self._env.sync(True)
            self._journal.close()
