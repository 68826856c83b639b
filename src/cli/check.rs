//! `bccguard check`: the decision for a message file, and the copies it would make, without
//! sending anything. Exit 0 when it does not leak, 1 when it does (whatever the action), 2 on
//! an error.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::{ConfigArg, EXIT_ERROR};
use crate::addresses::Addresses;
use crate::config::Action;
use crate::dkim::{Origin, Signer};
use crate::message::address;
use crate::message::calendar;
use crate::message::decide::{Decision, Policy, exposure};
use crate::message::parse::{FieldKind, Headers};
use crate::message::rules::{self, Facts};
use crate::message::signals::{HeaderFields, Signals};
use crate::plan::{Plan, Rewrite};
use crate::rewrite;
use crate::rewrite::calendar::CalendarRewrite;
use crate::smtp::reply;

/// Arguments of `bccguard check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Envelope sender (informational).
    #[arg(long, value_name = "ADDR")]
    from: Option<String>,
    /// Envelope recipient; repeat for more [default: every address visible in the headers,
    /// and every calendar ATTENDEE].
    #[arg(long = "rcpt", value_name = "ADDR")]
    rcpts: Vec<String>,
    /// The client's address, for rules on `client_networks`.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    client: std::net::IpAddr,
    /// The AUTH user, for rules on `auth_users` [default: not authenticated].
    #[arg(long, value_name = "NAME")]
    auth_user: Option<String>,
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
    signals: Signals,
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
    /// Whether bccguard signs this copy (DKIM).
    resigned: bool,
    /// Whether its calendar parts are rewritten for its recipient.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    calendar_rewritten: bool,
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
    let message = crate::message::parse::to_crlf(&raw);
    let mut headers = Headers::parse(&message).map_err(|e| e.to_string())?;
    let calendar = calendar::parts(&message);
    headers.attendees = calendar.iter().flat_map(|p| p.attendees.iter().cloned()).collect();
    let policy = Policy::from_config(&config.policy);
    let signer = Signer::from_config(&config.dkim).map_err(|e| format!("dkim: {e}"))?;
    let (recipients, from_headers) = envelope(&args.rcpts, &headers)?;
    let fields = HeaderFields::parse(&message);
    let signals = Signals::compute(&fields, &headers, Some(&message), &recipients, &policy.internal);
    let from_domain = fields.from_domain();
    let sender = args.from.as_deref().map(|f| address::canonical(f).unwrap_or_else(|| f.to_string()));
    let facts = Facts {
        client: args.client,
        auth_user: args.auth_user.as_deref(),
        sender: sender.as_deref().unwrap_or_default(),
        fields: &fields,
        from_domain: from_domain.as_deref(),
        exposure: exposure(&headers, &policy),
        recipients: recipients.len(),
        signals: &signals,
    };
    let (mut decision, policy) = rules::decide(&headers, &facts, &policy);
    if decision.action == Action::Undisclose && !headers.attendees.is_empty() {
        decision.action = Action::Explode;
    }
    decision.apply_dkim(crate::dkim::Report::of(&message, &signer, decision.action));
    let mut plan = Plan::build(&decision, &headers, &recipients, &policy);
    if let Some(plan) = plan.as_mut().filter(|_| decision.action == Action::Explode) {
        plan.calendar = CalendarRewrite::plan(&calendar, 0, &policy);
    }
    let sign_all = signer.sign_all;
    let transactions = plan
        .as_ref()
        .map(|plan| {
            let report = |t| {
                let mut r = txn_report(&message, &headers, plan, t, &recipients);
                let rewritten = !rewrite::unchanged(&headers, t);
                let calendar = !plan.calendar.is_empty() && matches!(t.rewrite, Rewrite::Explode { .. });
                r.resigned = decision.dkim.resigns(rewritten || calendar, sign_all);
                r.calendar_rewritten = calendar;
                r
            };
            plan.transactions.iter().map(report).collect()
        })
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
        signals,
    };
    Ok((report, leak))
}

/// The envelope: the given recipients, or every distinct visible address and attendee.
fn envelope(rcpts: &[String], headers: &Headers) -> Result<(Addresses, bool), String> {
    if !rcpts.is_empty() {
        let canonical = rcpts
            .iter()
            .map(|r| address::canonical(r).ok_or_else(|| format!("--rcpt {r:?} is not an address")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((canonical.into(), false));
    }
    let mut seen = HashSet::new();
    // An invite goes to its attendees: they are part of the envelope a mailer would use.
    let shown = headers.visible().chain(&headers.attendees);
    let visible = shown.filter(|m| seen.insert(address::key(&m.address))).map(|m| m.address.clone()).collect();
    Ok((visible, true))
}

/// A transaction as the copy would show it: its To and Cc read back from the rewritten header.
fn txn_report(
    message: &[u8],
    headers: &Headers,
    plan: &Plan,
    txn: &crate::plan::Transaction,
    rcpts: &Addresses,
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
        recipients: txn.recipients.iter().map(|&i| rcpts[i].to_string()).collect(),
        rewrite: match txn.rewrite {
            Rewrite::Original => "original",
            Rewrite::Explode { .. } => "explode",
            Rewrite::Undisclose => "undisclose",
        },
        to: value(FieldKind::To),
        cc: value(FieldKind::Cc),
        resigned: false,
        calendar_rewritten: false,
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
    writeln!(out, "  rule          {}", d.rule)?;
    writeln!(out, "  exposure      {} external (at most {} allowed)", d.exposure, d.max_visible_external)?;
    writeln!(out, "  reason        {}", r.reason_text)?;
    writeln!(out, "  signals       {}", r.signals.seen().join(", "))?;
    writeln!(out, "  recipients    {}{envelope}", r.recipients)?;
    let dkim_shown = d.dkim.dkim == Origin::SignedByOriginal || d.dkim.key.is_some();
    if dkim_shown {
        let origin = if d.dkim.dkim == Origin::SignedByOriginal { "signed_by_original" } else { "none" };
        let key =
            d.dkim.key.as_deref().map_or("no key aligns with From".to_string(), |k| format!("re-signed with {k}"));
        writeln!(out, "  dkim          {origin}; rewritten copies {key}")?;
    }
    if d.attendees > 0 {
        writeln!(out, "  attendees     {} external (calendar invite)", d.attendees)?;
    }
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
    let rows = r.transactions.iter().enumerate().map(|(i, t)| {
        let [to, cc] = t.shown.clone();
        let copy = if t.calendar_rewritten { format!("{} + calendar", t.rewrite) } else { t.rewrite.to_string() };
        let dkim = if t.resigned { "re-signed" } else { "-" }.to_string();
        [(i + 1).to_string(), t.recipients.join(", "), copy, to, cc, dkim]
    });
    if dkim_shown {
        let rows: Vec<[String; 6]> = rows.collect();
        return super::table::write(out, &["#", "RECIPIENTS", "COPY", "TO", "CC", "DKIM"], &rows);
    }
    let rows: Vec<[String; 5]> = rows.map(|[n, r, c, t, cc, _]| [n, r, c, t, cc]).collect();
    super::table::write(out, &["#", "RECIPIENTS", "COPY", "TO", "CC"], &rows)
}
