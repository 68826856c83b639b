//! `[notify]`: who hears about held, rejected and exploded messages and breaker trips (SPEC
//! §10), by mail notice and by webhook, and the checks on those settings.

use serde::Deserialize;

use super::Duration;
use super::load::ConfigError;
use crate::message::address;

/// `[notify]`: notices by mail and the webhook.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Send the envelope sender a notice when its message is held, rejected after the `250`,
    /// or trips the breaker. Never to the null sender, never about a notice.
    pub sender: bool,
    /// Addresses that get the same notices as the sender (the mail administrators).
    pub admins: Vec<String>,
    /// The notices' `From:` address; `postmaster@` and `server.hostname` when unset.
    pub from: Option<String>,
    /// `http://host:port/path` that gets a JSON POST for every hold, explode, undisclose,
    /// reject and breaker trip; empty for none. Only plain `http` (use a local proxy for TLS).
    pub webhook: String,
    /// Put the full sender address in webhook posts (otherwise redacted as in logs).
    pub webhook_addresses: bool,
    /// Time allowed for one webhook request, connecting included.
    pub webhook_timeout: Duration,
    /// Attempts per webhook event (the first included) before it is given up and counted.
    pub webhook_attempts: u32,
    /// Wait before the first retry of a webhook post; it doubles with each retry (at most
    /// five minutes).
    pub webhook_backoff: Duration,
    /// Events waiting for the webhook, and separately events waiting for their notices to be
    /// queued; when full, new ones are dropped (logged and counted), never waited for.
    pub queue_size: usize,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            sender: false,
            admins: Vec::new(),
            from: None,
            webhook: String::new(),
            webhook_addresses: false,
            webhook_timeout: Duration::secs(10),
            webhook_attempts: 5,
            webhook_backoff: Duration::secs(2),
            queue_size: 1000,
        }
    }
}

impl NotifyConfig {
    /// The notices' `From:` address for a relay called `hostname`.
    pub fn from_address(&self, hostname: &str) -> String {
        self.from.clone().unwrap_or_else(|| format!("postmaster@{hostname}"))
    }

    /// Whether any notice by mail is configured.
    pub fn notices(&self) -> bool {
        self.sender || !self.admins.is_empty()
    }
}

/// A webhook address split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (80 unless given).
    pub port: u16,
    /// The `Host:` header value: host and port as written.
    pub authority: String,
    /// Path and query (`/` when none).
    pub path: String,
}

impl WebhookTarget {
    /// Parse `http://host[:port][/path][?query]`; only `http`, no user info, no fragment.
    pub fn parse(url: &str) -> Result<WebhookTarget, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err("only http:// is supported; put a TLS proxy on the same host".into());
            }
            _ => return Err(format!("{url:?} must start with http://")),
        }
        let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        if url.contains('#') {
            return Err("a fragment has no meaning in a webhook URL".into());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(WebhookTarget {
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
            path: uri.path_and_query().map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        })
    }
}

/// Every problem in `[notify]`.
pub(super) fn validate(n: &NotifyConfig, errors: &mut Vec<ConfigError>) {
    for (i, admin) in n.admins.iter().enumerate() {
        if address::canonical(admin).is_none_or(|c| c != *admin) {
            let message = format!("{admin:?} is not a mail address (write it as local@domain, no name or brackets)");
            errors.push(ConfigError::new(format!("notify.admins[{i}]"), message));
        }
    }
    if let Some(from) = &n.from
        && address::canonical(from).is_none_or(|c| c != *from)
    {
        errors.push(ConfigError::new("notify.from", format!("{from:?} is not a mail address")));
    }
    if !n.webhook.is_empty()
        && let Err(e) = WebhookTarget::parse(&n.webhook)
    {
        errors.push(ConfigError::new("notify.webhook", e));
    }
    if n.webhook_attempts == 0 {
        errors.push(ConfigError::new("notify.webhook_attempts", "must be at least 1"));
    }
    if n.webhook_timeout.0.is_zero() {
        errors.push(ConfigError::new("notify.webhook_timeout", "must be greater than 0"));
    }
    if n.queue_size == 0 {
        errors.push(ConfigError::new("notify.queue_size", "must be greater than 0"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::errors_in as errors;
    use crate::config::load_str;

    #[test]
    fn defaults_send_nothing() {
        let config = load_str(Some(""), &[]).unwrap();
        assert!(!config.notify.notices());
        assert!(config.notify.webhook.is_empty());
        assert_eq!(config.notify.from_address("relay.test"), "postmaster@relay.test");
    }

    #[test]
    fn every_bad_key_is_named() {
        let errs = errors(
            "[notify]\nadmins = [\"ops@example.com\", \"Ops <ops@example.com>\", \"nobody\"]\n\
             from = \"bad\"\nwebhook = \"https://hooks.example.com/x\"\nwebhook_attempts = 0\n\
             queue_size = 0\nwebhook_timeout = \"0s\"\n",
        );
        let joined = errs.join("\n");
        for needle in [
            "notify.admins[1]:",
            "notify.admins[2]:",
            "notify.from:",
            "notify.webhook: only http:// is supported",
            "notify.webhook_attempts:",
            "notify.queue_size:",
            "notify.webhook_timeout:",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert!(!joined.contains("notify.admins[0]"), "{joined}");
        assert!(errors("[notify]\nsurprise = true\n").join("").contains("surprise"));
    }

    #[test]
    fn webhook_urls() {
        let t = WebhookTarget::parse("http://127.0.0.1:8080/hooks/bcc?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.authority.as_str()), ("127.0.0.1", 8080, "127.0.0.1:8080"));
        assert_eq!(t.path, "/hooks/bcc?x=1");
        let t = WebhookTarget::parse("http://hooks.internal").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("hooks.internal", 80, "/"));
        let t = WebhookTarget::parse("http://[::1]:9000/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        for bad in ["ftp://x/", "hooks.internal/x", "http://user:pw@x/", "http://x/#frag", "http:///x", ""] {
            assert!(WebhookTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
