//! The connection: one channel, the options every call shares, retries.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::admin::TurnstoreAdmin;
use crate::appender::Appender;
use crate::convert::UndecodableEvents;
use crate::error::{Error, ErrorKind, Result};
use crate::events::TurnstoreEventStore;
use crate::history::TurnstoreHistoryStore;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::pb::event_store_service_client::EventStoreServiceClient;
use crate::pb::history_store_service_client::HistoryStoreServiceClient;

/// The daemon's address when none is given (`make run`'s).
pub const DEFAULT_TARGET: &str = "127.0.0.1:7070";
/// The largest message sent or received; matches the daemon's limit, so
/// large turns and snapshots come through.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The deadline of every call when [`ClientOptions::timeout`] is not changed
/// (the Python and TypeScript clients' too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an HTTP/2 ping checks that the daemon still answers, while
/// calls are open and while idle (the daemon permits pings this often).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a ping may go unanswered before the connection counts as dead
/// and every call on it fails with [`ErrorKind::Unavailable`].
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How calls that fail with [`ErrorKind::Unavailable`] are retried.
///
/// `attempts` counts the first try; the pauses double from
/// `initial_backoff` up to `max_backoff`, each with up to 50% random jitter.
/// Retries are safe because appends are idempotent by event id and a
/// resent finish that finds its turn finished counts as done; a save with
/// an expected version and a replay in progress are never retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1: no retry).
    pub attempts: u32,
    /// The pause before the first retry.
    pub initial_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 6 attempts over about 3 to 5 seconds: long enough for a sidecar restart.
    fn default() -> Self {
        Self {
            attempts: 6,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub const NONE: Self = Self {
        attempts: 1,
        initial_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };

    /// The pause before retry number `retry` (0 for the first retry), or
    /// None when the attempts are used up.
    pub(crate) fn delay(&self, retry: u32) -> Option<Duration> {
        if retry + 1 >= self.attempts {
            return None;
        }
        let base = self
            .initial_backoff
            .saturating_mul(1 << retry.min(20))
            .min(self.max_backoff);
        // Jitter from the std hasher's random keys: no RNG crate for this.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter = (random % 1000) as f64 / 2000.0;
        Some(base.mul_f64(1.0 + jitter))
    }
}

/// TLS for a TCP target (needs the default `tls` feature): the CA that
/// signed the daemon's certificate and, for mutual TLS, this client's
/// certificate chain and key, all PEM.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// The CA certificate(s) to trust (PEM file).
    pub ca: PathBuf,
    /// This client's certificate chain (PEM file), for mutual TLS.
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM file), for mutual TLS.
    pub key: Option<PathBuf>,
    /// The name checked against the daemon's certificate, when not the target's host.
    pub server_name: Option<String>,
}

/// Options of [`Client::connect`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The deadline of every call (default [`DEFAULT_TIMEOUT`], 30 s; None:
    /// none): each attempt of a unary call or a bounded read, each append
    /// and finish from its submission to its acknowledgement over the shared
    /// append stream (which stays open for the others), and a replay that
    /// does not follow. Past it the call fails with
    /// [`ErrorKind::DeadlineExceeded`]; a write may still take effect. A
    /// following replay has no deadline by default (see
    /// [`crate::ReplayOptions::timeout`]): keepalive pings detect a dead daemon.
    pub timeout: Option<Duration>,
    /// The interval of the HTTP/2 keepalive pings on the connection, sent
    /// while idle too (default [`DEFAULT_KEEPALIVE_INTERVAL`]; None: no
    /// pings). A daemon that does not answer one within
    /// `keepalive_timeout` is taken for dead: the open streams (followers,
    /// the append stream) fail with [`ErrorKind::Unavailable`] instead of
    /// waiting forever. The daemon refuses pings more often than every 10 s.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered (default
    /// [`DEFAULT_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
    /// How calls that find the daemon unavailable are retried.
    pub retry: RetryPolicy,
    /// Sent as `authorization: Bearer <token>` on every call, for a daemon
    /// started with `--auth-token-file`.
    pub token: Option<String>,
    /// TLS for a TCP target; None: plaintext (Unix sockets are always plaintext).
    pub tls: Option<TlsOptions>,
    /// Accept a `HOST:PORT` target whose host is not loopback over a
    /// plaintext channel (default false: such a target fails with
    /// [`ErrorKind::Config`] unless [`tls`](Self::tls) is set). Only for a
    /// daemon run with `--allow-remote` on a network you trust; the
    /// TypeScript client's `allowRemote`, the Python client's `allow_remote`.
    pub allow_remote: bool,
    /// What the `EventStore` trait methods do with stored events that
    /// agent-sdk's types cannot hold.
    pub undecodable_events: UndecodableEvents,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Some(DEFAULT_TIMEOUT),
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            retry: RetryPolicy::default(),
            token: None,
            tls: None,
            allow_remote: false,
            undecodable_events: UndecodableEvents::default(),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) target: String,
    pub(crate) events: EventStoreServiceClient<Channel>,
    pub(crate) history: HistoryStoreServiceClient<Channel>,
    pub(crate) admin: AdminServiceClient<Channel>,
    pub(crate) appender: Appender,
    pub(crate) options: ClientOptions,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// A connection to a turnstore daemon, cheap to clone (clones share the
