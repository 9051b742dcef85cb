//! A crate outside the turnstore repository that uses the packaged
//! `turnstore-client` as another project would: it appends an agent turn
//! through agent-sdk's `EventStore` trait and reads the thread back.
//!
//! Usage: `consumer TARGET THREAD`; prints the thread as read through the
//! trait as JSON (`{"count": n, "turns": [{"turn", "finished", "events"}]}`).
//! tests/test_rust_package.py builds it against the unpacked `.crate`.

use std::sync::Arc;

use turnstore_client::agent_sdk_foundation::events::{
    AgentEvent, AgentEventEnvelope, SequenceCounter,
};
use turnstore_client::agent_sdk_foundation::types::ThreadId;
use turnstore_client::agent_sdk_tools::stores::EventStore;
use turnstore_client::{Client, ClientOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: consumer TARGET THREAD");
    let thread = ThreadId::from_string(args.next().expect("usage: consumer TARGET THREAD"));

    let client = Client::connect(&target, ClientOptions::default()).await?;
    let events: Arc<dyn EventStore> = Arc::new(client.events());
    let counter = SequenceCounter::new();
    for token in ["Hello", " from", " a", " packaged", " crate"] {
        let delta = AgentEventEnvelope::wrap(AgentEvent::text_delta("m1", token), &counter);
        events.append(&thread, 1, delta).await?;
    }
    events.finish_turn(&thread, 1).await?;
    let open = AgentEventEnvelope::wrap(AgentEvent::text("m2", "still open"), &counter);
    events.append(&thread, 2, open).await?;

    let turns = events
        .get_turns(&thread)
        .await?
        .iter()
        .map(|turn| {
            Ok(serde_json::json!({
                "turn": turn.turn,
                "finished": turn.finished,
                "events": turn
                    .events
                    .iter()
                    .map(serde_json::to_value)
                    .collect::<Result<Vec<_>, _>>()?,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let count = events.event_count(&thread).await?;
    println!("{}", serde_json::json!({"count": count, "turns": turns}));
    Ok(())
}
