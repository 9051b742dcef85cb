//! Every append and finish of a client, over one shared `AppendStream`.
//!
//! One task owns the stream. Callers hand it an item and wait for that
//! item's acknowledgement, which the daemon sends in the order sent, after
//! the durable commit; items of concurrent callers are pipelined, share
//! commits, and travel together (the items waiting when one is sent go in
//! its `more`; acknowledgements come back the same way). A rejected item
//! fails only its own call. The stream stays open while the client lives;
//! the daemon ends it when it shuts down. When the stream breaks
//! (a daemon restart), the task reconnects and resends every item not yet
//! acknowledged, in order, retrying `UNAVAILABLE` as the client's
//! [`RetryPolicy`] says: appends are idempotent by event id, and a resent
//! finish that finds its turn finished is its own earlier success.
//!
//! Each item has its own deadline (the client's timeout): a caller whose
//! item is not acknowledged in time gets [`ErrorKind::DeadlineExceeded`]
//! while the stream stays open for the others; its item may still commit,
//! as a unary call's may, and is not resent after a break. A daemon that
//! stops answering altogether is found by the channel's keepalive pings,
//! which break the stream.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::client::{with_metadata, RetryPolicy};
use crate::error::{Error, ErrorKind, Result};
use crate::pb;
use crate::pb::event_store_service_client::EventStoreServiceClient;

type Reply = oneshot::Sender<Result<Vec<u64>>>;

/// The most items one message carries (the daemon's limit for `more`).
const MAX_ITEMS_PER_MESSAGE: usize = 4096;

struct Submission {
    request: pb::AppendStreamRequest,
    reply: Reply,
}

/// The handle callers submit items through; the task ends when every
/// handle is dropped and every item is acknowledged.
pub(crate) struct Appender {
    submissions: mpsc::UnboundedSender<Submission>,
}

impl Appender {
    pub(crate) fn spawn(
        stub: EventStoreServiceClient<Channel>,
        authorization: Option<MetadataValue<Ascii>>,
        retry: RetryPolicy,
        target: String,
    ) -> Self {
        let (submissions, receiver) = mpsc::unbounded_channel();
        let driver = Driver {
            stub,
            authorization,
            retry,
            target,
            submissions: receiver,
            closed: false,
            pending: VecDeque::new(),
            next_id: 1,
        };
        tokio::spawn(driver.run());
        Self { submissions }
    }

