"""What a scope lets through of the calls over many conversation keys: a ranged key
listing (:func:`scoped_key_range`) and an atomic batch (:func:`check_batch_scope`), for
:class:`~turnstore.server.access.scoped_engine.ScopedEngine`.
"""

from __future__ import annotations

from collections.abc import Sequence

from turnstore.server.access.errors import PermissionDeniedError
from turnstore.server.access.scopes import Scope
from turnstore.server.storage.batches import BatchOp, DeletePrefixOp, KeyRange
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import KeySummary


def _order(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def scoped_key_range(
    engine: StorageEngine, scope: Scope, key_range: KeyRange, limit: int
) -> list[KeySummary]:
    """Up to ``limit`` keys of ``key_range`` that ``scope`` covers, in the range's order.

    The scope's key prefix narrows the engine's range (a request prefix
    outside it lists none of its keys); each listed key the prefix does not
    cover is looked up alone, when it is in the range and could be on the page.
    """
    prefix, newest_first = key_range.prefix, key_range.newest_first
    found: list[KeySummary] = []
    scope_prefix = scope.key_prefix
    if scope_prefix is not None and (
        prefix.startswith(scope_prefix) or scope_prefix.startswith(prefix)
    ):
        found = engine.list_keys(
            key_range.start_after,
            limit,
            prefix=max(prefix, scope_prefix, key=len),
            end_before=key_range.end_before,
            newest_first=newest_first,
        )
    for item in sorted(scope.keys, key=_order, reverse=newest_first):
        if scope_prefix is not None and item.startswith(scope_prefix):
            continue
        if not key_range.contains(item):
            continue
        if len(found) >= limit and (_order(item) > _order(found[-1].key)) != newest_first:
            break  # this one and the later ones cannot be on this page
        entry = engine.list_keys("", 1, prefix=item)
        if entry and entry[0].key == item:
            found.append(entry[0])
    found.sort(key=lambda summary: _order(summary.key), reverse=newest_first)
    return found[:limit]


def check_batch_scope(scope: Scope, operations: Sequence[BatchOp]) -> None:
    """PermissionDeniedError unless ``scope`` may write every key a batch saves or deletes
    and every prefix it deletes starts with the scope's key prefix (nothing is written)."""
    if scope.read_only:
        raise PermissionDeniedError("this credential may not write keys (it is read-only)")
    for operation in operations:
        if isinstance(operation, DeletePrefixOp):
            scope_prefix = scope.key_prefix
            if scope_prefix is None or not operation.prefix.startswith(scope_prefix):
                raise PermissionDeniedError(
                    "this credential may not delete keys by prefix "
                    "(the prefix is not within its key_prefix)"
                )
        elif not scope.covers_key(operation.key):
            raise PermissionDeniedError("this credential may not write key (outside its scope)")
