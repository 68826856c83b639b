//! The configuration tree: one TOML file, every key defaulted, unknown keys refused.
//!
//! [`load`] reads the file and the `BCCGUARD__SECTION__KEY` environment overrides and reports
//! every error at once, each with its key path; [`Config::validate`] adds the checks that span
//! several keys.

mod breaker;
mod dkim;
mod load;
mod notify;
mod rules;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use breaker::{BreakerAction, BreakerConfig, BreakerKey};
pub use dkim::{DkimConfig, DkimKeyConfig, KeyAlgorithm, Unsigned};
pub use load::{ConfigError, ConfigErrors, ConfigSource, DEFAULT_PATH, load, load_str};
pub use notify::{NotifyConfig, WebhookTarget};
pub use rules::{DEFAULT_RULE, RuleConfig, shadowed};
pub use units::{ByteSize, Duration};

/// The whole configuration file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The SMTP front door.
    pub server: ServerConfig,
    /// Who may relay through bccguard.
    pub access: AccessConfig,
    /// Where accepted mail goes.
    pub upstream: UpstreamConfig,
    /// The durable queue.
    pub spool: SpoolConfig,
    /// The leak decision and what to do about a leak.
    pub policy: PolicyConfig,
    /// Held messages (`action = "hold"`): how long they wait for a person.
    pub hold: HoldConfig,
    /// Log output.
    pub log: LogConfig,
    /// Prometheus metrics and health endpoints.
    pub metrics: MetricsConfig,
    /// Notices by mail and the webhook.
    pub notify: NotifyConfig,
    /// DKIM re-signing of rewritten copies.
    pub dkim: DkimConfig,
    /// The review page for held messages.
    pub admin: AdminConfig,
}

/// `[server]`: the SMTP listener and its limits.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to listen on, e.g. `["127.0.0.1:2525"]`.
    pub listen: Vec<SocketAddr>,
    /// The name used in the greeting, in EHLO replies and in `Received:` fields.
    pub hostname: String,
    /// Largest message accepted; `SIZE=` above it gets 552 at MAIL, data above it 552 5.3.4.
    pub max_message_size: ByteSize,
    /// Memory for message data being received, across all sessions. Each transaction
    /// reserves its share at DATA (data beyond it goes to a file in the spool as it
    /// arrives); when the budget is spent, DATA gets 452 4.3.1 and the client retries.
    pub max_data_in_memory: ByteSize,
    /// Recipients per transaction; further RCPTs get 452 4.5.3.
    pub max_recipients: usize,
    /// Concurrent SMTP sessions; one more gets 421 4.7.0 and is closed.
    pub max_connections: usize,
    /// Concurrent SMTP sessions from one client address; one more gets 421 4.7.0 and is
    /// closed. 0 means no limit. Loopback and `access.relay_networks` are not exempt.
    pub max_connections_per_client: usize,
    /// How long a session may wait for the client before it is closed with 421.
    pub idle_timeout: Duration,
    /// Time allowed for one command line, from its first byte to its CRLF, however the bytes
    /// trickle in; beyond it the session is closed with 421 4.4.2.
    pub command_timeout: Duration,
    /// Time allowed for the whole message, from the 354 reply to the final dot; beyond it
    /// the session is closed with 421 4.4.2.
    pub data_timeout: Duration,
    /// On SIGTERM/SIGINT, how long transactions and deliveries in progress may take to finish.
    pub shutdown_grace: Duration,
    /// Certificate and key for STARTTLS; STARTTLS is offered only when this is set.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            hostname: "bccguard.localdomain".into(),
            max_message_size: ByteSize::mib(25),
            max_data_in_memory: ByteSize::mib(128),
            max_recipients: 1000,
            max_connections: 1000,
            max_connections_per_client: 50,
            idle_timeout: Duration::secs(300),
            command_timeout: Duration::secs(120),
            data_timeout: Duration::secs(600),
            shutdown_grace: Duration::secs(30),
            tls: None,
        }
    }
}

