"""The errors the access layer raises: a missing credential, a scope that does not allow."""

from __future__ import annotations

from turnstore.server.storage.errors import DaemonError


class UnauthenticatedError(DaemonError):
    """A call without a valid credential (the daemon's bearer token, or a session over HTTP)."""

    reason = "unauthenticated"


class PermissionDeniedError(DaemonError):
    """The credential's scope does not allow the call.

    A write outside its scope or with a read-only credential, or a
    daemon-wide operation with a credential that is not full-scope. Reads
    outside the scope never raise it: they find nothing, as for a missing
    thread or key, so the refusal tells nothing about what is stored.
    """

    reason = "permission_denied"
