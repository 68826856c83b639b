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
//!   SMTP through a pipelining client), retries and bounces.
//! - [`control`]: the socket through which `bccguard queue` reaches the running relay.
//! - [`hold`]: held messages (SPEC §10): the interface the CLI, control socket and review
//!   page share.
//! - [`notify`]: notices by mail (spooled and delivered like any message) and the webhook,
//!   fed events by the relay without ever waiting.
//! - [`admin`]: the review page (SPEC §10): held messages in a browser, behind a token.
//! - [`metrics`], [`http`]: Prometheus metrics and the `/metrics`, `/healthz`, `/readyz`
//!   endpoint.
//! - [`message`]: the header block as the leak decision sees it, and the decision (pure).
//! - [`plan`]: which recipients go together in one upstream transaction (pure).
//! - [`rewrite`]: the header block of each copy (pure); bodies are shared, never copied.
//! - [`config`]: the TOML file, environment overrides, and validation with key paths.
//! - [`cli`]: the command line.
//! - [`Shutdown`]: the two phases of shutdown, shared by the front door and delivery.
//!
//! [`start`] wires them together on listeners the caller has already bound (so tests can bind
//! `127.0.0.1:0`) and returns a [`Running`] relay that can be reloaded and stopped; [`run`]
//! does the same until a cancellation token fires.

#![forbid(unsafe_code)]

pub mod accept;
pub mod addresses;
pub mod admin;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod dkim;
pub mod durable;
pub mod events;
pub mod hold;
pub mod http;
pub mod limits;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod queue_id;
pub mod relay;
pub mod rewrite;
mod shutdown;
pub mod smtp;
pub mod spool;
pub mod text;

pub use shutdown::Shutdown;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use config::Config;
use delivery::{DeliveryConfig, Upstream};
use events::Redaction;
use metrics::Health;
use relay::Relay;
use smtp::Frontend;
use spool::Spool;

/// How long stopping waits for the control socket, probes and metrics endpoint to end.
const BACKGROUND_STOP: Duration = Duration::from_secs(5);

