//! The shared append stream, replay as a Stream, and the bearer token, against a real daemon.

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_tools::stores::EventStore;
use common::{thread, Daemon};
use futures::StreamExt;
use turnstore_client::{
    Client, ClientOptions, Error, ErrorKind, EventOrder, ReplayItem, ReplayOptions, RetryPolicy,
};

fn delta(counter: &SequenceCounter, text: &str) -> AgentEventEnvelope {
    AgentEventEnvelope::wrap(AgentEvent::text_delta("m1", text), counter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_resumed_from_its_cursor_while_a_writer_appends_gets_every_event_once() {
    const EVENTS: usize = 300;
    let daemon = Daemon::start();
    let client = daemon.client().await;
    let store = client.events();
    let id = thread("resume");

    let writer_store = store.clone();
    let writer_id = id.clone();
    let writer = tokio::spawn(async move {
        let counter = SequenceCounter::new();
        let mut written = Vec::new();
        for batch in 0..EVENTS / 3 {
            let envelopes: Vec<AgentEventEnvelope> = (0..3)
                .map(|i| delta(&counter, &format!("{batch}.{i}")))
                .collect();
            writer_store
                .append_envelopes(&writer_id, 1, &envelopes)
                .await
                .unwrap();
            written.extend(envelopes.iter().map(|e| e.event_id.to_string()));
        }
        EventStore::finish_turn(&writer_store, &writer_id, 1)
            .await
            .unwrap();
        written
    });

    let follow = |after, epoch| ReplayOptions {
        after,
        epoch,
        follow: true,
        until_turn_finished: Some(1),
        max_events_per_message: 7,
        timeout: Some(Duration::from_secs(60)),
        ..ReplayOptions::default()
    };
    let mut received: Vec<(u64, String)> = Vec::new();
    let mut replay = store.replay(&id.0, follow(None, None)).await.unwrap();
    // Drop the first replay part-way, while the writer is still writing.
    while received.len() < 40 {
        match replay
            .next()
            .await
            .expect("the replay ended early")
            .unwrap()
        {
            ReplayItem::Event(event) => received.push((event.position, event.envelope.event_id)),
            ReplayItem::ThreadCleared { .. } => panic!("the thread was not cleared"),
            _ => {}
        }
    }
    let (cursor, epoch) = (replay.last_position(), replay.epoch());
    assert_eq!(cursor, Some(39));
    assert!(epoch.is_some());
    drop(replay);

    let mut replay = store.replay(&id.0, follow(cursor, epoch)).await.unwrap();
    let mut finished = false;
    while let Some(item) = replay.next().await {
        match item.unwrap() {
            ReplayItem::Event(event) => received.push((event.position, event.envelope.event_id)),
            ReplayItem::TurnFinished {
                turn, event_count, ..
            } => {
                assert_eq!((turn, event_count), (1, EVENTS as u64));
                finished = true;
            }
            ReplayItem::ThreadCleared { .. } => panic!("the thread was not cleared"),
            ReplayItem::CaughtUp { .. } => {}
        }
    }
    assert!(finished, "the replay ended without the finish marker");
    let written = writer.await.unwrap();
    let positions: Vec<u64> = received.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions, (0..EVENTS as u64).collect::<Vec<_>>());
    let ids: Vec<String> = received.into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, written);
}

