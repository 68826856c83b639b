//! `[policy.breaker]` (SPEC §9): the campaign breaker's settings and their checks.

use serde::{Deserialize, Serialize};

use super::Duration;
use super::load::ConfigError;

/// `[policy.breaker]`: off unless `leaks` is set.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Leaking messages from one key within `window` that trip the breaker; unset: off.
    pub leaks: Option<u64>,
    /// The sliding window the leaks are counted in.
    pub window: Duration,
    /// How long a tripped breaker stays tripped (unless reset).
    pub duration: Duration,
    /// What the breaker counts by: `sender` (the envelope sender), `auth_user`, or `client`
    /// (the client's address).
    pub key: BreakerKey,
    /// What later messages from a tripped key get: `hold` (stored, answered 250, released
    /// by a person) or `tempfail` (`451 4.7.1`).
    pub action: BreakerAction,
    /// `redis://host:port/db`: keep the counts in Redis, shared by every relay using it.
    /// Unset: the counts live in this relay.
    pub redis_url: Option<String>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            leaks: None,
            window: Duration::secs(3600),
            duration: Duration::secs(3600),
            key: BreakerKey::default(),
            action: BreakerAction::default(),
            redis_url: None,
        }
    }
}

/// What the breaker counts leaks by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerKey {
    /// The envelope sender (the null sender is never counted).
    #[default]
    Sender,
    /// The AUTH user (unauthenticated clients are never counted).
    AuthUser,
    /// The client's IP address.
    Client,
}

impl BreakerKey {
    /// The name used in config and output.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerKey::Sender => "sender",
            BreakerKey::AuthUser => "auth_user",
            BreakerKey::Client => "client",
        }
    }
}

/// What a tripped breaker does to later messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerAction {
    /// Store and hold for a person.
    #[default]
    Hold,
    /// Answer `451 4.7.1`; the client retries later.
    Tempfail,
}

impl BreakerAction {
    /// The name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerAction::Hold => "hold",
            BreakerAction::Tempfail => "tempfail",
        }
    }
}

/// Every problem in `[policy.breaker]`.
pub(super) fn validate(b: &BreakerConfig, errors: &mut Vec<ConfigError>) {
    if b.leaks == Some(0) {
        errors.push(ConfigError::new(
            "policy.breaker.leaks",
            "must be at least 1 (remove the key to turn the breaker off)",
        ));
    }
    for (key, value) in [("policy.breaker.window", b.window), ("policy.breaker.duration", b.duration)] {
        if value.0.is_zero() {
            errors.push(ConfigError::new(key, "must be greater than 0"));
        }
    }
    if let Some(url) = &b.redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://"))
    {
        errors.push(ConfigError::new(
            "policy.breaker.redis_url",
            format!("{url:?} must start with redis:// or rediss://"),
        ));
    }
    if b.leaks.is_none() && b.redis_url.is_some() {
        errors.push(ConfigError::new("policy.breaker.redis_url", "the breaker is off: set policy.breaker.leaks"));
    }
}
