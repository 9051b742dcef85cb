"""``turnstore conversations`` and ``turnstore history KEY load|versions|delete``.

:func:`add_history_commands` adds them to the ``turnstore`` command's
subparsers; each parser's ``run`` default runs it.
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from turnstore import _json
from turnstore._convert import JSON
from turnstore.cli.common import (
    add_format_option,
    add_parser,
    as_json,
    confirm,
    fail,
    format_size,
    format_time,
    handle,
    printable,
    printable_json,
    warn,
    whole_number,
)
from turnstore.cli.connection import connect
from turnstore.errors import SnapshotFormatError
from turnstore.models import ConversationSnapshot
from turnstore.results import Blob


async def _conversations(args: argparse.Namespace) -> int:
    json_lines = as_json(args)
    shown = 0
    last: str | None = None
    async with connect(args) as client:
        listed = client.list_keys(
            prefix=args.prefix, start_after=args.start_after, newest_first=args.newest_first
        )
        async for key in listed:
            if args.limit is not None and shown >= args.limit:
                if not json_lines and last is not None:
                    options = f"--start-after {last!r}"
                    if args.prefix:
                        options += f" --prefix {args.prefix!r}"
                    if args.newest_first:
                        options += " --newest-first"
                    print(f"-- more: turnstore conversations {options}", file=sys.stderr)
                break
            if json_lines:
                record = {
                    "key": key.key,
                    "version": key.version,
                    "last_write": format_time(key.last_write_unix_nanos),
                    "last_write_unix_nanos": key.last_write_unix_nanos,
                }
                print(printable_json(_json.dumps(record)))
            else:
                print(
                    f"{printable(key.key)}  version {key.version}  "
                    f"last write {format_time(key.last_write_unix_nanos)}"
                )
            shown += 1
            last = key.key
    return 0


def _conversation(blob: Blob) -> ConversationSnapshot | None:
    """The blob as a conversation snapshot, or None when it is not one (any other bytes)."""
    if blob.content_type.split(";")[0].strip().lower() not in ("", JSON):
        return None
    try:
        return ConversationSnapshot.from_json(blob.data)
    except SnapshotFormatError:
        return None


async def _load(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        loaded = await client.history(args.key).load_bytes(args.version)
    if loaded is None:
        which = "nothing is stored" if args.version is None else f"no version {args.version}"
        fail("history", f"{args.key!r}: {which}")
        return 1
    snapshot = _conversation(loaded)
    if as_json(args):
        record: dict[str, Any] = {
            "key": args.key,
            "version": loaded.version,
            "saved_at": format_time(loaded.saved_at_unix_nanos),
        }
        if snapshot is not None:
            record["snapshot"] = snapshot.to_json_dict()
        else:
            # Any other bytes (save_bytes): exactly, as base64.
            record["content_type"] = loaded.content_type
            record["size_bytes"] = len(loaded.data)
            record["data_base64"] = base64.b64encode(loaded.data).decode("ascii")
        print(printable_json(_json.dumps(record)))
        return 0
    print(
        f"# {printable(args.key)} version {loaded.version}, "
        f"saved {format_time(loaded.saved_at_unix_nanos)}",
        file=sys.stderr,
    )
    if snapshot is None:
        print(
            f"{printable(loaded.content_type)}, {format_size(len(loaded.data))}: not a "
            "conversation snapshot (--format json prints its bytes as base64)"
        )
        return 0
    for index, (message, pinned) in enumerate(zip(snapshot.messages, snapshot.pinned, strict=True)):
        mark = "*" if pinned else " "
        print(f"{index:>4} {mark} {printable_json(_json.dumps(message))}")
    return 0


async def _versions(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        versions = await client.history(args.key).list_versions()
    for info in versions:
        if as_json(args):
            record = {
                "version": info.version,
                "saved_at": format_time(info.saved_at_unix_nanos),
                "saved_at_unix_nanos": info.saved_at_unix_nanos,
                "size_bytes": info.size_bytes,
                "content_type": info.content_type,
            }
            print(printable_json(_json.dumps(record)))
        else:
            print(
                f"version {info.version}  saved {format_time(info.saved_at_unix_nanos)}  "
                f"{format_size(info.size_bytes)}  {printable(info.content_type)}"
            )
    if not versions:
        warn(
            "history",
            f"{args.key!r}: no versions stored (`turnstore conversations` lists the keys)",
        )
    return 0


async def _delete(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        history = client.history(args.key)
        if not args.yes:
            kept = len(await history.list_versions())
            question = f"Delete conversation {args.key!r} ({kept} versions)?"
            if not confirm(question, args.yes):
                fail("history", "not deleted")
                return 1
        removed = await history.delete()
    if not removed:
        warn("history", f"{args.key!r}: no versions stored, nothing deleted")
    if as_json(args):
        print(printable_json(_json.dumps({"key": args.key, "removed_versions": removed})))
    else:
        print(f"deleted {removed} versions of {args.key!r}")
    return 0


def add_history_commands(commands: Any) -> None:
    """Add ``conversations`` and ``history`` to ``commands``."""
    conversations = add_parser(
        commands,
        "conversations",
        help="list the conversation keys holding a snapshot",
        description=(
            "List every conversation key that holds a snapshot (key, latest version, "
            "last write) in the byte order of the keys: one JSON object a line when "
            "piped. --start-after KEY goes on after a listing that stopped; --prefix "
            "lists only the keys under it, --newest-first in descending order."
        ),
    )
    conversations.add_argument("--start-after", default="", metavar="KEY", help="list after it")
    conversations.add_argument("--prefix", default="", help="only the keys starting with it")
    conversations.add_argument(
        "--newest-first", action="store_true", help="descending order (the greatest key first)"
    )
    conversations.add_argument(
        "--limit", type=whole_number(1), metavar="N", help="list at most this many (1 or more)"
    )
    add_format_option(conversations)
    handle(conversations, _conversations)

    # The connection options and --format are taken before the action too
    # (`history KEY --target X load`): the actions' copies default to unset
    # (inherited=True), so that one given before the action holds.
    history = add_parser(
        commands,
        "history",
        help="load, list or delete a conversation's snapshots",
        description=(
            "Read or delete the snapshots saved under one conversation key. The "
            "connection options and --format go before or after ACTION."
        ),
    )
    history.add_argument("key", metavar="KEY", help="the conversation key")
    add_format_option(history, "JSON")
    actions = history.add_subparsers(dest="action", required=True, metavar="ACTION")
    load = add_parser(
        actions,
        "load",
        inherited=True,
        help="print the latest snapshot (or --version N)",
        description=(
            "Print a snapshot: on a terminal one line per message (* marks a pinned "
            "one); piped, one JSON object {key, version, saved_at, snapshot}. Anything "
            "else saved under the key (bytes of another content type) is shown as its "
            "content type and size, or piped as {key, version, saved_at, content_type, "
            "size_bytes, data_base64}. Exit 1 when nothing is stored."
        ),
    )
    load.add_argument(
        "--version", type=whole_number(1), metavar="N", help="a kept older version (1 or more)"
    )
    add_format_option(load, "one JSON object", inherited=True)
    handle(load, _load)
    versions = add_parser(
        actions,
        "versions",
        inherited=True,
        help="list the kept versions, newest first",
        description="List the kept versions of the key: version, save time, size, content type.",
    )
    add_format_option(versions, inherited=True)
    handle(versions, _versions)
    delete = add_parser(
        actions,
        "delete",
        inherited=True,
        help="delete every kept version",
        description=(
            "Delete every kept version of the key (the next save gets a higher "
            "version). Asks for confirmation on a terminal; without one it needs --yes."
        ),
    )
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")
    add_format_option(delete, "one JSON object", inherited=True)
    handle(delete, _delete)
