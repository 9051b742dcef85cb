//! Administrative calls (`AdminService`): the daemon's counters.

use crate::client::Client;
use crate::error::Result;
use crate::pb;

/// The daemon's counters and what its database holds (`AdminService.GetStats`;
/// the proto documents each field). The fields of the Python client's
/// `DaemonStats` (`camelCase` in the TypeScript client's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DaemonStats {
    /// Replays currently following a thread (waiting for commits).
    pub live_followers: u64,
    /// Replays currently open, following or catching up.
    pub open_replays: u64,
    /// The LMDB map size in bytes (0 on PostgreSQL).
    pub map_size_bytes: u64,
    /// Threads stored.
    pub threads: u64,
    /// Events stored, in all threads.
    pub events: u64,
    /// Turns stored, finished or not.
    pub turns: u64,
    /// Turns finished.
    pub finished_turns: u64,
    /// Conversation keys holding a snapshot.
    pub conversations: u64,
    /// Snapshot versions kept, in all conversations.
    pub snapshot_versions: u64,
    /// The size of the database on disk in bytes.
    pub data_file_bytes: u64,
    /// Whether a retention age is configured.
    pub retention_enabled: bool,
    /// Retention sweeps completed since the daemon started.
    pub retention_sweeps: u64,
    /// Threads removed by retention since the daemon started.
    pub retention_removed_threads: u64,
    /// Events removed by retention since the daemon started.
    pub retention_removed_events: u64,
    /// Conversation keys removed by retention since the daemon started.
    pub retention_removed_conversations: u64,
    /// Why the last retention sweep failed; empty when it completed (or none ran).
    pub retention_last_error: String,
    /// Bytes replays reserve or hold in messages not yet taken by their readers.
    pub follower_held_bytes: u64,
    /// Bytes of replays ended as too slow that gRPC still keeps.
    pub follower_ending_bytes: u64,
    /// Replays ended with `follower_too_slow` since the daemon started.
    pub followers_ended_too_slow: u64,
    /// Bytes of database pages in use.
    pub used_bytes: u64,
    /// The database's size ceiling in bytes (0: none of turnstore's).
    pub max_db_bytes: u64,
    /// Where writes that add data stop with `storage_full` (0: no limit).
    pub write_limit_bytes: u64,
}

impl DaemonStats {
    /// `used_bytes` as a fraction of `write_limit_bytes` (writes stop at
    /// 1.0); 0.0 when there is no write limit (a daemon on PostgreSQL).
    pub fn used_fraction(&self) -> f64 {
        if self.write_limit_bytes == 0 {
            0.0
        } else {
            self.used_bytes as f64 / self.write_limit_bytes as f64
        }
    }

    fn from_proto(message: pb::GetStatsResponse) -> Self {
        Self {
            live_followers: message.live_followers,
            open_replays: message.open_replays,
            map_size_bytes: message.map_size_bytes,
            threads: message.threads,
            events: message.events,
            turns: message.turns,
            finished_turns: message.finished_turns,
            conversations: message.conversations,
            snapshot_versions: message.snapshot_versions,
            data_file_bytes: message.data_file_bytes,
            retention_enabled: message.retention_enabled,
            retention_sweeps: message.retention_sweeps,
            retention_removed_threads: message.retention_removed_threads,
            retention_removed_events: message.retention_removed_events,
            retention_removed_conversations: message.retention_removed_conversations,
            retention_last_error: message.retention_last_error,
            follower_held_bytes: message.follower_held_bytes,
            follower_ending_bytes: message.follower_ending_bytes,
            followers_ended_too_slow: message.followers_ended_too_slow,
            used_bytes: message.used_bytes,
            max_db_bytes: message.max_db_bytes,
            write_limit_bytes: message.write_limit_bytes,
        }
    }
}

/// Administrative calls over a client's connection; get it from
/// [`Client::admin`] (`client.admin` in the Python and TypeScript clients).
/// It shares the client's deadline, token and retry policy.
#[derive(Clone, Debug)]
pub struct TurnstoreAdmin {
    client: Client,
}

impl TurnstoreAdmin {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// The daemon's counters and what its database holds; retried while
    /// the daemon is unavailable, like every unary call. A scoped token is
    /// refused with [`crate::ErrorKind::PermissionDenied`].
    pub async fn stats(&self) -> Result<DaemonStats> {
        let client = &self.client;
        let response = client
            .call(client.inner.options.retry, || async {
                let mut stub = client.inner.admin.clone();
                Ok(stub
                    .get_stats(client.request(pb::GetStatsRequest {}, true))
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(DaemonStats::from_proto(response))
    }
}
