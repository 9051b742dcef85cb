//! The Rust client's driver of the cross-language conformance run
//! (tests/conformance/README.md, tests/test_cross_language.py).
//!
//! `conformance STEPS_FILE TARGET` executes each rendered step through the
//! crate's public API (agent-sdk's `EventStore` trait where it has the
//! operation, the store's own methods for positions, replays and versioned
//! snapshots) and prints its outcome as one JSON line `{"step": i,
//! "outcome": {...}}`. An error is an outcome too: its [`ErrorKind`] turned
//! back into the proto's ErrorReason string by `reason_of`.

use std::collections::HashMap;

use agent_sdk_foundation::events::AgentEventEnvelope;
use agent_sdk_foundation::types::ThreadId;
use agent_sdk_tools::stores::{EventStore, StoredTurnEvents};
use ailoop_history::ConversationSnapshot;
use futures::StreamExt;
use serde_json::{json, Value};
use turnstore_client::{
    BatchOp, Client, ClientOptions, ErrorKind, ListKeysOptions, ReadEventsOptions, ReplayItem,
    ReplayOptions, StoredEvent, TurnstoreEventStore,
};

/// The client's error kind as the proto's reason string.
fn reason_of(kind: ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::TurnFinished => "turn_finished",
        ErrorKind::TurnAlreadyFinished => "turn_already_finished",
        ErrorKind::EventIdConflict => "event_id_conflict",
        ErrorKind::VersionConflict => "version_conflict",
        ErrorKind::ThreadCleared => "thread_cleared",
        ErrorKind::CursorOutOfRange => "cursor_out_of_range",
        ErrorKind::StorageFull => "storage_full",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::FollowerTooSlow => "follower_too_slow",
        other => return format!("other:{other:?}"),
    }
    .to_owned()
}

/// The outcome of a failed step; an error that is not the client's ends the run.
fn error_outcome(error: &anyhow::Error) -> anyhow::Result<Value> {
    let Some(error) = error.downcast_ref::<turnstore_client::Error>() else {
        anyhow::bail!("not a turnstore error: {error:#}");
    };
    let mut outcome = json!({ "error": reason_of(error.kind()) });
    if error.kind() == ErrorKind::VersionConflict {
        outcome["current_version"] = json!(error.current_version());
    }
    Ok(outcome)
}

fn turn_json(turn: &StoredTurnEvents) -> Value {
    json!({"turn": turn.turn, "finished": turn.finished, "events": turn.events})
}

fn field<'a>(step: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    step.get(name)
        .ok_or_else(|| anyhow::anyhow!("step without {name:?}: {step}"))
}

fn text(step: &Value, name: &str) -> anyhow::Result<String> {
    Ok(field(step, name)?.as_str().unwrap_or_default().to_owned())
}

fn number(step: &Value, name: &str) -> anyhow::Result<u64> {
    field(step, name)?
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("{name:?} is not a number: {step}"))
}

/// Stored events as the scenario writes them: position, turn and envelope.
fn stored_json(events: &[StoredEvent]) -> anyhow::Result<Vec<Value>> {
    events
        .iter()
        .map(|event| {
            Ok(json!({
                "position": event.position,
                "turn": event.turn,
                "event": event.envelope.to_json()?,
            }))
        })
        .collect()
}

/// Executes steps on one client; keeps the replay cursors steps save by name.
struct Driver {
    client: Client,
    events: TurnstoreEventStore,
    cursors: HashMap<String, (Option<u64>, Option<u64>)>,
}

impl Driver {
    /// An append, conditional when the step has `expected_next_position`.
    async fn append(
        &self,
        step: &Value,
        thread: &ThreadId,
        turn: usize,
        envelopes: &[AgentEventEnvelope],
    ) -> turnstore_client::Result<Vec<u64>> {
        match step.get("expected_next_position").and_then(Value::as_u64) {
            Some(expected) => {
                self.events
                    .append_envelopes_expecting(thread, turn, envelopes, expected)
                    .await
            }
            None => self.events.append_envelopes(thread, turn, envelopes).await,
        }
    }

