//! Numbers and times as a person reads them at 3 a.m.: `3h 12m`, `1,000`, `2026-11-29 17:09 UTC`.

/// A span of milliseconds in its two largest units: `45s`, `12m`, `3h 12m`, `2d 4h`. A
/// negative span (a clock step) reads as `0s`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match () {
        _ if d > 0 => format!("{d}d {h}h"),
        _ if h > 0 => format!("{h}h {m:02}m"),
        _ if m > 0 => format!("{m}m"),
        _ => format!("{s}s"),
    }
}

/// `n` with a comma between each group of three digits: `1,234,567`.
pub fn thousands(n: usize) -> String {
    crate::text::thousands(n as u64)
}

/// `n` and the noun, singular or plural: `1 message`, `1,000 messages`.
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { singular } else { plural })
}

/// Unix milliseconds as a UTC date and time to the minute.
pub fn utc(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M UTC").to_string(),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_show_two_units() {
        for (ms, text) in [
            (-5_000, "0s"),
            (0, "0s"),
            (45_999, "45s"),
            (12 * 60_000 + 59_000, "12m"),
            ((3 * 60 + 2) * 60_000, "3h 02m"),
            ((3 * 60 + 12) * 60_000, "3h 12m"),
            ((2 * 24 + 4) * 3_600_000 + 59 * 60_000, "2d 4h"),
            (10 * 86_400_000, "10d 0h"),
        ] {
            assert_eq!(span(ms), text, "{ms}");
        }
    }

    #[test]
    fn thousands_are_separated() {
        for (n, text) in [(0, "0"), (999, "999"), (1000, "1,000"), (23_000, "23,000"), (1_234_567, "1,234,567")] {
            assert_eq!(thousands(n), text);
        }
        assert_eq!(count(1, "message", "messages"), "1 message");
        assert_eq!(count(1000, "message", "messages"), "1,000 messages");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18 11:06 UTC");
    }
}
