"""Power cuts: every write the daemon did not sync is lost, and nothing acknowledged is.

The daemon runs under ``tests/support/power_cut_shim.c`` (LD_PRELOAD), which logs
the old bytes under every unsynced write to its data directory; a "kill" of
:class:`tests.test_crash.CrashLoop` is then a power cut: SIGKILL, and every write
no ``fsync``/``fdatasync`` covered is taken back (:mod:`tests.support.power_cut`).
The loop's writers append, finish turns and save snapshots through the real
client, and after each cut the daemon restarts on what is left and every
acknowledged write is checked: there, once, at its positions, turns finished as
acknowledged, snapshot versions kept (see :mod:`tests.test_crash`). The
restarts run under the shim too (it only logs), so the next cut can follow,
except the last, which runs without it.

- ``--commit-sync journal`` (one sync per commit: LMDB's meta page unsynced, the
  redo journal replays the commit whose meta page was lost): 0 lost, and the
  journal's replay was needed at some cut;
- ``--commit-sync lmdb`` (two syncs): 0 lost, and no cut takes back a meta page;
- ``--commit-sync unsafe-unjournaled`` (the meta page unsynced, no journal): every
  cut takes back the last commit's meta page, and acknowledged writes are lost,
  which shows the shim drops what it should and the test can fail.

``make soak`` runs the journal loop with many more cuts (``python -m
tests.support.soak --power-cut``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.power_cut import CutReport, PowerCutDaemon, build_shim
from tests.test_crash import CrashLoop

# LMDB's two meta pages are its first two pages (4 KiB each here).
META_PAGES_END = 2 * 4096


def run_power_cut_loop(
    tmp_dir: Path, kills: int, seed: int, commit_sync: str = "journal"
) -> tuple[dict[str, int], PowerCutDaemon]:
    """Cut the power ``kills`` times under concurrent writes, checking after each (the
    last cut's restart without the shim at all)."""
    shim = build_shim(tmp_dir)
    data_dir = tmp_dir / "data"
    daemon = PowerCutDaemon(data_dir, shim, tmp_dir, ["--commit-sync", commit_sync])
    loop = CrashLoop(data_dir, seed, daemon)
    asyncio.run(loop.run(kills - 1))  # ends with a clean stop
    daemon.start()
    asyncio.run(loop.write_until_killed(restart_at_kill=False))
    daemon.use_shim = False
    loop.restart()
    try:
        asyncio.run(loop.check())
    finally:
        assert daemon.stop() == 0
    counts = loop.totals.as_dict()
    counts["replayed_commits"] = sum(daemon.replayed)
    counts["cuts_undoing_writes"] = sum(1 for cut in daemon.cuts if cut.undone)
    return counts, daemon


def _meta_undone(cut: CutReport) -> bool:
    """Whether the cut took back a write to one of LMDB's meta pages."""
    return any(undo.offset < META_PAGES_END for undo in cut.undone_in("data.mdb"))


def test_one_sync_journal_loses_nothing_at_power_cuts(tmp_path: Path) -> None:
    counts, daemon = run_power_cut_loop(tmp_path, kills=30, seed=20261207)
    assert counts["kills"] == 30
    assert counts["acked_appends"] > 0 and counts["acked_saves"] > 0
    assert counts["acked_finishes"] > 0 and counts["in_flight_at_kill"] > 0
    # The cuts took back unsynced writes: LMDB's last meta page at most cuts (in
    # one loaded `make test` run not at every one; which cuts missed, and why,
    # that run did not record: a cut before the restarted daemon's first commit
    # would find the meta page the open synced)...
    meta_undone = [_meta_undone(cut) for cut in daemon.cuts]
    assert sum(meta_undone) >= 2 * len(meta_undone) // 3, meta_undone
    # ...so the journal had to redo that commit at restart, and it did.
    assert counts["replayed_commits"] > 0


def test_two_syncs_lose_nothing_and_keep_every_meta_page(tmp_path: Path) -> None:
    counts, daemon = run_power_cut_loop(tmp_path, kills=8, seed=7, commit_sync="lmdb")
    assert counts["kills"] == 8 and counts["acked_appends"] > 0
    # The meta page is written through an O_DSYNC descriptor: never taken back.
    assert not any(_meta_undone(cut) for cut in daemon.cuts)
    assert counts["replayed_commits"] == 0


def test_without_the_journal_a_power_cut_loses_acknowledged_writes(tmp_path: Path) -> None:
    shim = build_shim(tmp_path)
    data_dir = tmp_path / "data"
    daemon = PowerCutDaemon(data_dir, shim, tmp_path, ["--commit-sync", "unsafe-unjournaled"])
    with pytest.raises(AssertionError, match=r"lost|acknowledged|stored"):
        asyncio.run(CrashLoop(data_dir, 11, daemon).run(20))
    # Each cut took back the last commit's meta page (unsynced without the journal).
    assert daemon.cuts and all(_meta_undone(cut) for cut in daemon.cuts)
