"""Listings restricted to a scope: the entries with a prefix, plus explicitly listed ids.

Used by :class:`~turnstore.server.access.scoped_engine.ScopedEngine` for
threads and conversation keys alike, so that a scoped listing reads about
what it returns, not the whole store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from turnstore.server.storage.values import KeySummary, ThreadSummary

# Entries read per step while seeking one id of an explicit list (the first
# is nearly always the one: `below_prefix` leaves almost nothing in between).
_SEEK_PAGE: Final = 4
S = TypeVar("S", ThreadSummary, KeySummary)


def below_prefix(text: str) -> str:
    """A string that sorts just before ``text`` and every string that starts with it.

    Only strings that start with it (and so end in U+10FFFF, then more) sort
    between it and ``text``. Both engines order ids by their UTF-8 bytes
    (lone surrogates kept), which is the order of Python's code points.
    """
    last = ord(text[-1])
    return text[:-1] + chr(last - 1) + "\U0010ffff" if last else text[:-1]


def scoped_listing(
    fetch: Callable[[str, int], list[S]],
    id_of: Callable[[S], str],
    prefix: str | None,
    listed: frozenset[str],
    start_after: str,
    limit: int,
) -> list[S]:
    """The first ``limit`` entries after ``start_after`` with the prefix or listed.

    Reads the prefix's range from its start (at most ``limit`` covered
    entries, plus the few ids between the prefix less its last character and
    the prefix), and seeks each listed id that is not in that range.
    """
    found: list[S] = []
    if prefix is not None:
        after = max(start_after, below_prefix(prefix)) if prefix else start_after
        while len(found) < limit:
            page = fetch(after, limit)
            for entry in page:
                entry_id = id_of(entry)
                if entry_id.startswith(prefix):
                    found.append(entry)
                    if len(found) == limit:
                        break
                elif entry_id > prefix:
                    page = []  # past the prefix's range
                    break
            if len(page) < limit:
                break
            after = id_of(page[-1])
    extra = sorted(
        item
        for item in listed
        if item > start_after and not (prefix is not None and item.startswith(prefix))
    )
    if found and len(found) == limit:
        extra = [item for item in extra if item < id_of(found[-1])]
    seeked = 0
    for item in extra:
        if seeked == limit:  # the later ones cannot be on this page
            break
        listed_entry = _seek(fetch, id_of, item)
        if listed_entry is not None:
            found.append(listed_entry)
            seeked += 1
    found.sort(key=id_of)
    return found[:limit]


def _seek(fetch: Callable[[str, int], list[S]], id_of: Callable[[S], str], wanted: str) -> S | None:
    """The listing's entry of exactly ``wanted``, or None."""
    after = below_prefix(wanted)
    while True:
        page = fetch(after, _SEEK_PAGE)
        for entry in page:
            entry_id = id_of(entry)
            if entry_id == wanted:
                return entry
            if entry_id > wanted:
                return None
        if len(page) < _SEEK_PAGE:
            return None
        after = id_of(page[-1])
