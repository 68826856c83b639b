//! bccguard: an SMTP relay that stops the "forgot to Bcc" leak.
//!
//! The parts, in the order bytes flow through them:
//!
//! - [`smtp`]: the front door. Listeners, the session state machine (pure), the connection
//!   loop (the only inbound socket code), replies, STARTTLS and AUTH.
//! - [`relay`]: the intake behind the front door: trace field, storing, the reply to the dot.
//! - [`delivery`]: the upstream transports.
//! - [`message`]: the header block as the leak decision sees it, and the decision (pure).
//! - [`plan`]: which recipients go together in one upstream transaction (pure).
//! - [`rewrite`]: the header block of each copy (pure); bodies are shared, never copied.
//! - [`config`]: the TOML file, environment overrides, and validation with key paths.
//! - [`cli`]: the command line.
//!
//! [`run`] wires them together on listeners the caller has already bound, so tests can bind
//! `127.0.0.1:0`.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod durable;
pub mod events;
pub mod logging;
pub mod message;
pub mod plan;
pub mod queue_id;
pub mod relay;
pub mod rewrite;
pub mod smtp;

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use config::{Config, UpstreamKind};
use delivery::directory::DirectoryUpstream;
use events::Redaction;
use smtp::{Frontend, Shutdown};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The outbox directory could not be created.
    #[error("cannot use the outbox directory {path}: {source}")]
    Outbox {
        /// The directory.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The SMTP upstream is not available in this build.
    #[error("upstream.host is set, but SMTP upstream delivery is not available yet")]
    SmtpUpstream,
    /// TLS certificate or key problem.
    #[error(transparent)]
    Tls(#[from] smtp::tls::TlsConfigError),
}

/// Bind every `server.listen` address.
pub async fn bind(config: &Config) -> Result<Vec<TcpListener>, RunError> {
    let mut listeners = Vec::new();
    for &addr in &config.server.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Bind { addr, source })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Run the relay on `listeners` until `shutdown` is cancelled, then shut down in two phases:
/// stop accepting and close idle sessions, let transactions finish within
/// `server.shutdown_grace`, then close the rest.
pub async fn run(
    config: Config,
    listeners: Vec<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let upstream = match config.upstream.kind() {
        UpstreamKind::Directory(dir) => {
            DirectoryUpstream::open(&dir).map_err(|source| RunError::Outbox {
                path: dir.display().to_string(),
                source,
            })?
        }
        UpstreamKind::Smtp(_) => return Err(RunError::SmtpUpstream),
    };
    let redaction = Redaction(config.log.redact_addresses);
    let policy = message::decide::Policy::from_config(&config.policy);
    let intake = Arc::new(relay::Relay::new(
        config.server.hostname.clone(),
        policy,
        upstream,
        redaction,
    ));
    let front = Arc::new(Frontend::new(&config, intake)?);
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, "listening");
        }
    }
    let sessions = Shutdown::default();
    let tracker = TaskTracker::new();
    let server = tokio::spawn(smtp::serve(
        listeners,
        front,
        sessions.clone(),
        tracker.clone(),
    ));

    shutdown.cancelled().await;
    info!("shutting down: no new connections, finishing transactions in progress");
    sessions.soft.cancel();
    let _ = server.await;
    tracker.close();
    let grace = config.server.shutdown_grace.0;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        info!(grace = %config.server.shutdown_grace, "grace period over, closing remaining sessions");
        sessions.hard.cancel();
        tracker.wait().await;
    }
    info!("stopped");
    Ok(())
}
