//! `bccguard breaker list [--json]` and `bccguard breaker reset KEY`: the campaign breaker
//! of the running relay (SPEC §9), through its control socket; when no relay runs and the
//! counts live in Redis (`redis_url`), in Redis directly. This is the operator's view: keys
//! are shown in full (the log never shows a full address).

use std::io::{self, Write};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::Utc;

use super::table::{escape_controls, short_duration};
use super::{ConfigArg, EXIT_ERROR};
use crate::breaker::{Breaker, Control, Listing};
use crate::control;
use crate::message::decide::Policy;
use crate::spool::SpoolPaths;

/// Exit code of `reset` when the key was neither tripped nor counted.
pub const EXIT_NOT_FOUND: u8 = 1;

/// `bccguard breaker ...`.
#[derive(Debug, clap::Subcommand)]
pub enum BreakerCommand {
    /// The tripped keys (first) and those counting leaks, with their counts.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Close one key's breaker and forget its count (exit 1 when it had none).
    Reset {
        #[command(flatten)]
        config: ConfigArg,
        /// The key as `breaker list` shows it (a sender, an AUTH user or a client address).
        key: String,
    },
}

/// Run a breaker subcommand; returns the exit code.
pub fn run(command: &BreakerCommand, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let result = match command {
        BreakerCommand::List { config, json } => list(config, *json, out),
        BreakerCommand::Reset { config, key } => reset(config, key, out),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(err, "bccguard breaker: {message}");
            EXIT_ERROR
        }
    }
}

/// The running relay's answer to `request`, or, when no relay runs and the counts are in
/// Redis, what `offline` makes of them.
fn ask(
    config: &ConfigArg,
    request: &str,
    offline: impl AsyncFnOnce(Control) -> Result<String, String>,
) -> Result<String, String> {
    let config = config.load().map_err(|e| e.to_string().trim_end().to_string())?;
    let paths = SpoolPaths::new(&config.spool.dir);
    match control::request(&paths.control_socket(), request) {
        Ok(reply) => match reply.strip_prefix("ok ") {
            Some(rest) => Ok(rest.to_string()),
            None => Err(reply.strip_prefix("error: ").unwrap_or(&reply).to_string()),
        },
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => {
            let Some(url) = config.policy.breaker.redis_url.as_deref() else {
                return Err(format!(
                    "no relay is running on {} (the breaker's counts live in the running relay)",
                    paths.control_socket().display()
                ));
            };
            let control = Control {
                breaker: Breaker::new(Some(url)),
                policy: Arc::new(ArcSwap::from_pointee(Policy::from_config(&config.policy))),
            };
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(offline(control))
        }
        Err(e) => Err(format!("cannot reach the relay: {e}")),
    }
}

/// The error when Redis could not be used (the fallback local counts of a CLI are empty).
fn reachable(control: &Control) -> Result<(), String> {
    match control.breaker.state().degraded {
        Some(why) => Err(format!("no relay is running, and {why}")),
        None => Ok(()),
    }
}

fn list(config: &ConfigArg, json: bool, out: &mut impl Write) -> Result<u8, String> {
    let text = ask(config, "breakers", async |control| {
        let listing = control.listing(Utc::now().timestamp_millis()).await;
        reachable(&control)?;
        serde_json::to_string(&listing).map_err(|e| e.to_string())
    })?;
    let listing: Listing = serde_json::from_str(&text).map_err(|e| format!("the relay's answer: {e}"))?;
    let written = if json {
        serde_json::to_writer_pretty(&mut *out, &listing).map_err(io::Error::other).and_then(|()| writeln!(out))
    } else {
        table(&listing, Utc::now().timestamp_millis(), out)
    };
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(0),
        other => other.map(|()| 0).map_err(|e| e.to_string()),
    }
}

fn table(l: &Listing, now: i64, out: &mut impl Write) -> io::Result<()> {
    let Some(leaks) = l.leaks else {
        return writeln!(out, "The campaign breaker is off (set policy.breaker.leaks).");
    };
    if l.keys.is_empty() {
        writeln!(out, "No key is tripped or counting.")?;
    } else {
        let rows: Vec<[String; 5]> = l
            .keys
            .iter()
            .map(|k| match k.trip {
                Some(t) => [
                    escape_controls(&k.key),
                    "tripped".into(),
                    k.count.to_string(),
                    format!("{} ago", short_duration((now - t.at) / 1000)),
                    format!("in {}", short_duration((t.until - now) / 1000)),
                ],
                None => [escape_controls(&k.key), "counting".into(), k.count.to_string(), "-".into(), "-".into()],
            })
            .collect();
        super::table::write(out, &["KEY", "STATE", "COUNT", "TRIPPED", "CLOSES"], &rows)?;
    }
    let tripped = l.keys.iter().filter(|k| k.trip.is_some()).count();
    let store = match &l.store.degraded {
        Some(why) => format!("counts in this relay ({why})"),
        None => format!("counts in {}", if l.store.store == "redis" { "Redis" } else { "this relay" }),
    };
    writeln!(
        out,
        "\n{tripped} tripped. {leaks} leaking messages within {} from one {} trip it for {}; then {}; {store}. \
         `bccguard breaker reset KEY` closes one.",
        short_duration(l.window_secs as i64),
        l.key,
        short_duration(l.duration_secs as i64),
        if l.action == "tempfail" { "451 4.7.1 (tempfail)" } else { "held for review (hold)" },
    )
}

fn reset(config: &ConfigArg, key: &str, out: &mut impl Write) -> Result<u8, String> {
    if key.is_empty() || key.contains(['\r', '\n']) {
        return Err(format!("{key:?} is not a key"));
    }
    let offline = async |control: Control| {
        let reset = control.reset(key).await;
        reachable(&control)?;
        Ok(u8::from(reset).to_string())
    };
    match ask(config, &format!("breaker-reset {key}"), offline)?.as_str() {
        "1" => writeln!(out, "Reset the breaker of {}.", escape_controls(key)).map(|()| 0).map_err(|e| e.to_string()),
        "0" => {
            let _ = writeln!(out, "{} is neither tripped nor counted; nothing done.", escape_controls(key));
            Ok(EXIT_NOT_FOUND)
        }
        other => Err(format!("unexpected answer from the relay: {other:?}")),
    }
}
