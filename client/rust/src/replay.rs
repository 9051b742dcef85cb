//! A thread's replay (catch up, then follow live) as a `Stream`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::events::StoredEvent;
use crate::pb;

/// What to replay; the default replays a whole thread without following it.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Start after this position (the previous replay's
    /// [`Replay::last_position`]); None: from the start of the thread.
    pub after: Option<u64>,
    /// The thread's epoch the cursor came from ([`Replay::epoch`]): when the
    /// thread was cleared since, the replay yields
    /// [`ReplayItem::ThreadCleared`] and ends instead of resuming in the
    /// thread's new life.
    pub epoch: Option<u64>,
    /// Go on with every event as it is committed once caught up.
    pub follow: bool,
    /// Only events and finish markers of turns >= this.
    pub from_turn: Option<u64>,
    /// Only events and finish markers of turns <= this.
    pub to_turn: Option<u64>,
    /// Only events of these types (empty: all). Finish markers are not filtered.
    pub event_types: Vec<String>,
    /// End once this turn's finish marker has been yielded.
    pub until_turn_finished: Option<u64>,
    /// Most events per message (0: the daemon's default).
    pub max_events_per_message: u32,
    /// A deadline for the whole replay; past it the replay yields
    /// [`crate::ErrorKind::DeadlineExceeded`] and ends. None: the client's
    /// timeout ([`crate::ClientOptions::timeout`]) for a replay that does not
    /// follow, and no deadline for one that follows (it is long-lived; the
    /// channel's keepalive pings find a daemon that stopped answering).
    /// Starting the replay is always bounded by the client's timeout.
    pub timeout: Option<Duration>,
}

/// One item of a [`Replay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayItem {
    /// A stored event, in position order.
    Event(StoredEvent),
    /// `turn` was finished, holding `event_count` events; it comes after
    /// every event of the turn. `last_position` is None for an empty turn.
    TurnFinished {
        /// The finished turn.
        turn: u64,
        /// How many events it holds.
        event_count: u64,
        /// The position of its last event.
        last_position: Option<u64>,
    },
    /// Sent once: everything stored when the replay caught up was yielded.
    CaughtUp {
        /// The position the next event will get.
        next_position: u64,
    },
    /// The thread was cleared under the replay; the stream ends after this.
    ThreadCleared {
        /// Where the replay stopped.
        next_position: u64,
    },
}

/// A replay of one thread: a `Stream` of [`ReplayItem`]s (use
/// `futures::StreamExt::next`, or `tokio_stream::StreamExt`).
///
/// To resume after a disconnect with nothing missed and nothing repeated,
/// start a new replay with `after: replay.last_position()` and
/// `epoch: replay.epoch()`. Dropping it cancels the stream. A replay that
/// fails with [`crate::ErrorKind::Unavailable`] before it yielded any item
/// is started again by the client's [`crate::RetryPolicy`] (nothing was
/// delivered, so nothing can repeat), within the replay's deadline; once it
/// yielded an item it is not: it yields its error (e.g.
/// [`crate::ErrorKind::Unavailable`] when the daemon stops), and the caller
/// resumes from its cursor. The Python and TypeScript clients do the same.
pub struct Replay {
    /// The open stream; None while a retry is opening the next one.
    stream: Option<tonic::Streaming<pb::ReplayResponse>>,
    /// A retry in progress: its pause, then the new stream.
    reopening: Option<Opening>,
    client: Client,
    request: pb::ReplayRequest,
    /// When the whole replay must have ended, if it has a deadline.
    ends_at: Option<Instant>,
    /// Whether an item was yielded (then a failure is not retried).
    yielded: bool,
    /// Retries made so far.
    retries: u32,
    buffered: VecDeque<ReplayItem>,
    last_position: Option<u64>,
    epoch: Option<u64>,
    done: bool,
    /// When the whole replay must have ended, with its length, if it has a deadline.
    deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    /// The client's target, named when the connection fails.
    target: String,
}

