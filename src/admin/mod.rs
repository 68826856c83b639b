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
mod live;
mod pages;
mod routes;
pub mod session;

pub use live::Live;

pub use auth::{Auth, Caller, MIN_TOKEN_LEN, Token, TokenError};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::AdminConfig;
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

/// Why the page could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `admin.listen` could not be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// `admin.token_file` could not be read, or holds no usable token.
    #[error("admin.token_file: {0}")]
    Token(#[from] TokenError),
    /// `admin.listen` is set without `admin.token_file` (validation refuses this).
    #[error("admin.token_file: required when admin.listen is set")]
    NoToken,
}

/// A page that is serving.
#[derive(Clone, Debug)]
pub struct Started {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Who may use it: [`Auth::set_token`] changes the token (SIGHUP).
    pub auth: Arc<Auth>,
}

/// The page's listener, bound, and its token, read: what can fail is done before anything
/// else of the relay starts.
#[derive(Debug)]
pub struct Bound {
    listener: TcpListener,
    auth: Arc<Auth>,
}

/// Read `admin.token_file` and bind `admin.listen`: `None` when `admin.listen` is unset.
pub fn bind(config: &AdminConfig) -> Result<Option<Bound>, StartError> {
    let Some(addr) = config.listen else { return Ok(None) };
    let token = Token::read(config.token_file.as_deref().ok_or(StartError::NoToken)?)?;
    let listener = crate::listen(addr, crate::MIN_BACKLOG).map_err(|source| StartError::Bind { addr, source })?;
    Ok(Some(Bound { listener, auth: Arc::new(Auth::new(token)) }))
}

impl Bound {
    /// Serve the page over `queue` until `stop` is cancelled.
    pub fn serve<Q: HeldQueue>(self, queue: Q, stop: CancellationToken) -> Started {
        let fallback = SocketAddr::from(([0, 0, 0, 0], 0));
        let addr = self.listener.local_addr().unwrap_or(fallback);
        tokio::spawn(serve(self.listener, Arc::new(Admin::new(queue, self.auth.clone())), stop));
        info!(%addr, "review page on http://{addr}/");
        Started { addr, auth: self.auth }
    }
}

/// [`bind`] and [`Bound::serve`] at once.
pub fn start<Q: HeldQueue>(
    config: &AdminConfig,
    queue: Q,
    stop: CancellationToken,
) -> Result<Option<Started>, StartError> {
    Ok(bind(config)?.map(|bound| bound.serve(queue, stop)))
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
