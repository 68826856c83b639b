//! One held message (`GET /message/ID`): what it is, why it is held, its header block, and
//! the buttons. This is the one page that shows addresses.

use maud::{Markup, html};

use crate::admin::format::{count, span, thousands, utc};
use crate::admin::layout::{Frame, csrf_field, page};
use crate::hold::{HeldMessage, ReleaseAs};

/// The buttons, in the order shown: what each posts and what it is called.
const RELEASES: [(ReleaseAs, &str, &str); 2] =
    [(ReleaseAs::Explode, "Release as explode", "primary"), (ReleaseAs::Pass, "Release as is", "")];

/// The message page.
pub fn message(m: &HeldMessage, now_ms: i64, csrf: Option<&str>) -> Markup {
    let s = &m.summary;
    let title = format!("held message {}", s.id);
    let body = html! {
        h1 { "Held message " span.id { (s.id) } }
        (facts(m, now_ms))
        h2 { "Decision" }
        p { (m.decision) }
        h2 { "Release or delete" }
        (actions(m, csrf))
        h2 { "Signals" }
        @if m.signals.is_empty() {
            p.empty { "None seen." }
        } @else {
            ul.plain { @for signal in &m.signals { li { (signal) } } }
        }
        h2 { "Envelope recipients" }
        details {
            summary { (count(m.recipients.len(), "recipient", "recipients")) " (show)" }
            ul.plain { @for r in &m.recipients { li { (r) } } }
        }
        h2 { "Header block" }
        pre.header { (m.header) }
    };
    page(Frame { title: &title, csrf, notice: None }, body)
}

fn facts(m: &HeldMessage, now_ms: i64) -> Markup {
    let s = &m.summary;
    html! {
        dl.facts {
            dt { "Subject" }
            dd { @if s.subject.is_empty() { span.muted { "(no subject)" } } @else { (s.subject) } }
            dt { "Sender" }
            dd { @if s.sender.is_empty() { "<> (null sender)" } @else { (s.sender) } }
            dt { "Received" }
            dd { (utc(s.received_at)) ", " (span(now_ms - s.received_at)) " ago" }
            dt { "Expires" }
            dd { (utc(s.expires_at)) ", in " (span(s.expires_at - now_ms)) ": then deleted, with a bounce to the sender" }
            dt { "Recipients" }
            dd { (thousands(s.recipients)) " (envelope)" }
            dt { "Exposure" }
            dd { (count(s.exposure, "external address", "external addresses")) " visible" }
            dt { "Rule" }
            dd { (s.rule.as_deref().unwrap_or("default")) }
        }
    }
}

/// The three forms, each with the session's CSRF token and, beside its button, what it does.
fn actions(m: &HeldMessage, csrf: Option<&str>) -> Markup {
    let id = &m.summary.id;
    let plan = |how: ReleaseAs| m.plans.iter().find(|(h, _)| *h == how).map(|(_, text)| text.as_str());
    html! {
        div.actions {
            @for (how, label, class) in RELEASES {
                form method="post" action={ "/message/" (id) "/release" } {
                    @if let Some(token) = csrf { (csrf_field(token)) }
                    input type="hidden" name="as" value=(how.as_str());
                    button type="submit" class=(class) { (label) }
                    span.what { (plan(how).unwrap_or(default_plan(how))) }
                }
            }
            form method="post" action={ "/message/" (id) "/delete" } {
                @if let Some(token) = csrf { (csrf_field(token)) }
                button.danger type="submit" { "Delete" }
                span.what { "Drop it: nothing is delivered and the sender gets no bounce." }
            }
        }
    }
}

fn default_plan(how: ReleaseAs) -> &'static str {
    match how {
        ReleaseAs::Explode => "Each external recipient gets a copy addressed to them alone.",
        ReleaseAs::Undisclose => "One copy for everyone, with To: undisclosed-recipients:;",
        ReleaseAs::Pass => "Deliver it unchanged: every recipient sees every address.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::HeldSummary;
    use crate::queue_id::QueueId;

    const NOW: i64 = 1_795_000_000_000;

    fn sample() -> HeldMessage {
        let summary = HeldSummary {
            id: QueueId::parse("0641F2A3B4C5D001").unwrap(),
            received_at: NOW - 60_000,
            expires_at: NOW + 86_400_000,
            sender: "jane@shop.example".into(),
            subject: "<script>alert(1)</script>".into(),
            recipients: 2,
            exposure: 2,
            rule: None,
        };
        HeldMessage {
            summary,
            header: "Subject: <script>alert(1)</script>\r\nTo: a@x.example, b@y.example\r\n".into(),
            recipients: vec!["a@x.example".into(), "b@y.example".into()],
            decision: "leak: 2 external addresses visible (max 1); action hold".into(),
            signals: vec![],
            plans: vec![(ReleaseAs::Explode, "2 transactions: one per external recipient".into())],
        }
    }

    #[test]
    fn the_message_page_shows_addresses_escapes_and_carries_csrf_in_every_form() {
        let html = message(&sample(), NOW, Some("csrf-token")).into_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("<pre class=\"header\">Subject: &lt;script&gt;alert(1)&lt;/script&gt;\r\nTo:"), "{html}");
        assert!(html.contains("jane@shop.example") && html.contains("<li>b@y.example</li>"), "{html}");
        assert!(html.contains("2 transactions: one per external recipient"));
        assert!(html.contains("Deliver it unchanged"), "the fallback text for a plan not given");
        assert_eq!(html.matches("name=\"csrf\" value=\"csrf-token\"").count(), 4, "3 buttons + logout: {html}");
        assert!(html.contains("action=\"/message/0641F2A3B4C5D001/release\""));
        assert!(html.contains("action=\"/message/0641F2A3B4C5D001/delete\""));
        assert!(html.contains("name=\"as\" value=\"explode\"") && html.contains("name=\"as\" value=\"pass\""));
        assert!(html.contains("<dd>default</dd>") && html.contains("None seen."));
    }
}
