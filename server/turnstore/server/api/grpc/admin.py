"""``turnstore.v1.AdminService``: the daemon's counters and backups."""

from __future__ import annotations

import grpc
import structlog

from turnstore.server.api.grpc.servicer import ServicerBase, unary
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

log = structlog.get_logger("turnstore.service")


class AdminService(ServicerBase, pb_grpc.AdminServiceServicer):
    """``turnstore.v1.AdminService``: counters of the daemon."""

    @unary
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        stored = await self._run(self._engine.storage_stats)
        retention = self._engine.retention_stats()
        return pb.GetStatsResponse(
            live_followers=self._followers.waiting,
            open_replays=self._followers.open_replays,
            map_size_bytes=stored.space.reserved_bytes,
            threads=stored.threads,
            events=stored.events,
            turns=stored.turns,
            finished_turns=stored.finished_turns,
            conversations=stored.conversations,
            snapshot_versions=stored.snapshot_versions,
            data_file_bytes=stored.data_file_bytes,
            retention_enabled=retention.enabled,
            retention_sweeps=retention.sweeps,
            retention_removed_threads=retention.removed_threads,
            retention_removed_events=retention.removed_events,
            retention_removed_conversations=retention.removed_conversations,
            retention_last_error=retention.last_error or "",
            follower_held_bytes=self._followers.send_budget.held_bytes,
            follower_ending_bytes=self._followers.send_budget.ending_bytes,
            followers_ended_too_slow=self._followers.send_budget.ended_too_slow,
            used_bytes=stored.space.used_bytes,
            max_db_bytes=stored.space.max_bytes,
            write_limit_bytes=stored.space.write_limit_bytes,
        )

    @unary
    async def Backup(
        self, request: pb.BackupRequest, context: grpc.aio.ServicerContext
    ) -> pb.BackupResponse:
        result = await self._run(self._engine.backup, request.dest_dir)
        log.info("backup_written", dest_dir=str(result.dest_dir), bytes=result.bytes_written)
        return pb.BackupResponse(dest_dir=str(result.dest_dir), bytes_written=result.bytes_written)
