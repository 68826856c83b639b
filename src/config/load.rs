//! Reading the file, applying environment overrides, and collecting every error with its path.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::Config;

/// The documented default location of the configuration file.
pub const DEFAULT_PATH: &str = "config/bccguard.toml";

/// Where the Debian package installs the configuration: read when [`DEFAULT_PATH`] does not
/// exist, so `bccguard queue list` on a server finds the running relay's spool.
pub const SYSTEM_PATH: &str = "/etc/bccguard/bccguard.toml";

/// Prefix of environment variables that override keys: `BCCGUARD__UPSTREAM__HOST`.
const ENV_PREFIX: &str = "BCCGUARD__";

/// One problem in the configuration, at a key path such as `server.max_message_size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path; empty for whole-file problems such as a TOML syntax error.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl ConfigError {
    pub(super) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Every error found in one configuration source.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// Where the configuration came from.
    pub origin: ConfigSource,
    /// All the problems, in the order found.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(f, "{}: {n} error{}", self.origin, if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Where a configuration is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file named on the command line, in `BCCGUARD_CONFIG`, or the default path.
    File(PathBuf),
    /// No file: the embedded defaults (plus environment overrides).
    Defaults,
}

impl ConfigSource {
    /// The file to read: the one given, else [`DEFAULT_PATH`] if it exists, else
    /// `SYSTEM_PATH` if it exists, else none.
    pub fn resolve(given: Option<PathBuf>) -> ConfigSource {
        Self::resolve_with(given, |path| Path::new(path).exists())
    }

    fn resolve_with(given: Option<PathBuf>, exists: impl Fn(&str) -> bool) -> ConfigSource {
        match given {
            Some(path) => ConfigSource::File(path),
            None => match [DEFAULT_PATH, SYSTEM_PATH].into_iter().find(|path| exists(path)) {
                Some(path) => ConfigSource::File(path.into()),
                None => ConfigSource::Defaults,
            },
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Defaults => f.write_str("embedded defaults"),
        }
    }
}

/// Load and validate the configuration from `source` and the process environment.
pub fn load(source: ConfigSource) -> Result<Config, ConfigErrors> {
    let text = match &source {
        ConfigSource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => {
                let error = ConfigError::new("", format!("cannot read the file: {e}"));
                return Err(ConfigErrors { origin: source, errors: vec![error] });
            }
        },
        ConfigSource::Defaults => None,
    };
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_str(text.as_deref(), &env).map_err(|errors| ConfigErrors { origin: source, errors })
}

/// Load and validate a configuration from TOML text (or none) and `(name, value)` variables.
pub fn load_str(text: Option<&str>, env: &[(String, String)]) -> Result<Config, Vec<ConfigError>> {
    let mut table = match text {
        Some(text) => toml::from_str::<Table>(text).map_err(|e| vec![syntax_error(&e)])?,
        None => Table::new(),
    };
    let overrides = apply_env(&mut table, env);
    let (config, mut errors) = deserialize_all(Value::Table(table), &overrides);
    if let Some(config) = &config {
        errors.extend(config.validate());
    }
    match config {
        Some(config) if errors.is_empty() => Ok(config),
        _ => Err(errors),
    }
}

fn syntax_error(e: &toml::de::Error) -> ConfigError {
    let message = e.message().to_string();
    let message = match e.span() {
        Some(span) => format!("TOML syntax error at byte {}: {message}", span.start),
        None => format!("TOML syntax error: {message}"),
    };
    ConfigError::new("", message)
}

/// An environment override: which variable set a key, and its text before TOML typing.
struct Override {
    var: String,
    raw: String,
}

/// Apply `BCCGUARD__A__B=value` variables to the tree. A value is read as a TOML value when it
/// is one (`587`, `true`, `["a", "b"]`), else as a string. Setting `upstream.host` drops a
/// `upstream.directory` from the file and vice versa: the environment picks the transport.
fn apply_env(table: &mut Table, env: &[(String, String)]) -> HashMap<String, Override> {
    let mut overrides = HashMap::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            continue;
        }
        match keys.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["upstream", "host"] => remove_key(table, &["upstream", "directory"]),
            ["upstream", "directory"] => remove_key(table, &["upstream", "host"]),
            _ => {}
        }
        set_key(table, &keys, typed_value(raw));
        let path = keys.join(".");
        let var = var.clone();
        let raw = raw.clone();
        overrides.insert(path, Override { var, raw });
    }
    overrides
}

fn typed_value(raw: &str) -> Value {
    match toml::from_str::<Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.into()),
    }
}

fn set_key(table: &mut Table, keys: &[String], value: Value) {
    let (last, parents) = keys.split_last().expect("at least one key");
    let mut node = table;
    for key in parents {
        let entry = node.entry(key.clone()).or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        node = entry.as_table_mut().expect("just made a table");
    }
    node.insert(last.clone(), value);
}

fn remove_key(table: &mut Table, keys: &[&str]) {
    if let [section, key] = keys
        && let Some(Value::Table(t)) = table.get_mut(*section)
    {
        t.remove(*key);
    }
}

