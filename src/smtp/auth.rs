//! SMTP AUTH: password hashes (argon2, bcrypt), the user table, password checks a few at a
//! time, and SASL PLAIN/LOGIN decoding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::oneshot;
use tracing::warn;

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
        self.verify_with(password, &mut Vec::new())
    }

    /// [`PasswordHash::verify`], with argon2's memory taken from (and left in) `memory`, so a
    /// thread that checks many passwords allocates it once.
    pub fn verify_with(&self, password: &[u8], memory: &mut Vec<argon2::Block>) -> bool {
        match self {
            PasswordHash::Argon2(s) => verify_argon2(s, password, memory),
            PasswordHash::Bcrypt(s) => bcrypt::verify(password, s).unwrap_or(false),
        }
    }
}

/// What argon2's `verify_password` does, in caller-provided memory. Its own allocation of the
/// 19 MiB (zeroed, 64-byte aligned) for every check made the allocator hold ever more: 140 MiB
/// after 20 checks on one thread.
fn verify_argon2(hash: &str, password: &[u8], memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(hash) = argon2::PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else { return false };
    let (Ok(algorithm), Ok(params)) =
        (argon2::Algorithm::try_from(hash.algorithm.as_str()), argon2::Params::try_from(&hash))
    else {
        return false;
    };
    let Ok(version) = hash.version.map_or(Ok(argon2::Version::default()), argon2::Version::try_from) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let argon = Argon2::new(algorithm, version, params);
    // Every block is written before it is read, so memory left by an earlier check is fine.
    argon.hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks]).is_ok()
        // Output's equality is constant-time.
        && argon2::password_hash::phc::Output::new(&out).is_ok_and(|out| &out == expected)
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
    pub fn verify_blocking(&self, credentials: &Credentials, memory: &mut Vec<argon2::Block>) -> bool {
        let password = credentials.password.as_bytes();
        match self.users.get(&credentials.user) {
            Some(hash) => hash.verify_with(password, memory),
            None => {
                let _ = dummy_hash().verify_with(password, memory);
                false
            }
        }
    }
}

/// How long a failed AUTH waits before its 535, without holding a checker: a client guessing
/// passwords gets one guess a second per connection, and its waiting costs nothing.
pub const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// Password checks a few at a time, on a few threads of their own. Each argon2 check holds
/// 19 MiB and a core for tens of milliseconds; on tokio's blocking pool, 200 connections
/// sending wrong passwords ran 200 checks at once (11.7 GB resident). Here `threads` dedicated
/// threads run them, the others wait their turn in a queue, and each thread allocates its
/// argon2 memory once and reuses it (argon2's own allocation for every check made the
/// allocator hold ever more: 370 MiB after 600 checks, one at a time). So the memory is
/// `threads` times one check's.
#[derive(Debug)]
pub struct PasswordChecks {
    jobs: mpsc::Sender<Job>,
    failure_delay: Duration,
    gauge: Arc<Gauge>,
}

struct Job {
    users: Users,
    credentials: Credentials,
    done: oneshot::Sender<bool>,
}

#[derive(Debug, Default)]
struct Gauge {
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl PasswordChecks {
    /// `threads` checkers (at least 1); a failed check answers after `failure_delay`. The
    /// threads end when this value is dropped.
    pub fn new(threads: usize, failure_delay: Duration) -> PasswordChecks {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let gauge = Arc::new(Gauge::default());
        for _ in 0..threads.max(1) {
            let (queue, gauge) = (queue.clone(), gauge.clone());
            let spawned =
                std::thread::Builder::new().name("bccguard-auth".into()).spawn(move || checker(&queue, &gauge));
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start a password checker thread");
            }
        }
        PasswordChecks { jobs, failure_delay, gauge }
    }

    /// The checkers bccguard runs: half the cores, at least 1 and at most 4 (76 MiB of argon2
    /// memory), so a flood of wrong passwords leaves cores for the mail.
    pub fn default_threads() -> usize {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / 2).clamp(1, 4)
    }

    /// Check credentials on a checker thread, after those queued before; after a failure,
    /// wait `failure_delay` (the checker free for others) before returning.
    pub async fn check(&self, users: &Users, credentials: Credentials) -> bool {
        let (done, result) = oneshot::channel();
        let job = Job { users: users.clone(), credentials, done };
        let ok = self.jobs.send(job).is_ok() && result.await.unwrap_or(false);
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

/// One checker thread: run jobs until every sender is gone.
fn checker(queue: &Mutex<mpsc::Receiver<Job>>, gauge: &Gauge) {
    let mut memory = Vec::new();
    loop {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = job else { return };
        let running = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
        gauge.peak.fetch_max(running, Ordering::SeqCst);
        let ok = job.users.verify_blocking(&job.credentials, &mut memory);
        gauge.running.fetch_sub(1, Ordering::SeqCst);
        // The session may be gone; then nobody waits for the answer.
        let _ = job.done.send(ok);
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
        // The same memory, reused: checks stay right.
        let mut memory = Vec::new();
        for (password, ok) in [(&b"pw"[..], true), (b"wrong", false), (b"pw", true)] {
            assert_eq!(argon.verify_with(password, &mut memory), ok);
        }
        assert_eq!(memory.len(), 19 * 1024, "m = 19 MiB, allocated once");
        // Other variants, versions and costs, in memory sized for a larger one.
        for (algorithm, version) in [
            (argon2::Algorithm::Argon2i, argon2::Version::V0x10),
            (argon2::Algorithm::Argon2d, argon2::Version::V0x13),
            (argon2::Algorithm::Argon2id, argon2::Version::V0x13),
        ] {
            let params = argon2::Params::new(64, 3, 2, Some(24)).unwrap();
            let hash = Argon2::new(algorithm, version, params).hash_password(b"pw").unwrap().to_string();
            let parsed = PasswordHash::parse(&hash).unwrap();
            assert!(parsed.verify_with(b"pw", &mut memory), "{hash}");
            assert!(!parsed.verify_with(b"pW", &mut memory), "{hash}");
        }
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
    async fn concurrent_checks_never_exceed_the_checkers() {
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
    async fn a_failed_check_waits_without_holding_its_checker() {
        let users = bcrypt_users(1);
        let checks = Arc::new(PasswordChecks::new(1, Duration::from_secs(30)));
        let failing = {
            let (checks, users) = (checks.clone(), users.clone());
            tokio::spawn(async move { checks.check(&users, creds("u0", "wrong")).await })
        };
        // With the single checker held through the delay, this check would wait 30 s.
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
