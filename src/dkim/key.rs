//! Loading a DKIM private key from a PEM file.

use std::path::Path;

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::KeyAlgorithm;

/// Why a key file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM private key.
    #[error("{path} holds no PEM private key ({reason})")]
    NotPem {
        /// The file.
        path: String,
        /// What the PEM reader said.
        reason: String,
    },
    /// The key is not a key of the configured algorithm.
    #[error("{path} is not a usable {algorithm} key ({reason})")]
    Unusable {
        /// The file.
        path: String,
        /// The configured algorithm.
        algorithm: &'static str,
        /// What the crypto library said.
        reason: String,
    },
}

/// The algorithm's name as DKIM writes it.
pub fn algorithm_name(a: KeyAlgorithm) -> &'static str {
    match a {
        KeyAlgorithm::RsaSha256 => "rsa-sha256",
        KeyAlgorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

/// Load the PEM key at `path` as a key of `algorithm`: RSA in PKCS#1 or PKCS#8, Ed25519 in
/// PKCS#8 (as `openssl genpkey` writes them).
pub fn load(path: &Path, algorithm: KeyAlgorithm) -> Result<DkimKey, KeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| KeyError::NotPem { path: shown.clone(), reason: e.to_string() })?;
    let unusable =
        |reason: String| KeyError::Unusable { path: shown.clone(), algorithm: algorithm_name(algorithm), reason };
    match algorithm {
        KeyAlgorithm::RsaSha256 => {
            RsaKey::<Sha256>::from_key_der(der).map(DkimKey::Rsa).map_err(|e| unusable(e.to_string()))
        }
        KeyAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(p) => Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                .map(DkimKey::Ed25519)
                .map_err(|e| unusable(e.to_string())),
            _ => Err(unusable("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)".into())),
        },
    }
}