/// Deserialize, and on each error record it, drop the offending value (so its default
/// applies) and try again, until the tree deserializes: every error is found in one pass.
fn deserialize_all(mut tree: Value, overrides: &HashMap<String, Override>) -> (Option<Config>, Vec<ConfigError>) {
    let mut errors = Vec::new();
    let mut retyped = Vec::new();
    loop {
        let error = match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
            Ok(config) => return (Some(config), errors),
            Err(e) => e,
        };
        let path = error.path().to_string();
        let segments: Vec<Segment> = error.path().iter().cloned().collect();
        // An environment value typed as a number or list may have been meant as text.
        if let Some(o) = overrides.get(&path)
            && !retyped.contains(&path)
            && set_at(&mut tree, &segments, Value::String(o.raw.clone()))
        {
            retyped.push(path);
            continue;
        }
        let mut message = first_line(&error.inner().to_string());
        if let Some(o) = overrides.get(&path) {
            message.push_str(&format!(" (from environment variable {})", o.var));
        }
        errors.push(ConfigError::new(path, message));
        if !remove_at(&mut tree, &segments) {
            return (None, errors);
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

fn parent_and_last<'a>(tree: &'a mut Value, segments: &[Segment]) -> Option<(&'a mut Value, Segment)> {
    let (last, parents) = segments.split_last()?;
    let mut node = tree;
    for segment in parents {
        node = match segment {
            Segment::Map { key } => node.as_table_mut()?.get_mut(key)?,
            Segment::Seq { index } => node.as_array_mut()?.get_mut(*index)?,
            _ => return None,
        };
    }
    Some((node, last.clone()))
}

fn remove_at(tree: &mut Value, segments: &[Segment]) -> bool {
    match parent_and_last(tree, segments) {
        Some((Value::Table(t), Segment::Map { key })) => t.remove(&key).is_some(),
        Some((Value::Array(a), Segment::Seq { index })) if index < a.len() => {
            a.remove(index);
            true
        }
        _ => false,
    }
}

fn set_at(tree: &mut Value, segments: &[Segment], value: Value) -> bool {
    match parent_and_last(tree, segments) {
        Some((Value::Table(t), Segment::Map { key })) if t.contains_key(&key) => {
            t.insert(key, value);
            true
        }
        _ => false,
    }
}

/// The errors `text` gives, as they are printed (none when it loads): for the tests.
#[cfg(test)]
pub(crate) fn errors_in(text: &str) -> Vec<String> {
    match load_str(Some(text), &[]) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::errors_in as errors;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let c = load_str(Some(""), &[]).unwrap();
        assert_eq!(c.server.listen[0].to_string(), "127.0.0.1:2525");
        assert_eq!(c.server.max_recipients, 1000);
        assert!(matches!(c.upstream.kind(), super::super::UpstreamKind::Directory(d) if d.as_os_str() == "outbox"));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = errors(
            "[server]\nmax_message_size = \"lots\"\nlsten = []\n[policy]\naction = \"explod\"\n\
             [access]\nrelay_networks = [\"10.0.0.0/8\", \"nonsense\"]\n[nosuch]\nx = 1\n",
        );
        assert_eq!(errs.len(), 5, "{errs:#?}");
        let joined = errs.join("\n");
        for needle in [
            "server.max_message_size: invalid size \"lots\"",
            "server.lsten: unknown field `lsten`",
            "policy.action: unknown variant `explod`",
            "access.relay_networks[1]:",
            "nosuch: unknown field `nosuch`",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        let errs = errors("[server\nlisten = 1");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("TOML syntax error"), "{errs:?}");
    }

    #[test]
    fn environment_overrides_keys_with_types() {
        let vars = env(&[
            ("BCCGUARD__UPSTREAM__HOST", "smtp.example.com"),
            ("BCCGUARD__UPSTREAM__PORT", "2587"),
            ("BCCGUARD__UPSTREAM__TLS", "none"),
            ("BCCGUARD__UPSTREAM__USERNAME", "12345"),
            ("BCCGUARD__UPSTREAM__PASSWORD", "67890"),
            ("BCCGUARD__POLICY__INTERNAL_DOMAINS", "[\"a.example\", \"b.example\"]"),
            ("BCCGUARD__SERVER__MAX_RECIPIENTS", "50"),
            ("OTHER__SERVER__MAX_RECIPIENTS", "7"),
        ]);
        let c = load_str(Some("[upstream]\ndirectory = \"outbox\"\n"), &vars).unwrap();
        assert_eq!(c.upstream.host.as_deref(), Some("smtp.example.com"));
        assert_eq!(c.upstream.directory, None, "env host replaces the file's directory");
        assert_eq!(c.upstream.port(), 2587);
        assert_eq!(c.upstream.username.as_deref(), Some("12345"));
        assert_eq!(c.policy.internal_domains, ["a.example", "b.example"]);
        assert_eq!(c.server.max_recipients, 50);
    }

    #[test]
    fn bad_environment_values_name_their_variable() {
        let vars = env(&[("BCCGUARD__SERVER__MAX_RECIPIENTS", "many")]);
        let errs = load_str(None, &vars).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "server.max_recipients");
        assert!(errs[0].message.contains("BCCGUARD__SERVER__MAX_RECIPIENTS"), "{errs:?}");
    }

    #[test]
    fn the_file_is_the_one_given_else_the_working_directory_one_else_the_system_one() {
        let given = ConfigSource::resolve_with(Some("my.toml".into()), |_| true);
        assert_eq!(given, ConfigSource::File("my.toml".into()));
        let both = ConfigSource::resolve_with(None, |_| true);
        assert_eq!(both, ConfigSource::File(DEFAULT_PATH.into()));
        let system = ConfigSource::resolve_with(None, |p| p == SYSTEM_PATH);
        assert_eq!(system, ConfigSource::File(SYSTEM_PATH.into()));
        assert_eq!(ConfigSource::resolve_with(None, |_| false), ConfigSource::Defaults);
    }
}
