//! SMTP AUTH: password hashes (argon2, bcrypt), the user table, and SASL PLAIN/LOGIN decoding.

use std::collections::HashMap;
use std::sync::Arc;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

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

    /// Check credentials on a blocking thread. An unknown user costs as much as a known one.
    pub async fn verify(&self, credentials: Credentials) -> bool {
        let users = self.users.clone();
        tokio::task::spawn_blocking(move || match users.get(&credentials.user) {
            Some(hash) => hash.verify(credentials.password.as_bytes()),
            None => {
                let dummy = dummy_hash();
                let _ = dummy.verify(credentials.password.as_bytes());
                false
            }
        })
        .await
        .unwrap_or(false)
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

    #[test]
    fn credentials_debug_hides_the_password() {
        let c = Credentials { user: "u".into(), password: "secret".into() };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
