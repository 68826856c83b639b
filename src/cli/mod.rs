//! The command line: argument definitions and the subcommands other than `serve`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigErrors, ConfigSource};

pub mod breaker;
pub mod check;
pub mod docs;
pub mod held;
mod offline;
pub mod queue;
mod table;

/// Exit code for a usage, configuration or input error.
pub const EXIT_ERROR: u8 = 2;

/// bccguard: an SMTP relay that stops the "forgot to Bcc" leak.
#[derive(Debug, Parser)]
#[command(name = "bccguard", version, about)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay.
    Serve(ConfigArg),
    /// Check the configuration: exit 0 if valid, else list every error and exit 2.
    CheckConfig(ConfigArg),
    /// Exit 0 if the relay answers on its first listen address with a 220 greeting, else 1
    /// (for container health checks).
    Health(ConfigArg),
    /// Print the leak decision for a message file, and the copies it would make, without
    /// sending anything. Exit 0: no leak; 1: leak; 2: error.
    Check(check::CheckArgs),
    /// Inspect and act on the queue: list (--held), retry (one ID or all), delete ID, release ID.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// The campaign breaker of the running relay: list the tripped keys, reset one.
    #[command(subcommand)]
    Breaker(breaker::BreakerCommand),
    /// Print an argon2 hash for a password read from standard input, for [[access.users]].
    HashPassword,
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell) on standard output.
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (bccguard.8 and one per subcommand) into DIR (for packagers).
    #[command(hide = true)]
    ManPages {
        /// Directory to write into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `--config PATH`, shared by the subcommands that read the configuration.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file [default: config/bccguard.toml if it exists, else
    /// /etc/bccguard/bccguard.toml if it exists, else built-in defaults].
    #[arg(long, short, env = "BCCGUARD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// Where the configuration comes from.
    pub fn source(&self) -> ConfigSource {
        ConfigSource::resolve(self.config.clone())
    }

    /// Load and validate it.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        config::load(self.source())
    }
}

/// `bccguard check-config`: print the verdict, return the exit code.
pub fn check_config(arg: &ConfigArg, out: &mut impl Write, err: &mut impl Write) -> u8 {
    match arg.load() {
        Ok(config) => {
            let warnings = config::shadowed(&config.policy.rules);
            let _ = writeln!(out, "{}: configuration is valid", arg.source());
            for w in &warnings {
                let _ = writeln!(err, "  warning: {w}");
            }
            0
        }
        Err(errors) => {
            let _ = write!(err, "{errors}");
            EXIT_ERROR
        }
    }
}

/// `bccguard health`: connect to the first `server.listen` address (an unspecified address
/// means this host) and expect a 220 greeting within 5 seconds.
pub fn health(arg: &ConfigArg, out: &mut impl Write, err: &mut impl Write) -> u8 {
    use std::io::{BufRead, BufReader, Write as _};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
    use std::time::Duration;
    let config = match arg.load() {
        Ok(c) => c,
        Err(e) => {
            let _ = write!(err, "{e}");
            return EXIT_ERROR;
        }
    };
    let Some(mut addr) = config.server.listen.first().copied() else {
        return EXIT_ERROR;
    };
    if addr.ip().is_unspecified() {
        let local = if addr.is_ipv4() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { IpAddr::V6(Ipv6Addr::LOCALHOST) };
        addr.set_ip(local);
    }
    let timeout = Duration::from_secs(5);
    let check = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut greeting = String::new();
        BufReader::new(&stream).read_line(&mut greeting)?;
        let _ = stream.write_all(b"QUIT\r\n");
        Ok(greeting.trim_end().to_string())
    };
    match check() {
        Ok(greeting) if greeting.starts_with("220 ") => {
            let _ = writeln!(out, "ok: {addr}: {greeting}");
            0
        }
        Ok(other) => {
            let _ = writeln!(err, "bccguard health: {addr}: unexpected greeting {other:?}");
            1
        }
        Err(e) => {
            let _ = writeln!(err, "bccguard health: {addr}: {e}");
            1
        }
    }
}

/// `bccguard hash-password`: read one line, print its argon2id hash.
pub fn hash_password(input: &mut impl BufRead, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let mut line = String::new();
    if input.read_line(&mut line).is_err() || line.trim_end_matches(['\r', '\n']).is_empty() {
        let _ = writeln!(err, "bccguard hash-password: give the password on standard input");
        return EXIT_ERROR;
    }
    match crate::smtp::auth::hash_password(line.trim_end_matches(['\r', '\n'])) {
        Ok(hash) => {
            let _ = writeln!(out, "{hash}");
            0
        }
        Err(e) => {
            let _ = writeln!(err, "bccguard hash-password: {e}");
            1
        }
    }
}
