//! Delivery: the upstream transports (a directory, or an SMTP relay through the pipelining
//! client), the queue manager that schedules attempts and retries, and bounces.
//!
//! After the spool has a message, the manager runs *passes* over it: each due transaction's
//! copy is built (header block + shared body) and sent; outcomes are journaled; failures
//! bounce; a finished message leaves the spool.
//!
//! Who uses whom (no circle): `manager` carries out `schedule` (pure: time is a parameter)
//! and runs `pass`; `pass` uses `schedule`, `journal`, `dsn` and the transports, and hands
//! any bounce it spooled back to the manager; `config` and `outcome` are shared values.

pub mod client;
mod config;
pub mod directory;
pub mod dsn;
mod held;
mod journal;
mod manager;
pub mod outcome;
mod pass;
mod refusals;
pub mod reply;
mod schedule;
pub mod smtp;

use bytes::Bytes;

pub use config::DeliveryConfig;
pub use manager::{Deliverer, ManagerStopped, start};
pub use outcome::Outcome;
pub use refusals::RelayStatus;

use crate::config::{Config, UpstreamKind};
use crate::queue_id::QueueId;
use crate::spool::content::Content;
use directory::DirectoryUpstream;
use smtp::{SmtpSetupError, SmtpUpstream};

/// One copy to send: its header block, and the body it shares with every other copy.
#[derive(Clone, Debug)]
pub struct Copy {
    /// The copy's header block, empty line included.
    pub head: Bytes,
    /// The message's body (in memory, or a region of its spool file).
    pub body: Content,
    /// Whether any byte is not ASCII (for `BODY=8BITMIME`).
    pub eight_bit: bool,
}

/// Where copies go.
pub enum Upstream {
    /// `.eml` files in a directory.
    Directory(DirectoryUpstream),
    /// An SMTP relay.
    Smtp(SmtpUpstream),
}

/// Why the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The outbox directory could not be created.
    #[error("cannot use the outbox directory {path}: {source}")]
    Outbox {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The SMTP settings are unusable.
    #[error(transparent)]
    Smtp(#[from] SmtpSetupError),
}

impl Upstream {
    /// The upstream `[upstream]` describes.
    pub fn from_config(config: &Config) -> Result<Upstream, UpstreamError> {
        match config.upstream.kind() {
            UpstreamKind::Directory(dir) => DirectoryUpstream::open(&dir)
                .map(Upstream::Directory)
                .map_err(|source| UpstreamError::Outbox { path: dir.display().to_string(), source }),
            UpstreamKind::Smtp(_) => Ok(Upstream::Smtp(SmtpUpstream::from_config(config)?)),
        }
    }

    /// `host:port` of an SMTP relay; empty for the directory.
    pub fn remote(&self) -> String {
        match self {
            Upstream::Directory(_) => String::new(),
            Upstream::Smtp(s) => s.describe(),
        }
    }

    /// Whether an SMTP upstream refuses the relay (none for the directory).
    pub fn relay_status(&self) -> Option<std::sync::Arc<RelayStatus>> {
        match self {
            Upstream::Directory(_) => None,
            Upstream::Smtp(s) => Some(s.status()),
        }
    }

    /// Whether the upstream can be reached now: the outbox takes a file, or the relay accepts
    /// a TCP connection within 5 seconds.
    pub async fn probe(&self) -> bool {
        match self {
            Upstream::Directory(d) => d.probe().await,
            Upstream::Smtp(s) => s.probe().await,
        }
    }

    /// Deliver one copy to `rcpts` (envelope index, address): one outcome per recipient, in
    /// order.
    pub async fn send(&self, id: &QueueId, sender: &str, rcpts: &[(usize, &str)], copy: &Copy) -> Vec<Outcome> {
        match self {
            Upstream::Directory(d) => d.send(id, sender, rcpts, copy).await,
            Upstream::Smtp(s) => {
                let addresses: Vec<&str> = rcpts.iter().map(|(_, a)| *a).collect();
                let started = std::time::Instant::now();
                let outcomes = s.send(sender, &addresses, copy).await;
                crate::metrics::metrics().upstream_latency.observe(started.elapsed().as_secs_f64());
                outcomes
            }
        }
    }
}
