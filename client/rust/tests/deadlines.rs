//! No hung agents: every call has a deadline, keepalive pings find a daemon
//! that stopped answering, and an unreachable daemon is named with the cause.
//! Against a real daemon frozen with SIGSTOP (thawed again by a guard).

mod common;

use std::time::{Duration, Instant};

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_tools::stores::EventStore;
use ailoop_history::HistoryStore;
use common::{thread, Daemon};
use futures::StreamExt;
use turnstore_client::{
    Client, ClientOptions, Error, ErrorKind, ReplayItem, ReplayOptions, RetryPolicy,
    DEFAULT_TIMEOUT,
};

/// Short, so the tests are quick; the bounds asserted below are generous.
const DEADLINE: Duration = Duration::from_secs(2);
/// Far above the deadline: a call still waiting then would wait forever.
const HUNG: Duration = Duration::from_secs(20);

fn delta(counter: &SequenceCounter, text: &str) -> AgentEventEnvelope {
    AgentEventEnvelope::wrap(AgentEvent::text_delta("m1", text), counter)
}

fn kind_of(error: &anyhow::Error) -> ErrorKind {
    error
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a turnstore error: {error:#}"))
        .kind()
}

/// The daemon stopped with SIGSTOP until this is dropped (SIGCONT), even
/// when an assertion fails in between.
struct Frozen<'a>(&'a Daemon);

impl<'a> Frozen<'a> {
    fn new(daemon: &'a Daemon) -> Self {
        daemon.signal("STOP");
        Self(daemon)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.signal("CONT");
    }
}

/// Run `call` with a generous outer bound; return its outcome and how long it took.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(HUNG, call)
        .await
        .expect("the call hung past every deadline");
    (outcome, started.elapsed())
}

fn assert_within_deadline(took: Duration) {
    assert!(
        took >= DEADLINE.mul_f64(0.9),
        "failed before its deadline: {took:?}"
    );
    assert!(
        took < DEADLINE * 4,
        "failed long after its deadline: {took:?}"
    );
}

