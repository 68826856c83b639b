//! Which request gets which page or action, who may have it, and the headers every answer
//! carries. Actions answer `303 See Other` to the list with the result in the query
//! (Post/Redirect/Get), so a reload never repeats them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use maud::Markup;
use tracing::{info, warn};

use super::auth::{Caller, Identified};
use super::csrf;
use super::form::Form;
use super::layout::{Notice, STYLESHEET, STYLESHEET_PATH, Tone};
use super::session::{clear_cookie, is_https, set_cookie};
use super::{Admin, MAX_BODY, REQUEST_TIMEOUT, pages};
use crate::hold::{HeldQueue, HoldError, HoldOutcome, ReleaseAs};
use crate::queue_id::QueueId;

type Answer = Response<Full<Bytes>>;

/// The policy every answer carries: nothing but our own stylesheet loads, forms post only to
/// us, no frame may hold the page, nothing is cached or sent as a referrer.
const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Answer one request.
pub(super) async fn answer<Q: HeldQueue>(
    req: Request<Incoming>,
    admin: Arc<Admin<Q>>,
    peer: SocketAddr,
) -> Result<Answer, Infallible> {
    let mut response = route(req, &admin, peer).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

async fn route<Q: HeldQueue>(req: Request<Incoming>, admin: &Admin<Q>, peer: SocketAddr) -> Answer {
    let now = Instant::now();
    let method = req.method().clone();
    match (&method, req.uri().path()) {
        (&Method::GET, STYLESHEET_PATH) => return content(StatusCode::OK, "text/css; charset=utf-8", STYLESHEET),
        (&Method::GET, "/favicon.ico") => return text(StatusCode::NOT_FOUND, "not found\n"),
        (&Method::GET, "/login") => {
            return match admin.auth.identify(req.headers(), now).await {
                Identified::Caller(_) => redirect("/", ""),
                _ => html(StatusCode::OK, pages::login(None)),
            };
        }
        (&Method::POST, "/login") => return login(req, admin, peer, now).await,
        _ => {}
    }
    let caller = match admin.auth.identify(req.headers(), now).await {
        Identified::Caller(caller) => caller,
        Identified::Nobody if method == Method::GET => return redirect("/login", ""),
        Identified::Nobody => {
            let again = "Your session has ended: log in again. Nothing was done.";
            return html(StatusCode::UNAUTHORIZED, pages::login(Some(again)));
        }
        Identified::WrongToken => {
            warn!(client = %peer, "review page: wrong bearer token");
            let mut response = text(StatusCode::UNAUTHORIZED, "wrong token\n");
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    };
    match method {
        Method::GET => get(&req, admin, &caller).await,
        Method::POST => {
            let secure = is_https(req.headers());
            let path = req.uri().path().to_string();
            match read_form(req, &caller).await {
                Ok(form) => post(&path, &form, admin, &caller, peer, secure).await,
                Err(refused) => refused,
            }
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    }
}

/// `POST /login`: the token from the form opens a session; a wrong one is answered late.
async fn login<Q: HeldQueue>(req: Request<Incoming>, admin: &Admin<Q>, peer: SocketAddr, now: Instant) -> Answer {
    let secure = is_https(req.headers());
    if csrf::from_another_site(req.headers()) {
        return forbidden(None);
    }
    let form = match read_body(req).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    if admin.auth.check(form.get("token").unwrap_or_default()) {
        let session = admin.auth.sessions().open(now);
        info!(client = %peer, "review page: logged in");
        let mut response = redirect("/", "");
        let cookie = HeaderValue::from_str(&set_cookie(&session, secure)).expect("hex and ASCII");
        response.headers_mut().insert(header::SET_COOKIE, cookie);
        return response;
    }
    admin.auth.failed().await;
    warn!(client = %peer, "review page: wrong token at login");
    html(StatusCode::UNAUTHORIZED, pages::login(Some("That token is not right.")))
}

async fn get<Q: HeldQueue>(req: &Request<Incoming>, admin: &Admin<Q>, caller: &Caller) -> Answer {
    let csrf = match caller {
        Caller::Session(session) => Some(session.csrf.as_str()),
        Caller::Bearer => None,
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let path = req.uri().path();
    if path == "/" {
        let notice = req.uri().query().and_then(|q| notice(&Form::parse(q.as_bytes())));
        return match admin.queue.held().await {
            Ok(held) => {
                let breakers = admin.queue.tripped_breakers().await;
                html(StatusCode::OK, pages::list(&held, &breakers, now_ms, csrf, notice.as_ref()))
            }
            Err(e) => unavailable(&e, csrf),
        };
    }
    let Some((id, "")) = message_path(path) else {
        return not_found(csrf);
    };
    match admin.queue.held_message(&id).await {
        Ok(Some(message)) => html(StatusCode::OK, pages::message(&message, now_ms, csrf)),
        Ok(None) => {
            let text = format!("{id} is not held: released, deleted, or never here.");
            html(StatusCode::NOT_FOUND, pages::problem("Not held", &text, csrf))
        }
        Err(e) => unavailable(&e, csrf),
    }
}

async fn post<Q: HeldQueue>(
    path: &str,
    form: &Form,
    admin: &Admin<Q>,
    caller: &Caller,
    peer: SocketAddr,
    secure: bool,
) -> Answer {
    let csrf = match caller {
        Caller::Session(session) => Some(session.csrf.as_str()),
        Caller::Bearer => None,
    };
    if path == "/logout" {
        if let Caller::Session(session) = caller {
            admin.auth.sessions().close(&session.id);
        }
        let mut response = redirect("/login", "logged out\n");
        let cookie = HeaderValue::from_str(&clear_cookie(secure)).expect("ASCII");
        response.headers_mut().insert(header::SET_COOKIE, cookie);
        return response;
    }
    let via = if matches!(caller, Caller::Bearer) { "bearer" } else { "session" };
    let (id, outcome, done) = match message_path(path) {
        Some((id, "/release")) => {
            let Some(how) = form.get("as").map_or(Some(ReleaseAs::Explode), |v| v.parse().ok()) else {
                return text(StatusCode::BAD_REQUEST, "as: expected explode, undisclose or pass\n");
            };
            let outcome = admin.queue.release(&id, how).await;
            (id, outcome, format!("released&as={}", how.as_str()))
        }
        Some((id, "/delete")) => {
            let outcome = admin.queue.delete_held(&id).await;
            (id, outcome, "deleted".to_string())
        }
        _ => return not_found(csrf),
    };
    match outcome {
        Ok(outcome) => {
            info!(client = %peer, via, %id, action = path.rsplit('/').next(), ?outcome, "review page action");
            let done = match outcome {
                HoldOutcome::Done => done,
                HoldOutcome::NotHeld => "not-held".into(),
                HoldOutcome::NotFound => "not-found".into(),
            };
            let location = format!("/?done={done}&id={id}");
            redirect(&location, &format!("{}\n", location.trim_start_matches("/?")))
        }
        Err(e) => unavailable(&e, csrf),
    }
}

/// The notice the list shows after an action, from the query the action redirected to. Only
/// fixed texts and a valid queue id can appear.
fn notice(query: &Form) -> Option<Notice> {
    let id = QueueId::parse(query.get("id")?)?;
    Some(match query.get("done")? {
        "released" => {
            let how: ReleaseAs = query.get("as").unwrap_or("explode").parse().ok()?;
            Notice::new(Tone::Done, format!("Released {id} as {}: its copies are on their way.", how.as_str()))
        }
        "deleted" => Notice::new(Tone::Done, format!("Deleted {id}: nothing was delivered.")),
        "not-held" => Notice::new(Tone::Warn, format!("{id} was no longer held (already released): nothing done.")),
        "not-found" => Notice::new(Tone::Warn, format!("{id} is not in the queue any more: nothing done.")),
        _ => return None,
    })
}

/// `/message/ID` and what follows the id.
fn message_path(path: &str) -> Option<(QueueId, &str)> {
    let rest = path.strip_prefix("/message/")?;
    let (id, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    Some((QueueId::parse(id)?, tail))
}

/// The body of a POST as a form, after the checks a browser session's POST must pass.
async fn read_form(req: Request<Incoming>, caller: &Caller) -> Result<Form, Answer> {
    let csrf = match caller {
        Caller::Session(session) => Some(session),
        Caller::Bearer => None,
    };
    if let Some(session) = csrf
        && csrf::from_another_site(req.headers())
    {
        return Err(forbidden(Some(&session.csrf)));
    }
    let form = read_body(req).await?;
    match csrf {
        Some(session) if !csrf::form_matches(session, &form) => Err(forbidden(Some(&session.csrf))),
        _ => Ok(form),
    }
}

/// The request's body as a form: at most [`MAX_BODY`] bytes within [`REQUEST_TIMEOUT`].
async fn read_body(req: Request<Incoming>) -> Result<Form, Answer> {
    if !is_form(req.headers()) {
        return Err(text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected a form (application/x-www-form-urlencoded)\n"));
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(REQUEST_TIMEOUT, body).await {
        Ok(Ok(collected)) => Ok(Form::parse(&collected.to_bytes())),
        Ok(Err(_)) => Err(text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")),
        Err(_) => Err(text(StatusCode::REQUEST_TIMEOUT, "request body too slow\n")),
    }
}

/// A form body, or none declared (a script's empty POST).
fn is_form(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_none_or(|v| {
        v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

fn forbidden(csrf: Option<&str>) -> Answer {
    let text = "This form is out of date or did not come from this page, so nothing was done. \
                Go back, reload the page and try again.";
    html(StatusCode::FORBIDDEN, pages::problem("Refused", text, csrf))
}

fn not_found(csrf: Option<&str>) -> Answer {
    html(StatusCode::NOT_FOUND, pages::problem("Not found", "There is no such page.", csrf))
}

fn unavailable(e: &HoldError, csrf: Option<&str>) -> Answer {
    warn!(error = %e, "review page: the held queue did not answer");
    let text = format!("The held queue did not answer ({e}). Nothing was done; try again shortly.");
    html(StatusCode::SERVICE_UNAVAILABLE, pages::problem("Unavailable", &text, csrf))
}

/// `303 See Other` to `location`, with `body` for scripts that do not follow it.
fn redirect(location: &str, body: &str) -> Answer {
    let mut response = text(StatusCode::SEE_OTHER, body);
    let value = HeaderValue::from_str(location).expect("a location made of ASCII");
    response.headers_mut().insert(header::LOCATION, value);
    response
}

fn html(status: StatusCode, markup: Markup) -> Answer {
    content(status, "text/html; charset=utf-8", markup.into_string())
}

fn text(status: StatusCode, body: &str) -> Answer {
    content(status, "text/plain; charset=utf-8", body.to_string())
}

fn content(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_notices_take_only_valid_ids_and_fixed_texts() {
        let id = "0641F2A3B4C5D001";
        assert_eq!(message_path(&format!("/message/{id}")).map(|(i, t)| (i.to_string(), t)), Some((id.into(), "")));
        assert_eq!(message_path(&format!("/message/{id}/release")).unwrap().1, "/release");
        assert!(message_path("/message/../etc").is_none() && message_path("/messages").is_none());
        let notice_of = |q: &str| notice(&Form::parse(q.as_bytes())).map(|n| n.text);
        assert_eq!(
            notice_of(&format!("done=released&as=pass&id={id}")).unwrap(),
            format!("Released {id} as pass: its copies are on their way.")
        );
        assert!(notice_of(&format!("done=deleted&id={id}")).unwrap().starts_with("Deleted"));
        assert_eq!(notice_of("done=deleted&id=<script>"), None);
        assert_eq!(notice_of(&format!("done=<b>&id={id}")), None);
        assert_eq!(notice_of(&format!("done=released&as=<b>&id={id}")), None);
    }

    #[test]
    fn only_form_bodies_are_read() {
        let mut headers = HeaderMap::new();
        assert!(is_form(&headers));
        headers.insert(header::CONTENT_TYPE, "application/x-www-form-urlencoded; charset=UTF-8".parse().unwrap());
        assert!(is_form(&headers));
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_form(&headers));
    }
}
