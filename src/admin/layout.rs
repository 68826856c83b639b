//! The frame every page shares (head, top bar with the logout button, a notice line) and
//! the stylesheet. Every value goes through maud, which escapes it; nothing here is marked
//! safe except the doctype.

use maud::{DOCTYPE, Markup, html};

use super::csrf;

/// The stylesheet, served at [`STYLESHEET_PATH`] (the CSP allows styles from the page's own
/// origin only).
pub const STYLESHEET: &str = include_str!("style.css");

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/style.css";

/// How a notice reads: the result of an action, or a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// It was done.
    Done,
    /// Nothing was done, and that may be fine (already released).
    Warn,
    /// Something failed.
    Error,
}

/// One line at the top of a page saying what just happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// How it reads.
    pub tone: Tone,
    /// The text (escaped when shown).
    pub text: String,
}

impl Notice {
    /// A notice of this tone.
    pub fn new(tone: Tone, text: impl Into<String>) -> Notice {
        Notice { tone, text: text.into() }
    }
}

/// What the frame needs to know about the page and the caller.
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame<'a> {
    /// The page's title (after "bccguard: ").
    pub title: &'a str,
    /// The session's CSRF token, when the caller is a logged-in browser (then the top bar
    /// offers "Log out").
    pub csrf: Option<&'a str>,
    /// The line at the top, if any.
    pub notice: Option<&'a Notice>,
}

/// A whole page: `body` in the shared frame.
pub fn page(frame: Frame<'_>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { "bccguard: " (frame.title) }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body {
                header.top {
                    a.brand href="/" { "bccguard" }
                    span.where { "held mail review" }
                    @if let Some(token) = frame.csrf {
                        form method="post" action="/logout" {
                            (csrf_field(token))
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(notice) = frame.notice {
                        (notice_line(notice))
                    }
                    (body)
                }
            }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name=(csrf::FIELD) value=(token); }
}

/// The notice line; `role="status"` so screen readers announce it.
fn notice_line(notice: &Notice) -> Markup {
    let class = match notice.tone {
        Tone::Done => "notice done",
        Tone::Warn => "notice warn",
        Tone::Error => "notice error",
    };
    html! { p class=(class) role="status" { (notice.text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_escapes_and_offers_logout_only_to_sessions() {
        let notice = Notice::new(Tone::Done, "Released <b>x</b>");
        let frame = Frame { title: "<i>t</i>", csrf: Some("abc\"def"), notice: Some(&notice) };
        let html = page(frame, html! { p { "body" } }).into_string();
        assert!(html.starts_with("<!DOCTYPE html><html lang=\"en\">"), "{html}");
        assert!(html.contains("<title>bccguard: &lt;i&gt;t&lt;/i&gt;</title>"), "{html}");
        assert!(html.contains("Released &lt;b&gt;x&lt;/b&gt;"), "{html}");
        assert!(html.contains("value=\"abc&quot;def\""), "{html}");
        assert!(html.contains("action=\"/logout\""));
        let html = page(Frame { title: "t", ..Frame::default() }, html! {}).into_string();
        assert!(!html.contains("/logout"));
    }
}
