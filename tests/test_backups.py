"""Backups only inside ``--backup-dir``, against real daemons.

A daemon without ``--backup-dir`` refuses every backup; with it, a
destination outside (``..``, an absolute path elsewhere, a symbolic link
below the backup directory, even one swapped in while the copy runs: the
daemon is held there by tests/support/open_gate.py) is refused or never
followed, and nothing is created outside. What a backup holds is checked in
tests/test_operations.py, killed backups in tests/test_storage_full.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.open_gate import OpenGate, tmpfs
from tests.test_operations import admin_cli
from turnstore import (
    AgentEventEnvelope,
    FailedPreconditionError,
    InvalidArgumentError,
    TurnstoreClient,
)


async def test_backups_are_refused_without_a_backup_dir(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    fresh = start_daemon(data_dir=tmp_path / "data")
    async with TurnstoreClient(fresh.target) as client:
        for dest in (str(tmp_path / "copy"), "copy"):
            with pytest.raises(FailedPreconditionError, match="start the daemon with --backup-dir"):
                await client.admin.backup(dest)
    by_cli = await admin_cli("backup", "copy", "--target", fresh.target, cwd=tmp_path)
    assert by_cli.returncode == 1
    assert b"backups are disabled" in by_cli.stderr
    assert fresh.stop() == 0
    assert sorted(os.listdir(tmp_path)) == ["data"]


def backup_daemon(start_daemon: DaemonStarter, tmp_path: Path, backup_dir: Path | str) -> Daemon:
    return start_daemon("lmdb", "--backup-dir", str(backup_dir), data_dir=tmp_path / "data")


def tree(root: Path) -> list[str]:
    """Every path below ``root``, relative, links not followed."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


