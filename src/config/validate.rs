//! Checks that span several keys or need more than a type: all of them, every time.

use std::collections::HashSet;

use super::load::ConfigError;
use super::{AccessConfig, AdminConfig, Config, ServerConfig, SpoolConfig, UpstreamConfig};
use crate::message::domain::normalize_domain;
use crate::smtp::{auth, tls};

impl Config {
    /// Every cross-key problem in this configuration (an empty list when it is usable).
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        server(&self.server, &mut errors);
        access(&self.access, self.server.tls.is_some(), &mut errors);
        upstream(&self.upstream, &mut errors);
        spool(&self.spool, &mut errors);
        super::notify::validate(&self.notify, &mut errors);
        super::dkim::validate(&self.dkim, &mut errors);
        admin(&self.admin, &mut errors);
        if self.hold.max_age.0.is_zero() {
            errors.push(ConfigError::new("hold.max_age", "must be greater than 0"));
        }
        for (i, domain) in self.policy.internal_domains.iter().enumerate() {
            if normalize_domain(domain).is_none() {
                let path = format!("policy.internal_domains[{i}]");
                errors.push(ConfigError::new(path, format!("{domain:?} is not a domain name")));
            }
        }
        super::rules::validate(&self.policy.rules, &mut errors);
        super::breaker::validate(&self.policy.breaker, &mut errors);
        errors
    }
}

fn server(s: &ServerConfig, errors: &mut Vec<ConfigError>) {
    if s.listen.is_empty() {
        errors.push(ConfigError::new("server.listen", "at least one address is needed"));
    }
    let valid_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if s.hostname.is_empty() || !s.hostname.chars().all(valid_name) {
        let message = format!("{:?} is not a host name", s.hostname);
        errors.push(ConfigError::new("server.hostname", message));
    }
    for (key, value) in [
        ("server.max_message_size", s.max_message_size.0 as usize),
        ("server.max_data_in_memory", s.max_data_in_memory.0 as usize),
        ("server.max_recipients", s.max_recipients),
        ("server.max_connections", s.max_connections),
    ] {
        if value == 0 {
            errors.push(ConfigError::new(key, "must be greater than 0"));
        }
    }
    for (key, value) in [
        ("server.idle_timeout", s.idle_timeout),
        ("server.command_timeout", s.command_timeout),
        ("server.data_timeout", s.data_timeout),
    ] {
        if value.0.is_zero() {
            errors.push(ConfigError::new(key, "must be greater than 0"));
        }
    }
    if let Some(t) = &s.tls
        && let Err(e) = tls::load_server_config(t)
    {
        errors.push(ConfigError::new(e.key, e.message));
    }
}

fn access(a: &AccessConfig, have_tls: bool, errors: &mut Vec<ConfigError>) {
    let mut names = HashSet::new();
    for (i, user) in a.users.iter().enumerate() {
        if user.name.is_empty() {
            errors.push(ConfigError::new(format!("access.users[{i}].name"), "must not be empty"));
        } else if !names.insert(&user.name) {
            let message = format!("user {:?} is listed twice", user.name);
            errors.push(ConfigError::new(format!("access.users[{i}].name"), message));
        }
        if let Err(e) = auth::PasswordHash::parse(&user.password_hash) {
            errors.push(ConfigError::new(format!("access.users[{i}].password_hash"), e));
        }
    }
    let auth_offered = have_tls || a.allow_plaintext_auth;
    if a.require_auth && a.users.is_empty() {
        errors.push(ConfigError::new("access.require_auth", "no client could ever send: add [[access.users]]"));
    }
    if !a.users.is_empty() && !auth_offered {
        errors.push(ConfigError::new(
            "access.users",
            "AUTH is offered only after STARTTLS: set [server.tls], or access.allow_plaintext_auth = true",
        ));
    }
}