/// channel and the append stream).
///
/// [`Client::events`] is agent-sdk's `EventStore`; [`Client::history`] is
/// ailoop's `HistoryStore` for one conversation key. Every append and
/// finish of a client goes over one shared `AppendStream`.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connect to `target`: `HOST:PORT` (e.g. `127.0.0.1:7070`) or
    /// `unix:/path/to.sock`. Must run inside a Tokio runtime.
    ///
    /// Fails with [`ErrorKind::Unavailable`] (naming the target and the
    /// cause, e.g. `cannot reach 127.0.0.1:7070: ... Connection refused`)
    /// when nothing answers at `target`, [`ErrorKind::Config`] for a malformed target, TLS on a
    /// Unix socket, unreadable TLS files, or a host that is not loopback
    /// without TLS or [`ClientOptions::allow_remote`]. Once connected, the channel
    /// reconnects by itself after a daemon restart.
    pub async fn connect(target: &str, options: ClientOptions) -> Result<Self> {
        let endpoint = endpoint(target, &options)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|error| Error::unreachable(target, error))?;
        Self::with_channel(target, options, channel)
    }

    /// Like [`connect`](Self::connect), but connects on first use, so an
    /// agent may start before its sidecar daemon: calls made while nothing
    /// answers fail with [`ErrorKind::Unavailable`] after the retries. Must
    /// run inside a Tokio runtime; fails only for a bad configuration.
    pub fn connect_lazy(target: &str, options: ClientOptions) -> Result<Self> {
        let channel = endpoint(target, &options)?.connect_lazy();
        Self::with_channel(target, options, channel)
    }

    fn with_channel(target: &str, options: ClientOptions, channel: Channel) -> Result<Self> {
        let authorization = match &options.token {
            None => None,
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                Error::local(ErrorKind::Config, "the token must be printable ASCII")
            })?),
        };
        let events = EventStoreServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let history = HistoryStoreServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let admin = AdminServiceClient::new(channel);
        let appender = Appender::spawn(
            events.clone(),
            authorization.clone(),
            options.retry,
            target.to_owned(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                target: target.to_owned(),
                events,
                history,
                admin,
                appender,
                options,
                authorization,
            }),
        })
    }

    /// The target this client connected to.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// agent-sdk's `EventStore` over this connection.
    pub fn events(&self) -> TurnstoreEventStore {
        TurnstoreEventStore::new(self.clone())
    }

    /// Administrative calls over this connection: [`TurnstoreAdmin::stats`].
    pub fn admin(&self) -> TurnstoreAdmin {
        TurnstoreAdmin::new(self.clone())
    }

    /// ailoop's `HistoryStore` for the conversation `key`. No call is made;
    /// an empty or oversized key is refused by the daemon on first use.
    pub fn history(&self, key: impl Into<String>) -> TurnstoreHistoryStore {
        TurnstoreHistoryStore::new(self.clone(), key.into())
    }

    /// A request carrying the bearer token and, when `bounded`, the deadline.
    pub(crate) fn request<T>(&self, message: T, bounded: bool) -> tonic::Request<T> {
        with_metadata(
            message,
            self.inner.authorization.as_ref(),
            self.inner.options.timeout.filter(|_| bounded),
        )
    }

    /// Run a call, mapping its error; retry it while the daemon is unavailable.
    /// Each attempt is bounded by the client's timeout. A transport failure
    /// names the target.
    pub(crate) async fn call<T, F, Fut>(&self, retry: RetryPolicy, mut make_call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retries = 0;
        loop {
            // The deadline is also sent to the daemon; this bounds the wait
            // when the daemon cannot even answer (a stopped process).
            let attempt = make_call();
            let outcome = match self.inner.options.timeout {
                None => attempt.await,
                Some(limit) => tokio::time::timeout(limit, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::local(
                            ErrorKind::DeadlineExceeded,
                            format!("no answer from the daemon within {limit:?}"),
                        ))
                    }),
            };
            match outcome.map_err(|error| error.at_target(&self.inner.target)) {
                Ok(value) => return Ok(value),
                Err(error) => match retry.delay(retries).filter(|_| error.is_retryable()) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(error),
                },
            }
            retries += 1;
        }
    }
}

