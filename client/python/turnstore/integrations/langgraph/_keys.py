"""Where TurnstoreSaver keeps what, and the few key-value operations it needs.

The layout (``P`` is the saver's ``key_prefix``, ``langgraph/`` by default;
``{t}``, ``{n}`` and ``{r}`` are the thread id, the checkpoint namespace and
the run id, percent-encoded so that none holds a ``/``; a namespace is
written ``~`` + its encoding, so the root namespace ``""`` is ``~``, or,
when that is over 200 bytes (subgraphs nested five deep), ``#`` + a SHA-256
of it, so keys stay well within the daemon's key limit)::

    P threads/{t}/c/{n}/{checkpoint_id}   one checkpoint: its record (below)
    P threads/{t}/w/{n}/{checkpoint_id}   the pending writes stored against it
    P threads/{t}/h/{n}                   the namespace's head: the id of its newest
                                          checkpoint and the namespace ("id\nns"),
                                          advanced under expected_version
    P threads/{t}/r/{r}                   a marker: the thread holds checkpoints of run r
    P runs/{r}/{t}/{n}/{checkpoint_id}    the run index, for delete_for_runs (its
                                          value: the namespace)

Checkpoint ids are LangGraph's uuid6 strings, which sort by time, so the
newest-first listing of ``c/{n}/`` is the namespace's history, latest first.
Everything of a thread is under ``P threads/{t}/``, so deleting a thread is
one prefix delete. Values are LangGraph's serde output (``dumps_typed``),
stored with the content type ``application/x-langgraph-{type}``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote, unquote

CONTENT_TYPE_PREFIX = "application/x-langgraph-"
HEAD_CONTENT_TYPE = "text/plain"
MARKER_CONTENT_TYPE = "application/x-langgraph-marker"


def _part(value: str) -> str:
    # ":" and "|" are kept readable (LangGraph namespaces are "node:task|node:task").
    return quote(value, safe=":|")


# Longer encoded namespaces are hashed in keys (their values name them).
MAX_NS_PART_BYTES = 200


def _ns(ns: str) -> str:
    encoded = _part(ns)
    if len(encoded) <= MAX_NS_PART_BYTES:
        return "~" + encoded
    return "#" + hashlib.sha256(ns.encode("utf-8")).hexdigest()[:40]


def _ns_of(segment: str) -> str | None:
    """The namespace a key segment names; None when it is hashed (read the value)."""
    return unquote(segment[1:]) if segment.startswith("~") else None


def head_value(checkpoint_id: str, ns: str) -> bytes:
    """What a head holds: its checkpoint id and its namespace."""
    return f"{checkpoint_id}\n{ns}".encode()


def parse_head(data: bytes) -> tuple[str, str]:
    """(checkpoint id, namespace) of a head's value."""
    checkpoint_id, _, ns = data.decode("utf-8").partition("\n")
    return checkpoint_id, ns


def content_type_of(serde_type: str) -> str:
    """The content type a serde type is stored with."""
    return CONTENT_TYPE_PREFIX + serde_type


def serde_type_of(content_type: str) -> str:
    """The serde type of a stored value's content type."""
    if not content_type.startswith(CONTENT_TYPE_PREFIX):
        raise ValueError(f"not a LangGraph value: content type {content_type!r}")
    return content_type[len(CONTENT_TYPE_PREFIX) :]


@dataclass(frozen=True)
class Layout:
    """The keys of one saver (one ``key_prefix``)."""

    prefix: str

    def thread(self, thread_id: str) -> str:
        """Every key of a thread starts with this."""
        return f"{self.prefix}threads/{_part(thread_id)}/"

    def checkpoints(self, thread_id: str, ns: str) -> str:
        """The prefix of a namespace's checkpoints."""
        return f"{self.thread(thread_id)}c/{_ns(ns)}/"

    def checkpoint(self, thread_id: str, ns: str, checkpoint_id: str) -> str:
        """A checkpoint's record."""
        return self.checkpoints(thread_id, ns) + checkpoint_id

    def writes(self, thread_id: str, ns: str, checkpoint_id: str) -> str:
        """The pending writes stored against a checkpoint."""
        return f"{self.thread(thread_id)}w/{_ns(ns)}/{checkpoint_id}"

    def heads(self, thread_id: str) -> str:
        """The prefix of a thread's heads, one per namespace."""
        return f"{self.thread(thread_id)}h/"

    def head(self, thread_id: str, ns: str) -> str:
        """A namespace's head."""
        return f"{self.heads(thread_id)}{_ns(ns)}"

    def ns_of_head(self, thread_id: str, key: str) -> str | None:
        """The namespace of a head key listed under :meth:`heads` (None: hashed)."""
        return _ns_of(key[len(self.heads(thread_id)) :])

    def run_markers(self, thread_id: str) -> str:
        """The prefix of a thread's run markers."""
        return f"{self.thread(thread_id)}r/"

    def run_marker(self, thread_id: str, run_id: str) -> str:
        """The marker saying the thread holds checkpoints of ``run_id``."""
        return self.run_markers(thread_id) + _part(run_id)

    def run_of_marker(self, thread_id: str, key: str) -> str:
        """The run id of a run marker key."""
        return unquote(key[len(self.run_markers(thread_id)) :])

    def run(self, run_id: str) -> str:
        """The prefix of a run's index entries."""
        return f"{self.prefix}runs/{_part(run_id)}/"

    def run_in_thread(self, run_id: str, thread_id: str) -> str:
        """The prefix of a run's index entries in one thread."""
        return f"{self.run(run_id)}{_part(thread_id)}/"

    def run_entry(self, run_id: str, thread_id: str, ns: str, checkpoint_id: str) -> str:
        """The run index entry of one checkpoint."""
        return f"{self.run_in_thread(run_id, thread_id)}{_ns(ns)}/{checkpoint_id}"

    def parse_run_entry(self, run_id: str, key: str) -> tuple[str, str | None, str]:
        """(thread id, namespace or None when hashed, checkpoint id) of a run index entry."""
        thread_part, ns_part, checkpoint_id = key[len(self.run(run_id)) :].split("/")
        return unquote(thread_part), _ns_of(ns_part), checkpoint_id

    def ns_segment(self, ns: str) -> str:
        """How a namespace is written in keys."""
        return _ns(ns)

    def thread_of(self, key: str) -> str:
        """The thread id of a key under ``P threads/``."""
        return unquote(key[len(self.prefix) + len("threads/") :].split("/", 1)[0])
