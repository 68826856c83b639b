//! Accepting connections until a stop signal, for every listener bccguard has (SMTP, the
//! control socket, the metrics endpoint).

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Pause after a failed accept (out of file descriptors and the like) instead of spinning.
const BACKOFF: Duration = Duration::from_millis(100);

/// The next connection `accept` yields, or `None` once `stop` is cancelled. Accept errors are
/// logged (as `what`) and retried after a pause.
pub async fn next<T, F>(stop: &CancellationToken, what: &str, mut accept: impl FnMut() -> F) -> Option<T>
where
    F: Future<Output = io::Result<T>>,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = accept() => match accepted {
                Ok(connection) => return Some(connection),
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(BACKOFF).await;
                }
            },
        }
    }
}