async def test_a_backup_refuses_destinations_outside_or_unusable(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    backups = tmp_path / "backups"
    outside = tmp_path / "outside"
    for directory in (backups, outside, backups / "sub", backups / "full"):
        directory.mkdir()
    (outside / "keep.txt").write_text("keep me")
    (backups / "full" / "something").write_text("keep me")
    (backups / "a-file").write_text("keep me")
    (outside / "empty").mkdir()
    (backups / "link-out").symlink_to(outside)
    (backups / "link-empty").symlink_to(outside / "empty")
    (backups / "link-in").symlink_to(backups / "sub")
    outside_before, backups_before = tree(outside), tree(backups)
    daemon = backup_daemon(start_daemon, tmp_path, backups)
    try:
        async with TurnstoreClient(daemon.target) as client:
            admin = client.admin
            refused = {
                "": "is empty",
                "../escaped": "'..' component",
                "sub/../../escaped": "'..' component",
                str(backups / ".." / "escaped"): "'..' component",
                str(outside / "copy"): "outside the backup directory",
                "/": "outside the backup directory",
                str(backups): "the backup directory itself",
                ".": "the backup directory itself",
                "nul\0byte": "NUL byte",
                "full": "not empty",
                "a-file": "not a directory",
                "missing/dir": "parent directory",
                "a-file/below": "parent directory",
                "link-out/copy": "symbolic link",
                str(backups / "link-out" / "copy"): "symbolic link",
                "link-empty": "symbolic link",
                "link-in/copy": "symbolic link",
            }
            for dest, problem in refused.items():
                with pytest.raises(InvalidArgumentError, match=problem):
                    await admin.backup(dest)
            # Nothing was created or changed, outside or inside.
            assert tree(outside) == outside_before
            assert (outside / "keep.txt").read_text() == "keep me"
            assert tree(backups) == backups_before
            assert sorted(os.listdir(tmp_path)) == ["backups", "data", "outside"]
            # Inside, relative or absolute, into an existing empty directory too.
            (backups / "empty").mkdir()
            taken = {
                "sub/nightly": backups / "sub" / "nightly",
                str(backups / "empty"): backups / "empty",
                "./sub/./weekly/": backups / "sub" / "weekly",
            }
            for dest, written in taken.items():
                result = await admin.backup(dest)
                assert result.dest_dir == str(written)
                assert result.bytes_written == (written / "data.mdb").stat().st_size
        # The command sends DEST as it is: relative to the backup directory, not its cwd.
        relative = await admin_cli(
            "backup", "rel", "--target", daemon.target, "--format", "text", cwd=outside
        )
        assert relative.returncode == 0, relative.stderr
        assert f"backup written to {backups / 'rel'}" in relative.stdout.decode()
        assert (backups / "rel" / "data.mdb").exists()
        assert tree(outside) == outside_before
        again = await admin_cli("backup", "rel", "--target", daemon.target)
        assert again.returncode == 1
        assert b"not empty" in again.stderr
    finally:
        assert daemon.stop() == 0


async def test_a_backup_that_cannot_be_written_fails_cleanly(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    # /proc takes no new directories, whoever asks: the copy fails cleanly.
    daemon = backup_daemon(start_daemon, tmp_path, "/proc")
    try:
        async with TurnstoreClient(daemon.target) as client:
            with pytest.raises(FailedPreconditionError, match="cannot write"):
                await client.admin.backup("turnstore-backup")
            assert await client.admin.stats()  # still serving
    finally:
        assert daemon.stop() == 0
    assert not (tmp_path / "data" / "backups-in-progress").exists()


def test_the_daemon_refuses_an_unusable_backup_dir(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    (tmp_path / "a-file").write_text("x")
    unusable = {
        tmp_path / "missing": "not an existing directory",
        tmp_path / "a-file": "not an existing directory",
        tmp_path / "data": "must not be the data directory",
        tmp_path / "data" / "inside": "must not be the data directory",
        tmp_path: "must not be the data directory",
    }
    (tmp_path / "data" / "inside").mkdir(parents=True)
    for backup_dir, problem in unusable.items():
        daemon = start_daemon(
            "lmdb", "--backup-dir", str(backup_dir), data_dir=tmp_path / "data", start=False
        )
        with pytest.raises(RuntimeError, match=problem):
            daemon.start()
        assert daemon.wait_exit() == 1


def blob(label: str, size: int) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "blob", "label": label, "data": "x" * size})


async def test_a_link_swapped_in_while_a_backup_runs_is_not_followed(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with tmpfs(tmp_path / "backups") as backups:
        daemon = backup_daemon(start_daemon, tmp_path, backups)
        assert daemon.process is not None
        pid = daemon.process.pid
        sub, moved = backups / "sub", backups / "moved"
        sub.mkdir()
        try:
            async with TurnstoreClient(daemon.target) as client:
                for n in range(8):
                    await client.events.append_many(
                        f"t{n % 4}", 1, [blob(f"{n}-{k}", 25_000) for k in range(4)]
                    )
                # The daemon is held as it opens the copy's file: its partial
                # directory is made, the copy not yet written.
                with OpenGate(backups, lambda opener, path: opener == pid) as gate:
                    backup = asyncio.create_task(client.admin.backup("sub/nightly"))
                    held = await asyncio.to_thread(gate.wait)
                    assert held.name == "data.mdb" and held.parent.parent == sub, held
                    assert held.parent.name.startswith(".nightly.partial-"), held
                    # The parent of the copy becomes a link to outside.
                    sub.rename(moved)
                    sub.symlink_to(outside)
                    gate.release()
                    result = await backup
                # The copy went on in the directory it had opened, not through the link.
                assert result.bytes_written == (moved / "nightly" / "data.mdb").stat().st_size
                assert os.listdir(outside) == []
                assert [n for n in os.listdir(moved) if ".partial-" in n] == []
                # The link is refused from now on.
                with pytest.raises(InvalidArgumentError, match="symbolic link"):
                    await client.admin.backup("sub/again")
                assert os.listdir(outside) == []
        finally:
            assert daemon.stop() == 0
    assert not (tmp_path / "data" / "backups-in-progress").exists()
