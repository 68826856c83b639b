//! The list of held messages and tripped breakers (`GET /`). No address appears here
//! (SPEC §10: addresses only on the message page): the sender shows as `j***@example.com`,
//! and addresses in a subject are redacted the same way.

use maud::{Markup, html};

use crate::admin::format::{count, span, thousands, utc};
use crate::admin::layout::{Frame, Notice, page};
use crate::hold::{HeldSummary, TrippedBreaker};
use crate::message::address::{redact, redact_in_text};

/// Held messages closer than this to their expiry are marked.
const EXPIRES_SOON_MS: i64 = 24 * 3600 * 1000;

/// Most rows shown: a tripped breaker can hold thousands of messages, and a page of them
/// helps nobody (the command line lists them all).
pub const MAX_ROWS: usize = 1000;

/// The list page: `held` oldest first, as the queue gives them.
pub fn list(
    held: &[HeldSummary],
    breakers: &[TrippedBreaker],
    now_ms: i64,
    csrf: Option<&str>,
    notice: Option<&Notice>,
) -> Markup {
    let body = html! {
        h1 { "Held messages" }
        p.summary { (summary(held, now_ms)) }
        @if !held.is_empty() {
            div.scroll { (table(&held[..held.len().min(MAX_ROWS)], now_ms)) }
        }
        @if held.len() > MAX_ROWS {
            p.summary {
                "Showing the oldest " (thousands(MAX_ROWS)) " of " (thousands(held.len()))
                ". " code { "bccguard queue list --held" } " lists them all."
            }
        }
        h2 { "Tripped breakers" }
        (tripped(breakers, now_ms))
    };
    page(Frame { title: "held messages", csrf, notice }, body)
}

/// One line over the table: how many, the oldest, the next to expire.
fn summary(held: &[HeldSummary], now_ms: i64) -> String {
    let Some(oldest) = held.iter().map(|m| m.received_at).min() else {
        return "Nothing is held. A message that a rule holds waits here until someone releases or \
                deletes it."
            .into();
    };
    let next_expiry = held.iter().map(|m| m.expires_at).min().unwrap_or(oldest);
    format!(
        "{} held; the oldest came {} ago; the next is deleted (with a bounce) in {}.",
        count(held.len(), "message", "messages"),
        span(now_ms - oldest),
        span(next_expiry - now_ms)
    )
}

fn table(held: &[HeldSummary], now_ms: i64) -> Markup {
    html! {
        table.held {
            thead {
                tr {
                    th { "ID" } th { "Age" } th { "Sender" } th { "Subject" }
                    th.num { "Recipients" } th.num { "Exposure" } th { "Rule" } th.num { "Expires in" }
                }
            }
            tbody {
                @for m in held {
                    @let subject = redact_in_text(&m.subject);
                    @let left = m.expires_at - now_ms;
                    tr {
                        td.id data-label="ID" { a href={ "/message/" (m.id) } { (m.id) } }
                        td data-label="Age" title=(utc(m.received_at)) { (span(now_ms - m.received_at)) }
                        td data-label="Sender" { (redact(&m.sender)) }
                        td.subject data-label="Subject" {
                            @if subject.is_empty() { span.muted { "(no subject)" } } @else { (subject) }
                        }
                        td.num data-label="Recipients" { (thousands(m.recipients)) }
                        td.num data-label="Exposure" { (thousands(m.exposure)) }
                        td data-label="Rule" { (m.rule.as_deref().unwrap_or("default")) }
                        td.num.soon[left < EXPIRES_SOON_MS] data-label="Expires in" title=(utc(m.expires_at)) {
                            (span(left))
                        }
                    }
                }
            }
        }
    }
}

