//! The history calls over many conversation keys: a ranged key listing
//! ([`Client::list_keys`]) and an atomic batch of saves and deletes
//! ([`Client::batch`] of [`BatchOp`]s).

use crate::client::{Client, RetryPolicy};
use crate::error::Result;
use crate::pb;

/// A conversation key holding a snapshot, as [`Client::list_keys`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The conversation key.
    pub key: String,
    /// The version a load returns now.
    pub version: u64,
    /// When the key was last saved or deleted, in nanoseconds since the Unix epoch.
    pub last_write_unix_nanos: i64,
}

/// What [`Client::list_keys`] lists; the default lists every key, ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListKeysOptions {
    /// Only keys starting with it.
    pub prefix: String,
    /// Continue after this key in the listing's direction (with
    /// `newest_first`: the keys before it).
    pub start_after: String,
    /// Only keys sorting before it (exclusive), whatever the direction.
    pub end_before: String,
    /// At most this many keys; 0 lists all.
    pub limit: u32,
    /// Descending byte order: a prefix with `limit` 1 and `newest_first`
    /// is the greatest key under the prefix, read in O(1).
    pub newest_first: bool,
}

/// One operation of a [`Client::batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Store `data` under `key` with `content_type` (JSON must be strict
    /// JSON), only if the key is at `expected_version` (0: nothing stored)
    /// when given.
    Save {
        /// The conversation key.
        key: String,
        /// The bytes to store.
        data: Vec<u8>,
        /// Their encoding (empty: `application/json`).
        content_type: String,
        /// Save only if the key is at this version.
        expected_version: Option<u64>,
    },
    /// Delete every kept version of `key`, only if it is at
    /// `expected_version` when given. The key keeps its version counter.
    Delete {
        /// The conversation key.
        key: String,
        /// Delete only if the key is at this version.
        expected_version: Option<u64>,
    },
    /// Delete every key starting with `prefix` (not empty).
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
}

impl BatchOp {
    /// A save of `data` under `key` with `content_type`.
    pub fn save(
        key: impl Into<String>,
        data: impl Into<Vec<u8>>,
        content_type: impl Into<String>,
        expected_version: Option<u64>,
    ) -> Self {
        Self::Save {
            key: key.into(),
            data: data.into(),
            content_type: content_type.into(),
            expected_version,
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>, expected_version: Option<u64>) -> Self {
        Self::Delete {
            key: key.into(),
            expected_version,
        }
    }

    /// A delete of every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<String>) -> Self {
        Self::DeletePrefix {
            prefix: prefix.into(),
        }
    }

    /// Whether repeating it after a lost answer changes nothing more.
    fn idempotent(&self) -> bool {
        matches!(
            self,
            Self::DeletePrefix { .. }
                | Self::Delete {
                    expected_version: None,
                    ..
                }
        )
    }

    fn to_wire(&self) -> pb::BatchOperation {
        use pb::batch_operation::Operation;
        let operation = match self {
            Self::Save {
                key,
                data,
                content_type,
                expected_version,
            } => Operation::Save(pb::SaveRequest {
                key: key.clone(),
                data: data.clone(),
                content_type: content_type.clone(),
                expected_version: *expected_version,
            }),
            Self::Delete {
                key,
                expected_version,
            } => Operation::Delete(pb::BatchDelete {
                key: key.clone(),
                expected_version: *expected_version,
            }),
            Self::DeletePrefix { prefix } => Operation::DeletePrefix(pb::BatchDeletePrefix {
                prefix: prefix.clone(),
            }),
        };
        pb::BatchOperation {
            operation: Some(operation),
        }
    }
}

/// One operation's outcome in a [`Client::batch`], at the operation's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchResult {
    /// The version a save got (0 for deletes).
    pub version: u64,
    /// The snapshot versions a delete or delete-prefix removed.
    pub removed_versions: u64,
    /// The keys it deleted (a delete: 1 if the key held a snapshot, else 0).
    pub removed_keys: u64,
}

impl Client {
    /// The conversation keys holding a snapshot in byte order of their
    /// UTF-8 form (descending with `newest_first`), narrowed as `options`
    /// says. Deleted keys are never listed and cost nothing to skip.
    pub async fn list_keys(&self, options: ListKeysOptions) -> Result<Vec<KeyInfo>> {
        self.call(self.inner.options.retry, || async {
            let request = pb::ListKeysRequest {
                start_after: options.start_after.clone(),
                prefix: options.prefix.clone(),
                end_before: options.end_before.clone(),
                limit: options.limit,
                newest_first: options.newest_first,
            };
            let mut stub = self.inner.history.clone();
            let mut stream = stub
                .list_keys(self.request(request, true))
                .await?
                .into_inner();
            let mut keys = Vec::new();
            while let Some(message) = stream.message().await? {
                keys.extend(message.keys.into_iter().map(|k| KeyInfo {
                    key: k.key,
                    version: k.version,
                    last_write_unix_nanos: k.last_write_unix_nanos,
                }));
            }
            Ok(keys)
        })
        .await
    }

    /// Apply saves and deletes across keys, in order, all or nothing, in one
    /// durable commit; one [`BatchResult`] per operation.
    ///
    /// One refused operation ([`ErrorKind::VersionConflict`](crate::ErrorKind),
    /// invalid argument, permission denied; the message names its index)
    /// refuses the whole batch: nothing changes. Retried when the daemon is
    /// unavailable only if every operation is an unconditional delete.
    pub async fn batch(&self, operations: &[BatchOp]) -> Result<Vec<BatchResult>> {
        let retry = if operations.iter().all(BatchOp::idempotent) {
            self.inner.options.retry
        } else {
            RetryPolicy::NONE
        };
        let request = pb::BatchRequest {
            operations: operations.iter().map(BatchOp::to_wire).collect(),
        };
        let response = self
            .call(retry, || async {
                let mut stub = self.inner.history.clone();
                Ok(stub
                    .batch(self.request(request.clone(), true))
                    .await?
                    .into_inner())
            })
            .await?;
        Ok(response
            .results
            .into_iter()
            .map(|r| BatchResult {
                version: r.version,
                removed_versions: r.removed_versions,
                removed_keys: r.removed_keys,
            })
            .collect())
    }
}
