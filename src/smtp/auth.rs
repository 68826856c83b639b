//! SMTP AUTH: password hashes (argon2, bcrypt), the user table, password checks a few at a
//! time, and SASL PLAIN/LOGIN decoding.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::Semaphore;

use crate::config::UserConfig;

/// A stored password hash.
#[derive(Clone, Debug)]
pub enum PasswordHash {
    /// PHC string `$argon2id$v=19$...`.
    Argon2(String),
    /// `$2b$12$...` (also `$2a$`, `$2y$`).
    Bcrypt(String),
}

impl PasswordHash {
    /// Recognize and check a hash string.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if s.starts_with("$argon2") {
            argon2::PasswordHash::new(s)
                .map(|_| PasswordHash::Argon2(s.to_string()))
                .map_err(|e| format!("not a valid argon2 hash: {e}"))
        } else if ["$2a$", "$2b$", "$2y$"].iter().any(|p| s.starts_with(p)) && s.len() == 60 {
            Ok(PasswordHash::Bcrypt(s.to_string()))
        } else {
            Err("expected an argon2 ($argon2id$...) or bcrypt ($2b$...) hash; \
                 make one with `bccguard hash-password`"
                .into())
        }
    }

    /// Whether `password` matches. Slow by design: call it off the async threads.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(s) => {
                argon2::PasswordHash::new(s).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
            }
            PasswordHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }
}

/// Hash a new password as argon2id with a random salt (for `bccguard hash-password`).
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// The accounts that may authenticate.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: Arc<HashMap<String, PasswordHash>>,
}

impl Users {
    /// The table from `[[access.users]]`; entries with bad hashes are skipped (the
    /// configuration check reports them).
    pub fn new(config: &[UserConfig]) -> Users {
        let users =
            config.iter().filter_map(|u| Some((u.name.clone(), PasswordHash::parse(&u.password_hash).ok()?))).collect();
        Users { users: Arc::new(users) }
    }

    /// Whether any account exists.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the credentials are good. Slow by design (an argon2 check takes tens of
    /// milliseconds and 19 MiB): call it through [`PasswordChecks`]. An unknown user costs as
    /// much as a known one.
    pub fn verify_blocking(&self, credentials: &Credentials) -> bool {
        let password = credentials.password.as_bytes();
        match self.users.get(&credentials.user) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = dummy_hash().verify(password);
                false
            }
        }
    }
}

/// How long a failed AUTH waits before its 535, without holding a check's permit: a client
/// guessing passwords gets one guess a second per connection, and its waiting costs nothing.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Password checks a few at a time. Each argon2 check holds 19 MiB and a core for tens of
/// milliseconds; without a bound, 200 connections sending wrong passwords at once ran 200
/// checks at once (11.7 GB resident). Checks beyond the permits wait their turn.
#[derive(Debug)]
pub struct PasswordChecks {
    permits: Arc<Semaphore>,
    failure_delay: Duration,
    gauge: Arc<Gauge>,
}

#[derive(Debug, Default)]
struct Gauge {
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl PasswordChecks {
    /// At most `permits` checks at once; a failed one answers after `failure_delay`.
    pub fn new(permits: usize, failure_delay: Duration) -> PasswordChecks {
        PasswordChecks { permits: Arc::new(Semaphore::new(permits.max(1))), failure_delay, gauge: Arc::default() }
    }

    /// The permits bccguard uses: half the cores, at least 1 and at most 4 (76 MiB of argon2
    /// memory), so a flood of wrong passwords leaves cores for the mail.
    pub fn default_permits() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / 2).clamp(1, 4)
    }

    /// Check credentials on a blocking thread once a permit is free; after a failure, wait
    /// `failure_delay` (the permit given back) before returning.
    pub async fn check(&self, users: &Users, credentials: Credentials) -> bool {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (users, gauge) = (users.clone(), self.gauge.clone());
        // The permit moves into the blocking task: it is given back when the check ends, even
        // if this session is dropped meanwhile.
        let ok = tokio::task::spawn_blocking(move || {
            let running = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(running, Ordering::SeqCst);
            let ok = users.verify_blocking(&credentials);
            gauge.running.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        if !ok {
            tokio::time::sleep(self.failure_delay).await;
        }
        ok
    }

    /// The most checks that ever ran at once.
    pub fn peak(&self) -> usize {
        self.gauge.peak.load(Ordering::SeqCst)
    }

    /// Checks running now.
    pub fn running(&self) -> usize {
        self.gauge.running.load(Ordering::SeqCst)
    }
}

fn dummy_hash() -> &'static PasswordHash {
    static DUMMY: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| PasswordHash::Argon2(hash_password("bccguard-dummy").expect("argon2 hashes a constant")))
}

