//! Upstream replies as values, and the one function that decides what a reply means for the
//! copies of a message: accepted, deferred, failed for these recipients, or refused because of
//! the relay itself (its credentials, its TLS, its standing with the upstream), which defers
//! every copy and never bounces.
//!
//! Which refusals are about the relay is a property of where in the dialogue they come
//! (Postfix's `smtp_sasl_auth_soft_bounce` generalised):
//!
//! - greeting, EHLO, STARTTLS/TLS, AUTH: every failure, with a reply or without one (a TLS
//!   handshake that fails, no AUTH mechanism in common). Nothing about the message has been
//!   said yet.
//! - MAIL FROM: a 5xx whose enhanced code is `5.7.x` (security or policy: authentication
//!   required, relaying denied, sender not allowed for these credentials) or `5.5.x`
//!   (our command refused), or a bare 530/534/535/538 or 500/502/503/504 without an enhanced
//!   code. Other 5xx at MAIL (a bad sender address `5.1.x`, a size `5.3.4`, content `5.6.x`,
//!   a bare 550/553/554) fail the message as before.
//! - RCPT TO, DATA, end of data: a 5xx fails those recipients, except the replies that can
//!   only mean "authenticate first": 530, 534, 535, 538, or the enhanced codes 5.7.0 with 530,
//!   5.7.8, 5.7.9 and 5.7.11.
//!
//! A 4xx anywhere is deferred anyway; at greeting, EHLO, STARTTLS or AUTH it also counts as a
//! refusal of the relay, so that `/readyz` says why nothing is going out.

use std::fmt;

/// An enhanced status code (RFC 3463), `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced {
    /// 2, 4 or 5.
    pub class: u8,
    /// The subject (1 addressing, 3 mail system, 5 protocol, 7 security or policy, ...).
    pub subject: u16,
    /// The detail.
    pub detail: u16,
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl Enhanced {
    /// `5.1.1` and the like; `None` for anything else.
    pub fn parse(word: &str) -> Option<Enhanced> {
        let mut parts = word.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let digits = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit());
        if parts.next().is_some() || !digits(class, 1) || !digits(subject, 3) || !digits(detail, 3) {
            return None;
        }
        let class: u8 = class.parse().ok()?;
        matches!(class, 2 | 4 | 5).then_some(Enhanced {
            class,
            subject: subject.parse().ok()?,
            detail: detail.parse().ok()?,
        })
    }
}

/// One reply from the upstream: its code, its enhanced code if the first word is one, and
/// its text (the lines joined by spaces, enhanced code included, as the upstream wrote it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code, when the text starts with one.
    pub enhanced: Option<Enhanced>,
    /// Everything after the code.
    pub text: String,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() { write!(f, "{}", self.code) } else { write!(f, "{} {}", self.code, self.text) }
    }
}

impl Reply {
    /// A reply from its code and text.
    pub fn new(code: u16, text: &str) -> Reply {
        Reply::from_text(code, text.trim().to_string())
    }

    /// A reply from its code and text, the text kept (trimmed) rather than copied.
    pub fn from_text(code: u16, mut text: String) -> Reply {
        if text.trim().len() != text.len() {
            text = text.trim().to_string();
        }
        let enhanced = text.split_whitespace().next().and_then(Enhanced::parse);
        Reply { code, enhanced, text }
    }

    /// A reply as written (`550 5.1.1 no such user`); `None` unless it starts with a code.
    pub fn parse(line: &str) -> Option<Reply> {
        let code = line.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?;
        let rest = &line[3..];
        if !(rest.is_empty() || rest.starts_with([' ', '-'])) {
            return None;
        }
        Some(Reply::new(code.parse().ok()?, rest.get(1..).unwrap_or_default()))
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again as it is.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    fn enhanced_is(&self, subject: u16, detail: u16) -> bool {
        self.enhanced.is_some_and(|e| e.subject == subject && e.detail == detail)
    }

    /// A refusal that can only mean "authenticate (or encrypt) first".
    fn wants_authentication(&self) -> bool {
        matches!(self.code, 530 | 534 | 535 | 538)
            || self.enhanced_is(7, 8)
            || self.enhanced_is(7, 9)
            || self.enhanced_is(7, 11)
    }

    /// A 5xx to MAIL FROM that is about the relay (see the module documentation).
    fn refuses_the_relay_at_mail(&self) -> bool {
        match self.enhanced {
            Some(e) => e.subject == 7 || e.subject == 5,
            None => matches!(self.code, 500 | 502 | 503 | 504 | 530 | 534 | 535 | 538),
        }
    }
}

/// Where in the dialogue with the upstream something happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The connection's greeting (`220`).
    Greeting,
    /// EHLO.
    Ehlo,
    /// STARTTLS or the TLS handshake.
    Tls,
    /// AUTH.
    Auth,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA and the end of the data.
    Data,
}

impl Stage {
    /// The stage as named in logs, metrics and `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Tls => "TLS",
            Stage::Auth => "AUTH",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
        }
    }

    /// Before any command about a message: every failure here is about the relay.
    fn is_setup(self) -> bool {
        matches!(self, Stage::Greeting | Stage::Ehlo | Stage::Tls | Stage::Auth)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the upstream answered at a stage: a reply, or no reply at all (the connection broke,
/// the TLS handshake failed, the reply was unreadable or too long).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A reply.
    Reply(Reply),
    /// No usable reply; why.
    Broken(String),
}

impl Answer {
    /// The reply's enhanced status code, when there is a reply and it has one.
    pub fn enhanced(&self) -> Option<Enhanced> {
        match self {
            Answer::Reply(r) => r.enhanced,
            Answer::Broken(_) => None,
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Reply(r) => r.fmt(f),
            Answer::Broken(why) => f.write_str(why),
        }
    }
}

/// The upstream refused the relay itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Where.
    pub stage: Stage,
    /// The reply, when there was one.
    pub reply: Option<Reply>,
    /// What happened, for people: `AUTH refused: 535 5.7.8 ...`.
    pub text: String,
}

