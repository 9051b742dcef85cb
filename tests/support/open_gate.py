"""Holding a daemon at a chosen file open, to act at that exact point of its work.

A test that must do something while the daemon is in the middle of an
operation (kill it during a backup's copy, swap a directory for a link
while the copy runs) cannot rely on being fast enough: a copy may end in
less time than any poll. :class:`OpenGate` asks the kernel (fanotify
permission events, ``FAN_OPEN_PERM`` on one mount) to hold the first open
of a file that matches, so the daemon waits there until the test lets it
go, or kills it. Every other open on the mount is let through at once, the
test's own included.

Linux only, and it needs ``CAP_SYS_ADMIN`` (the tests run as root: they
mount filesystems and run PostgreSQL as ``nobody``). A mount of the test's
own (:func:`tmpfs`) keeps the gate away from anything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_FAN_CLASS_CONTENT = 0x04
_FAN_CLOEXEC = 0x01
_FAN_MARK_ADD = 0x01
_FAN_MARK_MOUNT = 0x10
_FAN_OPEN_PERM = 0x00010000
_FAN_ALLOW = 0x01
_AT_FDCWD = -100
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid.
_METADATA = struct.Struct("IBBHQii")
# struct fanotify_response: fd, response.
_RESPONSE = struct.Struct("iI")


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str = "64m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``mount_point`` (created) for the block, unmounted after."""
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True, capture_output=True)


class OpenGate:
    """Holds the first open on ``mount`` for which ``hold(pid, path)`` is true.

    :meth:`wait` returns the held file's path once a matching open happens;
    the process that opened it is blocked in ``open`` until :meth:`release`
    (or it is killed: the wait is killable). Use as a context manager:
    leaving releases what is still held and stops watching. Opens that do
    not match, and any after the first match, are allowed at once.
    """

    def __init__(self, mount: Path, hold: Callable[[int, Path], bool]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint64,
            ctypes.c_int,
            ctypes.c_char_p,
        ]
        self._fd = libc.fanotify_init(_FAN_CLASS_CONTENT | _FAN_CLOEXEC, os.O_RDONLY)
        if self._fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"fanotify_init: {os.strerror(error)}")
        marked = libc.fanotify_mark(
            self._fd, _FAN_MARK_ADD | _FAN_MARK_MOUNT, _FAN_OPEN_PERM, _AT_FDCWD, bytes(mount)
        )
        if marked < 0:
            error = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(error, f"fanotify_mark {mount}: {os.strerror(error)}")
        self._hold = hold
        self._held_fd: int | None = None
        self._held_path: Path | None = None
        self._matched = threading.Event()
        self._lock = threading.Lock()
        self._stop_read, self._stop_write = os.pipe()
        self._thread = threading.Thread(target=self._answer, name="open-gate", daemon=True)
        self._thread.start()

    def __enter__(self) -> OpenGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(self) -> None:
        while True:
            ready, _, _ = select.select([self._fd, self._stop_read], [], [])
            if self._stop_read in ready:
                return
            buffer = os.read(self._fd, 4096)
            offset = 0
            while offset < len(buffer):
                length, _, _, _, _, event_fd, pid = _METADATA.unpack_from(buffer, offset)
                offset += length
                path = Path(os.readlink(f"/proc/self/fd/{event_fd}"))
                with self._lock:
                    if not self._matched.is_set() and self._hold(pid, path):
                        self._held_fd, self._held_path = event_fd, path
                        self._matched.set()
                        continue
                self._allow(event_fd)

    def _allow(self, event_fd: int) -> None:
        # The opener may be dead (killed while held): nothing to answer then.
        with contextlib.suppress(OSError):
            os.write(self._fd, _RESPONSE.pack(event_fd, _FAN_ALLOW))
        os.close(event_fd)

    def wait(self, timeout: float = 60.0) -> Path:
        """The path whose open is held, once one is; AssertionError after ``timeout`` s."""
        assert self._matched.wait(timeout), f"no matching open within {timeout} s"
        assert self._held_path is not None
        return self._held_path

    def release(self) -> None:
        """Let the held open go on (idempotent)."""
        with self._lock:
            if self._held_fd is not None:
                self._allow(self._held_fd)
                self._held_fd = None

    def close(self) -> None:
        """Release what is held and stop watching the mount."""
        self.release()
        os.write(self._stop_write, b"x")
        self._thread.join(timeout=30)
        for fd in (self._stop_read, self._stop_write, self._fd):
            os.close(fd)