/// How often readiness is checked (spool writable, upstream reachable).
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
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
    /// A DKIM key could not be loaded.
    #[error("dkim: {0}")]
    Dkim(#[from] dkim::KeyError),
    /// The review page could not start (`[admin]`).
    #[error(transparent)]
    Admin(#[from] admin::StartError),
}

/// Bind every `server.listen` address, with a listen backlog of `server.max_connections`
/// (at least 1024).
pub async fn bind(config: &Config) -> Result<Vec<TcpListener>, RunError> {
    let backlog = u32::try_from(config.server.max_connections).unwrap_or(u32::MAX).max(MIN_BACKLOG);
    let mut listeners = Vec::new();
    for &addr in &config.server.listen {
        listeners.push(listen(addr, backlog).map_err(|source| RunError::Bind { addr, source })?);
    }
    Ok(listeners)
}

/// The smallest listen backlog used. tokio's and std's `bind` use 128: a burst of more
/// connections than that overflows the accept queue, and Linux then drops the handshake's
/// last ACK, so a client that believes it is connected waits up to half a minute for the
/// server's retransmitted SYN-ACK before its session even starts.
pub const MIN_BACKLOG: u32 = 1024;

/// A listening socket on `addr` with this backlog (the kernel caps it at `somaxconn`).
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Run the relay on `listeners` until `shutdown` is cancelled, then [`Running::stop`].
pub async fn run(config: Config, listeners: Vec<TcpListener>, shutdown: CancellationToken) -> Result<(), RunError> {
    let running = start(config, listeners).await?;
    shutdown.cancelled().await;
    running.stop().await;
    Ok(())
}

/// A relay that is serving.
pub struct Running {
    config: Config,
    metrics_addr: Option<SocketAddr>,
    admin: Option<admin::Started>,
    phases: Shutdown,
    background: CancellationToken,
    /// The control socket, the probes and the metrics endpoint: all are over (and hold no
    /// part of the spool, so its lock is free) when `stop` returns.
    background_tasks: TaskTracker,
    sessions: TaskTracker,
    deliveries: TaskTracker,
    server: JoinHandle<()>,
    front: Arc<Frontend>,
    relay: Arc<Relay>,
    notifier: notify::Notifier,
    health: Arc<Health>,
    socket_path: PathBuf,
    journal_fault: spool::JournalFault,
    signer: dkim::Shared,
}

/// Start the relay on listeners the caller bound: open the spool (recovering what it holds),
/// start delivery, the control socket, the metrics endpoint, the review page and the SMTP
/// front door.
pub async fn start(config: Config, listeners: Vec<TcpListener>) -> Result<Running, RunError> {
    let spool = Arc::new(Spool::open(&config.spool.dir, config.spool.sync)?);
    let journal_fault = spool.journal_fault();
    // Before any session can be writing a temporary file into the spool.
    match spool.paths().clean() {
        Ok(0) => {}
        Ok(n) => info!(removed = n, "removed crash leftovers from the spool"),
        Err(e) => warn!(error = %e, "cannot clean the spool"),
    }
    let upstream = Arc::new(Upstream::from_config(&config)?);
    let socket_path = spool.paths().control_socket();
    let control = control::listen(&socket_path)
        .map_err(|source| RunError::Control { path: socket_path.display().to_string(), source })?;
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(listen(addr, MIN_BACKLOG).map_err(|source| RunError::Bind { addr, source })?),
        None => None,
    };
    let admin_bound = admin::bind(&config.admin)?;
    let phases = Shutdown::default();
    let background = CancellationToken::new();
    let background_tasks = TaskTracker::new();
    let deliveries = TaskTracker::new();
    let policy = Arc::new(arc_swap::ArcSwap::from_pointee(message::decide::Policy::from_config(&config.policy)));
    let signer: dkim::Shared = Arc::new(arc_swap::ArcSwap::from_pointee(dkim::Signer::from_config(&config.dkim)?));
    let deliverer = delivery::start(
        spool.clone(),
        upstream.clone(),
        DeliveryConfig { dkim: signer.clone(), ..DeliveryConfig::from_config(&config) },
        policy.clone(),
        phases.clone(),
        deliveries.clone(),
    );
    let breaker = breaker::Breaker::new(config.policy.breaker.redis_url.as_deref());
    let breaker_control = breaker::Control { breaker: breaker.clone(), policy: policy.clone() };
    background_tasks.spawn(breaker_control.clone().watch_tripped(background.clone()));
    background_tasks.spawn(control::serve(control, deliverer.clone(), breaker_control.clone(), background.clone()));
    // The page stops with the front door, at the start of shutdown.
    let review = admin::Live::new(deliverer.clone(), breaker_control.clone());
    let admin = admin_bound.map(|bound| bound.serve(review, phases.soft.clone()));
    let notifier = notify::Notifier::start(&config, spool.clone(), deliverer.clone());
    // A person deleting a held message is a rejection after the 250: its sender (and the
    // admins) are told it will not be delivered.
    let told = notifier.clone();
    deliverer.on_held_deleted(Box::new(move |meta, head| {
        let event = notify::Event::about(notify::EventKind::Rejected { after_accept: true }, meta);
        told.event(event.with_subject_of(head));
    }));
    let redaction = Redaction(config.log.redact_addresses);
    let budget = smtp::data_budget(&config);
    let relay = Relay::new(config.server.hostname.clone(), policy, spool.clone(), deliverer, redaction, budget.clone());
    let relay = Arc::new(relay.with_notifier(notifier.clone()).with_dkim(signer.clone()).with_breaker(breaker.clone()));
    let front = Arc::new(Frontend::new(&config, relay.clone(), budget)?);
    let health = Arc::new(Health::default());
    health.watch_notes(move || breaker.readiness_notes());
    if let Some(status) = upstream.relay_status() {
        health.watch_relay(move || status.current().map(|r| r.text));
    }
    background_tasks.spawn(probe(spool, upstream, health.clone(), background.clone()));
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(listener) = metrics_listener {
        background_tasks.spawn(http::serve(listener, health.clone(), background.clone()));
    }
    for addr in listeners.iter().filter_map(|l| l.local_addr().ok()) {
        info!(%addr, "listening");
    }
    if let Some(addr) = metrics_addr {
        info!(%addr, "metrics and health on http://{addr}/metrics, /healthz, /readyz");
    }
    let sessions = TaskTracker::new();
    let server = tokio::spawn(smtp::serve(listeners, front.clone(), phases.clone(), sessions.clone()));
    health.set_listening(true);
    Ok(Running {
        config,
        metrics_addr,
        admin,
        phases,
        background,
        background_tasks,
        sessions,
        deliveries,
        server,
        front,
        relay,
        notifier,
        health,
        socket_path,
        journal_fault,
        signer,
    })
}

