//! The EventStore conformance cases, through `dyn EventStore`, against a real daemon.

mod common;

use std::sync::Arc;

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_foundation::types::ThreadId;
use agent_sdk_tools::stores::{EventStore, StoredTurnEvents};
use common::{thread, Daemon};
use serde_json::{json, Value};
use turnstore_client::{
    ClientOptions, Error, ErrorKind, EventOrder, RawEnvelope, ReadEventsOptions,
    TurnstoreEventStore, UndecodableEvents, JSON,
};

fn delta(counter: &SequenceCounter, text: &str) -> AgentEventEnvelope {
    AgentEventEnvelope::wrap(AgentEvent::text_delta("m1", text), counter)
}

fn json_of(envelopes: &[AgentEventEnvelope]) -> Vec<Value> {
    envelopes
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect()
}

fn turn_json(turn: &StoredTurnEvents) -> Value {
    json!({"turn": turn.turn, "finished": turn.finished, "events": json_of(&turn.events)})
}

/// The turnstore error inside an anyhow error from the trait.
fn kind_of(error: &anyhow::Error) -> ErrorKind {
    error
        .downcast_ref::<Error>()
        .unwrap_or_else(|| panic!("not a turnstore error: {error:#}"))
        .kind()
}

async fn store(daemon: &Daemon) -> Arc<dyn EventStore> {
    Arc::new(daemon.client().await.events())
}

#[tokio::test]
async fn unknown_thread_and_turn_read_as_empty() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("unknown");
    assert!(events.get_turn(&id, 1).await.unwrap().is_none());
    assert!(events.get_turns(&id).await.unwrap().is_empty());
    assert!(events.get_events(&id).await.unwrap().is_empty());
    assert_eq!(events.event_count(&id).await.unwrap(), 0);
    assert!(events.get_events_since(&id, 3).await.unwrap().is_empty());
    let counter = SequenceCounter::new();
    events.append(&id, 1, delta(&counter, "x")).await.unwrap();
    assert!(events.get_turn(&id, 2).await.unwrap().is_none());
}

#[tokio::test]
async fn appended_events_read_back_in_order_with_every_field() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("fields");
    let counter = SequenceCounter::new();
    let written = vec![
        delta(&counter, "Hé"),
        delta(&counter, "llo 😀"),
        AgentEventEnvelope::wrap(
            AgentEvent::tool_call_start(
                "call-1",
                "search",
                "Search",
                json!({"q": "x\ny", "n": [1, 2.5, null, true, {}]}),
                agent_sdk_foundation::types::ToolTier::Observe,
            ),
            &counter,
        ),
        AgentEventEnvelope::wrap(AgentEvent::text("m1", "Héllo 😀"), &counter),
    ];
    for envelope in &written {
        events.append(&id, 1, envelope.clone()).await.unwrap();
    }
    let turn = events.get_turn(&id, 1).await.unwrap().unwrap();
    assert_eq!(turn.turn, 1);
    assert!(!turn.finished);
    assert_eq!(json_of(&turn.events), json_of(&written));
    assert_eq!(turn.events[0].event_id, written[0].event_id);
    assert_eq!(turn.events[0].timestamp, written[0].timestamp);
    events.finish_turn(&id, 1).await.unwrap();
    assert!(events.get_turn(&id, 1).await.unwrap().unwrap().finished);
}