    /// Append `events` to `turn` atomically (or, with `finish`, close the
    /// turn, `events` then being empty) and wait for the acknowledgement:
    /// the positions of the events. Fails with
    /// [`ErrorKind::DeadlineExceeded`] when no acknowledgement comes within
    /// `timeout` (None: no deadline).
    pub(crate) async fn submit(
        &self,
        thread_id: &str,
        turn: u64,
        events: Vec<pb::EventEnvelope>,
        finish: bool,
        expected_next_position: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u64>> {
        debug_assert!(!finish || events.is_empty(), "a finish item has no events");
        let (reply, acknowledged) = oneshot::channel();
        let request = pb::AppendStreamRequest {
            request_id: 0,
            thread_id: thread_id.to_owned(),
            turn,
            events,
            finish_turn: finish,
            more: Vec::new(),
            acks_in_more: false,
            expected_next_position,
        };
        let gone = || {
            Error::local(
                ErrorKind::Unavailable,
                "the append stream's task has stopped",
            )
        };
        self.submissions
            .send(Submission { request, reply })
            .map_err(|_| gone())?;
        let Some(limit) = timeout else {
            return acknowledged.await.map_err(|_| gone())?;
        };
        // Dropping the receiver on a timeout tells the driver not to resend it.
        match tokio::time::timeout(limit, acknowledged).await {
            Ok(outcome) => outcome.map_err(|_| gone())?,
            Err(_) => Err(Error::local(
                ErrorKind::DeadlineExceeded,
                format!("no acknowledgement from the daemon within {limit:?}"),
            )),
        }
    }
}

struct Pending {
    request: pb::AppendStreamRequest,
    reply: Reply,
    /// Sent again after a broken stream: its first attempt may have committed.
    resent: bool,
}

enum SessionEnd {
    /// Every handle is gone and every item acknowledged.
    Closed,
    /// The stream failed (or the daemon ended it).
    Broken(Error),
}

struct Driver {
    stub: EventStoreServiceClient<Channel>,
    authorization: Option<MetadataValue<Ascii>>,
    retry: RetryPolicy,
    /// Named in the errors of a stream that cannot reach the daemon.
    target: String,
    submissions: mpsc::UnboundedReceiver<Submission>,
    closed: bool,
    pending: VecDeque<Pending>,
    next_id: u64,
}

impl Driver {
    async fn run(mut self) {
        loop {
            // Idle: a stream is opened for the next item (the first, or after a failure).
            if self.pending.is_empty() {
                match self.submissions.recv().await {
                    Some(submission) => {
                        self.queue(submission);
                    }
                    None => return,
                }
            }
            let mut retries = 0;
            loop {
                match self.session(&mut retries).await {
                    SessionEnd::Closed => return,
                    SessionEnd::Broken(error) => {
                        let error = error.at_target(&self.target);
                        let pause = self.retry.delay(retries).filter(|_| error.is_retryable());
                        match pause {
                            Some(pause) if !self.pending.is_empty() => {
                                retries += 1;
                                for item in &mut self.pending {
                                    item.resent = true;
                                }
                                tokio::time::sleep(pause).await;
                            }
                            _ => {
                                for item in self.pending.drain(..) {
                                    let _ = item.reply.send(Err(error.clone()));
                                }
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    fn queue(&mut self, submission: Submission) -> pb::AppendStreamRequest {
        let mut request = submission.request;
        request.request_id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(Pending {
            request: request.clone(),
            reply: submission.reply,
            resent: false,
        });
        request
    }

    /// One message for `first` and every submission already waiting
    /// behind it: concurrent writers share messages as well as commits.
    fn burst(&mut self, first: Submission) -> pb::AppendStreamRequest {
        let mut items = vec![self.queue(first)];
        while items.len() < MAX_ITEMS_PER_MESSAGE {
            match self.submissions.try_recv() {
                Ok(submission) => items.push(self.queue(submission)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.closed = true;
                    break;
                }
            }
        }
        message_of(items)
    }

    /// One stream: resend what is pending, then pass new items and acks
    /// until the stream breaks or everything is done.
    async fn session(&mut self, retries: &mut u32) -> SessionEnd {
        // Items whose callers stopped waiting (their deadline passed) are
        // not sent again: nobody is told their outcome.
        self.pending.retain(|item| !item.reply.is_closed());
        let (requests, outgoing) = mpsc::unbounded_channel();
        let resent: Vec<pb::AppendStreamRequest> = self
            .pending
            .iter()
            .map(|item| item.request.clone())
            .collect();
        for chunk in resent.chunks(MAX_ITEMS_PER_MESSAGE) {
            // The receiver lives until the end of this function.
            let _ = requests.send(message_of(chunk.to_vec()));
        }
        let mut stub = self.stub.clone();
        let request = with_metadata(
            UnboundedReceiverStream::new(outgoing),
            self.authorization.as_ref(),
            None,
        );
        let call = stub.append_stream(request);
        tokio::pin!(call);
        let mut responses = loop {
            tokio::select! {
                opened = &mut call => match opened {
                    Ok(response) => break response.into_inner(),
                    Err(status) => return SessionEnd::Broken(Error::from_status(&status)),
                },
                submission = self.submissions.recv(), if !self.closed => match submission {
                    Some(submission) => {
                        let _ = requests.send(self.burst(submission));
                    }
                    None => self.closed = true,
                },
            }
        };
        loop {
            if self.closed && self.pending.is_empty() {
                return SessionEnd::Closed;
            }
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(mut ack)) => {
                        *retries = 0;
                        let more = std::mem::take(&mut ack.more);
                        for ack in std::iter::once(ack).chain(more) {
                            if let Err(error) = self.acknowledge(ack) {
                                return SessionEnd::Broken(error);
                            }
                        }
                    }
                    Ok(None) => {
                        return SessionEnd::Broken(Error::local(
                            ErrorKind::Unavailable,
                            "the daemon ended the append stream",
                        ))
                    }
                    Err(status) => return SessionEnd::Broken(Error::from_status(&status)),
                },
                submission = self.submissions.recv(), if !self.closed => match submission {
                    Some(submission) => {
                        let _ = requests.send(self.burst(submission));
                    }
                    None => self.closed = true,
                },
            }
        }
    }

    fn acknowledge(&mut self, ack: pb::AppendStreamResponse) -> Result<()> {
        let Some(item) = self.pending.pop_front() else {
            return Err(Error::local(
                ErrorKind::Server,
                format!("acknowledgement {} for no pending item", ack.request_id),
            ));
        };
        // Request id 0 acknowledges an item the daemon could not decode.
        if ack.request_id != item.request.request_id && ack.request_id != 0 {
            let error = Error::local(
                ErrorKind::Server,
                format!(
                    "acknowledgement {} out of order (expected {})",
                    ack.request_id, item.request.request_id
                ),
            );
            let _ = item.reply.send(Err(error.clone()));
            return Err(error);
        }
        let outcome = match ack.error {
            None => Ok(ack.positions),
            Some(rejected) => {
                let error = Error::from_item(&rejected);
                if item.resent
                    && item.request.finish_turn
                    && error.kind() == ErrorKind::TurnAlreadyFinished
                {
                    Ok(Vec::new())
                } else {
                    Err(error)
                }
            }
        };
        let _ = item.reply.send(outcome);
        Ok(())
    }
}

/// The message carrying `items` in order: the first, the others in `more`;
/// it asks the daemon to acknowledge several items per message likewise.
fn message_of(mut items: Vec<pb::AppendStreamRequest>) -> pb::AppendStreamRequest {
    let mut first = items.remove(0);
    first.more = items;
    first.acks_in_more = true;
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn driver() -> Driver {
        // Never connected: these tests only feed acknowledgements to the driver.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let (_, submissions) = mpsc::unbounded_channel();
        Driver {
            stub: EventStoreServiceClient::new(channel),
            authorization: None,
            retry: RetryPolicy::default(),
            target: "127.0.0.1:9".into(),
            submissions,
            closed: false,
            pending: VecDeque::new(),
            next_id: 1,
        }
    }

    fn finish_item(driver: &mut Driver, resent: bool) -> oneshot::Receiver<Result<Vec<u64>>> {
        let (reply, acknowledged) = oneshot::channel();
        let request = pb::AppendStreamRequest {
            thread_id: "t".into(),
            turn: 1,
            finish_turn: true,
            ..Default::default()
        };
        driver.queue(Submission { request, reply });
        driver.pending.back_mut().unwrap().resent = resent;
        acknowledged
    }

    fn already_finished(request_id: u64) -> pb::AppendStreamResponse {
        pb::AppendStreamResponse {
            request_id,
            positions: Vec::new(),
            event_count: None,
            more: Vec::new(),
            error: Some(pb::ItemError {
                code: Code::FailedPrecondition as i32,
                reason: "turn_already_finished".into(),
                message: "turn 1 is already finished".into(),
                current_version: None,
            }),
        }
    }

    #[tokio::test]
    async fn a_resent_finish_that_finds_its_turn_finished_succeeds() {
        let mut driver = driver();
        let first = finish_item(&mut driver, false);
        let resent = finish_item(&mut driver, true);
        driver.acknowledge(already_finished(1)).unwrap();
        driver.acknowledge(already_finished(2)).unwrap();
        let error = first.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TurnAlreadyFinished);
        assert_eq!(resent.await.unwrap().unwrap(), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn an_acknowledgement_out_of_order_breaks_the_stream() {
        let mut driver = driver();
        let item = finish_item(&mut driver, false);
        let error = driver.acknowledge(already_finished(7)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Server);
        assert!(item.await.unwrap().is_err());
        assert!(
            driver.acknowledge(already_finished(1)).is_err(),
            "nothing is pending"
        );
    }
}