#[test]
fn the_default_deadline_is_30_seconds_with_keepalive_pings() {
    let options = ClientOptions::default();
    assert_eq!(DEFAULT_TIMEOUT, Duration::from_secs(30));
    assert_eq!(options.timeout, Some(DEFAULT_TIMEOUT));
    let interval = options.keepalive_interval.expect("keepalive pings are on");
    assert!(interval >= Duration::from_secs(10) && interval <= Duration::from_secs(30));
    assert!(options.keepalive_timeout <= Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_and_a_finish_on_a_frozen_daemon_fail_within_their_deadline() {
    let daemon = Daemon::start();
    let client = daemon
        .client_with(ClientOptions {
            timeout: Some(DEADLINE),
            ..ClientOptions::default()
        })
        .await;
    let store = client.events();
    let id = thread("frozen");
    let counter = SequenceCounter::new();
    // The shared append stream is open before the daemon freezes.
    store.append(&id, 1, delta(&counter, "warm")).await.unwrap();
    {
        let _frozen = Frozen::new(&daemon);
        let (appended, took) = timed(store.append(&id, 1, delta(&counter, "late"))).await;
        let error = appended.expect_err("an append to a frozen daemon succeeded");
        assert_eq!(kind_of(&error), ErrorKind::DeadlineExceeded, "{error:#}");
        assert_within_deadline(took);

        // The inherent finish_turn: a crate Error, not the trait's anyhow one.
        let (finished, took) = timed(store.finish_turn(&id, 2)).await;
        let error = finished.expect_err("a finish on a frozen daemon succeeded");
        assert_eq!(error.kind(), ErrorKind::DeadlineExceeded, "{error:#}");
        assert_within_deadline(took);

        let (counted, took) = timed(store.event_count(&id)).await;
        let error = counted.expect_err("a read from a frozen daemon succeeded");
        assert_eq!(kind_of(&error), ErrorKind::DeadlineExceeded, "{error:#}");
        assert_within_deadline(took);
    }
    // Thawed: the same client goes on (the expired items did not break it).
    let position = store
        .append_envelopes(&id, 3, &[delta(&counter, "after")])
        .await
        .unwrap();
    assert!(position[0] >= 1, "{position:?}");
    store.finish_turn(&id, 3).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_calls_and_a_catch_up_replay_on_a_frozen_daemon_fail_within_their_deadline() {
    let daemon = Daemon::start();
    let client = daemon
        .client_with(ClientOptions {
            timeout: Some(DEADLINE),
            ..ClientOptions::default()
        })
        .await;
    let history = client.history(format!("frozen-{}", uuid::Uuid::new_v4()));
    let store = client.events();
    let id = thread("frozen-replay");
    assert!(
        history.load().await.unwrap().is_none(),
        "the channel is connected"
    );
    let _frozen = Frozen::new(&daemon);

    let (loaded, took) = timed(history.load()).await;
    let error = loaded.expect_err("a load from a frozen daemon succeeded");
    assert_eq!(error.kind(), ErrorKind::DeadlineExceeded, "{error}");
    assert_within_deadline(took);

    // A replay that does not follow has the client's deadline by default.
    let (replayed, took) = timed(async {
        let mut replay = store.replay(&id.0, ReplayOptions::default()).await?;
        while let Some(item) = replay.next().await {
            item?;
        }
        Ok::<_, Error>(())
    })
    .await;
    let error = replayed.expect_err("a replay from a frozen daemon succeeded");
    assert_eq!(error.kind(), ErrorKind::DeadlineExceeded, "{error}");
    assert_within_deadline(took);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_a_frozen_daemon_fails_once_a_keepalive_ping_goes_unanswered() {
    let daemon = Daemon::start();
    // Pings every 10 s (the most often the daemon allows), 1 s to answer.
    let client = daemon
        .client_with(ClientOptions {
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(1),
            ..ClientOptions::default()
        })
        .await;
    let store = client.events();
    let id = thread("frozen-follower");
    let follow = ReplayOptions {
        follow: true,
        ..ReplayOptions::default()
    };
    let mut replay = store.replay(&id.0, follow).await.unwrap();
    match replay.next().await {
        Some(Ok(ReplayItem::CaughtUp { next_position: 0 })) => {}
        other => panic!("expected CaughtUp, got {other:?}"),
    }
    let _frozen = Frozen::new(&daemon);
    // A follower has no deadline: only the unanswered ping ends it.
    let started = Instant::now();
    let item = tokio::time::timeout(HUNG * 3, replay.next())
        .await
        .expect("the follower hung past its keepalive");
    let took = started.elapsed();
    let error = item
        .expect("the replay ended without an error")
        .expect_err("a frozen daemon sent something");
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.message().contains(&daemon.target), "{error}");
    assert!(took < HUNG * 2, "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_daemon_is_named_with_the_cause() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let options = ClientOptions {
        retry: RetryPolicy::NONE,
        ..ClientOptions::default()
    };
    let refused = |error: &Error| {
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
        assert!(
            error
                .message()
                .starts_with(&format!("cannot reach {target}: ")),
            "{error}"
        );
        assert!(
            error
                .message()
                .to_lowercase()
                .contains("connection refused"),
            "the OS cause is missing: {error}"
        );
    };
    let error = Client::connect(&target, options.clone()).await.unwrap_err();
    refused(&error);

    let lazy = Client::connect_lazy(&target, options).unwrap();
    let store = lazy.events();
    let counter = SequenceCounter::new();
    let id = thread("unreachable");
    let (appended, _) = timed(store.append_envelopes(&id, 1, &[delta(&counter, "x")])).await;
    refused(&appended.unwrap_err());
    let (counted, _) = timed(EventStore::event_count(&store, &id)).await;
    let error = counted.unwrap_err();
    refused(error.downcast_ref::<Error>().unwrap());
    let (replayed, _) = timed(store.replay(&id.0, ReplayOptions::default())).await;
    refused(&replayed.unwrap_err());
}
