//! agent-sdk's `EventStore` over the daemon, and what the daemon offers beyond it.

use agent_sdk_foundation::events::AgentEventEnvelope;
use agent_sdk_foundation::types::ThreadId;
use agent_sdk_tools::stores::{EventStore, StoredTurnEvents};
use async_trait::async_trait;

use crate::client::Client;
use crate::convert::{decode_for_trait, envelope_to_proto, RawEnvelope};
use crate::error::{Error, ErrorKind, Result};
use crate::pb;
use crate::replay::{Replay, ReplayOptions};

/// An event as stored: its envelope, undecoded, with what the daemon assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// 0-based index in the thread, in commit order.
    pub position: u64,
    /// The turn it was appended to.
    pub turn: u64,
    /// When the daemon committed it, in nanoseconds since the Unix epoch.
    pub stored_at_unix_nanos: i64,
    /// The envelope exactly as appended; [`RawEnvelope::decode`] gives agent-sdk's type.
    pub envelope: RawEnvelope,
}

impl StoredEvent {
    pub(crate) fn from_proto(message: pb::StoredEvent) -> Self {
        Self {
            position: message.position,
            turn: message.turn,
            stored_at_unix_nanos: message.stored_at_unix_nanos,
            envelope: RawEnvelope::from_proto(message.envelope.unwrap_or_default()),
        }
    }
}

/// The order [`TurnstoreEventStore::read_events`] walks a thread in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOrder {
    /// By position, the order of commit: offset N starts at position N.
    Commit,
    /// Turn by turn in ascending turn order, each in append order: the
    /// order of the trait's `get_events`.
    Turn,
}

/// What [`TurnstoreEventStore::read_events_with`] reads (the default: every
/// event, oldest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadEventsOptions {
    /// How many events to skip, counted in `order` (from the newest with
    /// `newest_first`).
    pub offset: u64,
    /// The order to read in.
    pub order: EventOrder,
    /// At most this many events; 0: every one.
    pub limit: u64,
    /// Read from the newest event backwards (commit order only): events come
    /// in descending position order. Costs what it returns, not the
    /// thread's length. With [`EventOrder::Turn`] the daemon refuses it
    /// ([`ErrorKind::InvalidArgument`]).
    pub newest_first: bool,
}

impl Default for ReadEventsOptions {
    fn default() -> Self {
        Self {
            offset: 0,
            order: EventOrder::Commit,
            limit: 0,
            newest_first: false,
        }
    }
}

/// agent-sdk's [`EventStore`] over a turnstore daemon; get it from
/// [`Client::events`]. Clones share the client.
///
/// Every write is acknowledged only after the daemon's durable commit.
/// Appends and finishes go over the client's shared `AppendStream`, so the
/// appends of concurrent agents share commits; errors come back as
/// [`anyhow::Error`]s wrapping a [`crate::Error`] (downcast to see its
/// kind, status code and reason). The trait's `event_count` and
/// `get_events_since` are the daemon's own calls, not the provided
/// defaults that read the whole thread.
///
/// Stored events that agent-sdk's [`AgentEventEnvelope`] cannot hold (a type
/// newer than this crate's `AgentEvent`, or another client's non-UUID id)
/// are handled as [`crate::ClientOptions::undecodable_events`] says: by
/// default left out with a warning. Offsets stay the daemon's: `event_count`
/// counts them, and `get_events_since(thread, event_count_before)` returns
/// exactly the events appended since, whatever was skipped before.
/// [`read_events`](Self::read_events) and [`replay`](Self::replay) return
/// every event undecoded.
#[derive(Clone, Debug)]
pub struct TurnstoreEventStore {
    client: Client,
}

fn turn_number(turn: usize) -> u64 {
    // usize is at most 64 bits on every platform Rust supports.
    turn as u64
}

