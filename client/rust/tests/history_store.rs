//! The HistoryStore conformance cases, and snapshot versions, against a real daemon.

mod common;

use ailoop_core::Message;
use ailoop_history::{ConversationSnapshot, HistoryStore};
use common::Daemon;
use turnstore_client::{Error, ErrorKind};

fn snapshot(texts: &[&str]) -> ConversationSnapshot {
    let messages: Vec<Message> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            if i % 2 == 0 {
                Message::user(*text)
            } else {
                Message::assistant_text(*text)
            }
        })
        .collect();
    let pinned = (0..messages.len()).map(|i| i == 0).collect();
    ConversationSnapshot::new(messages, pinned).unwrap()
}

/// Any `HistoryStore`, through the trait only.
async fn save_and_load<S: HistoryStore>(store: &S) -> Result<(), S::Error> {
    assert!(
        store.load().await?.is_none(),
        "nothing before the first save"
    );
    let first = snapshot(&["héllo 😀", "hi"]);
    store.save(&first).await?;
    assert_eq!(store.load().await?, Some(first));
    let second = snapshot(&["only this"]);
    store.save(&second).await?;
    assert_eq!(
        store.load().await?,
        Some(second),
        "save is a full overwrite"
    );
    let empty = snapshot(&[]);
    store.save(&empty).await?;
    assert_eq!(store.load().await?, Some(empty));
    Ok(())
}

#[tokio::test]
async fn load_is_none_before_the_first_save_and_save_overwrites() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    save_and_load(&client.history("conversation-a"))
        .await
        .unwrap();
}

#[tokio::test]
async fn keys_are_independent() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let (a, b) = (client.history("a"), client.history("b"));
    a.save(&snapshot(&["for a"])).await.unwrap();
    assert!(b.load().await.unwrap().is_none());
    b.save(&snapshot(&["for b", "too"])).await.unwrap();
    assert_eq!(a.load().await.unwrap(), Some(snapshot(&["for a"])));
    assert_eq!(a.key(), "a");
}

#[tokio::test]
async fn expected_version_saves_refuse_a_lost_update() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let store = client.history("versions");
    assert_eq!(
        store
            .save_versioned(&snapshot(&["v1"]), Some(0))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .save_versioned(&snapshot(&["v2"]), Some(1))
            .await
            .unwrap(),
        2
    );

    // A writer that still holds version 1 is refused, and nothing changes.
    let error: Error = store
        .save_versioned(&snapshot(&["stale"]), Some(1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::VersionConflict);
    assert_eq!(error.reason(), Some("version_conflict"));
    assert_eq!(error.code(), Some(tonic::Code::FailedPrecondition));
    assert_eq!(error.current_version(), Some(2));
    let loaded = store.load_versioned(None).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.snapshot), (2, snapshot(&["v2"])));
    assert!(loaded.saved_at_unix_nanos > 0);

    // Kept versions, newest first; an old one still loads.
    let versions: Vec<u64> = store
        .list_versions()
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [2, 1]);
    let old = store.load_versioned(Some(1)).await.unwrap().unwrap();
    assert_eq!(old.snapshot, snapshot(&["v1"]));

    // Delete: load is None again, and versions do not restart.
    assert_eq!(store.delete().await.unwrap(), 2);
    assert!(store.load().await.unwrap().is_none());
    assert!(store.list_versions().await.unwrap().is_empty());
    assert_eq!(
        store
            .save_versioned(&snapshot(&["v3"]), None)
            .await
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn a_snapshot_ailoop_cannot_read_is_a_format_error() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    // Another client's opaque messages are not ailoop messages.
    let raw = turnstore_client::pb::SaveRequest {
        key: "foreign".into(),
        data: br#"{"version":1,"messages":[{"role":"user"}],"pinned":[false]}"#.to_vec(),
        content_type: turnstore_client::JSON.into(),
        expected_version: None,
    };
    save_raw(&daemon, raw).await;
    let error = client.history("foreign").load().await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::SnapshotFormat);
    assert!(error.message().contains("\"foreign\""), "{error}");
}

async fn save_raw(daemon: &Daemon, request: turnstore_client::pb::SaveRequest) {
    use turnstore_client::pb::history_store_service_client::HistoryStoreServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(daemon.target.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    HistoryStoreServiceClient::new(channel)
        .save(request)
        .await
        .unwrap();
}

// Multi-threaded: the blocking restart must not stall the client's connection task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_a_daemon_restart() {
    let mut daemon = Daemon::start();
    let client = daemon.client().await;
    let store = client.history("durable");
    store
        .save(&snapshot(&["kept", "across", "restarts"]))
        .await
        .unwrap();
    daemon.restart();
    assert_eq!(
        store.load().await.unwrap(),
        Some(snapshot(&["kept", "across", "restarts"]))
    );
    let fresh = daemon.client().await.history("durable");
    assert_eq!(
        fresh.load_versioned(None).await.unwrap().unwrap().version,
        1
    );
    assert!(daemon.stop().success());
}