    async fn run(&mut self, step: &Value) -> anyhow::Result<Value> {
        let thread = || text(step, "thread").map(ThreadId::from_string);
        // The trait, as an agent holds the store.
        let store: &dyn EventStore = &self.events;
        Ok(match text(step, "op")?.as_str() {
            "append" => {
                let envelope: AgentEventEnvelope =
                    serde_json::from_value(field(step, "event")?.clone())?;
                let turn = usize::try_from(number(step, "turn")?)?;
                let positions = self.append(step, &thread()?, turn, &[envelope]).await?;
                json!({ "position": positions[0] })
            }
            "append_many" => {
                let envelopes: Vec<AgentEventEnvelope> =
                    serde_json::from_value(field(step, "events")?.clone())?;
                let turn = usize::try_from(number(step, "turn")?)?;
                let positions = self.append(step, &thread()?, turn, &envelopes).await?;
                json!({ "positions": positions })
            }
            "read_events" => {
                let options = ReadEventsOptions {
                    offset: step.get("offset").and_then(Value::as_u64).unwrap_or(0),
                    limit: step.get("limit").and_then(Value::as_u64).unwrap_or(0),
                    newest_first: step.get("newest_first").and_then(Value::as_bool) == Some(true),
                    ..ReadEventsOptions::default()
                };
                let found = self
                    .events
                    .read_events_with(&text(step, "thread")?, options)
                    .await?;
                json!({ "events": stored_json(&found)? })
            }
            "last_events" => {
                let found = self
                    .events
                    .last_events(&text(step, "thread")?, number(step, "n")?)
                    .await?;
                json!({ "events": stored_json(&found)? })
            }
            "finish_turn" => {
                let turn = usize::try_from(number(step, "turn")?)?;
                store.finish_turn(&thread()?, turn).await?; // its result is not compared
                json!({})
            }
            "get_turn" => {
                let turn = usize::try_from(number(step, "turn")?)?;
                let found = store.get_turn(&thread()?, turn).await?;
                json!({ "turn": found.as_ref().map(turn_json) })
            }
            "get_turns" => {
                let turns = store.get_turns(&thread()?).await?;
                json!({ "turns": turns.iter().map(turn_json).collect::<Vec<_>>() })
            }
            "get_events" => json!({ "events": store.get_events(&thread()?).await? }),
            "get_events_since" => {
                let offset = usize::try_from(number(step, "offset")?)?;
                json!({ "events": store.get_events_since(&thread()?, offset).await? })
            }
            "event_count" => json!({ "count": store.event_count(&thread()?).await? }),
            "clear" => {
                store.clear(&thread()?).await?; // its result is not compared
                json!({})
            }
            "replay" => self.replay(step).await?,
            "save" => {
                let snapshot: ConversationSnapshot =
                    serde_json::from_value(field(step, "snapshot")?.clone())?;
                let expected = step.get("expected_version").and_then(Value::as_u64);
                let history = self.client.history(text(step, "key")?);
                json!({ "version": history.save_versioned(&snapshot, expected).await? })
            }
            "load" => match self
                .client
                .history(text(step, "key")?)
                .load_versioned(None)
                .await?
            {
                None => json!({"snapshot": null, "version": null}),
                Some(loaded) => json!({"snapshot": loaded.snapshot, "version": loaded.version}),
            },
            "save_bytes" => {
                let data = from_base64(&text(step, "data_base64")?)?;
                let expected = step.get("expected_version").and_then(Value::as_u64);
                let history = self.client.history(text(step, "key")?);
                let content_type = text(step, "content_type")?;
                json!({ "version": history.save_bytes(&data, &content_type, expected).await? })
            }
            "load_bytes" => match self
                .client
                .history(text(step, "key")?)
                .load_bytes(None)
                .await?
            {
                None => json!({ "blob": null }),
                Some(blob) => json!({
                    "data_base64": to_base64(&blob.data),
                    "content_type": blob.content_type,
                    "version": blob.version,
                }),
            },
            "list_keys" => {
                let get = |name: &str| step.get(name).and_then(Value::as_str).unwrap_or("");
                let prefix = get("prefix").to_owned();
                let options = ListKeysOptions {
                    prefix: prefix.clone(),
                    start_after: get("start_after").to_owned(),
                    end_before: get("end_before").to_owned(),
                    limit: u32::try_from(step.get("limit").and_then(Value::as_u64).unwrap_or(0))?,
                    newest_first: step
                        .get("newest_first")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                };
                let keys = self.client.list_keys(options).await?;
                let listed: Vec<Value> = keys
                    .iter()
                    .map(|k| json!({ "key": &k.key[prefix.len()..], "version": k.version }))
                    .collect();
                json!({ "keys": listed })
            }
            "batch" => {
                let operations = field(step, "operations")?
                    .as_array()
                    .ok_or_else(|| anyhow::anyhow!("operations is not a list"))?
                    .iter()
                    .map(batch_op)
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let results = self.client.batch(&operations).await?;
                let results: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        json!({
                            "version": r.version,
                            "removed_versions": r.removed_versions,
                            "removed_keys": r.removed_keys,
                        })
                    })
                    .collect();
                json!({ "results": results })
            }
            other => json!({ "unsupported": other }),
        })
    }

    async fn replay(&mut self, step: &Value) -> anyhow::Result<Value> {
        let (saved_after, epoch) = match step.get("cursor").and_then(Value::as_str) {
            Some(name) => *self
                .cursors
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("no cursor saved as {name:?}"))?,
            None => (None, None),
        };
        let after = step.get("after").and_then(Value::as_u64).or(saved_after);
        let options = ReplayOptions {
            after,
            epoch,
            ..ReplayOptions::default()
        };
        let mut replay = self.events.replay(&text(step, "thread")?, options).await?;
        let mut items = Vec::new();
        while let Some(item) = replay.next().await {
            items.push(match item? {
                ReplayItem::Event(event) => json!({
                    "position": event.position,
                    "turn": event.turn,
                    "event": event.envelope.to_json()?,
                }),
                ReplayItem::TurnFinished {
                    turn,
                    event_count,
                    last_position,
                } => json!({
                    "turn_finished": turn,
                    "event_count": event_count,
                    "last_position": last_position,
                }),
                ReplayItem::CaughtUp { next_position } => json!({ "caught_up": next_position }),
                ReplayItem::ThreadCleared { next_position } => {
                    json!({ "thread_cleared": next_position })
                }
            });
        }
        if let Some(name) = step.get("save_cursor").and_then(Value::as_str) {
            self.cursors
                .insert(name.to_owned(), (replay.last_position(), replay.epoch()));
        }
        Ok(json!({"items": items, "last_position": replay.last_position()}))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, steps_file, target] = args.as_slice() else {
        anyhow::bail!("usage: conformance STEPS_FILE TARGET");
    };
    let steps: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(steps_file)?)?;
    let client = Client::connect(target, ClientOptions::default()).await?;
    let mut driver = Driver {
        events: client.events(),
        client,
        cursors: HashMap::new(),
    };
    for (index, step) in steps.iter().enumerate() {
        let outcome = match driver.run(step).await {
            Ok(outcome) => outcome,
            Err(error) => error_outcome(&error)?,
        };
        println!("{}", json!({"step": index, "outcome": outcome}));
    }
    Ok(())
}

/// A scenario's batch operation (`{"save"|"delete"|"delete_prefix": {...}}`) as the client's.
fn batch_op(operation: &Value) -> anyhow::Result<BatchOp> {
    if let Some(save) = operation.get("save") {
        return Ok(BatchOp::save(
            text(save, "key")?,
            from_base64(&text(save, "data_base64")?)?,
            text(save, "content_type")?,
            save.get("expected_version").and_then(Value::as_u64),
        ));
    }
    if let Some(delete) = operation.get("delete") {
        return Ok(BatchOp::delete(
            text(delete, "key")?,
            delete.get("expected_version").and_then(Value::as_u64),
        ));
    }
    let prefix = field(operation, "delete_prefix")?;
    Ok(BatchOp::delete_prefix(text(prefix, "prefix")?))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (the scenario's form of bytes).
fn to_base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[((bits >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn from_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = BASE64
            .iter()
            .position(|b| *b == c)
            .ok_or_else(|| anyhow::anyhow!("not base64: {text:?}"))?;
        bits = (bits << 6) | u32::try_from(value)?;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(u8::try_from((bits >> count) & 0xff)?);
        }
    }
    Ok(out)
}
