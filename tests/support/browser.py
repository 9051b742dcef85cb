"""Headless Chromium for the browser tests, installed from Debian's packages when missing.

:func:`ensure_chromium` fails the test (never skips) when Chromium cannot be
installed; :func:`launched_browser` starts it under Playwright and closes it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support.exclusive import one_at_a_time


def ensure_chromium() -> str:
    """The chromium executable, installed from Debian's packages when missing."""
    if shutil.which("chromium") is None:
        with one_at_a_time("apt"):
            _install_chromium()
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed and could not be installed")
    return path


@contextlib.asynccontextmanager
async def launched_browser(chromium: str) -> AsyncIterator[Browser]:
    """Headless ``chromium`` under Playwright, closed when the block ends."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


def _install_chromium() -> None:
    if shutil.which("chromium") is not None:
        return  # another test process installed it meanwhile
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        if done.returncode != 0:
            pytest.fail(f"cannot install chromium ({command}): {done.stderr[-2000:]}")
