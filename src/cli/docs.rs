//! Documentation made from the clap definitions: shell completion scripts
//! (`bccguard completions SHELL`) and the manual pages (`bccguard man-pages DIR`, for packagers),
//! so neither can drift from the command line they describe.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

use super::{Cli, EXIT_ERROR};

/// Manual section of every page: system administration commands and daemons.
pub const MAN_SECTION: &str = "8";

/// The NAME line of the main page.
const ABOUT: &str = "an SMTP relay that stops the \"forgot to Bcc\" leak";

/// The DESCRIPTION of the main page.
const DESCRIPTION: &str = "bccguard sits between software that sends mail and the real outgoing relay. It \
parses every message, and when a message would show external recipients each other's addresses (everyone in \
To: or Cc: instead of Bcc:), it acts as the policy says: by default each external recipient gets a copy \
addressed to them alone. Everything else passes through untouched. A message is answered 250 only once it is \
durably in the spool; delivery to the upstream retries and bounces like any mail server.\n\n\
Point a mailer at it as its relay (Postfix: relayhost = [127.0.0.1]:2525) and set the upstream and \
policy.internal_domains in the configuration file. Each subcommand has its own page.";

/// `bccguard completions SHELL`: the completion script on `out`.
pub fn completions(shell: Shell, out: &mut impl Write) -> u8 {
    let mut command = without_hidden_subcommands(Cli::command());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "bccguard", &mut script);
    match out.write_all(&script) {
        Ok(()) => 0,
        Err(_) => EXIT_ERROR,
    }
}

/// `command` (the top-level `bccguard`) without its hidden subcommands, which clap_complete
/// would offer.
fn without_hidden_subcommands(command: clap::Command) -> clap::Command {
    let visible: Vec<clap::Command> = command.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let mut top = clap::Command::new("bccguard").version(env!("CARGO_PKG_VERSION")).subcommands(visible);
    for arg in command.get_arguments() {
        top = top.arg(arg.clone());
    }
    top
}

/// `bccguard man-pages DIR`: write the pages, list them on `out`.
pub fn man_pages(dir: &Path, out: &mut impl Write, err: &mut impl Write) -> u8 {
    match write_man_pages(dir) {
        Ok(paths) => {
            for path in paths {
                let _ = writeln!(out, "{}", path.display());
            }
            0
        }
        Err(e) => {
            let _ = writeln!(err, "bccguard man-pages: {}: {e}", dir.display());
            EXIT_ERROR
        }
    }
}

/// Write `bccguard.8` and one page per visible subcommand, nested ones included
/// (`bccguard-queue-list.8`), into `dir` (created if missing); returns the files written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut command = Cli::command().disable_help_subcommand(true).about(ABOUT).long_about(DESCRIPTION);
    command.build();
    let mut written = Vec::new();
    write_page(&command, dir, true, &mut written)?;
    Ok(written)
}

/// The page of `command`, then those of its subcommands.
fn write_page(command: &clap::Command, dir: &Path, top: bool, written: &mut Vec<PathBuf>) -> io::Result<()> {
    let source = format!("bccguard {}", env!("CARGO_PKG_VERSION"));
    let man = Man::new(command.clone()).section(MAN_SECTION).source(source).manual("bccguard manual");
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    if command.has_subcommands() {
        man.render_subcommands_section(&mut page)?;
    }
    let mut extra = Roff::default();
    if top {
        top_sections(&mut extra);
    } else {
        see_also(&mut extra, &[("bccguard", MAN_SECTION)]);
    }
    extra.to_writer(&mut page)?;
    if command.get_version().is_some() {
        man.render_version_section(&mut page)?;
    }
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, false, written)?;
    }
    Ok(())
}

/// What the main page says besides the options: files, environment, signals, exit status.
fn top_sections(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "/etc/bccguard/bccguard.toml",
            "The configuration installed by the Debian package, every key documented in its comments. \
             Read when no --config is given, BCCGUARD_CONFIG is unset and there is no \
             config/bccguard.toml in the current directory (otherwise the built-in defaults apply). \
             Check it with bccguard check-config.",
        ),
        (
            "/var/spool/bccguard",
            "The packaged spool (spool.dir): queue/ holds one ID.msg file per message and its ID.state \
             journal, damaged/ the messages set aside, lock and control.sock belong to the running relay.",
        ),
    ] {
        roff.control("TP", []).text([italic(path)]).text([roman(what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, what) in [
        ("BCCGUARD_CONFIG", "The configuration file, when --config is not given."),
        (
            "BCCGUARD__SECTION__KEY",
            "Overrides one key of the file, e.g. BCCGUARD__UPSTREAM__HOST=smtp.example.com. A value is read \
             as TOML when it parses as TOML (587, true, [\"a\", \"b\"]), otherwise as text.",
        ),
        ("RUST_LOG", "Overrides log.level (tracing filter syntax)."),
    ] {
        roff.control("TP", []).text([bold(name)]).text([roman(what)]);
    }
    roff.control("SH", ["SIGNALS"]);
    for (name, what) in [
        (
            "SIGTERM, SIGINT",
            "Stop: the listeners close, idle sessions get 421 4.3.2, work in progress may finish within \
             server.shutdown_grace; exit status 0. A second signal exits at once.",
        ),
        (
            "SIGHUP",
            "Read the configuration file again and apply [policy] and [access] to new messages and \
             sessions; a file with errors is refused and the running configuration kept.",
        ),
    ] {
        roff.control("TP", []).text([bold(name)]).text([roman(what)]);
    }
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 on success; 1 when the relay stops on an error (or, for check, the message leaks; for \
         health, no greeting); 2 for a usage, configuration or input error.",
    )]);
    see_also(roff, &[("postfix", "1"), ("swaks", "1"), ("systemctl", "1")]);
}

/// A SEE ALSO section naming `pages`.
fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        line.push(bold(*name));
        let sep = if i + 1 == pages.len() { "" } else { ", " };
        line.push(roman(format!("({section}){sep}")));
    }
    roff.text(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_for_every_visible_subcommand_and_none_for_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_man_pages(dir.path()).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for page in ["bccguard.8", "bccguard-serve.8", "bccguard-completions.8", "bccguard-queue-list.8"] {
            assert!(names.iter().any(|n| n == page), "{page} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("man-pages") || n.contains("help")), "{names:?}");
        let top = std::fs::read_to_string(dir.path().join("bccguard.8")).unwrap();
        for section in [".SH FILES", ".SH ENVIRONMENT", ".SH SIGNALS", ".SH \"EXIT STATUS\"", "bccguard\\-serve(8)"] {
            assert!(top.contains(section), "{section} in\n{top}");
        }
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            assert_eq!(completions(shell, &mut out), 0);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains("check-config") && script.contains("release"), "{shell}: {script}");
            assert!(!script.contains("man-pages"), "{shell} offers a hidden subcommand: {script}");
        }
    }
}
