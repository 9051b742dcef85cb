"""Where a bearer token comes from: one rule for the daemon and the command line.

``turnstore serve --auth-token-file`` (the token the daemon requires) and the
client subcommands' ``--token-file`` (the token they send) read a token the
same way, so one file serves a daemon and its probes: the file's first line
without the whitespace around it; else the ``TURNSTORE_AUTH_TOKEN`` variable.
The daemon's package imports this module (and no other client module but the
generated code: tests/test_serve_options.py), so it needs only the standard
library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["AUTH_TOKEN_ENV", "read_token_file", "token_from_file_or_env"]

# Holds the token itself when no token file is given (the daemon's and the
# client subcommands' alike).
AUTH_TOKEN_ENV: Final = "TURNSTORE_AUTH_TOKEN"


def read_token_file(path: Path) -> str:
    """The token in ``path``: its first line, without the whitespace around it.

    Later lines are ignored (room for a comment). Raises ValueError naming
    the file when the first line is blank or the file is empty, and OSError
    when it cannot be read.
    """
    lines = path.read_text().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"the token file {str(path)!r} is empty")
    return token


def token_from_file_or_env(path: Path | None) -> str | None:
    """The token of ``path`` when given, else ``TURNSTORE_AUTH_TOKEN``, else None.

    An empty variable counts as unset. Errors are those of :func:`read_token_file`.
    """
    if path is not None:
        return read_token_file(path)
    return os.environ.get(AUTH_TOKEN_ENV) or None
