//! Fuzz the calendar invite handling: find the calendar parts of a message, read their
//! ATTENDEEs, and rewrite each part for one recipient.
//!
//! Input: a message (made CRLF, as the relay receives it). Checked for every part found:
//! - the unfolded content lines of the decoded object account for every byte of it;
//! - the part rewritten for a recipient decodes again in its own transfer encoding, and lists
//!   no ATTENDEE but that recipient and the internal ones (example.com);
//! - a rewritten object read again gives the same result when rewritten again (stable).
#![no_main]

use bccguard::config::PolicyConfig;
use bccguard::message::address;
use bccguard::message::calendar::{attendees, content_lines, decode, parts};
use bccguard::message::decide::Policy;
use bccguard::message::parse::to_crlf;
use bccguard::rewrite::calendar::CalendarRewrite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let message = to_crlf(data);
    let policy =
        Policy::from_config(&PolicyConfig { internal_domains: vec!["example.com".into()], ..Default::default() });
    let found = parts(&message);
    let plans = CalendarRewrite::plan(&found, 0, &policy);
    for (part, plan) in found.iter().zip(&plans) {
        assert!(part.range.start <= part.range.end && part.range.end <= message.len());
        let encoded = &message[part.range.clone()];
        if let Ok(text) = decode(encoded, part.encoding) {
            let joined: Vec<u8> = content_lines(&text).iter().flat_map(|l| l.raw.iter().copied()).collect();
            assert_eq!(joined, text, "content lines cover the object");
        }
        let recipient = part
            .attendees
            .iter()
            .find(|m| !policy.is_internal(&m.address))
            .map_or("someone@outside.test".to_string(), |m| m.address.clone());
        let own = address::key(&recipient);
        let copy = plan.for_recipient(encoded, &recipient);
        let text = decode(&copy, part.encoding).expect("a rewritten part decodes");
        for m in attendees(&text) {
            assert!(policy.is_internal(&m.address) || address::key(&m.address) == own, "{} left in", m.address);
        }
        let again = plan.for_recipient(&copy, &recipient);
        assert_eq!(decode(&again, part.encoding).expect("decodes"), text, "stable");
    }
});