type Opening = Pin<Box<dyn Future<Output = Result<tonic::Streaming<pb::ReplayResponse>>> + Send>>;

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("last_position", &self.last_position)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Replay {
    pub(crate) async fn start(
        client: &Client,
        thread_id: &str,
        options: ReplayOptions,
    ) -> Result<Self> {
        let request = pb::ReplayRequest {
            thread_id: thread_id.to_owned(),
            after_position: options.after,
            from_turn: options.from_turn,
            to_turn: options.to_turn,
            event_types: options.event_types,
            follow: options.follow,
            until_turn_finished: options.until_turn_finished,
            max_events_per_message: options.max_events_per_message,
            thread_epoch: options.epoch.unwrap_or(0),
            // StoredEvent messages, as for ReadEvents (events.rs).
            encoding: pb::EventEncoding::Unspecified.into(),
        };
        let timeout = options
            .timeout
            .or(client.inner.options.timeout.filter(|_| !options.follow));
        // One deadline for the whole replay, retries included.
        let ends_at = timeout.map(|limit| Instant::now() + limit);
        let mut retries = 0;
        let stream = loop {
            match open(client.clone(), request.clone(), ends_at).await {
                Ok(stream) => break stream,
                Err(error) => match client.inner.options.retry.delay(retries) {
                    Some(delay) if error.is_retryable() => {
                        retries += 1;
                        tokio::time::sleep(delay).await;
                    }
                    _ => return Err(error),
                },
            }
        };
        Ok(Self {
            stream: Some(stream),
            reopening: None,
            client: client.clone(),
            request,
            ends_at,
            yielded: false,
            retries,
            buffered: VecDeque::new(),
            last_position: options.after,
            epoch: options.epoch,
            done: false,
            // The daemon enforces the deadline it is sent; this timer enforces
            // it when the daemon cannot (frozen, or its network path gone).
            deadline: ends_at.map(|at| {
                let limit = timeout.unwrap_or_default();
                (Box::pin(tokio::time::sleep_until(at)), limit)
            }),
            target: client.inner.target.clone(),
        })
    }

    /// After a failure: a retry when nothing was yielded, the error allows
    /// it and the policy has attempts left; else the error to yield.
    fn retry_or(&mut self, error: Error) -> Option<Error> {
        if self.yielded || !error.is_retryable() {
            return Some(error);
        }
        let Some(delay) = self.client.inner.options.retry.delay(self.retries) else {
            return Some(error);
        };
        self.retries += 1;
        self.stream = None;
        let (client, request, ends_at) = (self.client.clone(), self.request.clone(), self.ends_at);
        self.reopening = Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            open(client, request, ends_at).await
        }));
        None
    }

    /// The position of the last event yielded (the cursor given, before any).
    pub fn last_position(&self) -> Option<u64> {
        self.last_position
    }

    /// The thread's epoch, as the daemon last reported it.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    fn buffer(&mut self, message: pb::ReplayResponse) {
        if message.thread_epoch != 0 {
            self.epoch = Some(message.thread_epoch);
        }
        self.buffered.extend(
            message
                .events
                .into_iter()
                .map(|event| ReplayItem::Event(StoredEvent::from_proto(event))),
        );
        self.buffered
            .extend(
                message
                    .finished_turns
                    .into_iter()
                    .map(|finished| ReplayItem::TurnFinished {
                        turn: finished.turn,
                        event_count: finished.event_count,
                        last_position: finished.last_position,
                    }),
            );
        if message.caught_up {
            self.buffered.push_back(ReplayItem::CaughtUp {
                next_position: message.next_position,
            });
        }
        if message.thread_cleared {
            self.buffered.push_back(ReplayItem::ThreadCleared {
                next_position: message.next_position,
            });
        }
    }
}

impl Stream for Replay {
    type Item = Result<ReplayItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.buffered.pop_front() {
                if let ReplayItem::Event(event) = &item {
                    self.last_position = Some(event.position);
                }
                self.yielded = true;
                return Poll::Ready(Some(Ok(item)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            if let Some((timer, limit)) = &mut self.deadline {
                if timer.as_mut().poll(cx).is_ready() {
                    let limit = *limit;
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::local(
                        ErrorKind::DeadlineExceeded,
                        deadline_message(limit),
                    ))));
                }
            }
            if let Some(reopening) = &mut self.reopening {
                match reopening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(stream)) => {
                        self.reopening = None;
                        self.stream = Some(stream);
                    }
                    Poll::Ready(Err(error)) => {
                        self.reopening = None;
                        if let Some(error) = self.retry_or(error) {
                            self.done = true;
                            return Poll::Ready(Some(Err(error)));
                        }
                    }
                }
                continue;
            }
            let Some(stream) = &mut self.stream else {
                self.done = true;
                continue;
            };
            match Pin::new(stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(Ok(message))) => self.buffer(message),
                Poll::Ready(Some(Err(status))) => {
                    let error = Error::from_status(&status).at_target(&self.target);
                    if let Some(error) = self.retry_or(error) {
                        self.done = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                }
            }
        }
    }
}

/// Open one replay stream: the request with the time left of the replay's
/// deadline, the wait for the daemon's answer bounded by the client's
/// timeout too.
async fn open(
    client: Client,
    request: pb::ReplayRequest,
    ends_at: Option<Instant>,
) -> Result<tonic::Streaming<pb::ReplayResponse>> {
    let timeout = ends_at.map(|at| at.saturating_duration_since(Instant::now()));
    let mut request = client.request(request, false);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    // The daemon sends its answer's headers at once; a daemon that cannot
    // (a stopped process) must not hold the caller past its deadline.
    let opening = client
        .inner
        .options
        .timeout
        .into_iter()
        .chain(timeout)
        .min();
    let mut stub = client.inner.events.clone();
    let opened = stub.replay(request);
    let response = match opening {
        None => opened.await,
        Some(limit) => tokio::time::timeout(limit, opened).await.map_err(|_| {
            Error::local(
                ErrorKind::DeadlineExceeded,
                format!("no answer from the daemon within {limit:?}"),
            )
        })?,
    };
    Ok(response
        .map_err(|status| Error::from_status(&status).at_target(&client.inner.target))?
        .into_inner())
}

fn deadline_message(limit: Duration) -> String {
    format!("the replay did not end within its deadline of {limit:?}")
}
