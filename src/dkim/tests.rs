use std::path::PathBuf;

use super::*;
use crate::config::{DkimKeyConfig, KeyAlgorithm};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim").join(name)
}

fn signer(domains: &[&str]) -> Signer {
    let keys = domains
        .iter()
        .map(|d| DkimKeyConfig {
            domain: d.to_string(),
            selector: "sel".into(),
            key_file: fixture("ed25519.pem"),
            algorithm: KeyAlgorithm::Ed25519Sha256,
        })
        .collect();
    Signer::from_config(&DkimConfig { keys, ..DkimConfig::default() }).unwrap()
}

#[test]
fn the_key_for_the_from_domain_or_its_nearest_parent_aligns() {
    let s = signer(&["example.com", "news.example.com", "other.test"]);
    let d = |from: &str| s.aligned(from).map(|k| k.domain.clone());
    assert_eq!(d("example.com").as_deref(), Some("example.com"));
    assert_eq!(d("News.Example.COM").as_deref(), Some("news.example.com"));
    assert_eq!(d("a.news.example.com").as_deref(), Some("news.example.com"));
    assert_eq!(d("mail.example.com").as_deref(), Some("example.com"));
    assert_eq!(d("badexample.com"), None, "a suffix that is not a parent domain does not align");
    assert_eq!(d("example.org"), None);
    let head = b"Received: x\r\nFrom: \"Shop\" <shop@News.Example.com>\r\nTo: a@x.test\r\n\r\n";
    assert_eq!(from_domain(head).as_deref(), Some("news.example.com"));
    assert_eq!(s.key_for(head).unwrap().domain, "news.example.com");
}

#[test]
fn key_files_of_each_kind_load_and_a_bad_one_names_its_path() {
    for (file, alg) in [
        ("rsa.pem", KeyAlgorithm::RsaSha256),
        ("rsa-pkcs1.pem", KeyAlgorithm::RsaSha256),
        ("ed25519.pem", KeyAlgorithm::Ed25519Sha256),
    ] {
        key::load(&fixture(file), alg).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let e = key::load(&fixture("ed25519.pem"), KeyAlgorithm::RsaSha256).err().unwrap().to_string();
    assert!(e.contains("ed25519.pem") && e.contains("rsa-sha256"), "{e}");
    let e = key::load(&fixture("README.md"), KeyAlgorithm::RsaSha256).err().unwrap().to_string();
    assert!(e.contains("README.md") && e.contains("no PEM private key"), "{e}");
    let e = key::load(&fixture("missing.pem"), KeyAlgorithm::RsaSha256).err().unwrap().to_string();
    assert!(e.starts_with("cannot read") && e.contains("missing.pem"), "{e}");
}

const ORIGINAL: &[u8] = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=a;\r\n\th=from:to:subject; bh=x; b=y\r\n\
DKIM-Signature: v=1; a=rsa-sha256; d=esp.test; s=b; h=From : Subject :\r\n Date; bh=x; b=y\r\n\
From: shop@example.com\r\nTo: a@x.test, b@y.test\r\nSubject: hi\r\n\r\n";

#[test]
fn a_signature_that_covered_a_changed_field_is_renamed_and_the_others_kept() {
    let sigs = signatures(ORIGINAL);
    assert_eq!(sigs.len(), 2);
    assert_eq!(sigs[0].signed, ["from", "to", "subject"]);
    assert_eq!(sigs[1].signed, ["from", "subject", "date"]);
    let copy = Bytes::from(String::from_utf8_lossy(ORIGINAL).replace("To: a@x.test, b@y.test", "To: a@x.test"));
    let (original, index) = (HeaderIndex::new(Bytes::from_static(ORIGINAL)), HeaderIndex::new(copy.clone()));
    assert!(sigs[0].broken_by(&original, &index) && !sigs[1].broken_by(&original, &index));
    let change = Change { original: &original, head: true, body: false };
    let s = Signer::default().finish(copy, change, None, 0);
    assert!(!s.resigned && s.unsigned_broken);
    assert_eq!(s.renamed, 1);
    let text = String::from_utf8(s.head.to_vec()).unwrap();
    assert!(text.starts_with("X-Original-DKIM-Signature: v=1; a=rsa-sha256; d=example.com;"), "{text}");
    assert!(text.contains("\r\nDKIM-Signature: v=1; a=rsa-sha256; d=esp.test;"), "{text}");
    // A changed body breaks every signature.
    let copy = Bytes::from_static(ORIGINAL);
    let s = Signer::default().finish(copy, Change { original: &original, head: false, body: true }, None, 0);
    assert_eq!(s.renamed, 2);
}

#[test]
fn an_unchanged_copy_is_left_alone_unless_sign_all() {
    let mut s = signer(&["example.com"]);
    let bh = body_hash([&b"hello\r\n"[..]]);
    let original = HeaderIndex::new(Bytes::from_static(ORIGINAL));
    let change = Change { original: &original, head: false, body: false };
    let out = s.finish(Bytes::from_static(ORIGINAL), change, Some(&bh), 1);
    assert!(!out.resigned && out.head == ORIGINAL);
    s.sign_all = true;
    let out = s.finish(Bytes::from_static(ORIGINAL), change, Some(&bh), 1);
    assert!(out.resigned && out.renamed == 0);
    let text = String::from_utf8(out.head.to_vec()).unwrap();
    assert!(
        text.starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=sel; d=example.com; c=relaxed/relaxed;"),
        "{text}"
    );
    assert!(text.ends_with(std::str::from_utf8(ORIGINAL).unwrap()));
}

#[test]
fn a_signed_message_rewritten_with_no_aligned_key_is_held_under_unsigned_hold() {
    let mut s = signer(&["other.test"]);
    let r = Report::of(ORIGINAL, &s, Action::Explode);
    assert_eq!((r.dkim, r.key.as_deref(), r.held), (Origin::SignedByOriginal, None, false));
    s.unsigned = Unsigned::Hold;
    assert!(Report::of(ORIGINAL, &s, Action::Explode).held);
    assert!(!Report::of(ORIGINAL, &s, Action::Pass).held, "nothing rewritten: nothing broken");
    let unsigned = b"From: shop@example.com\r\n\r\n";
    assert_eq!(Report::of(unsigned, &s, Action::Explode), Report::default());
    let s = signer(&["example.com"]);
    let r = Report::of(ORIGINAL, &s, Action::Explode);
    assert_eq!(r.key.as_deref(), Some("d=example.com s=sel"));
}
