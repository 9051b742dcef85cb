//! The one place that maps gRPC statuses (and rejected `AppendStream` items)
//! to this crate's typed errors.

use std::fmt;

use tonic::Code;

/// Trailing-metadata key holding the daemon's stable reason for an error.
pub const ERROR_METADATA_KEY: &str = "turnstore-error";
/// Trailing-metadata key holding a key's current version on a version conflict.
pub const CURRENT_VERSION_METADATA_KEY: &str = "turnstore-current-version";

/// What went wrong, as the daemon's reason (or, without one, its status code) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Malformed input or a limit exceeded; the message names the field.
    InvalidArgument,
    /// An append to a finished turn (`turn_finished`).
    TurnFinished,
    /// A turn finished a second time (`turn_already_finished`).
    TurnAlreadyFinished,
    /// An event id already stored in another turn of the thread.
    EventIdConflict,
    /// A save whose expected version is not the key's current one, or a
    /// conditional append whose expected next position is not the thread's;
    /// see [`Error::current_version`].
    VersionConflict,
    /// The thread was cleared while a streaming read was in progress.
    ThreadCleared,
    /// A replay cursor past the end of its thread (`cursor_out_of_range`):
    /// never handed out for it (another database, or one since restored from
    /// a backup); resuming would skip events, so replay from the start.
    CursorOutOfRange,
    /// The daemon's database reached its size ceiling (reads still work).
    StorageFull,
    /// A following replay fell too far behind the commits and the daemon
    /// ended it (`follower_too_slow`); resume from its cursor, reading faster.
    FollowerTooSlow,
    /// The daemon is unreachable or shutting down (after the retries).
    Unavailable,
    /// The bearer token was missing or wrong.
    Unauthenticated,
    /// The bearer token's scope does not allow the call (a write outside it,
    /// a write with a read-only token, a daemon-wide call with a scoped
    /// token); nothing was written.
    PermissionDenied,
    /// The call's deadline passed.
    DeadlineExceeded,
    /// Another `FAILED_PRECONDITION` than the ones above.
    FailedPrecondition,
    /// Another `RESOURCE_EXHAUSTED` than a full store (e.g. a message too large).
    ResourceExhausted,
    /// A stored event this client cannot decode (not JSON, an unknown type, ...).
    EventFormat,
    /// A stored snapshot this client cannot decode, or one it cannot encode.
    SnapshotFormat,
    /// The client was configured wrongly (a bad target, unreadable TLS material).
    Config,
    /// Any other status from the daemon.
    Server,
}

/// An error of a turnstore call: its kind, and, when it came from the daemon,
/// the gRPC status code and the `turnstore-error` reason.
#[derive(Clone, Debug)]
pub struct Error {
    kind: ErrorKind,
    code: Option<Code>,
    reason: Option<String>,
    message: String,
    current_version: Option<u64>,
    /// The call failed in the transport (no daemon answered): the message
    /// holds the transport's causes, and the client adds its target.
    unreachable: bool,
}

