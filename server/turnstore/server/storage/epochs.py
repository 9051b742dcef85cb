"""Epochs: how a reader tells a thread from the one that replaced it after a clear.

Each engine numbers its threads (1, 2, 3, ... in the order they were
created; a cleared thread's id gets a new number when written again) and
keeps, per database, an epoch mask. The epoch a reader sees, in a replay's
cursor, a view or a thread read, is the thread's number XOR the mask: it
changes when the thread is cleared, and when the database is restored from
a backup (a new mask is drawn), so a cursor from before either no longer
matches. Only the engines know numbers and masks; everything above them,
the storage interface included, speaks epochs.
"""

from __future__ import annotations

import secrets


def new_epoch_mask() -> int:
    """A random epoch mask for a restored database: below 2**53, bit 52 set.

    Thread numbers (counted up from 1) stay far below 2**52, so every epoch
    made with it is non-zero (0 means "no thread"), an exact JavaScript
    number (the TypeScript client and the inspector read epochs as numbers),
    and differs from every epoch of the database's earlier lives made with
    another mask (but for a 2**-52 chance): in particular from mask 0, the
    epochs of a database never restored.
    """
    return (1 << 52) | secrets.randbits(52)


def to_epoch(number: int | None, mask: int) -> int | None:
    """The epoch readers see of thread ``number`` (None: no thread)."""
    return None if number is None else number ^ mask


def to_number(epoch: int | None, mask: int) -> int | None:
    """The thread number of ``epoch`` (None: no thread); the inverse of :func:`to_epoch`."""
    return None if epoch is None else epoch ^ mask