/// The tripped breakers: key (redacted like a sender), leaks counted, since when, what it does,
/// and when it closes by itself. `bccguard breaker reset KEY` closes one now.
fn tripped(breakers: &[TrippedBreaker], now_ms: i64) -> Markup {
    html! {
        @if breakers.is_empty() {
            p.empty { "No breaker is tripped." }
        } @else {
            div.scroll {
                table.held {
                    thead {
                        tr {
                            th { "Key" } th.num { "Leaks" } th { "Tripped" } th { "Action" } th.num { "Closes in" }
                        }
                    }
                    tbody {
                        @for b in breakers {
                            tr {
                                td data-label="Key" { (redact(&b.key)) }
                                td.num data-label="Leaks" { (thousands(b.count as usize)) }
                                td data-label="Tripped" title=(utc(b.at)) { (span(now_ms - b.at)) " ago" }
                                td data-label="Action" { (b.action) }
                                td.num data-label="Closes in" title=(utc(b.until)) { (span(b.until - now_ms)) }
                            }
                        }
                    }
                }
            }
            p.summary { code { "bccguard breaker reset KEY" } " closes one now." }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue_id::QueueId;

    const NOW: i64 = 1_795_000_000_000;

    fn held(subject: &str, sender: &str, age_ms: i64) -> HeldSummary {
        HeldSummary {
            id: QueueId::parse("0641F2A3B4C5D001").unwrap(),
            received_at: NOW - age_ms,
            expires_at: NOW - age_ms + 10 * 86_400_000,
            sender: sender.into(),
            subject: subject.into(),
            recipients: 1000,
            exposure: 998,
            rule: Some("marketing".into()),
        }
    }

    #[test]
    fn the_list_shows_no_address_and_escapes_every_value() {
        let m = held("<script>alert(1)</script> for bob@customer.example", "jane@shop.example", 11_520_000);
        let html = list(&[m], &[], NOW, Some("tok"), None).into_string();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("jane@shop.example") && !html.contains("bob@customer.example"), "{html}");
        assert!(html.contains("j***@shop.example") && html.contains("b***@customer.example"), "{html}");
        for cell in ["3h 12m", "1,000", "998", "marketing", "9d 20h", "href=\"/message/0641F2A3B4C5D001\""] {
            assert!(html.contains(cell), "{cell} in {html}");
        }
        assert!(html.contains("1 message held; the oldest came 3h 12m ago"), "{html}");
        assert!(html.contains("No breaker is tripped"));
    }

    #[test]
    fn a_huge_queue_shows_its_oldest_rows() {
        let many: Vec<HeldSummary> = (0..MAX_ROWS + 5).map(|_| held("s", "a@b.example", 1000)).collect();
        let html = list(&many, &[], NOW, None, None).into_string();
        assert_eq!(html.matches("<tr>").count(), MAX_ROWS + 1, "the header row and MAX_ROWS rows");
        assert!(html.contains("1,005 messages held") && html.contains("Showing the oldest 1,000 of 1,005."));
    }

    #[test]
    fn an_empty_queue_says_so_and_soon_expiries_stand_out() {
        let html = list(&[], &[], NOW, None, None).into_string();
        assert!(html.contains("Nothing is held.") && !html.contains("<table"), "{html}");
        let old = held("", "", 9 * 86_400_000 + 3_600_000);
        let html = list(&[old], &[], NOW, None, None).into_string();
        assert!(html.contains("class=\"num soon\""), "{html}");
        assert!(html.contains("(no subject)") && html.contains("&lt;&gt;"), "{html}");
    }

    #[test]
    fn tripped_breakers_show_redacted_keys_and_when_they_close() {
        let trip = TrippedBreaker {
            key: "news<b>@shop.example.com".into(),
            count: 1250,
            at: NOW - 600_000,
            until: NOW + 3_000_000,
            action: "hold".into(),
        };
        let html = list(&[], &[trip], NOW, None, None).into_string();
        assert!(!html.contains("news"), "the key is redacted like a sender: {html}");
        assert!(html.contains("n***@shop.example.com"), "{html}");
        assert!(html.contains("1,250") && html.contains("10m ago") && html.contains("50m"), "{html}");
        assert!(html.contains("bccguard breaker reset KEY"), "{html}");
        let none = list(&[], &[], NOW, None, None).into_string();
        assert!(none.contains("No breaker is tripped."), "{none}");
    }
}