impl TurnstoreEventStore {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// The client this store uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Append `envelopes` to `turn` atomically (all are stored, or none is)
    /// and return their positions in the thread.
    ///
    /// A call dropped once sent may still be committed (a later retry of the
    /// same envelopes then returns their positions, stored once).
    ///
    /// Fails with [`ErrorKind::TurnFinished`] when the turn is finished,
    /// [`ErrorKind::InvalidArgument`] for an empty list or a limit exceeded,
    /// and [`ErrorKind::DeadlineExceeded`] when it is not acknowledged within
    /// the client's timeout (it may still be committed).
    pub async fn append_envelopes(
        &self,
        thread_id: &ThreadId,
        turn: usize,
        envelopes: &[AgentEventEnvelope],
    ) -> Result<Vec<u64>> {
        let events = envelopes
            .iter()
            .map(envelope_to_proto)
            .collect::<Result<Vec<_>>>()?;
        self.submit_events(thread_id, turn, events, None).await
    }

    /// Append `envelopes` as [`append_envelopes`](Self::append_envelopes)
    /// does, but only if the thread's next position (its event count; 0 for
    /// a new or cleared thread) is `expected_next_position`: otherwise
    /// [`ErrorKind::VersionConflict`] with the thread's next position in
    /// [`Error::current_version`], and nothing is stored. A retry of
    /// envelopes already stored returns their positions without that check.
    pub async fn append_envelopes_expecting(
        &self,
        thread_id: &ThreadId,
        turn: usize,
        envelopes: &[AgentEventEnvelope],
        expected_next_position: u64,
    ) -> Result<Vec<u64>> {
        let events = envelopes
            .iter()
            .map(envelope_to_proto)
            .collect::<Result<Vec<_>>>()?;
        self.submit_events(thread_id, turn, events, Some(expected_next_position))
            .await
    }

    /// Append envelopes exactly as given, undecoded (to copy or forward
    /// events of any type, or of any client): like
    /// [`append_envelopes`](Self::append_envelopes) otherwise.
    pub async fn append_raw(
        &self,
        thread_id: &ThreadId,
        turn: usize,
        envelopes: &[RawEnvelope],
    ) -> Result<Vec<u64>> {
        let events = envelopes.iter().map(RawEnvelope::to_proto).collect();
        self.submit_events(thread_id, turn, events, None).await
    }

