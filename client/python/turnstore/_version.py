"""The version of turnstore that is running, for ``turnstore --version``.

pyproject.toml's ``[project] version`` is the one place it is written. An
installed wheel carries it in its metadata; code run from a checkout (an
editable install, or ``client/python`` on ``PYTHONPATH``) reads it from the
checkout's pyproject.toml, so that it names the code actually running even
when the installed metadata is stale or belongs to another copy.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "turnstore"

# Said when neither the checkout nor installed metadata names a version
# (a copy of the sources outside any checkout): a PEP 440 local version
# that sorts below every release.
UNKNOWN_VERSION = "0+unknown"


def _checkout_version() -> str | None:
    """The version in the checkout's pyproject.toml, or None outside a checkout.

    A checkout lays this file out as ``<root>/client/python/turnstore/_version.py``
    beside ``<root>/pyproject.toml`` for the project ``turnstore``; an
    installed copy sits in site-packages and has no such neighbours.
    """
    package_dir = Path(__file__).resolve().parent
    python_dir = package_dir.parent
    if python_dir.name != "python" or python_dir.parent.name != "client":
        return None
    pyproject = python_dir.parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    version = project.get("version")
    if project.get("name") != DISTRIBUTION or not isinstance(version, str):
        return None
    return version


def package_version() -> str:
    """The running turnstore's version: the checkout's, else the installed metadata's.

    Never raises: without either it returns ``UNKNOWN_VERSION``.
    """
    version = _checkout_version()
    if version is not None:
        return version
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN_VERSION
