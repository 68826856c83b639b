//! Queue ids: short, unique, and sorting in the order messages arrived.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A message's id in the queue and in logs: 16 hex digits, microseconds since 1970 then a
/// counter, e.g. `0641F2A3B4C5D001`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QueueId(String);

impl QueueId {
    /// A new id, unique within this process and across restarts.
    pub fn generate() -> QueueId {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFF;
        QueueId(format!("{:013X}{n:03X}", micros & 0xF_FFFF_FFFF_FFFF))
    }

    /// An id read back from the spool or the command line, if it has the right shape.
    pub fn parse(s: &str) -> Option<QueueId> {
        (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase()))
            .then(|| QueueId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// When the id was made (the message arrived), in whole seconds since 1970.
    pub fn unix_secs(&self) -> Option<i64> {
        let micros = i64::from_str_radix(self.0.get(..13)?, 16).ok()?;
        Some(micros / 1_000_000)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_parse_back() {
        let ids: std::collections::HashSet<_> = (0..5000).map(|_| QueueId::generate()).collect();
        assert_eq!(ids.len(), 5000);
        let id = ids.into_iter().next().unwrap();
        assert_eq!(QueueId::parse(id.as_str()), Some(id));
        assert_eq!(QueueId::parse("../../etc/passwd"), None);
        assert_eq!(QueueId::parse("0641f2a3b4c5d001"), None);
    }

    #[test]
    fn an_id_tells_when_it_was_made() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let made = QueueId::generate().unix_secs().unwrap();
        assert!((before..=before + 1).contains(&made), "{made} vs {before}");
        assert_eq!(QueueId::parse("0641F2A3B4C5D001").unwrap().unix_secs(), Some(0x0641F2A3B4C5D / 1_000_000));
    }
}
