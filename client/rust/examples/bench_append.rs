//! The Rust rows of `make bench`'s user-facing table (bench/README.md): what an
//! agent built on agent-sdk feels when it awaits `EventStore::append`, with
//! the Python client's share of the time taken out.
//!
//! ```sh
//! cargo run --release --example bench_append -- TARGET '{"duration": 5, "warmup": 1}'
//! ```
//!
//! The parameters (a JSON object; every key optional) are `duration` and
//! `warmup` (seconds), `events_per_turn` (the one agent's turn length, each
//! turn closed by an awaited `finish_turn`), `concurrencies` (the numbers of
//! tasks appending at once, each to its own thread) and `thread_prefix`.
//! It prints one JSON object on stdout with every latency in seconds, as
//! measured: `{"agent": {"append_s": [...], "finish_s": [...], "elapsed_s":
//! ..., "turns": ...}, "agents": {"64": {"latencies_s": [...], "elapsed_s":
//! ...}, ...}}`; bench/traits_rust.py draws the statistics from them with the
//! same code as the Python rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_sdk_foundation::events::{AgentEvent, AgentEventEnvelope, SequenceCounter};
use agent_sdk_foundation::types::ThreadId;
use agent_sdk_tools::stores::EventStore;
use serde_json::{json, Value};
use turnstore_client::{Client, ClientOptions};

/// The length of the flat envelope JSON the deltas are padded to, as the
/// Python rows' (bench/traits_common.py's `DELTA_JSON_BYTES`).
const DELTA_JSON_BYTES: usize = 200;
const TEXT: &str = "The quick brown fox jumps over the lazy dog while the agent keeps streaming. ";

/// Makes `text_delta` envelopes whose JSON is about [`DELTA_JSON_BYTES`] long.
struct TextDeltas {
    delta: String,
    counter: SequenceCounter,
}

impl TextDeltas {
    fn new() -> anyhow::Result<Self> {
        let probe =
            AgentEventEnvelope::wrap(AgentEvent::text_delta("msg-1", ""), &SequenceCounter::new());
        let pad = DELTA_JSON_BYTES.saturating_sub(serde_json::to_vec(&probe)?.len());
        let delta = TEXT.repeat(pad / TEXT.len() + 1)[..pad].to_owned();
        Ok(Self {
            delta,
            counter: SequenceCounter::new(),
        })
    }

    /// The next envelope (a fresh UUID v4 event id, as agent-sdk mints them).
    fn make(&self) -> AgentEventEnvelope {
        AgentEventEnvelope::wrap(
            AgentEvent::text_delta("msg-1", self.delta.clone()),
            &self.counter,
        )
    }
}

struct Params {
    duration: Duration,
    warmup: Duration,
    events_per_turn: usize,
    concurrencies: Vec<usize>,
    prefix: String,
}

impl Params {
    fn from_json(value: &Value) -> anyhow::Result<Self> {
        let seconds = |key: &str, default: f64| -> anyhow::Result<Duration> {
            let given = value.get(key).and_then(Value::as_f64).unwrap_or(default);
            Ok(Duration::try_from_secs_f64(given)?)
        };
        let concurrencies = match value.get("concurrencies").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .map(|n| n.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| anyhow::anyhow!("concurrencies: a list of numbers"))?,
            None => vec![1, 64],
        };
        Ok(Self {
            duration: seconds("duration", 5.0)?,
            warmup: seconds("warmup", 1.0)?,
            events_per_turn: value
                .get("events_per_turn")
                .and_then(Value::as_u64)
                .map_or(20, |n| n as usize),
            concurrencies,
            prefix: value
                .get("thread_prefix")
                .and_then(Value::as_str)
                .unwrap_or("bench-rust")
                .to_owned(),
        })
    }
}

/// One agent: turns of `events_per_turn` awaited appends, each closed by an
/// awaited finish (a turn in progress when the time is up is still
/// finished), as bench/traits_common.py's `one_agent`. Returns the append
/// and finish latencies, the elapsed time and the next turn.
async fn one_agent(
    store: &dyn EventStore,
    thread: &ThreadId,
    events_per_turn: usize,
    duration: Duration,
    first_turn: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, f64, usize)> {
    let deltas = TextDeltas::new()?;
    let (mut appends, mut finishes) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut turn = first_turn;
    while start.elapsed() < duration {
        for _ in 0..events_per_turn {
            let envelope = deltas.make();
            let sent = Instant::now();
            store.append(thread, turn, envelope).await?;
            appends.push(sent.elapsed().as_secs_f64());
            if start.elapsed() >= duration {
                break;
            }
        }
        let sent = Instant::now();
        store.finish_turn(thread, turn).await?;
        finishes.push(sent.elapsed().as_secs_f64());
        turn += 1;
    }
    Ok((appends, finishes, start.elapsed().as_secs_f64(), turn))
}

/// `concurrency` tasks on one client, each appending to its own thread and
/// awaiting each append until `duration` is up: every append's latency.
async fn many_agents(
    client: &Client,
    prefix: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for agent in 0..concurrency {
        let store = client.events();
        let thread = ThreadId::from_string(format!("{prefix}-c{concurrency}-a{agent}"));
        tasks.push(tokio::spawn(async move {
            let deltas = TextDeltas::new()?;
            let mut latencies = Vec::new();
            while start.elapsed() < duration {
                let envelope = deltas.make();
                let sent = Instant::now();
                EventStore::append(&store, &thread, 1, envelope).await?;
                latencies.push(sent.elapsed().as_secs_f64());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, start.elapsed().as_secs_f64()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: bench_append TARGET [PARAMS_JSON]"))?;
    let params = Params::from_json(&serde_json::from_str(
        &args.next().unwrap_or_else(|| "{}".to_owned()),
    )?)?;
    let client = Client::connect(&target, ClientOptions::default()).await?;
    let store: Arc<dyn EventStore> = Arc::new(client.events());

    let thread = ThreadId::from_string(format!("{}-agent", params.prefix));
    let (.., next_turn) =
        one_agent(&*store, &thread, params.events_per_turn, params.warmup, 1).await?;
    let (append_s, finish_s, elapsed_s, last_turn) = one_agent(
        &*store,
        &thread,
        params.events_per_turn,
        params.duration,
        next_turn,
    )
    .await?;
    let agent = json!({
        "append_s": append_s,
        "finish_s": finish_s,
        "elapsed_s": elapsed_s,
        "turns": last_turn - next_turn,
        "events_per_turn": params.events_per_turn,
    });

    let mut agents = serde_json::Map::new();
    for &concurrency in &params.concurrencies {
        let (warm, _) = many_agents(&client, &params.prefix, concurrency, params.warmup).await?;
        let (latencies_s, elapsed_s) =
            many_agents(&client, &params.prefix, concurrency, params.duration).await?;
        agents.insert(
            concurrency.to_string(),
            json!({"latencies_s": latencies_s, "elapsed_s": elapsed_s, "warmup_count": warm.len()}),
        );
    }
    println!("{}", json!({"agent": agent, "agents": agents}));
    Ok(())
}
