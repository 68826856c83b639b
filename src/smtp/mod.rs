//! The SMTP front door: listeners, the connection limits, the session state machine (pure),
//! the connection loop (the only inbound socket code), replies, TLS and AUTH.
//!
//! Bytes flow listener -> [`conn`] -> [`session::Session`] -> [`Intake::accept`], which stores
//! the message and returns the reply for the final dot.

pub mod auth;
pub mod conn;
mod data;
pub mod limit;
mod line;
pub mod reply;
pub mod session;
pub mod space;
pub mod tls;
pub mod trace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::config::{AccessConfig, Config, ServerConfig};
use crate::shutdown::Shutdown;
use crate::spool::Spill;
use auth::{PasswordChecks, Users};
use limit::PerClient;
use reply::Reply;
use session::{Incoming, SessionParams};
use space::FreeSpace;

/// Message data a transaction may hold in memory; beyond it, what arrives is written to a
/// spill file as it comes.
pub const SPILL_AT: usize = 128 * 1024;
/// What a transaction reserves of `server.max_data_in_memory` at DATA: [`SPILL_AT`], plus
/// what one read may add before it is spilled and the copy the intake makes.
pub const DATA_RESERVATION: u32 = 192 * 1024;

/// A received message's bytes: in memory, or written to a spill file as they arrived.
#[derive(Debug)]
pub enum Body {
    /// The whole message.
    Memory(Vec<u8>),
    /// The whole message, on disk.
    Spilled(Spill),
}

/// Where a received message goes: stored durably, then answered.
pub trait Intake: Send + Sync {
    /// Take the message; the reply is what the client gets for its final dot.
    fn accept(&self, incoming: Incoming, body: Body) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>>;

    /// A new file to spill a large message into while it arrives.
    fn spill(&self) -> Pin<Box<dyn Future<Output = std::io::Result<Spill>> + Send + '_>>;
}

/// The access rules a new session starts with; replaced as a whole on reload.
#[derive(Debug)]
pub struct Access {
    /// Limits and relay rules.
    pub params: Arc<SessionParams>,
    /// Accounts for AUTH.
    pub users: Users,
}

impl Access {
    /// The rules of `[access]` under the limits of `[server]`.
    pub fn new(server: &ServerConfig, access: &AccessConfig, tls_available: bool) -> Access {
        let users = Users::new(&access.users);
        let params = SessionParams {
            hostname: server.hostname.clone(),
            max_message_size: usize::try_from(server.max_message_size.0).unwrap_or(usize::MAX),
            max_recipients: server.max_recipients,
            tls_available,
            relay_networks: access.relay_networks.clone(),
            require_auth: access.require_auth,
            allow_plaintext_auth: access.allow_plaintext_auth,
            auth_enabled: !users.is_empty(),
        };
        Access { params: Arc::new(params), users }
    }
}

/// Everything the listeners and sessions share.
pub struct Frontend {
    server: ServerConfig,
    access: ArcSwap<Access>,
    /// STARTTLS, when `[server.tls]` is set.
    pub tls: Option<TlsAcceptor>,
    /// Where messages go.
    pub intake: Arc<dyn Intake>,
    /// `server.max_data_in_memory`, in bytes.
    pub data_budget: Arc<Semaphore>,
    /// AUTH password checks, a few at a time (shared across reloads of `[access]`).
    pub password_checks: PasswordChecks,
    /// `spool.min_free` against the free space on the spool's filesystem.
    pub free_space: FreeSpace,
}

impl Frontend {
    /// Build the front door from a validated configuration; `data_budget` is
    /// `server.max_data_in_memory` (see [`data_budget`]), shared with the intake.
    pub fn new(
        config: &Config,
        intake: Arc<dyn Intake>,
        data_budget: Arc<Semaphore>,
    ) -> Result<Frontend, tls::TlsConfigError> {
        let tls = match &config.server.tls {
            Some(t) => Some(TlsAcceptor::from(tls::load_server_config(t)?)),
            None => None,
        };
        let access = Access::new(&config.server, &config.access, tls.is_some());
        let password_checks = PasswordChecks::new(PasswordChecks::default_threads(), auth::FAILURE_DELAY);
        let free_space = FreeSpace::new(&config.spool.dir, config.spool.min_free.0);
        Ok(Frontend {
            server: config.server.clone(),
            access: ArcSwap::from_pointee(access),
            tls,
            intake,
            data_budget,
            password_checks,
            free_space,
        })
    }