#[tokio::test]
async fn finishing_an_unknown_turn_creates_an_empty_finished_turn() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("empty");
    events.finish_turn(&id, 4).await.unwrap();
    let turn = events.get_turn(&id, 4).await.unwrap().unwrap();
    assert_eq!((turn.turn, turn.finished, turn.events.len()), (4, true, 0));
    assert_eq!(events.get_turns(&id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn append_after_finish_and_double_finish_are_refused_clearly() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("refused");
    let counter = SequenceCounter::new();
    events.append(&id, 1, delta(&counter, "a")).await.unwrap();
    events.finish_turn(&id, 1).await.unwrap();

    let error = events
        .append(&id, 1, delta(&counter, "b"))
        .await
        .unwrap_err();
    assert_eq!(kind_of(&error), ErrorKind::TurnFinished);
    assert!(
        error
            .to_string()
            .contains("cannot append to finished turn 1"),
        "{error}"
    );
    let inner = error.downcast_ref::<Error>().unwrap();
    assert_eq!(inner.code(), Some(tonic::Code::FailedPrecondition));
    assert_eq!(inner.reason(), Some("turn_finished"));

    let error = events.finish_turn(&id, 1).await.unwrap_err();
    assert_eq!(kind_of(&error), ErrorKind::TurnAlreadyFinished);
    assert!(
        error.to_string().contains("turn 1 is already finished"),
        "{error}"
    );

    // Nothing of the refused append was stored, and the store goes on.
    assert_eq!(events.event_count(&id).await.unwrap(), 1);
    events.append(&id, 2, delta(&counter, "c")).await.unwrap();
    assert_eq!(events.event_count(&id).await.unwrap(), 2);
}

#[tokio::test]
async fn turns_are_ascending_with_zero_and_gaps() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("gaps");
    let counter = SequenceCounter::new();
    for turn in [7, 0, 3] {
        events
            .append(&id, turn, delta(&counter, &turn.to_string()))
            .await
            .unwrap();
    }
    events.finish_turn(&id, 3).await.unwrap();
    let turns = events.get_turns(&id).await.unwrap();
    let summary: Vec<(usize, bool)> = turns.iter().map(|t| (t.turn, t.finished)).collect();
    assert_eq!(summary, [(0, false), (3, true), (7, false)]);
}

#[tokio::test]
async fn interleaved_turns_keep_append_order_and_offsets_follow_get_events() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("interleaved");
    let counter = SequenceCounter::new();
    let mut turn1 = Vec::new();
    let mut turn2 = Vec::new();
    for i in 0..5 {
        let (turn, list) = if i % 2 == 0 {
            (1, &mut turn1)
        } else {
            (2, &mut turn2)
        };
        let envelope = delta(&counter, &format!("e{i}"));
        events.append(&id, turn, envelope.clone()).await.unwrap();
        list.push(envelope);
    }
    let turns = events.get_turns(&id).await.unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(json_of(&turns[0].events), json_of(&turn1));
    assert_eq!(json_of(&turns[1].events), json_of(&turn2));

    // get_events is turn by turn, not commit order; the offsets follow it.
    let all: Vec<AgentEventEnvelope> = turn1.iter().chain(&turn2).cloned().collect();
    assert_eq!(
        json_of(&events.get_events(&id).await.unwrap()),
        json_of(&all)
    );
    assert_eq!(events.event_count(&id).await.unwrap(), 5);
    for offset in 0..=6 {
        let since = events.get_events_since(&id, offset).await.unwrap();
        assert_eq!(
            json_of(&since),
            json_of(&all[offset.min(all.len())..]),
            "offset {offset}"
        );
    }
}

#[tokio::test]
async fn clear_removes_everything_and_frees_turn_numbers() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let (id, other) = (thread("clear"), thread("other"));
    let counter = SequenceCounter::new();
    events.append(&id, 1, delta(&counter, "a")).await.unwrap();
    events.finish_turn(&id, 1).await.unwrap();
    events
        .append(&other, 1, delta(&counter, "b"))
        .await
        .unwrap();

    events.clear(&id).await.unwrap();
    assert!(events.get_turns(&id).await.unwrap().is_empty());
    assert_eq!(events.event_count(&id).await.unwrap(), 0);
    // Turn 1 is usable again, and the same event id too.
    let again = delta(&counter, "again");
    events.append(&id, 1, again.clone()).await.unwrap();
    let turn = events.get_turn(&id, 1).await.unwrap().unwrap();
    assert_eq!(
        (turn.finished, json_of(&turn.events)),
        (false, json_of(&[again]))
    );
    // Other threads are untouched; an unknown thread clears fine.
    assert_eq!(events.event_count(&other).await.unwrap(), 1);
    events.clear(&thread("never")).await.unwrap();
}

