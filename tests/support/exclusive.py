"""One at a time across the test processes of this machine (``make test`` runs several).

``make test`` runs the suite in pytest-xdist workers. Installing Debian or
PyPI packages, or building client/typescript, from two workers at once would
collide (dpkg's lock, pip's half-written site-packages, a ``dist/`` rewritten
under a running node): such steps run inside :func:`one_at_a_time`, and look
again, inside it, whether another worker already did the work.
"""

from __future__ import annotations

import contextlib
import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """Hold the machine-wide lock ``name`` (a file lock in the temp directory) for the block."""
    path = Path(tempfile.gettempdir()) / f"turnstore-tests-{name}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
