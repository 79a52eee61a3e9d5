//! TLS for `mqtts://` uplinks: rustls with the ring provider.
//!
//! [`client_config`] turns `[uplinks.tls]` into a rustls `ClientConfig` once, when the uplink is
//! built, so that unreadable files, a PEM file without certificates or a private key that does not
//! belong to the client certificate stop the agent at startup with one sentence naming the file.
//! The broker's certificate is verified against `ca_file`, or against the system roots when no
//! `ca_file` is given. `server_name` overrides the name sent as SNI and checked against the broker's
//! certificate (the rumqttc transport connects to the configured host, see `mqtt.rs`).
//!
//! [`explain`] maps a failed handshake to one sentence an operator can act on (expired certificate,
//! wrong CA, name mismatch, missing or rejected client certificate). A handshake failure is a
//! connection failure like any other: records stay in the spool and the uplink retries with backoff.
//!
//! Invariant: only the ring provider is used; [`install_provider`] makes it the process default
//! (idempotent), so nothing in rustls falls back to another provider.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, RootCertStore};

use crate::config::TlsSettings;

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("{what} {path}: {detail}")]
    File {
        /// `ca_file`, `cert_file` or `key_file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The system trust store has no usable certificate.
    #[error("no usable CA certificate in the system trust store; set tls.ca_file")]
    NoSystemRoots,
    /// The client key does not belong to the client certificate.
    #[error("key_file {key} does not match the certificate in cert_file {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// `cert_file` and `key_file` must be given together.
    #[error("cert_file and key_file must be given together for mutual TLS")]
    HalfClientAuth,
    /// Any other rustls refusal.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ring crypto provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make ring the process-wide default rustls provider. Safe to call any number of times.
pub fn install_provider() {
    // Err only means a default is already installed (by an earlier call or by the binary).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Build the rustls client configuration of an uplink. Reads every file named in `settings`.
pub fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
    install_provider();
    let roots = match &settings.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = read_certs("ca_file", path)?;
            let (added, _ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::File {
                    what: "ca_file",
                    path: path.clone(),
                    detail: "no usable CA certificate in the file".into(),
                });
            }
            roots
        }
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let certs = read_certs("cert_file", cert_path)?;
            let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::File {
                what: "key_file",
                path: key_path.clone(),
                detail: format!("no private key found ({e})"),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                        cert: cert_path.clone(),
                        key: key_path.clone(),
                    },
                    other => TlsError::Rustls(other),
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::HalfClientAuth),
    };
    Ok(Arc::new(config))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |detail: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!("system trust store: {e}");
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// One sentence for a TLS failure somewhere in `err`'s source chain (including `io::Error`s that
/// wrap a rustls error); `None` when the failure is not a TLS one.
pub fn explain(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(sentence(tls));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(sentence(tls));
        }
        next = e.source();
    }
    None
}

/// One operator sentence for a rustls error.
pub fn sentence(err: &rustls::Error) -> String {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the broker's certificate has expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the broker's certificate is not valid yet (check this machine's clock)".into()
            }
            CertificateError::UnknownIssuer => {
                "TLS: the broker's certificate is not signed by a trusted CA (wrong tls.ca_file?)"
                    .into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "TLS: the broker's certificate is not valid for the server name (set tls.server_name?)"
                    .into()
            }
            CertificateError::Revoked => "TLS: the broker's certificate is revoked".into(),
            other => format!("TLS: the broker's certificate is invalid ({other:?})"),
        },
        E::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => {
                "TLS: the broker requires a client certificate (set tls.cert_file and tls.key_file)"
                    .into()
            }
            AlertDescription::HandshakeFailure => {
                "TLS: the broker refused the handshake (a client certificate may be required, \
                 or no cipher suite is shared)"
                    .into()
            }
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate => format!(
                "TLS: the broker rejected the client certificate ({})",
                alert_name(*alert)
            ),
            AlertDescription::CertificateExpired => {
                "TLS: the broker rejected the client certificate as expired".into()
            }
            other => format!("TLS: the broker ended the handshake ({})", alert_name(*other)),
        },
        E::InconsistentKeys(_) => "TLS: the client key does not match the client certificate".into(),
        E::NoCertificatesPresented => "TLS: the broker presented no certificate".into(),
        other => format!("TLS: {other}"),
    }
}

fn alert_name(alert: AlertDescription) -> String {
    // `UnknownCA` → `unknown CA`-like text without depending on Debug spelling details.
    let debug = format!("{alert:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_name_the_cause() {
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert_eq!(
            sentence(&expired),
            "TLS: the broker's certificate has expired"
        );
        let unknown = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(sentence(&unknown).contains("wrong tls.ca_file"));
        let required = rustls::Error::AlertReceived(AlertDescription::CertificateRequired);
        assert!(sentence(&required).contains("requires a client certificate"));
        let bad = rustls::Error::AlertReceived(AlertDescription::BadCertificate);
        assert_eq!(
            sentence(&bad),
            "TLS: the broker rejected the client certificate (bad certificate)"
        );
    }

    #[test]
    fn explain_finds_rustls_errors_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(
            explain(&io).as_deref(),
            Some("TLS: the broker's certificate has expired")
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(explain(&plain), None);
    }
}