/// The result type of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error raised by this client itself (no status code).
    pub(crate) fn local(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: None,
            reason: None,
            message: message.into(),
            current_version: None,
            unreachable: false,
        }
    }

    /// The daemon at `target` could not be reached: `cannot reach TARGET:
    /// CAUSES`, the transport's error and every source of it (where the OS
    /// error, e.g. "Connection refused (os error 111)", is).
    pub(crate) fn unreachable(target: &str, error: impl std::error::Error) -> Self {
        let mut error = Self::local(ErrorKind::Unavailable, crate::client::error_chain(&error));
        error.unreachable = true;
        error.at_target(target)
    }

    /// This error, with `target` named when it is a transport failure.
    pub(crate) fn at_target(mut self, target: &str) -> Self {
        if self.unreachable && !self.message.starts_with("cannot reach ") {
            self.message = format!("cannot reach {target}: {}", self.message);
        }
        self
    }

    /// The error for a status code, a reason and a message: the reason wins
    /// over the code, and an unknown pair gives [`ErrorKind::Server`].
    pub(crate) fn from_parts(code: Code, reason: Option<String>, message: String) -> Self {
        let kind = reason
            .as_deref()
            .and_then(kind_of_reason)
            .unwrap_or_else(|| kind_of_code(code));
        let message = if message.is_empty() {
            code.description().to_owned()
        } else {
            message
        };
        Self {
            kind,
            code: Some(code),
            reason: reason.filter(|r| !r.is_empty()),
            message,
            current_version: None,
            unreachable: false,
        }
    }

    /// The error of a failed call, from its status and trailing metadata.
    pub(crate) fn from_status(status: &tonic::Status) -> Self {
        let text = |key: &str| {
            status
                .metadata()
                .get(key)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let mut error = Self::from_parts(
            status.code(),
            text(ERROR_METADATA_KEY),
            status.message().to_owned(),
        );
        // tonic enforces the request's deadline itself and reports it as
        // CANCELLED "Timeout expired": that is this call's deadline, not a
        // daemon going away, and must not be retried.
        if status.code() == Code::Cancelled
            && status.message() == tonic::TimeoutExpired(()).to_string()
        {
            error.kind = ErrorKind::DeadlineExceeded;
        }
        // A transport failure (no daemon at the address, a broken connection,
        // an unanswered keepalive ping) has the transport's error as its
        // source; the daemon's own statuses have none. Its chain is where the
        // OS cause is, so it goes into the message.
        let transport = matches!(
            status.code(),
            Code::Unknown | Code::Unavailable | Code::Cancelled
        ) && error.kind != ErrorKind::DeadlineExceeded;
        if let Some(source) = std::error::Error::source(status).filter(|_| transport) {
            error.kind = ErrorKind::Unavailable;
            error.unreachable = true;
            let causes = crate::client::error_chain(source);
            error.message = if causes.contains(&error.message) {
                causes
            } else {
                format!("{}: {causes}", error.message)
            };
        }
        if error.kind == ErrorKind::VersionConflict {
            error.current_version = text(CURRENT_VERSION_METADATA_KEY).and_then(|v| v.parse().ok());
        }
        error
    }

    /// The error of a rejected `AppendStream` item.
    pub(crate) fn from_item(item: &crate::pb::ItemError) -> Self {
        let mut error = Self::from_parts(
            Code::from_i32(item.code),
            Some(item.reason.clone()),
            item.message.clone(),
        );
        if error.kind == ErrorKind::VersionConflict {
            // A conditional append's conflict: the thread's next position.
            error.current_version = item.current_version;
        }
        error
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The gRPC status code, when the error came from the daemon or the transport.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// The daemon's stable reason (`turn_finished`, `version_conflict`, ...), when it sent one.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// The human-readable message (the daemon's, for a daemon error).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For [`ErrorKind::VersionConflict`]: the key's version when the save was refused,
    /// or the thread's next position when a conditional append was.
    pub fn current_version(&self) -> Option<u64> {
        self.current_version
    }

    /// Whether a retry may succeed: the daemon was unreachable or going away.
    pub(crate) fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "turnstore: {}", self.message)?;
        match (self.code, &self.reason) {
            (Some(code), Some(reason)) => write!(f, " ({code:?}, {reason})"),
            (Some(code), None) => write!(f, " ({code:?})"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

/// The kind of each reason the daemon sends (the proto's `ErrorReason`, in
/// lower case); the same mapping as the Python and TypeScript clients'
/// (`tests/test_error_vocabulary.py` holds them together). An unknown
/// reason gives None: the status code decides.
pub(crate) fn kind_of_reason(reason: &str) -> Option<ErrorKind> {
    Some(match reason {
        "invalid_argument" => ErrorKind::InvalidArgument,
        "turn_finished" => ErrorKind::TurnFinished,
        "turn_already_finished" => ErrorKind::TurnAlreadyFinished,
        "event_id_conflict" => ErrorKind::EventIdConflict,
        "version_conflict" => ErrorKind::VersionConflict,
        "thread_cleared" => ErrorKind::ThreadCleared,
        "cursor_out_of_range" => ErrorKind::CursorOutOfRange,
        "storage_full" => ErrorKind::StorageFull,
        "follower_too_slow" => ErrorKind::FollowerTooSlow,
        "shutting_down" => ErrorKind::Unavailable,
        "database_unavailable" => ErrorKind::Unavailable,
        "disk_error" => ErrorKind::Unavailable,
        "data_dir_locked" => ErrorKind::Unavailable,
        "backup_failed" => ErrorKind::FailedPrecondition,
        "unauthenticated" => ErrorKind::Unauthenticated,
        "permission_denied" => ErrorKind::PermissionDenied,
        "internal" => ErrorKind::Server,
        _ => return None,
    })
}

fn kind_of_code(code: Code) -> ErrorKind {
    match code {
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        // Only the daemon cancels with a status (a shutdown): a local cancel
        // drops the future instead.
        Code::Unavailable | Code::Cancelled => ErrorKind::Unavailable,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::OutOfRange => ErrorKind::CursorOutOfRange,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        _ => ErrorKind::Server,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_wins_over_code() {
        let error = Error::from_parts(
            Code::FailedPrecondition,
            Some("turn_finished".into()),
            "cannot append to finished turn 3".into(),
        );
        assert_eq!(error.kind(), ErrorKind::TurnFinished);
        assert_eq!(error.code(), Some(Code::FailedPrecondition));
        assert_eq!(error.reason(), Some("turn_finished"));
        assert_eq!(
            error.to_string(),
            "turnstore: cannot append to finished turn 3 (FailedPrecondition, turn_finished)"
        );
    }

    #[test]
    fn tonics_own_deadline_is_deadline_exceeded() {
        let error = Error::from_status(&tonic::Status::cancelled("Timeout expired"));
        assert_eq!(error.kind(), ErrorKind::DeadlineExceeded);
        assert!(!error.is_retryable());
        let shutdown = Error::from_status(&tonic::Status::cancelled("the daemon stops"));
        assert_eq!(shutdown.kind(), ErrorKind::Unavailable);
    }

    #[test]
    fn a_transport_failure_names_the_target_and_keeps_its_causes() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let error = Error::from_status(&tonic::Status::from_error(Box::new(refused)))
            .at_target("127.0.0.1:7070");
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert!(error.is_retryable());
        assert_eq!(
            error.message(),
            "cannot reach 127.0.0.1:7070: Connection refused (os error 111)"
        );
        // The daemon's own statuses have no transport source: no target added.
        let daemon = Error::from_parts(
            Code::Unavailable,
            Some("shutting_down".into()),
            "bye".into(),
        );
        assert_eq!(daemon.at_target("127.0.0.1:7070").message(), "bye");
    }

    #[test]
    fn a_follower_too_slow_is_its_own_kind() {
        let error = Error::from_parts(
            Code::ResourceExhausted,
            Some("follower_too_slow".into()),
            "the follower fell behind".into(),
        );
        assert_eq!(error.kind(), ErrorKind::FollowerTooSlow);
        assert!(!error.is_retryable());
    }

    #[test]
    fn unknown_reason_falls_back_to_code() {
        let error = Error::from_parts(Code::Unavailable, Some("new_reason".into()), String::new());
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert!(error.is_retryable());
        assert_eq!(error.message(), Code::Unavailable.description());
        assert_eq!(
            Error::from_parts(Code::DataLoss, None, "x".into()).kind(),
            ErrorKind::Server
        );
    }
}
