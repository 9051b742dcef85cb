//! The Rust side of tests/test_rust.py's cross-language checks.
//!
//! `interop write TARGET THREAD` writes a fixed thread through `dyn EventStore`
//! and prints what it wrote; `interop read TARGET THREAD` reads a thread back
//! through the trait and prints it. Both print `{"turns": [{"turn", "finished",
//! "events": [flat envelope JSON...]}]}` on stdout. `TURNSTORE_TOKEN`,
//! `TURNSTORE_TLS_CA`, `TURNSTORE_TLS_CERT`, `TURNSTORE_TLS_KEY` (mutual TLS)
//! and `TURNSTORE_TLS_SERVER_NAME` configure the client.

use std::sync::Arc;

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_foundation::types::{ThreadId, TokenUsage, ToolTier};
use agent_sdk_tools::stores::{EventStore, StoredTurnEvents};
use serde_json::{json, Value};
use turnstore_client::{Client, ClientOptions, TlsOptions};

fn options() -> ClientOptions {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    ClientOptions {
        token: var("TURNSTORE_TOKEN"),
        tls: var("TURNSTORE_TLS_CA").map(|ca| TlsOptions {
            ca: ca.into(),
            cert: var("TURNSTORE_TLS_CERT").map(Into::into),
            key: var("TURNSTORE_TLS_KEY").map(Into::into),
            server_name: var("TURNSTORE_TLS_SERVER_NAME"),
        }),
        ..ClientOptions::default()
    }
}

/// What `write` writes: turn 1 finished, turn 3 left open.
fn rust_turns() -> Vec<(usize, bool, Vec<AgentEventEnvelope>)> {
    let counter = SequenceCounter::with_offset(1 << 40);
    let wrap = |event| AgentEventEnvelope::wrap(event, &counter);
    let turn1 = vec![
        wrap(AgentEvent::text_delta("m1", "Hé")),
        wrap(AgentEvent::text_delta("m1", "llo from Rust 🦀")),
        wrap(AgentEvent::tool_call_start(
            "call-1",
            "search",
            "Search",
            json!({"q": "x\ny", "n": [1, 2.5, null, true, {}]}),
            ToolTier::Observe,
        )),
        wrap(AgentEvent::turn_complete(
            1,
            TokenUsage {
                input_tokens: 12,
                output_tokens: 7,
                ..TokenUsage::default()
            },
        )),
    ];
    let turn3 = vec![wrap(AgentEvent::thinking_delta("m2", "hmm…"))];
    vec![(1, true, turn1), (3, false, turn3)]
}

fn turns_json(turns: &[StoredTurnEvents]) -> Value {
    let turns: Vec<Value> = turns
        .iter()
        .map(|t| json!({"turn": t.turn, "finished": t.finished, "events": t.events}))
        .collect();
    json!({ "turns": turns })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, command, target, thread] = args.as_slice() else {
        anyhow::bail!("usage: interop write|read TARGET THREAD");
    };
    let client = Client::connect(target, options()).await?;
    let events: Arc<dyn EventStore> = Arc::new(client.events());
    let thread = ThreadId::from_string(thread.clone());
    let output = match command.as_str() {
        "write" => {
            let mut written = Vec::new();
            for (turn, finished, envelopes) in rust_turns() {
                for envelope in &envelopes {
                    events.append(&thread, turn, envelope.clone()).await?;
                }
                if finished {
                    events.finish_turn(&thread, turn).await?;
                }
                written.push(StoredTurnEvents {
                    turn,
                    events: envelopes,
                    finished,
                });
            }
            turns_json(&written)
        }
        "read" => turns_json(&events.get_turns(&thread).await?),
        other => anyhow::bail!("unknown command {other:?}"),
    };
    println!("{output}");
    Ok(())
}
