//! The `Received:` trace field the relay prepends to each message (RFC 5321 §4.4).

use chrono::{DateTime, Utc};

use super::session::Incoming;

/// Longest client-given EHLO name copied into the field.
const MAX_HELO: usize = 255;

/// The `Received:` field for a message, CRLF-terminated and folded: the client's EHLO name
/// (sanitized) and address, our name, the protocol (RFC 3848) and queue id, and the date.
/// Recipients are not named (a `for` clause would put addresses in every copy).
pub fn received_field(incoming: &Incoming, hostname: &str, id: &str, now: DateTime<Utc>) -> String {
    let protocol = match (incoming.tls, incoming.user.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    format!(
        "Received: from {helo} ([{ip}])\r\n\tby {hostname} (bccguard) with {protocol} id {id};\r\n\t{date}\r\n",
        helo = sanitize_helo(&incoming.helo),
        ip = incoming.peer.ip().to_canonical(),
        date = now.to_rfc2822(),
    )
}

/// Keep only characters that are safe and meaningful in a host name or address literal.
fn sanitize_helo(helo: &str) -> String {
    let clean: String = helo
        .chars()
        .take(MAX_HELO)
        .map(|c| if c.is_ascii_alphanumeric() || ".-_:[]".contains(c) { c } else { '?' })
        .collect();
    if clean.is_empty() { "unknown".into() } else { clean }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_field_names_client_protocol_and_id() {
        let incoming = Incoming {
            peer: "127.0.0.1:40000".parse().unwrap(),
            helo: "client.example(evil)\u{7f}".into(),
            tls: true,
            user: None,
            sender: String::new(),
            recipients: Default::default(),
            data: vec![],
        };
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 16, 24, 0).unwrap();
        let field = received_field(&incoming, "relay.example", "0ABC", now);
        assert_eq!(
            field,
            "Received: from client.example?evil?? ([127.0.0.1])\r\n\tby relay.example (bccguard) \
             with ESMTPS id 0ABC;\r\n\tSat, 21 Nov 2026 16:24:00 +0000\r\n"
        );
    }
}
