//! What docs/clients.md promises of this client, as of the Python and
//! TypeScript ones: admin stats, the loopback/TLS rule, replays retried only
//! before their first item.

mod common;

use std::time::Duration;

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_tools::stores::EventStore;
use common::{thread, Daemon};
use futures::StreamExt;
use turnstore_client::{
    Client, ClientOptions, ErrorKind, ReplayItem, ReplayOptions, RetryPolicy, TlsOptions,
};

fn delta(counter: &SequenceCounter, text: &str) -> AgentEventEnvelope {
    AgentEventEnvelope::wrap(AgentEvent::text_delta("m1", text), counter)
}

/// Retries for about ten seconds: long enough for a daemon to start.
fn patient() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy {
            attempts: 60,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
        ..ClientOptions::default()
    }
}

#[tokio::test]
async fn admin_stats_count_what_the_daemon_holds() {
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let id = thread("stats");
    let counter = SequenceCounter::new();
    let events = client.events();
    events
        .append_envelopes(&id, 1, &[delta(&counter, "a"), delta(&counter, "b")])
        .await
        .unwrap();
    events.finish_turn(&id, 1).await.unwrap();
    let stats = client.admin().stats().await.unwrap();
    assert_eq!(
        (
            stats.threads,
            stats.events,
            stats.turns,
            stats.finished_turns
        ),
        (1, 2, 1, 1)
    );
    assert_eq!((stats.open_replays, stats.live_followers), (0, 0));
    assert!(
        stats.write_limit_bytes > 0 && stats.used_bytes > 0,
        "{stats:?}"
    );
    assert!((0.0..1.0).contains(&stats.used_fraction()), "{stats:?}");
}

#[tokio::test]
async fn a_target_that_is_not_loopback_needs_tls_or_allow_remote() {
    for target in ["10.1.2.3:7070", "example.com:7070", "[2001:db8::1]:7070"] {
        let error = Client::connect_lazy(target, ClientOptions::default()).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Config, "{target}: {error}");
        assert!(error.message().contains("not a loopback"), "{error}");
        let opted_in = ClientOptions {
            allow_remote: true,
            ..ClientOptions::default()
        };
        Client::connect_lazy(target, opted_in).unwrap();
        // With TLS the rule does not apply: what fails is the missing CA file.
        let tls = ClientOptions {
            tls: Some(TlsOptions {
                ca: "/nonexistent/ca.pem".into(),
                ..TlsOptions::default()
            }),
            ..ClientOptions::default()
        };
        let error = Client::connect_lazy(target, tls).unwrap_err();
        assert!(error.message().contains("cannot read"), "{error}");
    }
    for target in [
        "127.0.0.1:7070",
        "127.0.0.2:7070",
        "localhost:7070",
        "[::1]:7070",
        "unix:/x.sock",
    ] {
        Client::connect_lazy(target, ClientOptions::default())
            .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_before_its_first_item_is_retried() {
    let mut daemon = Daemon::start();
    assert!(daemon.stop().success());
    let client = Client::connect_lazy(&daemon.target, patient()).unwrap();
    let id = thread("retried");
    let replaying = {
        let events = client.events();
        let thread_id = id.0.clone();
        tokio::spawn(async move {
            let mut replay = events.replay(&thread_id, ReplayOptions::default()).await?;
            let mut items = Vec::new();
            while let Some(item) = replay.next().await {
                items.push(item?);
            }
            Ok::<_, turnstore_client::Error>(items)
        })
    };
    // Nothing listens yet: the first attempt fails with Unavailable (it is
    // made at once, the daemon takes far longer to start).
    daemon.start_again();
    let items = tokio::time::timeout(Duration::from_secs(30), replaying)
        .await
        .expect("the replay never ended")
        .unwrap()
        .expect("a replay started before its daemon was not retried");
    assert_eq!(items, vec![ReplayItem::CaughtUp { next_position: 0 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_after_an_item_is_not_retried() {
    let mut daemon = Daemon::start();
    let client = daemon.client_with(patient()).await;
    let id = thread("broken");
    let counter = SequenceCounter::new();
    let events = client.events();
    events
        .append_envelopes(&id, 1, &[delta(&counter, "a")])
        .await
        .unwrap();
    let following = ReplayOptions {
        follow: true,
        ..ReplayOptions::default()
    };
    let mut replay = events.replay(&id.0, following).await.unwrap();
    assert!(matches!(
        replay.next().await,
        Some(Ok(ReplayItem::Event(_)))
    ));
    daemon.restart();
    // A retry would replay from the start again (the event, then CaughtUp):
    // resuming is the cursor's job, so the replay fails instead.
    let next = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match replay.next().await {
                Some(Ok(ReplayItem::CaughtUp { .. })) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the broken replay did not end");
    let error = next
        .expect("the replay ended without an error")
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    // Resuming from its cursor gets nothing twice.
    let resumed = ReplayOptions {
        after: replay.last_position(),
        epoch: replay.epoch(),
        ..ReplayOptions::default()
    };
    let mut again = events.replay(&id.0, resumed).await.unwrap();
    assert!(matches!(
        again.next().await,
        Some(Ok(ReplayItem::CaughtUp { next_position: 1 }))
    ));
    assert_eq!(EventStore::event_count(&events, &id).await.unwrap(), 1);
}