#[tokio::test]
async fn sequence_is_kept_as_given_and_not_unique() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let id = thread("sequence");
    let mut first = delta(&SequenceCounter::new(), "run 1");
    let mut second = delta(&SequenceCounter::new(), "run 2");
    first.sequence = 0;
    second.sequence = 0;
    let mut big = delta(&SequenceCounter::new(), "big");
    big.sequence = u64::MAX;
    for envelope in [&first, &second, &big] {
        events.append(&id, 1, envelope.clone()).await.unwrap();
    }
    let stored = events.get_events(&id).await.unwrap();
    let sequences: Vec<u64> = stored.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [0, 0, u64::MAX]);
}

#[tokio::test]
async fn a_retried_append_of_the_same_event_is_stored_once() {
    let daemon = Daemon::start();
    let store = daemon.client().await.events();
    let id = thread("idempotent");
    let envelope = delta(&SequenceCounter::new(), "once");
    let first = store
        .append_envelopes(&id, 1, std::slice::from_ref(&envelope))
        .await
        .unwrap();
    let again = store.append_envelopes(&id, 1, &[envelope]).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(EventStore::event_count(&store, &id).await.unwrap(), 1);
}

fn unknown_event(sequence: u64) -> RawEnvelope {
    RawEnvelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        sequence,
        timestamp: "2026-12-01T10:00:00.5Z".into(),
        event_type: "hologram_projected".into(),
        content_type: JSON.into(),
        body: br#"{"hue":7}"#.to_vec(),
    }
}

