//! Browser sessions: a random id in a cookie (never the token itself), kept in a small
//! in-memory table with an expiry, each with its own random CSRF token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::HeaderMap;
use hyper::header::{COOKIE, FORWARDED};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "bccguard_session";

/// How long a session lasts after login (a night's on-call shift); then the login form again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; a login beyond it ends the session closest to its end.
pub const MAX_SESSIONS: usize = 64;

/// Random bytes in a session id and in a CSRF token.
const SECRET_BYTES: usize = 32;

/// One logged-in browser.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The cookie's value: 64 hex digits.
    pub id: String,
    /// The token every form of this session carries: 64 hex digits.
    pub csrf: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

#[derive(Debug)]
struct Entry {
    csrf: String,
    expires: Instant,
}

/// The sessions in force, at most [`MAX_SESSIONS`].
#[derive(Debug, Default)]
pub struct Sessions {
    table: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// A new session lasting [`SESSION_LIFETIME`] from `now`.
    pub fn open(&self, now: Instant) -> Session {
        let session = Session { id: random_hex(), csrf: random_hex() };
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, entry| entry.expires > now);
        if table.len() >= MAX_SESSIONS
            && let Some(oldest) = table.iter().min_by_key(|(_, entry)| entry.expires).map(|(id, _)| id.clone())
        {
            table.remove(&oldest);
        }
        let entry = Entry { csrf: session.csrf.clone(), expires: now + SESSION_LIFETIME };
        table.insert(session.id.clone(), entry);
        session
    }

    /// The session with this id, if it has not ended by `now`.
    pub fn find(&self, id: &str, now: Instant) -> Option<Session> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.get(id).filter(|entry| entry.expires > now)?;
        Some(Session { id: id.to_string(), csrf: entry.csrf.clone() })
    }

    /// End the session with this id (logout).
    pub fn close(&self, id: &str) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// End every session (a new token).
    pub fn clear(&self) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Sessions held, ended or not (tests).
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `SECRET_BYTES` bytes from the operating system's generator, as hex.
fn random_hex() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    // The OS generator does not fail on any system bccguard runs on; if it ever did, no
    // session could be made safely, and the connection's task ends here.
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id in the request's `Cookie` header(s).
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value for a new session: HttpOnly (no script reads it), SameSite=Strict
/// (no other site's page sends it), Path=/, and Secure when the browser reached us over
/// HTTPS (through a proxy that says so); no Max-Age, so it ends with the browser.
pub fn set_cookie(session: &Session, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/{secure}", session.id)
}

/// The `Set-Cookie` value that removes the session cookie (logout).
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

/// Whether the browser reached the page over HTTPS: the page itself speaks plain HTTP, so
/// only a TLS-terminating proxy in front can say so (`X-Forwarded-Proto: https` or
/// `Forwarded: proto=https`). A client that fakes it only gets a cookie it cannot send back
/// over plain HTTP.
pub fn is_https(headers: &HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split([';', ',']).any(|pair| pair.trim().eq_ignore_ascii_case("proto=https")));
    forwarded_proto || forwarded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let first = sessions.open(start);
        assert_eq!(first.id.len(), 64);
        assert_ne!(first.id, first.csrf);
        assert_eq!(sessions.find(&first.id, start + SESSION_LIFETIME / 2), Some(first.clone()));
        assert_eq!(sessions.find(&first.id, start + SESSION_LIFETIME), None);
        assert_eq!(sessions.find("nope", start), None);
        for i in 0..MAX_SESSIONS {
            sessions.open(start + Duration::from_secs(i as u64 + 1));
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert_eq!(sessions.find(&first.id, start), None, "the oldest session made room");
        sessions.clear();
        assert!(sessions.is_empty());
    }

    #[test]
    fn cookies_are_read_and_written_exactly() {
        let session = Session { id: "ab".repeat(32), csrf: "cd".repeat(32) };
        let set = set_cookie(&session, false);
        assert_eq!(set, format!("bccguard_session={}; HttpOnly; SameSite=Strict; Path=/", session.id));
        assert!(set_cookie(&session, true).ends_with("; Path=/; Secure"));
        let mut headers = HeaderMap::new();
        assert_eq!(cookie(&headers), None);
        headers.append(COOKIE, "other=1".parse().unwrap());
        headers.append(COOKIE, "a=b; bccguard_session=xyz; c=d".parse().unwrap());
        assert_eq!(cookie(&headers), Some("xyz"));
    }

    #[test]
    fn https_is_seen_only_through_a_proxy_header() {
        let mut headers = HeaderMap::new();
        assert!(!is_https(&headers));
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(is_https(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(FORWARDED, "for=192.0.2.1;proto=https;by=x".parse().unwrap());
        assert!(is_https(&headers));
        headers.insert(FORWARDED, "proto=http".parse().unwrap());
        assert!(!is_https(&headers));
    }
}
