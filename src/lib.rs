//! bccguard: an SMTP relay that stops the "forgot to Bcc" leak.
//!
//! The parts, in the order bytes flow through them:
//!
//! - [`smtp`]: the front door. Listeners, the session state machine (pure), the connection
//!   loop (the only inbound socket code), replies, STARTTLS and AUTH.
//! - [`relay`]: the intake behind the front door: trace field, decision, storing, the reply
//!   to the dot.
//! - [`spool`]: the durable queue: one file per message, a journal of delivery events.
//! - [`delivery`]: the queue manager, delivery passes, the upstream transports (directory,
//!   SMTP via lettre), retries and bounces.
//! - [`control`]: the socket through which `bccguard queue` reaches the running relay.
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
pub mod control;
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
pub mod spool;

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use config::Config;
use delivery::{DeliveryConfig, Upstream};
use events::Redaction;
use smtp::Frontend;
use spool::Spool;

/// The two phases of shutdown.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop accepting; idle sessions get 421, sessions in a transaction finish it first; no
    /// new delivery passes start.
    pub soft: CancellationToken,
    /// The grace period is over: every session gets 421 now, deliveries in flight stop (their
    /// messages stay spooled).
    pub hard: CancellationToken,
}

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
    /// The spool could not be opened or is in use.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The control socket could not be bound.
    #[error("cannot create the control socket {path}: {source}")]
    Control {
        /// The socket path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The upstream could not be set up.
    #[error(transparent)]
    Upstream(#[from] delivery::UpstreamError),
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
/// stop accepting and close idle sessions, let transactions and deliveries in progress finish
/// within `server.shutdown_grace`, then stop the rest (undelivered mail stays spooled).
pub async fn run(config: Config, listeners: Vec<TcpListener>, shutdown: CancellationToken) -> Result<(), RunError> {
    let spool = Arc::new(Spool::open(&config.spool.dir)?);
    let upstream = Arc::new(Upstream::from_config(&config)?);
    let socket_path = spool.paths().control_socket();
    let control = control::listen(&socket_path).map_err(|source| RunError::Control {
        path: socket_path.display().to_string(),
        source,
    })?;
    let phases = Shutdown::default();
    let deliveries = TaskTracker::new();
    let deliverer = delivery::start(
        spool.clone(),
        upstream,
        DeliveryConfig::from_config(&config),
        phases.clone(),
        deliveries.clone(),
    );
    tokio::spawn(control::serve(control, deliverer.clone(), phases.soft.clone()));
    let policy = message::decide::Policy::from_config(&config.policy);
    let redaction = Redaction(config.log.redact_addresses);
    let intake = Arc::new(relay::Relay::new(
        config.server.hostname.clone(),
        policy,
        spool.clone(),
        deliverer,
        redaction,
    ));
    let front = Arc::new(Frontend::new(&config, intake)?);
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, "listening");
        }
    }
    let sessions = TaskTracker::new();
    let server = tokio::spawn(smtp::serve(listeners, front, phases.clone(), sessions.clone()));

    shutdown.cancelled().await;
    info!("shutting down: no new connections, finishing transactions and deliveries in progress");
    phases.soft.cancel();
    let _ = server.await;
    sessions.close();
    deliveries.close();
    let grace = config.server.shutdown_grace;
    let drained = tokio::time::timeout(grace.0, async {
        sessions.wait().await;
        deliveries.wait().await;
    });
    if drained.await.is_err() {
        info!(grace = %grace, "grace period over, stopping what is left");
        phases.hard.cancel();
        sessions.wait().await;
        deliveries.wait().await;
    }
    let _ = std::fs::remove_file(&socket_path);
    info!("stopped");
    Ok(())
}