#[tokio::test]
async fn events_of_unknown_types_are_skipped_by_the_trait_and_kept_in_raw_reads() {
    let daemon = Daemon::start();
    let store: TurnstoreEventStore = daemon.client().await.events();
    let id = thread("unknown-type");
    let counter = SequenceCounter::new();
    let known = delta(&counter, "known");
    EventStore::append(&store, &id, 1, known.clone())
        .await
        .unwrap();
    let unknown = unknown_event(9);
    store
        .append_raw(&id, 1, std::slice::from_ref(&unknown))
        .await
        .unwrap();
    let later = delta(&counter, "later");
    EventStore::append(&store, &id, 2, later.clone())
        .await
        .unwrap();

    let events: &dyn EventStore = &store;
    let turn = events.get_turn(&id, 1).await.unwrap().unwrap();
    assert_eq!(json_of(&turn.events), json_of(std::slice::from_ref(&known)));
    assert_eq!(events.get_turns(&id).await.unwrap().len(), 2);
    // Offsets are the daemon's: the skipped event is counted.
    assert_eq!(events.event_count(&id).await.unwrap(), 3);
    assert_eq!(
        json_of(&events.get_events_since(&id, 2).await.unwrap()),
        json_of(&[later])
    );
    // Nothing is lost to a raw read.
    let raw = store
        .read_events(&id.0, 0, EventOrder::Commit)
        .await
        .unwrap();
    assert_eq!(raw.len(), 3);
    assert_eq!(raw[1].envelope, unknown);
    assert_eq!(raw[1].envelope.to_json().unwrap()["hue"], 7);
    assert_eq!(raw[0].envelope.decode().unwrap().event_id, known.event_id);

    // With UndecodableEvents::Fail the read fails, naming the event.
    let strict = daemon
        .client_with(ClientOptions {
            undecodable_events: UndecodableEvents::Fail,
            ..ClientOptions::default()
        })
        .await
        .events();
    let error = EventStore::get_turn(&strict, &id, 1).await.unwrap_err();
    assert_eq!(kind_of(&error), ErrorKind::EventFormat);
    let text = error.to_string();
    assert!(
        text.contains(&unknown.event_id) && text.contains("hologram_projected"),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_arguments_are_refused_with_their_field() {
    let daemon = Daemon::start();
    let events = store(&daemon).await;
    let empty = ThreadId::from_string("");
    let error = events.get_turns(&empty).await.unwrap_err();
    assert_eq!(kind_of(&error), ErrorKind::InvalidArgument);
    assert!(error.to_string().contains("thread_id"), "{error}");
    let error = events
        .append(&empty, 1, delta(&SequenceCounter::new(), "x"))
        .await
        .unwrap_err();
    assert_eq!(kind_of(&error), ErrorKind::InvalidArgument);
}

// Multi-threaded: the blocking restart must not stall the client's connection
// task, which answers the daemon's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_daemon_restart() {
    let mut daemon = Daemon::start();
    let client = daemon.client().await;
    let events: Arc<dyn EventStore> = Arc::new(client.events());
    let id = thread("restart");
    let counter = SequenceCounter::new();
    let written = vec![delta(&counter, "before"), delta(&counter, "restart")];
    for envelope in &written {
        events.append(&id, 1, envelope.clone()).await.unwrap();
    }
    events.finish_turn(&id, 1).await.unwrap();
    events
        .append(&id, 2, delta(&counter, "open"))
        .await
        .unwrap();
    let before: Vec<Value> = events
        .get_turns(&id)
        .await
        .unwrap()
        .iter()
        .map(turn_json)
        .collect();

    daemon.restart();

    // The same client reconnects by itself; a new one reads the same.
    let after: Vec<Value> = events
        .get_turns(&id)
        .await
        .unwrap()
        .iter()
        .map(turn_json)
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        json_of(&events.get_turn(&id, 1).await.unwrap().unwrap().events),
        json_of(&written)
    );
    let fresh: Arc<dyn EventStore> = Arc::new(daemon.client().await.events());
    let again: Vec<Value> = fresh
        .get_turns(&id)
        .await
        .unwrap()
        .iter()
        .map(turn_json)
        .collect();
    assert_eq!(again, before);
    // And writes go on over the reopened append stream.
    events
        .append(&id, 2, delta(&counter, "after"))
        .await
        .unwrap();
    events.finish_turn(&id, 2).await.unwrap();
    assert_eq!(events.event_count(&id).await.unwrap(), 4);
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn a_conditional_append_and_reads_from_the_end() {
    let daemon = Daemon::start();
    let events: TurnstoreEventStore = daemon.client().await.events();
    let id = thread("conditional");
    let counter = SequenceCounter::new();
    let first = delta(&counter, "0");
    let stored = events
        .append_envelopes_expecting(&id, 1, std::slice::from_ref(&first), 0)
        .await
        .unwrap();
    assert_eq!(stored, vec![0]);
    let batch = [delta(&counter, "1"), delta(&counter, "2")];
    let stored = events
        .append_envelopes_expecting(&id, 1, &batch, 1)
        .await
        .unwrap();
    assert_eq!(stored, vec![1, 2]);
    let stale = events
        .append_envelopes_expecting(&id, 1, &[delta(&counter, "stale")], 1)
        .await
        .unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::VersionConflict);
    assert_eq!(
        stale.current_version(),
        Some(3),
        "the thread's next position"
    );
    // A retry of a stored envelope keeps its position, whatever the expectation.
    let again = events
        .append_envelopes_expecting(&id, 1, std::slice::from_ref(&first), 0)
        .await
        .unwrap();
    assert_eq!(again, vec![0]);

    let positions = |found: Vec<turnstore_client::StoredEvent>| {
        found.iter().map(|e| e.position).collect::<Vec<_>>()
    };
    let newest = ReadEventsOptions {
        limit: 2,
        newest_first: true,
        ..ReadEventsOptions::default()
    };
    let read = events.read_events_with(&id.0, newest).await.unwrap();
    assert_eq!(positions(read), vec![2, 1]);
    let skipped = ReadEventsOptions {
        offset: 2,
        newest_first: true,
        ..ReadEventsOptions::default()
    };
    let read = events.read_events_with(&id.0, skipped).await.unwrap();
    assert_eq!(positions(read), vec![0]);
    let last = events.last_events(&id.0, 2).await.unwrap();
    assert_eq!(positions(last), vec![1, 2]);
    assert!(events.last_events(&id.0, 0).await.unwrap().is_empty());
    let turn_order = ReadEventsOptions {
        order: EventOrder::Turn,
        newest_first: true,
        ..ReadEventsOptions::default()
    };
    let refused = events
        .read_events_with(&id.0, turn_order)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::InvalidArgument);
}
