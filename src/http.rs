//! The metrics and health endpoint (`[metrics] listen`): `/metrics` (OpenMetrics text),
//! `/healthz` (the process is alive), `/readyz` (listening, spool writable, upstream reachable
//! recently; 503 otherwise, with the failing checks named).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::{Health, metrics};

/// Serve until `stop` is cancelled.
pub async fn serve(listener: TcpListener, health: Arc<Health>, stop: CancellationToken) {
    while let Some((stream, _)) = crate::accept::next(&stop, "metrics", || listener.accept()).await {
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, health.clone()));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

async fn answer(req: Request<Incoming>, health: Arc<Health>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let value = content_type.parse().expect("a valid header value");
        response.headers_mut().insert(CONTENT_TYPE, value);
        response
    };
    let plain = "text/plain; charset=utf-8";
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics().encode())
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, plain, "ok\n".into()),
        (&Method::GET, "/readyz") => {
            let (ready, checks) = health.checks(chrono::Utc::now().timestamp_millis());
            let mut body: String = checks
                .iter()
                .map(|c| match &c.failing {
                    None => format!("{}: ok\n", c.name),
                    Some(why) if why.is_empty() => format!("{}: FAILING\n", c.name),
                    Some(why) => format!("{}: FAILING: {}\n", c.name, one_line(why)),
                })
                .collect();
            for note in health.notes() {
                body.push_str(&one_line(&note));
                body.push('\n');
            }
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            text(status, plain, body)
        }
        _ => text(StatusCode::NOT_FOUND, plain, "not found: try /metrics, /healthz or /readyz\n".into()),
    })
}

/// Text on one line, control characters replaced.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}