    /// The current access rules.
    pub fn snapshot(&self) -> Arc<Access> {
        self.access.load_full()
    }

    /// Replace the `[access]` rules for sessions that start from now on (sessions already
    /// open keep theirs).
    pub fn reload_access(&self, access: &AccessConfig) {
        self.access.store(Arc::new(Access::new(&self.server, access, self.tls.is_some())));
    }

    /// `server.idle_timeout`.
    pub fn idle_timeout(&self) -> Duration {
        self.server.idle_timeout.0
    }

    /// `server.command_timeout`.
    pub fn command_timeout(&self) -> Duration {
        self.server.command_timeout.0
    }

    /// `server.data_timeout`.
    pub fn data_timeout(&self) -> Duration {
        self.server.data_timeout.0
    }
}

/// The memory budget for message data being received (`server.max_data_in_memory`), one
/// permit a byte.
pub fn data_budget(config: &Config) -> Arc<Semaphore> {
    let bytes = usize::try_from(config.server.max_data_in_memory.0).unwrap_or(usize::MAX);
    Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS)))
}

/// Accept connections on every listener until the soft shutdown; each session runs on the
/// tracker so the caller can wait for them to drain.
pub async fn serve(listeners: Vec<TcpListener>, front: Arc<Frontend>, shutdown: Shutdown, tracker: TaskTracker) {
    let limits = Limits {
        total: Arc::new(Semaphore::new(front.server.max_connections)),
        per_client: PerClient::new(front.server.max_connections_per_client),
    };
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        let (front, shutdown, tracker, limits) = (front.clone(), shutdown.clone(), tracker.clone(), limits.clone());
        loops.spawn(accept_loop(listener, front, shutdown, tracker, limits));
    }
    while loops.join_next().await.is_some() {}
}

/// The connection limits every listener shares.
#[derive(Clone)]
struct Limits {
    /// `server.max_connections`.
    total: Arc<Semaphore>,
    /// `server.max_connections_per_client`.
    per_client: Arc<PerClient>,
}

/// Set `TCP_NODELAY` (replies go out at once) on `listener`; whether the sockets it accepts
/// have it already, as Linux copies it into them, so that accepting costs no `setsockopt`.
fn nodelay_for_accepted(listener: &TcpListener) -> bool {
    rustix::net::sockopt::set_tcp_nodelay(listener, true).is_ok() && cfg!(target_os = "linux")
}

async fn accept_loop(
    listener: TcpListener,
    front: Arc<Frontend>,
    shutdown: Shutdown,
    tracker: TaskTracker,
    limits: Limits,
) {
    let inherited = nodelay_for_accepted(&listener);
    while let Some((stream, peer)) = crate::accept::next(&shutdown.soft, "smtp", || listener.accept()).await {
        if !inherited {
            let _ = stream.set_nodelay(true);
        }
        // The per-client limit first: an address over its share hears so, whatever the total.
        let Some(slot) = limits.per_client.try_acquire(peer.ip()) else {
            debug!(client = %peer, "too many connections from this address");
            tracker.spawn(conn::refuse(stream, reply::TOO_MANY_FROM_CLIENT, front.idle_timeout()));
            continue;
        };
        match limits.total.clone().try_acquire_owned() {
            Ok(permit) => {
                let (front, shutdown) = (front.clone(), shutdown.clone());
                tracker.spawn(async move {
                    conn::handle(stream, peer, front, shutdown).await;
                    drop((permit, slot));
                });
            }
            Err(_) => {
                tracker.spawn(conn::refuse(stream, reply::TOO_MANY_CONNECTIONS, front.idle_timeout()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_session_has_nodelay_without_asking_for_it() {
        let listener = crate::listen("127.0.0.1:0".parse().unwrap(), crate::MIN_BACKLOG).unwrap();
        let inherited = nodelay_for_accepted(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        if inherited {
            assert!(accepted.nodelay().unwrap(), "the accepted socket took TCP_NODELAY from the listener");
        }
    }
}
