//! `bccguard check`: the decision for a message file, and the copies it would make, without
//! sending anything. Exit 0 when it does not leak, 1 when it does (whatever the action), 2 on
//! an error.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::{ConfigArg, EXIT_ERROR};
use crate::config::Action;
use crate::message::address;
use crate::message::decide::{Decision, Policy, decide};
use crate::message::parse::{FieldKind, Headers};
use crate::plan::{Plan, Rewrite};
use crate::rewrite;
use crate::smtp::reply;

/// Arguments of `bccguard check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Envelope sender (informational).
    #[arg(long, value_name = "ADDR")]
    from: Option<String>,
    /// Envelope recipient; repeat for more [default: every address visible in the headers].
    #[arg(long = "rcpt", value_name = "ADDR")]
    rcpts: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The message (.eml); LF line ends are read as CRLF.
    #[arg(value_name = "FILE.eml")]
    file: PathBuf,
}

/// What `check` reports, in JSON form.
#[derive(Debug, Serialize)]
struct Report {
    file: String,
    #[serde(flatten)]
    decision: Decision,
    reason_text: String,
    sender: String,
    recipients: usize,
    envelope_from_headers: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
    transactions: Vec<TxnReport>,
}

/// One planned transaction.
#[derive(Debug, Serialize)]
struct TxnReport {
    recipients: Vec<String>,
    rewrite: &'static str,
    /// The copy's To field text, unfolded.
    to: Option<String>,
    /// The copy's Cc field text, unfolded.
    cc: Option<String>,
    /// To and Cc as a person reads them (names decoded), for the table.
    #[serde(skip)]
    shown: [String; 2],
}

/// Run `bccguard check`; returns the exit code.
pub fn run(args: &CheckArgs, out: &mut impl Write, err: &mut impl Write) -> u8 {
    match report(args) {
        Ok((report, leak)) => {
            let _ = if args.json { print_json(&report, out) } else { print_table(&report, out) };
            u8::from(leak)
        }
        Err(message) => {
            let _ = writeln!(err, "bccguard check: {message}");
            EXIT_ERROR
        }
    }
}

fn report(args: &CheckArgs) -> Result<(Report, bool), String> {
    let config = args.config.load().map_err(|e| e.to_string().trim_end().to_string())?;
    let raw = std::fs::read(&args.file).map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let message = crlf(&raw);
    let headers = Headers::parse(&message).map_err(|e| e.to_string())?;
    let policy = Policy::from_config(&config.policy);
    let (recipients, from_headers) = envelope(&args.rcpts, &headers)?;
    let decision = decide(&headers, &policy);
    let plan = Plan::build(&decision, &headers, &recipients, &policy);
    let transactions = plan
        .as_ref()
        .map(|plan| plan.transactions.iter().map(|t| txn_report(&message, &headers, plan, t, &recipients)).collect())
        .unwrap_or_default();
    let leak = decision.leak;
    let report = Report {
        file: args.file.display().to_string(),
        reason_text: decision.to_string(),
        sender: args.from.clone().unwrap_or_default(),
        recipients: recipients.len(),
        envelope_from_headers: from_headers,
        reply: plan.is_none().then(|| reply::leak_rejected(&decision).to_string()),
        transactions,
        decision,
    };
    Ok((report, leak))
}

/// The envelope: the given recipients, or every distinct visible address.
fn envelope(rcpts: &[String], headers: &Headers) -> Result<(Vec<String>, bool), String> {
    if !rcpts.is_empty() {
        let canonical = rcpts
            .iter()
            .map(|r| address::canonical(r).ok_or_else(|| format!("--rcpt {r:?} is not an address")))
            .collect::<Result<_, _>>()?;
        return Ok((canonical, false));
    }
    let mut seen = HashSet::new();
    let visible =
        headers.visible().filter(|m| seen.insert(address::key(&m.address))).map(|m| m.address.clone()).collect();
    Ok((visible, true))
}

