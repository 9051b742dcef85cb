//! An agent turn written through agent-sdk's `EventStore`, as an agent built
//! on agent-sdk writes it, then a conversation snapshot through ailoop's
//! `HistoryStore`.
//!
//! ```sh
//! make run &                                    # a daemon on 127.0.0.1:7070
//! .venv/bin/turnstore tail thread-rust-example --follow &   # watch it live
//! cd client/rust && cargo run --example agent_turn [TARGET] [THREAD]
//! ```

use std::sync::Arc;
use std::time::Duration;

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_foundation::types::{ThreadId, TokenUsage};
use agent_sdk_tools::stores::EventStore;
use ailoop_core::Message;
use ailoop_history::{ConversationSnapshot, HistoryStore};
use turnstore_client::{Client, ClientOptions, DEFAULT_TARGET};

/// The pause between two token deltas, so that a `turnstore tail` shows them arrive.
const TOKEN_PAUSE: Duration = Duration::from_millis(150);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| DEFAULT_TARGET.to_owned());
    let thread = ThreadId::from_string(args.next().unwrap_or_else(|| "thread-rust-example".into()));
    let client = Client::connect(&target, ClientOptions::default()).await?;

    // What an agent holds: a `dyn EventStore`. Swap in
    // `InMemoryEventStore::new()` for unit tests.
    let events: Arc<dyn EventStore> = Arc::new(client.events());
    let turn = events
        .get_turns(&thread)
        .await?
        .last()
        .map_or(1, |last| last.turn + 1);
    let counter = SequenceCounter::new();
    let emit = |event| AgentEventEnvelope::wrap(event, &counter);

    let reply = ["Hello", " from", " a", " Rust", " agent", "!"];
    for token in reply {
        events
            .append(&thread, turn, emit(AgentEvent::text_delta("m1", token)))
            .await?;
        tokio::time::sleep(TOKEN_PAUSE).await;
    }
    let text = reply.concat();
    events
        .append(&thread, turn, emit(AgentEvent::text("m1", text.clone())))
        .await?;
    let usage = TokenUsage {
        input_tokens: 9,
        output_tokens: 6,
        ..TokenUsage::default()
    };
    events
        .append(&thread, turn, emit(AgentEvent::turn_complete(turn, usage)))
        .await?;
    events.finish_turn(&thread, turn).await?;
    let stored = events
        .get_turn(&thread, turn)
        .await?
        .expect("the turn was just written");
    println!(
        "turn {turn} of {thread}: {} events, finished: {}",
        stored.events.len(),
        stored.finished
    );

    // The conversation, saved and loaded through ailoop's HistoryStore.
    let history = client.history(format!("conversation-of-{thread}"));
    let snapshot = ConversationSnapshot::new(
        vec![Message::user("Say hello"), Message::assistant_text(text)],
        vec![true, false],
    )?;
    history.save(&snapshot).await?;
    let loaded = history.load().await?.expect("the snapshot was just saved");
    assert_eq!(loaded, snapshot);
    let version = history.load_versioned(None).await?.map_or(0, |v| v.version);
    println!(
        "snapshot {:?}: {} messages, version {version}",
        history.key(),
        loaded.messages.len()
    );
    Ok(())
}
