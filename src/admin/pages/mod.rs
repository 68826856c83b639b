//! The pages, as pure functions from values to HTML: the login form, the list of held
//! messages, one message, and a problem page. Times come in as a value (`now_ms`), so the
//! pages render the same in tests every time.

mod list;
mod message;

pub use list::list;
pub use message::message;

use maud::{Markup, html};

use super::layout::{Frame, Notice, Tone, page};

/// The login form; `problem` says why it is shown again.
pub fn login(problem: Option<&str>) -> Markup {
    let notice = problem.map(|text| Notice::new(Tone::Error, text));
    let body = html! {
        h1 { "Log in" }
        p.muted { "Enter the review token (the contents of " code { "admin.token_file" } ")." }
        form.login method="post" action="/login" {
            label for="token" { "Token" }
            input #token type="password" name="token" autocomplete="current-password" required autofocus;
            button.primary type="submit" { "Log in" }
        }
    };
    page(Frame { title: "log in", notice: notice.as_ref(), ..Frame::default() }, body)
}

/// A page that says what went wrong and where to go from here.
pub fn problem(title: &str, text: &str, csrf: Option<&str>) -> Markup {
    let body = html! {
        h1 { (title) }
        p { (text) }
        p { a href="/" { "Back to the held messages" } }
    };
    page(Frame { title, csrf, notice: None }, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_form_posts_the_token_and_shows_a_problem_as_text() {
        let html = login(Some("Wrong <token>")).into_string();
        assert!(html.contains("<form class=\"login\" method=\"post\" action=\"/login\">"), "{html}");
        assert!(html.contains("name=\"token\""));
        assert!(html.contains("Wrong &lt;token&gt;"));
        assert!(!html.contains("/logout"));
    }
}