/// A user name and password from AUTH.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity.
    pub user: String,
    /// The password, never logged.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

/// Decode a SASL response line: base64 text, or `=` for empty. `None` when it is not base64
/// or not UTF-8.
pub fn decode_response(line: &str) -> Option<String> {
    let line = line.trim();
    if line == "=" {
        return Some(String::new());
    }
    String::from_utf8(BASE64.decode(line).ok()?).ok()
}

/// Decode a PLAIN response (`authzid NUL authcid NUL password`). The authorization identity
/// must be empty or the same as the user.
pub fn decode_plain(line: &str) -> Option<Credentials> {
    let text = decode_response(line)?;
    let mut parts = text.split('\0');
    let (authz, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || user.is_empty() || !(authz.is_empty() || authz == user) {
        return None;
    }
    Some(Credentials { user: user.to_string(), password: password.to_string() })
}

/// base64 text for a LOGIN prompt.
pub fn encode_prompt(text: &str) -> String {
    BASE64.encode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses_decode() {
        let creds = decode_plain(&BASE64.encode("\0app\0s3cret")).unwrap();
        assert_eq!((creds.user.as_str(), creds.password.as_str()), ("app", "s3cret"));
        assert!(decode_plain(&BASE64.encode("app\0app\0pw")).is_some());
        assert!(decode_plain(&BASE64.encode("other\0app\0pw")).is_none());
        assert!(decode_plain(&BASE64.encode("\0\0pw")).is_none());
        assert!(decode_plain("not base64!").is_none());
        assert_eq!(decode_response("=").as_deref(), Some(""));
    }

    #[test]
    fn argon2_and_bcrypt_hashes_verify() {
        let argon = PasswordHash::parse(&hash_password("pw").unwrap()).unwrap();
        assert!(argon.verify(b"pw"));
        assert!(!argon.verify(b"wrong"));
        let bc = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        assert!(bc.verify(b"pw"));
        assert!(!bc.verify(b"pw2"));
        assert!(PasswordHash::parse("pw").is_err());
        assert!(PasswordHash::parse("$argon2id$garbage").is_err());
    }

    fn bcrypt_users(n: usize) -> Users {
        let hash = bcrypt::hash("right", 4).unwrap();
        let config: Vec<UserConfig> =
            (0..n).map(|i| UserConfig { name: format!("u{i}"), password_hash: hash.clone() }).collect();
        Users::new(&config)
    }

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_never_exceed_the_permits() {
        let users = bcrypt_users(1);
        let checks = Arc::new(PasswordChecks::new(2, Duration::ZERO));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (checks, users) = (checks.clone(), users.clone());
            let password = if i % 2 == 0 { "right" } else { "wrong" };
            tasks.spawn(async move { checks.check(&users, creds("u0", password)).await });
        }
        let mut good = 0;
        while let Some(ok) = tasks.join_next().await {
            good += usize::from(ok.unwrap());
        }
        assert_eq!(good, 8);
        assert!((1..=2).contains(&checks.peak()), "peak {}", checks.peak());
        assert_eq!(checks.running(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_check_waits_without_holding_its_permit() {
        let users = bcrypt_users(1);
        let checks = Arc::new(PasswordChecks::new(1, Duration::from_secs(30)));
        let failing = {
            let (checks, users) = (checks.clone(), users.clone());
            tokio::spawn(async move { checks.check(&users, creds("u0", "wrong")).await })
        };
        // With the single permit held through the delay, this check would wait 30 s.
        let good = tokio::time::timeout(Duration::from_secs(10), checks.check(&users, creds("u0", "right")));
        assert!(good.await.expect("not blocked by the failed check's delay"));
        assert!(!failing.is_finished(), "the failed check is still in its delay");
        failing.abort();
    }

    #[tokio::test]
    async fn a_failed_check_answers_after_the_delay() {
        let checks = PasswordChecks::new(1, Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert!(!checks.check(&bcrypt_users(1), creds("u0", "wrong")).await);
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials { user: "u".into(), password: "secret".into() };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