/// `[server.tls]`: PEM files for STARTTLS.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `[access]`: relay permission.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Client networks that may relay without authenticating.
    pub relay_networks: Vec<IpNet>,
    /// When true, every client must authenticate, whatever its address.
    pub require_auth: bool,
    /// Offer AUTH on connections without TLS (passwords then cross the network in clear).
    pub allow_plaintext_auth: bool,
    /// Accounts for SMTP AUTH.
    pub users: Vec<UserConfig>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            relay_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            require_auth: false,
            allow_plaintext_auth: false,
            users: Vec::new(),
        }
    }
}

/// One `[[access.users]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name given in AUTH.
    pub name: String,
    /// An argon2 (`$argon2id$...`) or bcrypt (`$2b$...`) hash; make one with
    /// `bccguard hash-password`.
    pub password_hash: String,
}

/// `[upstream]`: a directory (the default) or an SMTP relay.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Write one `.eml` file per recipient into this directory. The default when `host` is unset.
    pub directory: Option<PathBuf>,
    /// Host name or address of the SMTP relay to forward to.
    pub host: Option<String>,
    /// Port of the SMTP relay; defaults to 25, 587 or 465 by `tls`.
    pub port: Option<u16>,
    /// `none`, `starttls` (required, the default) or `tls` (implicit TLS).
    pub tls: UpstreamTls,
    /// Extra PEM trust anchors for the relay's certificate (beside the system's).
    pub ca_file: Option<PathBuf>,
    /// User name for AUTH at the relay.
    pub username: Option<String>,
    /// Password for AUTH at the relay (prefer `password_file`).
    pub password: Option<String>,
    /// File whose first line is the password for AUTH at the relay.
    pub password_file: Option<PathBuf>,
    /// Hard cap on simultaneous connections to the relay.
    pub max_connections: usize,
    /// Time limit for each delivery attempt, from connect to the reply after the data.
    pub timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            directory: None,
            host: None,
            port: None,
            tls: UpstreamTls::default(),
            ca_file: None,
            username: None,
            password: None,
            password_file: None,
            max_connections: 16,
            timeout: Duration::secs(60),
        }
    }
}

/// How bccguard speaks TLS to the SMTP relay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// Plain SMTP (only for a relay on the same host or a trusted network).
    None,
    /// STARTTLS, required: delivery fails if the relay does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
}

impl UpstreamTls {
    /// The conventional port for this mode.
    pub fn default_port(self) -> u16 {
        match self {
            UpstreamTls::None => 25,
            UpstreamTls::Starttls => 587,
            UpstreamTls::Tls => 465,
        }
    }
}

/// The default outbox directory of the embedded configuration.
pub const DEFAULT_OUTBOX: &str = "outbox";

/// Which upstream transport the configuration selects.
#[derive(Clone, Debug)]
pub enum UpstreamKind<'a> {
    /// One `.eml` per recipient in a directory.
    Directory(PathBuf),
    /// An SMTP relay at this host.
    Smtp(&'a str),
}

impl UpstreamConfig {
    /// The transport this section selects: SMTP when `host` is set, else the directory.
    pub fn kind(&self) -> UpstreamKind<'_> {
        match (&self.host, &self.directory) {
            (Some(host), _) => UpstreamKind::Smtp(host),
            (None, Some(dir)) => UpstreamKind::Directory(dir.clone()),
            (None, None) => UpstreamKind::Directory(DEFAULT_OUTBOX.into()),
        }
    }

    /// The relay's port: `port`, or the conventional one for `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }
}

