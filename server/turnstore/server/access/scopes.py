"""What a credential may touch: thread ids, conversation keys, and whether it may write.

A scope is given as a JSON object (in the tokens file of ``turnstore serve
--auth-tokens-file`` and in the body of ``POST /v1/session``)::

    {"thread_prefix": "alice/", "threads": ["shared-1"],
     "key_prefix": "alice/", "keys": ["faq"], "read_only": true}

- ``thread_prefix`` / ``threads``: the thread ids covered are those starting
  with the prefix, and those listed. ``key_prefix`` / ``keys``: the same for
  conversation keys. An empty prefix (``""``) covers every id.
- ``read_only``: the credential may read what it covers, never write it.
- An empty object ``{}`` (or one with only ``read_only``) covers every
  thread and every key: the full scope, what a single bearer token grants.
  Once any of the four fields is given, a kind of id without either of its
  fields is covered by nothing: ``{"thread_prefix": "alice/"}`` reaches no
  conversation key (say ``"key_prefix": ""`` to reach them all). So a scope
  never grants more than it names.

Anything else is refused by :func:`parse_scope` with a message naming the
field: unknown fields, wrong types, empty ids, more than
:data:`MAX_LISTED_IDS` listed ids or ids over :data:`MAX_ID_BYTES` bytes.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

# Ids listed in one scope (threads and keys each).
MAX_LISTED_IDS: Final = 1000
# Bytes of one listed id or prefix (above any id the engine accepts).
MAX_ID_BYTES: Final = 4096
_FIELDS: Final = frozenset({"thread_prefix", "threads", "key_prefix", "keys", "read_only"})


class ScopeError(ValueError):
    """A scope given as JSON is malformed; the message names the field."""


class ScopeTooWideError(ScopeError):
    """A scope asks for more than the credential that would grant it has."""


@dataclass(frozen=True)
class Scope:
    """The thread ids and conversation keys a credential covers, and if it may write.

    A prefix of None covers nothing by prefix; ``""`` covers everything.
    """

    thread_prefix: str | None = ""
    threads: frozenset[str] = frozenset()
    key_prefix: str | None = ""
    keys: frozenset[str] = frozenset()
    read_only: bool = False

    @property
    def full(self) -> bool:
        """Whether this is the full scope: every thread and key, read and write."""
        return self.thread_prefix == "" and self.key_prefix == "" and not self.read_only

    @property
    def all_threads(self) -> bool:
        """Whether every thread id is covered."""
        return self.thread_prefix == ""

    @property
    def all_keys(self) -> bool:
        """Whether every conversation key is covered."""
        return self.key_prefix == ""

    def covers_thread(self, thread_id: str) -> bool:
        """Whether ``thread_id`` may be read (and written unless read-only)."""
        prefix = self.thread_prefix
        return (prefix is not None and thread_id.startswith(prefix)) or thread_id in self.threads

    def covers_key(self, key: str) -> bool:
        """Whether conversation ``key`` may be read (and written unless read-only)."""
        prefix = self.key_prefix
        return (prefix is not None and key.startswith(prefix)) or key in self.keys

    def within(self, other: Scope) -> bool:
        """Whether everything this scope grants, ``other`` grants too."""
        if other.read_only and not self.read_only:
            return False
        return _ids_within(
            self.thread_prefix, self.threads, other.thread_prefix, other.covers_thread
        ) and _ids_within(self.key_prefix, self.keys, other.key_prefix, other.covers_key)

    def to_json(self) -> dict[str, Any]:
        """The scope as :func:`parse_scope` reads it (lists sorted, defaults left out)."""
        if self.thread_prefix == "" and self.key_prefix == "":
            return {"read_only": True} if self.read_only else {}
        out: dict[str, Any] = {}
        if self.thread_prefix is not None:
            out["thread_prefix"] = self.thread_prefix
        if self.threads:
            out["threads"] = sorted(self.threads)
        if self.key_prefix is not None:
            out["key_prefix"] = self.key_prefix
        if self.keys:
            out["keys"] = sorted(self.keys)
        if not out:  # covers nothing at all: still not the full scope
            out["threads"] = []
        if self.read_only:
            out["read_only"] = True
        return out


FULL: Final = Scope()

# The scope of the gRPC call being served, set by the access interceptor for
# the call's task (the full scope when the daemon has no token). Read it on
# the event loop: executor threads do not inherit it.
CALL_SCOPE: Final[ContextVar[Scope]] = ContextVar("turnstore_call_scope", default=FULL)


def _ids_within(
    prefix: str | None, listed: frozenset[str], other_prefix: str | None, other_covers: Any
) -> bool:
    if prefix is not None and not (other_prefix is not None and prefix.startswith(other_prefix)):
        return False
    return all(other_covers(item) for item in listed)


def _text(value: Any, field: str, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise ScopeError(f"scope.{field}: must be a string")
    if not allow_empty and not value:
        raise ScopeError(f"scope.{field}: must not be empty")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise ScopeError(f"scope.{field}: is {size} bytes, over the limit of {MAX_ID_BYTES}")
    return value


def _listed(value: Any, field: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise ScopeError(f"scope.{field}: must be a list of strings")
    if len(value) > MAX_LISTED_IDS:
        raise ScopeError(
            f"scope.{field}: holds {len(value)} ids, over the limit of {MAX_LISTED_IDS}"
        )
    return frozenset(
        _text(item, f"{field}[{i}]", allow_empty=False) for i, item in enumerate(value)
    )


def parse_scope(value: Any) -> Scope:
    """The scope a JSON value (already decoded) describes; ScopeError if malformed."""
    if not isinstance(value, dict):
        raise ScopeError("scope: must be a JSON object")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise ScopeError(
            f"scope: unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})"
        )
    read_only = value.get("read_only", False)
    if not isinstance(read_only, bool):
        raise ScopeError("scope.read_only: must be true or false")
    if not (set(value) - {"read_only"}):
        return Scope(read_only=read_only)
    return Scope(
        thread_prefix=_text(value["thread_prefix"], "thread_prefix", allow_empty=True)
        if "thread_prefix" in value
        else None,
        threads=_listed(value.get("threads", []), "threads"),
        key_prefix=_text(value["key_prefix"], "key_prefix", allow_empty=True)
        if "key_prefix" in value
        else None,
        keys=_listed(value.get("keys", []), "keys"),
        read_only=read_only,
    )
