//! A client of the turnstore daemon that implements the agent runtimes' own
//! store traits: agent-sdk's [`EventStore`](agent_sdk_tools::stores::EventStore)
//! ([`TurnstoreEventStore`]) and ailoop's
//! [`HistoryStore`](ailoop_history::HistoryStore) ([`TurnstoreHistoryStore`]),
//! so a Rust agent swaps its in-memory store for turnstore in one line.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use agent_sdk_tools::stores::EventStore;
//! use turnstore_client::{Client, ClientOptions};
//!
//! let client = Client::connect("unix:/run/turnstore.sock", ClientOptions::default()).await?;
//! let events: Arc<dyn EventStore> = Arc::new(client.events());
//! let history = client.history("conversation-1");
//! # Ok(()) }
//! ```
//!
//! Events are stored in the Python client's wire form (typed header fields,
//! the event's other fields as a JSON body), so threads written here read
//! back identically from Python and TypeScript, and the other way round.
//!
//! The crate builds on its own wherever cargo takes it from (a path, git, a
//! registry): its build script generates the gRPC code from the crate's own
//! copy of turnstore's proto, with protoc from the `protoc-bin-vendored`
//! crate. The trait crates are re-exported ([`agent_sdk_foundation`],
//! [`agent_sdk_tools`], [`ailoop_history`]), so a dependent need not pin
//! matching versions of them.

// Every public item is documented (cargo doc and clippy in `make rust-check` fail otherwise).
#![warn(missing_docs)]

mod admin;
mod appender;
mod client;
mod convert;
mod error;
mod events;
mod history;
mod keys;
mod replay;

/// The generated gRPC messages and clients of `proto/turnstore/v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("turnstore.v1");
}

pub use admin::{DaemonStats, TurnstoreAdmin};
pub use client::{
    Client, ClientOptions, RetryPolicy, TlsOptions, DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_TARGET, DEFAULT_TIMEOUT, MAX_MESSAGE_BYTES,
};
pub use convert::{RawEnvelope, UndecodableEvents, JSON};
pub use error::{Error, ErrorKind, Result, CURRENT_VERSION_METADATA_KEY, ERROR_METADATA_KEY};
pub use events::{EventOrder, StoredEvent, TurnstoreEventStore};
pub use history::{Blob, SnapshotVersionInfo, TurnstoreHistoryStore, VersionedSnapshot};
pub use keys::{BatchOp, BatchResult, KeyInfo, ListKeysOptions};
pub use replay::{Replay, ReplayItem, ReplayOptions};

// The trait crates, so users need not pin matching versions themselves.
pub use agent_sdk_foundation;
pub use agent_sdk_tools;
pub use ailoop_history;
