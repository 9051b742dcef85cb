//! ailoop's `HistoryStore` for one conversation key, with versions.

use ailoop_history::{ConversationSnapshot, HistoryStore};
use async_trait::async_trait;

use crate::client::{Client, RetryPolicy};
use crate::convert::JSON;
use crate::error::{Error, ErrorKind, Result};
use crate::pb;

/// A loaded snapshot with its version (pass it as an expected version).
#[derive(Clone, Debug, PartialEq)]
pub struct VersionedSnapshot {
    /// The snapshot.
    pub snapshot: ConversationSnapshot,
    /// Its version: 1 for the key's first save, one more for each save.
    pub version: u64,
    /// When the daemon committed it, in nanoseconds since the Unix epoch.
    pub saved_at_unix_nanos: i64,
}

/// A snapshot as stored, its data as bytes (see
/// [`TurnstoreHistoryStore::load_bytes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    /// Exactly what was saved.
    pub data: Vec<u8>,
    /// Its encoding (`application/json` when saved with none).
    pub content_type: String,
    /// Its version.
    pub version: u64,
    /// When the daemon committed it, in nanoseconds since the Unix epoch.
    pub saved_at_unix_nanos: i64,
}

/// One kept version of a key, without its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotVersionInfo {
    /// The version number.
    pub version: u64,
    /// When it was saved, in nanoseconds since the Unix epoch.
    pub saved_at_unix_nanos: i64,
    /// The size of its data in bytes.
    pub size_bytes: u64,
    /// The encoding of its data.
    pub content_type: String,
}

/// ailoop's [`HistoryStore`] for one conversation key; get it from
/// [`Client::history`].
///
/// A snapshot is stored as ailoop's own JSON form (`{"version": 1,
/// "messages": [...], "pinned": [...]}`, version 2 with a suspension),
/// content type `application/json`, the form the Python and TypeScript
/// clients store. Beyond the trait: [`save_versioned`](Self::save_versioned)
/// with an expected version (optimistic concurrency), the kept versions and
/// [`delete`](Self::delete).
#[derive(Clone, Debug)]
pub struct TurnstoreHistoryStore {
    client: Client,
    key: String,
}

impl TurnstoreHistoryStore {
    pub(crate) fn new(client: Client, key: String) -> Self {
        Self { client, key }
    }

    /// The conversation key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Save `snapshot` as a full overwrite, durably; return its version.
    ///
    /// With `expected_version` (the version last loaded; 0 for "nothing
    /// stored"), the save happens only if the key is still at that version;
    /// otherwise it fails with [`ErrorKind::VersionConflict`] carrying
    /// [`Error::current_version`], and nothing changes. Such a save is not
    /// retried when the daemon is unavailable: its first attempt may have
    /// committed.
    pub async fn save_versioned(
        &self,
        snapshot: &ConversationSnapshot,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let data = serde_json::to_vec(snapshot).map_err(|e| {
            Error::local(
                ErrorKind::SnapshotFormat,
                format!("snapshot of {:?} cannot be encoded as JSON: {e}", self.key),
            )
        })?;
        self.save_bytes(&data, JSON, expected_version).await
    }

    /// The latest snapshot (or the kept `version`) with its version; None
    /// when nothing is stored, the key was deleted, or that version is no
    /// longer kept.
    ///
    /// Fails with [`ErrorKind::SnapshotFormat`] when the stored data is not
    /// a snapshot ailoop can read (another client may store messages that
    /// are not ailoop's, or a newer version).
    pub async fn load_versioned(&self, version: Option<u64>) -> Result<Option<VersionedSnapshot>> {
        let Some(stored) = self.load_bytes(version).await? else {
            return Ok(None);
        };
        let format_error = |problem: String| {
            Error::local(
                ErrorKind::SnapshotFormat,
                format!("snapshot {} of {:?} {problem}", stored.version, self.key),
            )
        };
        if stored.content_type != JSON {
            return Err(format_error(format!(
                "is {:?}, not JSON",
                stored.content_type
            )));
        }
        let snapshot = serde_json::from_slice(&stored.data)
            .map_err(|e| format_error(format!("is not an ailoop snapshot: {e}")))?;
        Ok(Some(VersionedSnapshot {
            snapshot,
            version: stored.version,
            saved_at_unix_nanos: stored.saved_at_unix_nanos,
        }))
    }