pub(crate) fn with_metadata<T>(
    message: T,
    authorization: Option<&MetadataValue<tonic::metadata::Ascii>>,
    timeout: Option<Duration>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

fn endpoint(target: &str, options: &ClientOptions) -> Result<Endpoint> {
    let config = |message: String| Error::local(ErrorKind::Config, message);
    let unix = target.starts_with("unix:");
    let uri = if unix || target.contains("://") {
        target.to_owned()
    } else if options.tls.is_some() {
        format!("https://{target}")
    } else {
        format!("http://{target}")
    };
    let mut endpoint =
        Endpoint::from_shared(uri).map_err(|e| config(format!("bad target {target:?}: {e}")))?;
    if !unix && options.tls.is_none() && !options.allow_remote {
        let host = endpoint.uri().host().unwrap_or_default();
        if !is_loopback(host) {
            return Err(config(format!(
                "target {target} is not a loopback address and the channel is insecure: \
                 set ClientOptions::tls, or allow_remote for a daemon run with \
                 --allow-remote on a network you trust"
            )));
        }
    }
    endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true);
    // Without pings, a daemon that stops answering (a frozen process, a
    // dropped network path) leaves every open stream waiting forever.
    if let Some(interval) = options.keepalive_interval {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true);
    }
    if let Some(tls) = &options.tls {
        if unix {
            return Err(config(format!("TLS is for TCP targets, not {target:?}")));
        }
        endpoint = with_tls(endpoint, tls)?;
    }
    Ok(endpoint)
}

/// `localhost` or a loopback IP address (`127.x.x.x`, `[::1]`); a name that
/// must be resolved is not.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

#[cfg(feature = "tls")]
fn with_tls(endpoint: Endpoint, tls: &TlsOptions) -> Result<Endpoint> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            Error::local(
                ErrorKind::Config,
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(Error::local(
                ErrorKind::Config,
                "mutual TLS needs both a certificate and a key",
            ))
        }
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    endpoint
        .tls_config(config)
        .map_err(|e| Error::local(ErrorKind::Config, format!("TLS: {}", error_chain(&e))))
}

#[cfg(not(feature = "tls"))]
fn with_tls(_: Endpoint, _: &TlsOptions) -> Result<Endpoint> {
    Err(Error::local(
        ErrorKind::Config,
        "this build of turnstore-client has no TLS (enable its `tls` feature)",
    ))
}

/// An error with its sources, which is where the transport says what failed
/// (down to the OS error). A source that only repeats its parent's words
/// (the transport's wrappers do) is said once.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let words = cause.to_string();
        if words != last {
            text.push_str(": ");
            text.push_str(&words);
            last = words;
        }
        source = cause.source();
    }
    text
}