fn upstream(u: &UpstreamConfig, errors: &mut Vec<ConfigError>) {
    let mut push = |key: &str, message: &str| errors.push(ConfigError::new(key, message));
    if u.host.is_some() && u.directory.is_some() {
        push("upstream.directory", "set either upstream.directory or upstream.host, not both");
    }
    if u.host.as_deref().is_some_and(|h| h.trim().is_empty()) {
        push("upstream.host", "must not be empty");
    }
    if u.password.is_some() && u.password_file.is_some() {
        push("upstream.password", "set either password or password_file, not both");
    }
    let has_password = u.password.is_some() || u.password_file.is_some();
    if u.username.is_some() != has_password {
        push("upstream.username", "username and a password (or password_file) go together");
    }
    if u.host.is_none() {
        for (key, set) in [
            ("upstream.port", u.port.is_some()),
            ("upstream.username", u.username.is_some()),
            ("upstream.ca_file", u.ca_file.is_some()),
        ] {
            if set {
                push(key, "applies only to an SMTP upstream (set upstream.host)");
            }
        }
    }
    if let Some(path) = &u.password_file
        && let Err(e) = std::fs::read_to_string(path)
    {
        push("upstream.password_file", &format!("cannot read {}: {e}", path.display()));
    }
    if let Some(path) = &u.ca_file
        && let Err(e) = std::fs::read(path)
    {
        push("upstream.ca_file", &format!("cannot read {}: {e}", path.display()));
    }
    if u.max_connections == 0 {
        push("upstream.max_connections", "must be greater than 0");
    }
    if u.timeout.0.is_zero() {
        push("upstream.timeout", "must be greater than 0");
    }
}

fn spool(s: &SpoolConfig, errors: &mut Vec<ConfigError>) {
    if s.retry.is_empty() {
        errors.push(ConfigError::new("spool.retry", "at least one interval is needed"));
    }
    for (i, d) in s.retry.iter().enumerate() {
        if d.0.is_zero() {
            errors.push(ConfigError::new(format!("spool.retry[{i}]"), "must be greater than 0"));
        }
    }
}

fn admin(a: &AdminConfig, errors: &mut Vec<ConfigError>) {
    match (&a.listen, &a.token_file) {
        (Some(_), None) => errors.push(ConfigError::new("admin.token_file", "required when admin.listen is set")),
        (_, Some(path)) => {
            if let Err(e) = crate::admin::Token::read(path) {
                errors.push(ConfigError::new("admin.token_file", e.to_string()));
            }
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::errors_in as errors;

    #[test]
    fn cross_key_errors_are_all_reported() {
        let errs = errors(
            "[server]\nmax_recipients = 0\nhostname = \"bad name\"\ndata_timeout = \"0s\"\n\
             [upstream]\nhost = \"relay\"\ndirectory = \"out\"\nusername = \"u\"\n\
             [spool]\nretry = []\n[policy]\ninternal_domains = [\"ex ample.com\"]\n\
             [access]\nrequire_auth = true\n",
        );
        let joined = errs.join("\n");
        for needle in [
            "server.max_recipients: must be greater than 0",
            "server.hostname:",
            "server.data_timeout: must be greater than 0",
            "upstream.directory: set either",
            "upstream.username: username and a password",
            "spool.retry: at least one",
            "policy.internal_domains[0]:",
            "access.require_auth:",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn users_need_a_valid_hash_and_a_way_to_be_offered_auth() {
        let errs = errors("[[access.users]]\nname = \"app\"\npassword_hash = \"plaintext\"\n");
        let joined = errs.join("\n");
        assert!(joined.contains("access.users[0].password_hash:"), "{joined}");
        assert!(joined.contains("access.users: AUTH is offered only after STARTTLS"), "{joined}");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let errs = errors("[server.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n");
        assert!(errs.iter().any(|e| e.starts_with("server.tls.cert:")), "{errs:?}");
    }

    #[test]
    fn the_admin_page_needs_a_readable_long_enough_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let listen = "[admin]\nlisten = \"127.0.0.1:9326\"\n";
        assert_eq!(errors(listen), ["admin.token_file: required when admin.listen is set"]);
        let cases = [
            (file("empty", " \n"), "admin.token_file: the token in"),
            (file("short", "0123456789abcde\n"), "is 15 characters long; at least 16 are needed"),
            ("/nonexistent/token".to_string(), "admin.token_file: cannot read /nonexistent/token:"),
        ];
        for (path, needle) in cases {
            let errs = errors(&format!("{listen}token_file = \"{path}\"\n"));
            assert!(errs.len() == 1 && errs[0].contains(needle), "{path}: {errs:?}");
        }
        let good = file("good", "  0123456789abcdef\n");
        assert_eq!(errors(&format!("{listen}token_file = \"{good}\"\n")), Vec::<String>::new());
    }
}