    /// Send encoded events on the shared append stream, bounded by the
    /// client's deadline; an empty batch is refused before anything is sent.
    async fn submit_events(
        &self,
        thread_id: &ThreadId,
        turn: usize,
        events: Vec<pb::EventEnvelope>,
        expected_next_position: Option<u64>,
    ) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Err(Error::local(
                ErrorKind::InvalidArgument,
                "events: must hold at least one event",
            ));
        }
        self.client
            .inner
            .appender
            .submit(
                &thread_id.0,
                turn_number(turn),
                events,
                false,
                expected_next_position,
                self.client.inner.options.timeout,
            )
            .await
    }

    /// Close `turn` after every append sent before it on this client.
    ///
    /// A turn never appended to becomes an empty finished turn. Fails with
    /// [`ErrorKind::TurnAlreadyFinished`] when it was already finished (but
    /// not when only a resend after a lost acknowledgement finds it so), and
    /// with [`ErrorKind::DeadlineExceeded`] as an append does.
    ///
    /// Named as the trait's method (and the Python and TypeScript clients'):
    /// this inherent one returns [`crate::Error`] instead of `anyhow::Error`.
    pub async fn finish_turn(&self, thread_id: &ThreadId, turn: usize) -> Result<()> {
        self.client
            .inner
            .appender
            .submit(
                &thread_id.0,
                turn_number(turn),
                Vec::new(),
                true,
                None,
                self.client.inner.options.timeout,
            )
            .await
            .map(drop)
    }

    /// Every event of the thread after the first `offset` in `order`,
    /// undecoded: nothing is skipped, whatever its type.
    ///
    /// Covers the events committed when the read started; an unknown thread
    /// gives an empty list. Fails with [`ErrorKind::ThreadCleared`] when the
    /// thread is cleared during the read.
    pub async fn read_events(
        &self,
        thread_id: &str,
        offset: u64,
        order: EventOrder,
    ) -> Result<Vec<StoredEvent>> {
        let options = ReadEventsOptions {
            offset,
            order,
            ..ReadEventsOptions::default()
        };
        self.read_events_with(thread_id, options).await
    }

    /// The thread's events as `options` say (a limit, newest first),
    /// undecoded; as [`read_events`](Self::read_events) otherwise.
    pub async fn read_events_with(
        &self,
        thread_id: &str,
        options: ReadEventsOptions,
    ) -> Result<Vec<StoredEvent>> {
        let events = self.read_stored(thread_id, options).await?;
        Ok(events.into_iter().map(StoredEvent::from_proto).collect())
    }

    /// The last `n` events of the thread (fewer when it holds fewer), in
    /// append order, undecoded: one newest-first read of `n` events,
    /// whatever the thread's length. Empty for `n` = 0 or an unknown thread.
    pub async fn last_events(&self, thread_id: &str, n: u64) -> Result<Vec<StoredEvent>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let options = ReadEventsOptions {
            limit: n,
            newest_first: true,
            ..ReadEventsOptions::default()
        };
        let mut events = self.read_events_with(thread_id, options).await?;
        events.reverse();
        Ok(events)
    }

    /// Replay the thread as a [`futures_core::Stream`]: catch up after a
    /// cursor and, with [`ReplayOptions::follow`], go on live. See [`Replay`].
    pub async fn replay(&self, thread_id: &str, options: ReplayOptions) -> Result<Replay> {
        Replay::start(&self.client, thread_id, options).await
    }

    async fn read_stored(
        &self,
        thread_id: &str,
        options: ReadEventsOptions,
    ) -> Result<Vec<pb::StoredEvent>> {
        let order = match options.order {
            EventOrder::Commit => pb::EventOrder::Commit,
            EventOrder::Turn => pb::EventOrder::Turn,
        };
        let client = &self.client;
        client
            .call(client.inner.options.retry, || async {
                let request = pb::ReadEventsRequest {
                    thread_id: thread_id.to_owned(),
                    offset: options.offset,
                    order: order.into(),
                    limit: options.limit,
                    newest_first: options.newest_first,
                    // StoredEvent messages: prost decodes them natively, so
                    // JSON rows (what the Python client asks for) buy nothing here.
                    encoding: pb::EventEncoding::Unspecified.into(),
                };
                let mut stub = client.inner.events.clone();
                let mut stream = stub
                    .read_events(client.request(request, true))
                    .await?
                    .into_inner();
                let mut events = Vec::new();
                while let Some(message) = stream.message().await? {
                    events.extend(message.events);
                }
                Ok(events)
            })
            .await
    }

    fn decode(
        &self,
        thread_id: &str,
        events: Vec<pb::StoredEvent>,
    ) -> Result<Vec<AgentEventEnvelope>> {
        decode_for_trait(
            thread_id,
            events,
            self.client.inner.options.undecodable_events,
        )
    }

    async fn get_turn_typed(&self, thread_id: &str, turn: u64) -> Result<Option<StoredTurnEvents>> {
        let client = &self.client;
        let response = client
            .call(client.inner.options.retry, || async {
                let request = pb::GetTurnRequest {
                    thread_id: thread_id.to_owned(),
                    turn,
                };
                let mut stub = client.inner.events.clone();
                Ok(stub
                    .get_turn(client.request(request, true))
                    .await?
                    .into_inner())
            })
            .await?;
        let Some(stored) = response.turn.filter(|_| response.found) else {
            return Ok(None);
        };
        Ok(Some(StoredTurnEvents {
            turn: stored.turn as usize,
            events: self.decode(thread_id, stored.events)?,
            finished: stored.finished,
        }))
    }

    async fn get_turns_typed(&self, thread_id: &str) -> Result<Vec<StoredTurnEvents>> {
        let client = &self.client;
        let pieces = client
            .call(client.inner.options.retry, || async {
                let request = pb::ListTurnsRequest {
                    thread_id: thread_id.to_owned(),
                };
                let mut stub = client.inner.events.clone();
                let mut stream = stub
                    .list_turns(client.request(request, true))
                    .await?
                    .into_inner();
                let mut pieces = Vec::new();
                while let Some(message) = stream.message().await? {
                    pieces.extend(message.turn);
                }
                Ok(pieces)
            })
            .await?;
        let mut turns: Vec<StoredTurnEvents> = Vec::new();
        for piece in pieces {
            let events = self.decode(thread_id, piece.events)?;
            // A large turn comes in consecutive pieces with the same number.
            match turns.last_mut() {
                Some(last) if last.turn as u64 == piece.turn => last.events.extend(events),
                _ => turns.push(StoredTurnEvents {
                    turn: piece.turn as usize,
                    events,
                    finished: piece.finished,
                }),
            }
        }
        Ok(turns)
    }

    async fn unary_count(&self, thread_id: &str) -> Result<u64> {
        let client = &self.client;
        client
            .call(client.inner.options.retry, || async {
                let request = pb::EventCountRequest {
                    thread_id: thread_id.to_owned(),
                };
                let mut stub = client.inner.events.clone();
                Ok(stub
                    .event_count(client.request(request, true))
                    .await?
                    .into_inner()
                    .count)
            })
            .await
    }

    async fn unary_clear(&self, thread_id: &str) -> Result<u64> {
        let client = &self.client;
        client
            .call(client.inner.options.retry, || async {
                let request = pb::ClearRequest {
                    thread_id: thread_id.to_owned(),
                };
                let mut stub = client.inner.events.clone();
                Ok(stub
                    .clear(client.request(request, true))
                    .await?
                    .into_inner()
                    .removed_events)
            })
            .await
    }
}

