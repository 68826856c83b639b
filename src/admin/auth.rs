//! Who may use the review page: the token from `admin.token_file` (compared in constant
//! time), the browser sessions a login opens, and the pause after a wrong token.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use super::session::{Session, Sessions};

/// The shortest token accepted, in characters: a token is the only secret between the
/// network and every held message, so it must not be guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// How long a wrong token (login form or bearer) is answered late. Wrong tokens are answered
/// one at a time, so guessing goes at most this fast whatever the number of connections.
pub const FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error("the token in {path} is empty")]
    Empty {
        /// The file.
        path: String,
    },
    /// The token is shorter than [`MIN_TOKEN_LEN`].
    #[error("the token in {path} is {len} characters long; at least {MIN_TOKEN_LEN} are needed")]
    Short {
        /// The file.
        path: String,
        /// Its length in characters.
        len: usize,
    },
}

/// The review page's login token. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// The token in `path`, surrounding whitespace (a final newline) removed.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Unreadable { path: path.display().to_string(), source })?;
        Token::checked(&text, &path.display().to_string())
    }

    /// `text` (trimmed) as a token, if it is long enough; `origin` names it in errors.
    pub fn checked(text: &str, origin: &str) -> Result<Token, TokenError> {
        let token = text.trim();
        match token.chars().count() {
            0 => Err(TokenError::Empty { path: origin.into() }),
            len if len < MIN_TOKEN_LEN => Err(TokenError::Short { path: origin.into(), len }),
            _ => Ok(Token(token.to_string())),
        }
    }

    /// Whether `given` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A browser with a session cookie; its POSTs must carry the session's CSRF token.
    Session(Session),
    /// A script with `Authorization: Bearer TOKEN` (browsers never send it on their own, so
    /// it needs no CSRF token).
    Bearer,
}

/// What the request's credentials showed.
#[derive(Debug, PartialEq, Eq)]
pub enum Identified {
    /// A valid session or bearer token.
    Caller(Caller),
    /// No credentials, or a session that ended.
    Nobody,
    /// A wrong bearer token (already paused for).
    WrongToken,
}

/// The token in force and the sessions it opened; shared by every connection, and kept by
/// the relay so that SIGHUP can change the token.
#[derive(Debug)]
pub struct Auth {
    token: ArcSwap<Token>,
    sessions: Sessions,
    failures: tokio::sync::Mutex<()>,
}

impl Auth {
    /// Accept `token`.
    pub fn new(token: Token) -> Auth {
        Auth { token: ArcSwap::from_pointee(token), sessions: Sessions::default(), failures: Default::default() }
    }

    /// Accept `token` from now on. A different token ends every session; whether it was
    /// different.
    pub fn set_token(&self, token: Token) -> bool {
        let changed = **self.token.load() != token;
        if changed {
            self.token.store(Arc::new(token));
            self.sessions.clear();
        }
        changed
    }

    /// Whether `given` is the token in force.
    pub fn check(&self, given: &str) -> bool {
        self.token.load().matches(given)
    }

    /// Wait out the pause after a wrong token, one failure at a time.
    pub async fn failed(&self) {
        let _one_at_a_time = self.failures.lock().await;
        tokio::time::sleep(FAILURE_PAUSE).await;
    }

    /// The browser sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The caller the request's bearer token or session cookie names.
    pub async fn identify(&self, headers: &HeaderMap, now: Instant) -> Identified {
        if let Some(given) = bearer(headers) {
            if self.check(given) {
                return Identified::Caller(Caller::Bearer);
            }
            self.failed().await;
            return Identified::WrongToken;
        }
        match super::session::cookie(headers).and_then(|id| self.sessions.find(id, now)) {
            Some(session) => Identified::Caller(Caller::Session(session)),
            None => Identified::Nobody,
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_long_enough_and_never_shown() {
        let token = Token::checked("  0123456789abcdef\n", "t").unwrap();
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeF"));
        assert!(!token.matches("0123456789abcde"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "Token(..)");
        assert!(matches!(Token::checked("\n", "t"), Err(TokenError::Empty { .. })));
        assert!(matches!(Token::checked("short", "t"), Err(TokenError::Short { len: 5, .. })));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn a_new_token_ends_every_session() {
        let auth = Auth::new(Token::checked("0123456789abcdef", "t").unwrap());
        let now = Instant::now();
        let session = auth.sessions().open(now);
        assert!(!auth.set_token(Token::checked("0123456789abcdef", "t").unwrap()));
        assert!(auth.sessions().find(&session.id, now).is_some(), "the same token keeps sessions");
        assert!(auth.set_token(Token::checked("fedcba9876543210", "t").unwrap()));
        assert!(auth.sessions().find(&session.id, now).is_none());
        assert!(auth.check("fedcba9876543210") && !auth.check("0123456789abcdef"));
    }
}