/// What an answer means for the recipients it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Go on (2xx, 3xx).
    Accepted(Reply),
    /// Try these recipients again later: a 4xx reply, or no usable one.
    Deferred(Answer),
    /// These recipients will not get the message.
    Failed(Reply),
    /// The relay itself was refused: every copy is deferred, nothing bounces.
    RelayRefused(Refusal),
}

/// The one decision: what `answer`, received at `stage`, means.
pub fn judge(stage: Stage, answer: Answer) -> Judgement {
    let refused = |reply: Option<Reply>, what: String| {
        Judgement::RelayRefused(Refusal { stage, text: format!("{stage} refused: {what}"), reply })
    };
    match answer {
        Answer::Broken(why) if stage.is_setup() && stage != Stage::Greeting && stage != Stage::Ehlo => {
            refused(None, why)
        }
        Answer::Broken(why) => Judgement::Deferred(Answer::Broken(why)),
        Answer::Reply(r) if r.is_positive() => Judgement::Accepted(r),
        Answer::Reply(r) if stage.is_setup() => refused(Some(r.clone()), r.to_string()),
        Answer::Reply(r) if r.is_transient() => Judgement::Deferred(Answer::Reply(r)),
        Answer::Reply(r) if stage == Stage::Mail && r.refuses_the_relay_at_mail() => {
            refused(Some(r.clone()), r.to_string())
        }
        Answer::Reply(r) if r.wants_authentication() => refused(Some(r.clone()), r.to_string()),
        Answer::Reply(r) if r.is_permanent() => Judgement::Failed(r),
        // Not a reply SMTP defines (1xx, 6xx and up): nothing was accepted.
        Answer::Reply(r) => Judgement::Deferred(Answer::Reply(r)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(line: &str) -> Answer {
        Answer::Reply(Reply::parse(line).unwrap())
    }

    fn verdict(stage: Stage, line: &str) -> &'static str {
        match judge(stage, reply(line)) {
            Judgement::Accepted(_) => "accepted",
            Judgement::Deferred(_) => "deferred",
            Judgement::Failed(_) => "failed",
            Judgement::RelayRefused(_) => "relay",
        }
    }

    #[test]
    fn replies_parse_once() {
        let r = Reply::parse("550 5.1.1 no such user").unwrap();
        assert_eq!(
            (r.code, r.enhanced.unwrap().to_string(), r.text.as_str()),
            (550, "5.1.1".into(), "5.1.1 no such user")
        );
        assert!(r.is_permanent() && !r.is_transient());
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        assert_eq!(Reply::parse("554 rejected").unwrap().enhanced, None);
        assert_eq!(Reply::parse("451").unwrap().to_string(), "451");
        assert!(Reply::parse("55x nope").is_none() && Reply::parse("5501 x").is_none());
        assert_eq!(Enhanced::parse("5.7.11"), Some(Enhanced { class: 5, subject: 7, detail: 11 }));
        assert_eq!(Enhanced::parse("3.1.1"), None);
    }

    #[test]
    fn where_a_refusal_comes_decides_whom_it_is_about() {
        let table = [
            (Stage::Greeting, "554 5.3.2 not accepting mail", "relay"),
            (Stage::Greeting, "421 4.3.2 busy", "relay"),
            (Stage::Ehlo, "550 5.7.1 go away", "relay"),
            (Stage::Tls, "454 4.7.0 TLS not available", "relay"),
            (Stage::Auth, "535 5.7.8 Authentication credentials invalid", "relay"),
            (Stage::Auth, "454 4.7.0 temporary authentication failure", "relay"),
            (Stage::Mail, "530 5.7.0 Authentication required", "relay"),
            (Stage::Mail, "530 must issue STARTTLS first", "relay"),
            (Stage::Mail, "554 5.7.1 Relay access denied", "relay"),
            (Stage::Mail, "555 5.5.4 unsupported parameter", "relay"),
            (Stage::Mail, "553 5.1.7 bad sender address", "failed"),
            (Stage::Mail, "552 5.3.4 message too big", "failed"),
            (Stage::Mail, "550 sender rejected", "failed"),
            (Stage::Mail, "451 4.7.1 greylisted", "deferred"),
            (Stage::Rcpt, "550 5.1.1 no such user", "failed"),
            (Stage::Rcpt, "554 5.7.1 <a@b>: Relay access denied", "failed"),
            (Stage::Rcpt, "530 5.7.0 Authentication required", "relay"),
            (Stage::Rcpt, "451 4.3.0 later", "deferred"),
            (Stage::Data, "554 5.7.1 content rejected", "failed"),
            (Stage::Data, "550 5.7.8 authentication needed", "relay"),
            (Stage::Data, "250 2.0.0 ok", "accepted"),
        ];
        for (stage, line, expected) in table {
            assert_eq!(verdict(stage, line), expected, "{stage} {line}");
        }
    }

    #[test]
    fn broken_connections_defer_and_broken_tls_or_auth_refuse_the_relay() {
        let broken = |stage| judge(stage, Answer::Broken("reset".into()));
        assert_eq!(broken(Stage::Greeting), Judgement::Deferred(Answer::Broken("reset".into())));
        assert_eq!(broken(Stage::Rcpt), Judgement::Deferred(Answer::Broken("reset".into())));
        for stage in [Stage::Tls, Stage::Auth] {
            let Judgement::RelayRefused(r) = broken(stage) else { panic!("{stage}") };
            assert_eq!(r.text, format!("{stage} refused: reset"));
        }
    }
}