#[async_trait]
impl EventStore for TurnstoreEventStore {
    async fn append(
        &self,
        thread_id: &ThreadId,
        turn: usize,
        envelope: AgentEventEnvelope,
    ) -> anyhow::Result<()> {
        self.append_envelopes(thread_id, turn, std::slice::from_ref(&envelope))
            .await?;
        Ok(())
    }

    async fn finish_turn(&self, thread_id: &ThreadId, turn: usize) -> anyhow::Result<()> {
        Ok(TurnstoreEventStore::finish_turn(self, thread_id, turn).await?)
    }

    async fn get_turn(
        &self,
        thread_id: &ThreadId,
        turn: usize,
    ) -> anyhow::Result<Option<StoredTurnEvents>> {
        Ok(self.get_turn_typed(&thread_id.0, turn_number(turn)).await?)
    }

    async fn get_turns(&self, thread_id: &ThreadId) -> anyhow::Result<Vec<StoredTurnEvents>> {
        Ok(self.get_turns_typed(&thread_id.0).await?)
    }

    async fn get_events(&self, thread_id: &ThreadId) -> anyhow::Result<Vec<AgentEventEnvelope>> {
        self.get_events_since(thread_id, 0).await
    }

    async fn event_count(&self, thread_id: &ThreadId) -> anyhow::Result<usize> {
        let count = self.unary_count(&thread_id.0).await?;
        Ok(usize::try_from(count)?)
    }

    async fn get_events_since(
        &self,
        thread_id: &ThreadId,
        offset: usize,
    ) -> anyhow::Result<Vec<AgentEventEnvelope>> {
        let options = ReadEventsOptions {
            offset: turn_number(offset),
            order: EventOrder::Turn,
            ..ReadEventsOptions::default()
        };
        let events = self.read_stored(&thread_id.0, options).await?;
        Ok(self.decode(&thread_id.0, events)?)
    }

    async fn clear(&self, thread_id: &ThreadId) -> anyhow::Result<()> {
        self.unary_clear(&thread_id.0).await?;
        Ok(())
    }
}
