//! Cross-site request forgery: every form a browser session sees carries that session's own
//! random token (made at login, kept only in the session table and the page, never in a
//! cookie), and every POST made with the session cookie must bring it back. Browsers that
//! say a request comes from another site (`Sec-Fetch-Site`) are refused before that.

use hyper::HeaderMap;
use subtle::ConstantTimeEq;

use super::form::Form;
use super::session::Session;

/// The form field that carries the token.
pub const FIELD: &str = "csrf";

/// Whether the form carries the session's token (compared in constant time).
pub fn form_matches(session: &Session, form: &Form) -> bool {
    form.get(FIELD).is_some_and(|given| bool::from(session.csrf.as_bytes().ct_eq(given.as_bytes())))
}

/// Whether the browser says the request was started by another site's page
/// (`Sec-Fetch-Site: cross-site` or `same-site`); a page of ours says `same-origin`, a typed
/// address or bookmark `none`, and clients other than browsers send nothing.
pub fn from_another_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("cross-site") || v.eq_ignore_ascii_case("same-site"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_must_carry_the_sessions_own_token() {
        let session = Session { id: "1".repeat(64), csrf: "2".repeat(64) };
        let with = |body: &str| form_matches(&session, &Form::parse(body.as_bytes()));
        assert!(with(&format!("as=explode&csrf={}", "2".repeat(64))));
        assert!(!with("as=explode"));
        assert!(!with("csrf="));
        assert!(!with(&format!("csrf={}", "1".repeat(64))), "the session id is not the CSRF token");
        assert!(!with(&format!("csrf={}3", "2".repeat(64))));
    }

    #[test]
    fn only_browsers_that_say_another_site_are_refused() {
        let mut headers = HeaderMap::new();
        assert!(!from_another_site(&headers));
        for (value, refused) in [("cross-site", true), ("same-site", true), ("same-origin", false), ("none", false)] {
            headers.insert("sec-fetch-site", value.parse().unwrap());
            assert_eq!(from_another_site(&headers), refused, "{value}");
        }
    }
}