/// `[spool]`: the durable queue.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// Directory of the queue; created if missing.
    pub dir: PathBuf,
    /// Waits between delivery attempts after a temporary failure; the last repeats.
    pub retry: Vec<Duration>,
    /// How long a copy may stay undelivered before it bounces.
    pub max_age: Duration,
    /// Free space the spool's filesystem must keep: below it (or below it plus a declared
    /// `SIZE=`), MAIL gets 452 4.3.1. 0 turns the check off.
    pub min_free: ByteSize,
    /// How new messages are made durable before 250 (see [`SpoolSync`]).
    pub sync: SpoolSync,
}

/// `spool.sync`: how new message files are made durable, in groups of the messages that
/// arrive together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolSync {
    /// One `syncfs` of the spool's filesystem per group (a lone message: fsync of its file and
    /// the directory). Fastest; on a filesystem shared with heavy writers it also waits for
    /// their data.
    #[default]
    Filesystem,
    /// An fsync per file and one of the directory per group, as Postfix-style spools do.
    File,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "spool".into(),
            retry: [60, 300, 900, 1800, 3600, 7200].map(Duration::secs).to_vec(),
            max_age: Duration::secs(5 * 24 * 3600),
            min_free: ByteSize::mib(100),
            sync: SpoolSync::default(),
        }
    }
}

/// `[policy]`: when a message leaks and what bccguard does about it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Domains (and their subdomains) whose addresses are internal.
    pub internal_domains: Vec<String>,
    /// A message leaks when it shows more distinct external addresses than this.
    pub max_visible_external: usize,
    /// What to do with a message that leaks.
    pub action: Action,
    /// Keep internal addresses visible (in Cc) on the copies made by explode and undisclose.
    pub keep_internal_visible: bool,
    /// Decide and log, but deliver every message as `pass` would.
    pub monitor: bool,
    /// `[[policy.rules]]`: the first rule whose conditions all hold applies (SPEC §9).
    pub rules: Vec<RuleConfig>,
    /// `[policy.breaker]`: the campaign breaker.
    pub breaker: BreakerConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            internal_domains: Vec::new(),
            max_visible_external: 1,
            action: Action::default(),
            keep_internal_visible: true,
            monitor: false,
            rules: Vec::new(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// What happens to a message that leaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Each external recipient gets a copy addressed to them alone.
    #[default]
    Explode,
    /// One copy for everyone with `To: undisclosed-recipients:;`.
    Undisclose,
    /// Refuse the message with 550 5.7.1.
    Reject,
    /// Deliver unchanged.
    Pass,
    /// Keep it in the spool, answered 250, until a person releases or deletes it (or
    /// `hold.max_age` passes).
    Hold,
}

impl Action {
    /// The lowercase name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Explode => "explode",
            Action::Undisclose => "undisclose",
            Action::Reject => "reject",
            Action::Pass => "pass",
            Action::Hold => "hold",
        }
    }
}

/// `[hold]`: messages held for a person (`policy.action = "hold"`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldConfig {
    /// A held message not released or deleted within this time (from its arrival) is deleted,
    /// and its sender gets a delivery status notification saying it was not delivered.
    pub max_age: Duration,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig { max_age: Duration::secs(10 * 24 * 3600) }
    }
}

/// `[log]`: log output.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// Never write a full mail address to the log (`j***@example.com` instead).
    pub redact_addresses: bool,
    /// Minimum level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, redact_addresses: true, level: "info".into() }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `[metrics]`: the HTTP endpoint for `/metrics`, `/healthz` and `/readyz`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve on, e.g. `"127.0.0.1:9325"`; no endpoint when unset.
    pub listen: Option<SocketAddr>,
}

/// `[admin]`: the review page (SPEC §10), a small web page listing held messages.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to serve the page on, e.g. `"127.0.0.1:9326"`; no page when unset.
    pub listen: Option<SocketAddr>,
    /// File holding the login token (surrounding whitespace ignored; at least
    /// [`crate::admin::MIN_TOKEN_LEN`] characters). Required when `listen` is set; read at
    /// start and again on SIGHUP.
    pub token_file: Option<PathBuf>,
}