    /// Store `data` (any bytes) as the key's next version with
    /// `content_type` (say `application/octet-stream`; at most 128 bytes, no
    /// NUL); return the version. Other types are stored as opaque bytes;
    /// `application/json` (or empty) data must still be strict JSON.
    /// `expected_version` and retries as for
    /// [`save_versioned`](Self::save_versioned).
    pub async fn save_bytes(
        &self,
        data: &[u8],
        content_type: &str,
        expected_version: Option<u64>,
    ) -> Result<u64> {
        let retry = match expected_version {
            Some(_) => RetryPolicy::NONE,
            None => self.client.inner.options.retry,
        };
        let client = &self.client;
        client
            .call(retry, || async {
                let request = pb::SaveRequest {
                    key: self.key.clone(),
                    data: data.to_vec(),
                    content_type: content_type.to_owned(),
                    expected_version,
                };
                let mut stub = client.inner.history.clone();
                Ok(stub
                    .save(client.request(request, true))
                    .await?
                    .into_inner()
                    .version)
            })
            .await
    }

    /// The latest snapshot (or the kept `version`) as stored, whatever its
    /// content type (a JSON snapshot comes back as its text); None when
    /// nothing is stored, the key was deleted, or that version is no longer
    /// kept. Never fails for what is stored.
    pub async fn load_bytes(&self, version: Option<u64>) -> Result<Option<Blob>> {
        let client = &self.client;
        let response = client
            .call(client.inner.options.retry, || async {
                let request = pb::LoadRequest {
                    key: self.key.clone(),
                    version,
                };
                let mut stub = client.inner.history.clone();
                Ok(stub.load(client.request(request, true)).await?.into_inner())
            })
            .await?;
        Ok(response
            .snapshot
            .filter(|_| response.found)
            .map(|stored| Blob {
                data: stored.data,
                content_type: if stored.content_type.is_empty() {
                    JSON.to_owned()
                } else {
                    stored.content_type
                },
                version: stored.version,
                saved_at_unix_nanos: stored.saved_at_unix_nanos,
            }))
    }

    /// The kept versions, newest first; empty for an unknown or deleted key.
    pub async fn list_versions(&self) -> Result<Vec<SnapshotVersionInfo>> {
        let client = &self.client;
        let response = client
            .call(client.inner.options.retry, || async {
                let request = pb::ListVersionsRequest {
                    key: self.key.clone(),
                };
                let mut stub = client.inner.history.clone();
                Ok(stub
                    .list_versions(client.request(request, true))
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(response
            .versions
            .into_iter()
            .map(|v| SnapshotVersionInfo {
                version: v.version,
                saved_at_unix_nanos: v.saved_at_unix_nanos,
                size_bytes: v.size_bytes,
                content_type: v.content_type,
            })
            .collect())
    }

    /// Delete every kept version; return how many. Versions do not restart:
    /// the next save gets a higher one. A no-op for an unknown key.
    pub async fn delete(&self) -> Result<u64> {
        let client = &self.client;
        client
            .call(client.inner.options.retry, || async {
                let request = pb::DeleteRequest {
                    key: self.key.clone(),
                };
                let mut stub = client.inner.history.clone();
                Ok(stub
                    .delete(client.request(request, true))
                    .await?
                    .into_inner()
                    .removed_versions)
            })
            .await
    }
}

#[async_trait]
impl HistoryStore for TurnstoreHistoryStore {
    type Error = Error;

    async fn save(&self, snapshot: &ConversationSnapshot) -> Result<()> {
        self.save_versioned(snapshot, None).await.map(drop)
    }

    async fn load(&self) -> Result<Option<ConversationSnapshot>> {
        Ok(self
            .load_versioned(None)
            .await?
            .map(|loaded| loaded.snapshot))
    }
}
