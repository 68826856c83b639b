//! What happened to one recipient in one attempt, as a value: the upstream's reply parsed
//! once (code, enhanced code, text), or why there was no usable one. The journal keeps the
//! text (the spool format does not change); [`recorded`] reads it back at that edge only.

use std::fmt;

use super::reply::{Answer, Enhanced, Reply};

/// What happened to one recipient in one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: the upstream's 2xx reply (or the outbox's own).
    Delivered(Reply),
    /// Try again later: a 4xx reply, or no usable reply (a connection failure, a timeout, a
    /// refusal of the relay itself).
    Deferred(Answer),
    /// Refused for good: a 5xx reply (the upstream's, or one bccguard gives itself, such as
    /// `553 5.6.7` when the upstream cannot take an internationalized address).
    Failed(Reply),
}

impl Outcome {
    /// Worth trying again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Outcome::Deferred(_))
    }

    /// Will not succeed as it is.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    /// The enhanced status code of the reply, when it has one.
    pub fn enhanced(&self) -> Option<Enhanced> {
        match self {
            Outcome::Delivered(r) | Outcome::Failed(r) => r.enhanced,
            Outcome::Deferred(a) => a.enhanced(),
        }
    }
}

impl fmt::Display for Outcome {
    /// The reply as the journal and the logs show it: `550 5.1.1 no such user`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered(r) | Outcome::Failed(r) => r.fmt(f),
            Outcome::Deferred(a) => a.fmt(f),
        }
    }
}

/// A reply text as the journal recorded it, as a value again: a reply when it starts with a
/// code, else the reason there was none.
pub fn recorded(text: &str) -> Answer {
    Reply::parse(text).map_or_else(|| Answer::Broken(text.to_string()), Answer::Reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_values_and_journal_as_text() {
        let failed = Outcome::Failed(Reply::new(550, "5.1.1 no such user"));
        assert!(failed.is_permanent() && !failed.is_transient());
        assert_eq!(failed.enhanced().map(|e| e.to_string()), Some("5.1.1".into()));
        assert_eq!(failed.to_string(), "550 5.1.1 no such user");
        let deferred = Outcome::Deferred(Answer::Broken("smtp.test:25: connect: refused".into()));
        assert!(deferred.is_transient() && deferred.enhanced().is_none());
        assert_eq!(recorded(&deferred.to_string()), Answer::Broken("smtp.test:25: connect: refused".into()));
        assert_eq!(recorded(&failed.to_string()), Answer::Reply(Reply::new(550, "5.1.1 no such user")));
    }
}
