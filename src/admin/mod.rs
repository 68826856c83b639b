//! The review page (SPEC §10, `[admin]`): a small server-rendered web page, without
//! JavaScript, where a person sees the held messages and releases or deletes them.
//!
//! - [`auth`]: the token (constant-time compare), who is asking, the pause after a wrong token;
//! - [`session`]: browser sessions (a random id in an HttpOnly, SameSite=Strict cookie) and
//!   their table;
//! - [`csrf`]: the per-session token every form carries, and the `Sec-Fetch-Site` check;
//! - `routes`: which request gets which page or action, and the security headers;
//! - `pages`, `layout`, `format`: the HTML (maud, escaped by default), pure functions of values.
//!
//! [`serve`] runs on a listener the caller bound, over any [`HeldQueue`]: the relay's delivery
//! manager, or an in-memory queue in tests.

pub mod auth;
pub mod csrf;
pub mod form;
mod format;
mod layout;
mod pages;
mod routes;
pub mod session;

pub use auth::{Auth, Caller, MIN_TOKEN_LEN, Token, TokenError};

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::hold::HeldQueue;

/// Largest request body read (a form is a few hundred bytes); larger gets 413.
pub const MAX_BODY: usize = 8 * 1024;

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Time allowed for a request's header block, and for its body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The page's state: the queue it shows and acts on, and who may use it.
pub struct Admin<Q> {
    queue: Q,
    auth: Arc<Auth>,
}

impl<Q: HeldQueue> Admin<Q> {
    /// A page over `queue`, protected by `auth`.
    pub fn new(queue: Q, auth: Arc<Auth>) -> Admin<Q> {
        Admin { queue, auth }
    }

    /// Who may use the page (shared, so that a reload can change the token).
    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }
}

/// Serve the page on `listener` until `stop` is cancelled; connections still open then finish
/// the request in progress and close.
pub async fn serve<Q: HeldQueue>(listener: TcpListener, admin: Arc<Admin<Q>>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some((stream, peer)) = crate::accept::next(&stop, "admin", || listener.accept()).await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "admin: too many connections, closing this one");
            continue;
        };
        let (admin, stop) = (admin.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| routes::answer(req, admin.clone(), peer));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(REQUEST_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}