/// LF or CR line ends (as files on disk often have) become CRLF, as a mailer would send them.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A transaction as the copy would show it: its To and Cc read back from the rewritten header.
fn txn_report(
    message: &[u8],
    headers: &Headers,
    plan: &Plan,
    txn: &crate::plan::Transaction,
    rcpts: &[String],
) -> TxnReport {
    let block = rewrite::header_block(message, headers, plan, txn, rcpts);
    // The rewritten block is no larger than the original's, which parsed.
    let copy = Headers::parse(&block).unwrap_or_else(|_| Headers::parse(b"").expect("an empty block parses"));
    let value = |kind: FieldKind| {
        let values: Vec<String> = copy
            .of_kind(kind)
            .map(|f| {
                let raw = String::from_utf8_lossy(&block[f.range.clone()]).into_owned();
                let unfolded = raw.replace("\r\n", "");
                unfolded.split_once(':').map(|(_, v)| v.trim().to_string()).unwrap_or_default()
            })
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let shown = |kind: FieldKind| {
        let mailboxes: Vec<String> = copy
            .of_kind(kind)
            .flat_map(|f| &f.mailboxes)
            .map(|m| match &m.name {
                Some(name) => format!("{name} <{}>", m.address),
                None => m.address.clone(),
            })
            .collect();
        match (mailboxes.is_empty(), value(kind)) {
            (false, _) => mailboxes.join(", "),
            (true, Some(text)) => text,
            (true, None) => "-".to_string(),
        }
    };
    TxnReport {
        shown: [shown(FieldKind::To), shown(FieldKind::Cc)],
        recipients: txn.recipients.iter().map(|&i| rcpts[i].clone()).collect(),
        rewrite: match txn.rewrite {
            Rewrite::Original => "original",
            Rewrite::Explode { .. } => "explode",
            Rewrite::Undisclose => "undisclose",
        },
        to: value(FieldKind::To),
        cc: value(FieldKind::Cc),
    }
}

fn print_json(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report)?;
    writeln!(out)
}

fn print_table(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let d = &r.decision;
    let verdict = match (d.leak, d.monitor, d.action) {
        (false, _, _) => "no leak: pass".to_string(),
        (true, true, _) => format!("leak: pass (monitor mode; the policy says {})", d.policy_action.as_str()),
        (true, false, Action::Reject) => "leak: reject".to_string(),
        (true, false, action) => format!("leak: {}", action.as_str()),
    };
    let envelope = if r.envelope_from_headers { " (the visible addresses; use --rcpt to set)" } else { "" };
    writeln!(out, "{}", r.file)?;
    writeln!(out, "  decision      {verdict}")?;
    writeln!(out, "  exposure      {} external (at most {} allowed)", d.exposure, d.max_visible_external)?;
    writeln!(out, "  reason        {}", r.reason_text)?;
    writeln!(out, "  recipients    {}{envelope}", r.recipients)?;
    if let Some(reply) = &r.reply {
        writeln!(out, "  reply         {reply}")?;
        return Ok(());
    }
    if d.action == Action::Hold {
        writeln!(out, "  reply         250 (held: nothing is delivered until a person releases it)")?;
        writeln!(out, "  release       bccguard queue release ID [--as explode|undisclose|pass]; after hold.max_age")?;
        writeln!(out, "                it is deleted and the sender gets a delivery status notification")?;
        return Ok(());
    }
    writeln!(out, "  transactions  {}", r.transactions.len())?;
    writeln!(out)?;
    let rows: Vec<[String; 5]> = r
        .transactions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let [to, cc] = t.shown.clone();
            [(i + 1).to_string(), t.recipients.join(", "), t.rewrite.to_string(), to, cc]
        })
        .collect();
    super::table::write(out, &["#", "RECIPIENTS", "COPY", "TO", "CC"], &rows)
}