/// Check the spool and the upstream every few seconds for `/readyz`.
async fn probe(spool: Arc<Spool>, upstream: Arc<Upstream>, health: Arc<Health>, stop: CancellationToken) {
    loop {
        let check = async {
            health.set_spool_writable(spool.probe().await);
            if upstream.probe().await {
                health.upstream_reached(chrono::Utc::now().timestamp_millis());
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = check => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

impl Running {
    /// The switch that makes the spool's journal appends fail, as on a full disk (tests).
    pub fn journal_fault(&self) -> spool::JournalFault {
        self.journal_fault.clone()
    }

    /// The notifier, to tell the sender, the admins and the webhook about an event.
    pub fn notifier(&self) -> notify::Notifier {
        self.notifier.clone()
    }

    /// The metrics endpoint's address, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The review page's address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }

    /// Apply a new, validated configuration's `[policy]`, `[access]` and `[dkim]` (keys read
    /// again) to the messages and sessions that start from now on; sessions already open go on
    /// undisturbed. The review page's token is read again (a new one ends its sessions).
    /// Changes to other sections need a restart, and are named in the log.
    pub fn reload(&mut self, new: Config) {
        let old = &self.config;
        let restart: Vec<&str> = [
            ("server", old.server != new.server),
            ("upstream", old.upstream != new.upstream),
            ("spool", old.spool != new.spool),
            ("hold", old.hold != new.hold),
            ("log", old.log != new.log),
            ("metrics", old.metrics != new.metrics),
            ("notify", old.notify != new.notify),
            ("admin.listen", old.admin.listen != new.admin.listen),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        self.relay.set_policy(message::decide::Policy::from_config(&new.policy));
        match dkim::Signer::from_config(&new.dkim) {
            Ok(signer) => self.signer.store(Arc::new(signer)),
            Err(e) => warn!(error = %e, "DKIM keys not reloaded; the running keys stay in effect"),
        }
        self.front.reload_access(&new.access);
        if old.policy.breaker.redis_url != new.policy.breaker.redis_url {
            warn!("policy.breaker.redis_url changed and takes effect only at restart");
        }
        self.reload_admin_token(&new.admin);
        let policy_changed = old.policy != new.policy;
        let access_changed = old.access != new.access;
        info!(policy_changed, access_changed, "configuration reloaded");
        if !restart.is_empty() {
            warn!(sections = restart.join(", "), "these sections changed and take effect only at restart");
        }
        let (server, upstream, spool, log, metrics) =
            (old.server.clone(), old.upstream.clone(), old.spool.clone(), old.log.clone(), old.metrics.clone());
        let (hold, notify) = (old.hold.clone(), old.notify.clone());
        let admin = config::AdminConfig { listen: old.admin.listen, token_file: new.admin.token_file.clone() };
        self.config = Config { server, upstream, spool, log, metrics, hold, notify, admin, ..new };
    }

    /// Read the review page's token again, if the page runs.
    fn reload_admin_token(&self, new: &config::AdminConfig) {
        let (Some(page), Some(path)) = (&self.admin, &new.token_file) else { return };
        match admin::Token::read(path) {
            Ok(token) => {
                if page.auth.set_token(token) {
                    info!("review page: new token, every session ended");
                }
            }
            Err(e) => warn!(error = %e, "review page: token not reloaded, the previous one stays"),
        }
    }

    /// Shut down in two phases: stop accepting and close idle sessions; let transactions and
    /// deliveries in progress finish within `server.shutdown_grace`; then stop the rest
    /// (undelivered mail stays spooled).
    pub async fn stop(self) {
        info!("shutting down: no new connections, finishing transactions and deliveries in progress");
        self.health.set_listening(false);
        self.phases.soft.cancel();
        let _ = self.server.await;
        self.sessions.close();
        self.deliveries.close();
        let grace = self.config.server.shutdown_grace;
        let drained = tokio::time::timeout(grace.0, async {
            self.sessions.wait().await;
            self.deliveries.wait().await;
        });
        if drained.await.is_err() {
            info!(grace = %grace, "grace period over, stopping what is left");
            self.phases.hard.cancel();
            self.sessions.wait().await;
            self.deliveries.wait().await;
        }
        // Sessions are over: spool the notices they caused, try the webhook posts once.
        self.notifier.stop().await;
        self.background.cancel();
        self.background_tasks.close();
        if tokio::time::timeout(BACKGROUND_STOP, self.background_tasks.wait()).await.is_err() {
            warn!("the control socket, probes or metrics endpoint did not stop in time");
        }
        let _ = std::fs::remove_file(&self.socket_path);
        info!("stopped");
    }
}
