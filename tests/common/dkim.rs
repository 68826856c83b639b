//! DKIM test helpers: the test keys of `tests/fixtures/dkim`, signing originals with mail-auth
//! and with Python's dkimpy (an independent implementation), and verifying delivered copies
//! with both against a stub resolver that knows only the given TXT records.
//!
//! dkimpy comes from Debian's `python3-dkim` (with `python3-nacl` for Ed25519). When it is
//! missing the dkimpy checks are skipped with a message, except under CI (env `CI` set), where
//! they fail.

#![allow(dead_code)]

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// A test key file.
pub fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim").join(format!("{name}.pem"))
}

/// The TXT record of a test key.
pub fn record(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim").join(format!("{name}.dns"));
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// `(selector._domainkey.domain, TXT record)` of a test key published for `domain`.
pub fn publish(key: &str, selector: &str, domain: &str) -> (String, String) {
    (format!("{selector}._domainkey.{domain}"), record(key))
}

/// A resolver cache holding only the given records: nothing else is ever looked up.
struct Stub(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Stub {
    fn get<Q: Hash + Eq + ?Sized>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q: Hash + Eq + ?Sized>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _: std::time::Instant) {
        self.0.lock().unwrap().insert(key, value);
    }
}

/// Each DKIM signature of `message` as mail-auth verifies it: `(d=, passed)`, in order.
pub async fn verify_mail_auth(message: &[u8], records: &[(String, String)]) -> Vec<(String, bool)> {
    let stub = Stub(Mutex::new(HashMap::new()));
    for (name, txt) in records {
        let key = DomainKey::parse(txt.as_bytes()).expect("a valid DKIM record");
        stub.0.lock().unwrap().insert(format!("{name}.").into_boxed_str(), Txt::DomainKey(Arc::new(key)));
    }
    let auth = MessageAuthenticator::new_cloudflare().unwrap();
    let parsed = AuthenticatedMessage::parse(message).expect("the message parses");
    let outputs = auth.verify_dkim(Parameters::new(&parsed).with_txt_cache(&stub)).await;
    outputs
        .iter()
        .map(|o| {
            let d = o.signature().map(|s| s.d.clone()).unwrap_or_default();
            (d, matches!(o.result(), DkimResult::Pass))
        })
        .collect()
}

/// The Python with the Debian packages (`/usr/bin/python3` first: a python on PATH may be
/// another installation without them).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

/// Whether dkimpy can be used; under CI its absence is a failure.
pub fn dkimpy_available() -> bool {
    let ok = Command::new(python()).args(["-c", "import dkim, nacl"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "python3-dkim and python3-nacl are required under CI");
        eprintln!("SKIPPED: dkimpy checks (install python3-dkim and python3-nacl)");
    }
    ok
}

const DKIMPY_VERIFY: &str = r#"
import sys, json, dkim
msg = open(sys.argv[1], 'rb').read()
recs = json.loads(sys.argv[2])
def dns(name, timeout=5):
    r = recs.get(name.decode().rstrip('.'))
    return r.encode() if r else None
head = msg.split(b'\r\n\r\n', 1)[0]
lines = [l for l in head.split(b'\r\n') if l[:1] not in (b' ', b'\t')]
n = sum(1 for l in lines if l.split(b':', 1)[0].strip().lower() == b'dkim-signature')
d = dkim.DKIM(msg)
out = []
for i in range(n):
    ok = d.verify(idx=i, dnsfunc=dns)
    out.append([d.domain.decode() if d.domain else '', bool(ok)])
print(json.dumps(out))
"#;

/// Each DKIM signature of `message` as dkimpy verifies it; `None` when dkimpy is missing.
pub fn verify_dkimpy(message: &[u8], records: &[(String, String)]) -> Option<Vec<(String, bool)>> {
    if !dkimpy_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    std::fs::write(&file, message).unwrap();
    let recs: HashMap<&str, &str> = records.iter().map(|(n, r)| (n.as_str(), r.as_str())).collect();
    let out = Command::new(python())
        .args(["-c", DKIMPY_VERIFY, file.to_str().unwrap(), &serde_json::to_string(&recs).unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

const DKIMPY_SIGN: &str = r#"
import sys, dkim
msg = open(sys.argv[1], 'rb').read()
key = open(sys.argv[2], 'rb').read()
sig = dkim.sign(msg, sys.argv[3].encode(), sys.argv[4].encode(), key,
    include_headers=[h.encode() for h in sys.argv[5].split(':')],
    canonicalize=(b'relaxed', b'relaxed'))
sys.stdout.buffer.write(sig + msg)
"#;

/// `message` signed by dkimpy (RSA key `key`), or `None` when dkimpy is missing.
pub fn sign_dkimpy(message: &[u8], key: &str, selector: &str, domain: &str, headers: &str) -> Option<Vec<u8>> {
    if !dkimpy_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.eml");
    std::fs::write(&file, message).unwrap();
    let key = key_path(key);
    let out = Command::new(python())
        .args(["-c", DKIMPY_SIGN, file.to_str().unwrap(), key.to_str().unwrap(), selector, domain, headers])
        .output()
        .unwrap();
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    // dkimpy folds with bare LF: the front door takes CRLF only.
    let signed = out.stdout;
    let mut fixed = Vec::with_capacity(signed.len() + 16);
    for (i, &b) in signed.iter().enumerate() {
        if b == b'\n' && (i == 0 || signed[i - 1] != b'\r') {
            fixed.push(b'\r');
        }
        fixed.push(b);
    }
    Some(fixed)
}

/// `message` signed by mail-auth with test key `key` (`rsa` or `ed25519`).
pub fn sign_mail_auth(message: &[u8], key: &str, selector: &str, domain: &str, headers: &[&str]) -> Vec<u8> {
    let pem = std::fs::read(key_path(key)).unwrap();
    let der = PrivateKeyDer::from_pem_slice(&pem).unwrap();
    let key: DkimKey = match der {
        PrivateKeyDer::Pkcs8(p) if key.starts_with("ed25519") => {
            DkimKey::Ed25519(Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der()).unwrap())
        }
        der => DkimKey::Rsa(RsaKey::<Sha256>::from_key_der(der).unwrap()),
    };
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        .unwrap();
    let mut out = mail_auth::common::headers::HeaderWriter::to_header(&signature).into_bytes();
    out.extend_from_slice(message);
    out
}