#[tokio::test]
async fn replay_markers_filters_and_a_cleared_thread() {
    let daemon = Daemon::start();
    let store = daemon.client().await.events();
    let id = thread("markers");
    let counter = SequenceCounter::new();
    store
        .append_envelopes(&id, 1, &[delta(&counter, "a")])
        .await
        .unwrap();
    store.finish_turn(&id, 1).await.unwrap();
    store.finish_turn(&id, 2).await.unwrap();
    let items: Vec<ReplayItem> = store
        .replay(&id.0, ReplayOptions::default())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(matches!(&items[0], ReplayItem::Event(e) if e.position == 0 && e.turn == 1));
    assert_eq!(
        items[1..],
        [
            ReplayItem::TurnFinished {
                turn: 1,
                event_count: 1,
                last_position: Some(0)
            },
            ReplayItem::TurnFinished {
                turn: 2,
                event_count: 0,
                last_position: None
            },
            ReplayItem::CaughtUp { next_position: 1 },
        ]
    );
    // Filters: only turn 2's marker.
    let only_two = ReplayOptions {
        from_turn: Some(2),
        ..ReplayOptions::default()
    };
    let items: Vec<ReplayItem> = store
        .replay(&id.0, only_two)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items.len(), 2, "{items:?}");
    // Resuming with the epoch of a thread cleared since ends with ThreadCleared.
    let mut replay = store.replay(&id.0, ReplayOptions::default()).await.unwrap();
    while replay.next().await.is_some() {}
    let epoch = replay.epoch();
    EventStore::clear(&store, &id).await.unwrap();
    store
        .append_envelopes(&id, 1, &[delta(&counter, "new life")])
        .await
        .unwrap();
    let resumed = ReplayOptions {
        after: Some(0),
        epoch,
        ..ReplayOptions::default()
    };
    let items: Vec<ReplayItem> = store
        .replay(&id.0, resumed)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert!(
        matches!(items.last(), Some(ReplayItem::ThreadCleared { .. })),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_cursor_past_the_end_is_refused_not_answered_caught_up() {
    let daemon = Daemon::start();
    let store = daemon.client().await.events();
    let id = thread("past-the-end");
    let counter = SequenceCounter::new();
    let three: Vec<_> = ["a", "b", "c"].iter().map(|t| delta(&counter, t)).collect();
    store.append_envelopes(&id, 1, &three).await.unwrap();
    let mut whole = store.replay(&id.0, ReplayOptions::default()).await.unwrap();
    while whole.next().await.is_some() {}
    assert_eq!(whole.last_position(), Some(2));
    let epoch = whole.epoch();
    for (after, epoch, follow) in [(500, None, false), (3, epoch, false), (500, epoch, true)] {
        let options = ReplayOptions {
            after: Some(after),
            epoch,
            follow,
            ..ReplayOptions::default()
        };
        // The refusal comes with the stream's first message (or the call itself).
        let error = match store.replay(&id.0, options).await {
            Err(error) => error,
            Ok(mut replay) => match tokio::time::timeout(Duration::from_secs(30), replay.next())
                .await
                .expect("a refused cursor must not wait")
            {
                Some(Err(error)) => error,
                other => panic!("after {after}: expected an error, got {other:?}"),
            },
        };
        assert_eq!(error.kind(), ErrorKind::CursorOutOfRange, "{error}");
        assert_eq!(error.reason(), Some("cursor_out_of_range"));
        assert!(error.to_string().contains("has 3 events"), "{error}");
    }
    // The last position delivered is the end, not past it.
    let resumed = ReplayOptions {
        after: Some(2),
        epoch,
        ..ReplayOptions::default()
    };
    let items: Vec<ReplayItem> = store
        .replay(&id.0, resumed)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, [ReplayItem::CaughtUp { next_position: 3 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_the_stream_and_a_rejected_item_fails_only_its_call() {
    let daemon = Daemon::start();
    let store = daemon.client().await.events();
    let id = thread("concurrent");
    let mut tasks = Vec::new();
    for task in 0..20usize {
        let (store, id) = (store.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let counter = SequenceCounter::new();
            let mut positions = Vec::new();
            for i in 0..10 {
                let envelope = delta(&counter, &format!("{task}.{i}"));
                positions.extend(
                    store
                        .append_envelopes(&id, task, &[envelope])
                        .await
                        .unwrap(),
                );
            }
            positions
        }));
    }
    let mut positions: Vec<u64> = Vec::new();
    for task in tasks {
        positions.extend(task.await.unwrap());
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..200).collect::<Vec<u64>>());

    // A rejected item between accepted ones fails alone.
    store.finish_turn(&id, 99).await.unwrap();
    let counter = SequenceCounter::new();
    let batches = [
        [delta(&counter, "before")],
        [delta(&counter, "refused")],
        [delta(&counter, "after")],
    ];
    // Sent in this order without waiting: pipelined on the one stream.
    let (before, refused, after) = tokio::join!(
        store.append_envelopes(&id, 100, &batches[0]),
        store.append_envelopes(&id, 99, &batches[1]),
        store.append_envelopes(&id, 100, &batches[2]),
    );
    assert_eq!(before.unwrap().len(), 1);
    assert_eq!(after.unwrap().len(), 1);
    let error: Error = refused.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::TurnFinished);
    assert_eq!(error.reason(), Some("turn_finished"));
    assert_eq!(EventStore::event_count(&store, &id).await.unwrap(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_in_flight_when_the_daemon_crashes_are_resent_and_stored_once() {
    const EVENTS: usize = 150;
    let mut daemon = Daemon::start();
    let patient = RetryPolicy {
        attempts: 40,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
    };
    let client = daemon
        .client_with(ClientOptions {
            retry: patient,
            ..ClientOptions::default()
        })
        .await;
    let events: Arc<dyn EventStore> = Arc::new(client.events());
    let id = thread("crash");
    let (progress, mut appended) = tokio::sync::watch::channel(0usize);
    let writer = {
        let (events, id) = (events.clone(), id.clone());
        tokio::spawn(async move {
            let counter = SequenceCounter::new();
            let mut written = Vec::new();
            for i in 0..EVENTS {
                let envelope = delta(&counter, &i.to_string());
                events.append(&id, 1, envelope.clone()).await.unwrap();
                written.push(envelope.event_id.to_string());
                progress.send_replace(i + 1);
            }
            events.finish_turn(&id, 1).await.unwrap();
            written
        })
    };
    // Crash it mid-way, with appends acknowledged and one in flight.
    tokio::time::timeout(Duration::from_secs(30), appended.wait_for(|n| *n >= 30))
        .await
        .expect("the writer made no progress")
        .unwrap();
    daemon.crash_and_restart();
    let written = writer.await.unwrap();
    assert_eq!(written.len(), EVENTS);
    let stored = client
        .events()
        .read_events(&id.0, 0, EventOrder::Commit)
        .await
        .unwrap();
    let ids: Vec<String> = stored.iter().map(|e| e.envelope.event_id.clone()).collect();
    assert_eq!(ids, written, "every event once, in order");
    assert!(events.get_turn(&id, 1).await.unwrap().unwrap().finished);
}

#[tokio::test]
async fn a_token_is_sent_on_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let daemon = Daemon::start_with(&["--auth-token-file", token_file.to_str().unwrap()]);
    let id = thread("auth");
    let counter = SequenceCounter::new();

    let anonymous = daemon.client().await.events();
    let error = EventStore::get_turns(&anonymous, &id).await.unwrap_err();
    assert_eq!(
        error.downcast_ref::<Error>().unwrap().kind(),
        ErrorKind::Unauthenticated
    );
    let error = anonymous
        .append_envelopes(&id, 1, &[delta(&counter, "x")])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthenticated);

    let options = ClientOptions {
        token: Some("s3cret-token".into()),
        ..ClientOptions::default()
    };
    let client = daemon.client_with(options).await;
    let events = client.events();
    events
        .append_envelopes(&id, 1, &[delta(&counter, "y")])
        .await
        .unwrap();
    events.finish_turn(&id, 1).await.unwrap();
    assert_eq!(EventStore::get_turns(&events, &id).await.unwrap().len(), 1);
    let mut replay = events
        .replay(&id.0, ReplayOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        replay.next().await,
        Some(Ok(ReplayItem::Event(_)))
    ));
    use ailoop_history::HistoryStore;
    assert!(client.history("k").load().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_client_made_before_its_daemon_starts_works_once_it_does() {
    let mut daemon = Daemon::start();
    assert!(daemon.stop().success());
    // A few quick retries: the early calls fail fast, and a connection
    // attempt that failed just before the daemon came up is retried.
    let quick = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
    };
    let options = ClientOptions {
        retry: quick,
        ..ClientOptions::default()
    };
    let error = Client::connect(&daemon.target, options.clone())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.message().contains(&daemon.target), "{error}");

    let client = Client::connect_lazy(&daemon.target, options).unwrap();
    let events = client.events();
    let id = thread("lazy");
    let counter = SequenceCounter::new();
    let error = events
        .read_events(&id.0, 0, EventOrder::Commit)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    let error = events
        .append_envelopes(&id, 1, &[delta(&counter, "early")])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);

    daemon.start_again();
    events
        .append_envelopes(&id, 1, &[delta(&counter, "on time")])
        .await
        .unwrap();
    assert_eq!(
        events
            .read_events(&id.0, 0, EventOrder::Commit)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_cannot_answer_fails_calls_at_the_client_deadline() {
    let daemon = Daemon::start();
    let short = ClientOptions {
        timeout: Some(Duration::from_millis(500)),
        ..ClientOptions::default()
    };
    let impatient = daemon.client_with(short).await.events();
    let events = daemon.client().await.events();
    let id = thread("deadline");
    assert_eq!(EventStore::event_count(&events, &id).await.unwrap(), 0);
    daemon.signal("STOP");
    let outcome = EventStore::event_count(&impatient, &id).await;
    daemon.signal("CONT");
    let error = outcome.unwrap_err();
    assert_eq!(
        error.downcast_ref::<Error>().unwrap().kind(),
        ErrorKind::DeadlineExceeded,
        "{error}"
    );
    // The daemon answers again once it runs.
    assert_eq!(EventStore::event_count(&events, &id).await.unwrap(), 0);
}
