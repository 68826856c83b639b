//! STARTTLS: the rustls server configuration from `[server.tls]` PEM files.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use crate::config::ServerTlsConfig;

/// A TLS setup problem, at the config key it comes from.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct TlsConfigError {
    /// `server.tls.cert` or `server.tls.key`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The crypto provider every TLS use in bccguard shares.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read the certificate chain and key and build the server configuration.
pub fn load_server_config(config: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let cert_err = |message: String| TlsConfigError { key: "server.tls.cert", message };
    let key_err = |message: String| TlsConfigError { key: "server.tls.key", message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| cert_err(format!("cannot read {}: {e}", config.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("bad PEM in {}: {e}", config.cert.display())))?;
    if certs.is_empty() {
        return Err(cert_err(format!("no certificate in {}", config.cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| key_err(format!("no usable private key in {}: {e}", config.key.display())))?;
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| key_err(format!("certificate and key do not fit together: {e}")))?;
    Ok(Arc::new(server))
}
