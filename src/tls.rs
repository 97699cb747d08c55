//! TLS for the listener: certificates from PEM files, or a development certificate made at
//! start (`--tls-self-signed`). rustls with the ring provider; ALPN offers `h2` and
//! `http/1.1`, so HTTP/2 over TLS needs no client configuration.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Where the certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated at start for `localhost` and `127.0.0.1`; its PEM is written to
    /// `<data_dir>/tls/self-signed.pem` so clients can trust it.
    SelfSigned,
}

/// What a started TLS setup tells the operator.
pub struct TlsSetup {
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the leaf certificate, `AA:BB:…`.
    pub fingerprint: String,
    /// Where a generated certificate was written.
    pub written_to: Option<PathBuf>,
}

/// Why the listener's TLS cannot be set up; each names the key or file at fault.
#[derive(Debug)]
pub enum TlsError {
    /// A PEM file given as `tls.cert` or `tls.key` cannot be read or holds nothing usable.
    Read {
        key: &'static str,
        /// What went wrong, e.g. "cannot read certificates from".
        what: &'static str,
        path: PathBuf,
        /// The underlying error, when there is one.
        error: Option<String>,
    },
    /// The development certificate cannot be made or written.
    SelfSigned(String),
    /// rustls refuses the certificate and key.
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read {
                key,
                what,
                path,
                error,
            } => {
                write!(f, "{key}: {what} {}", path.display())?;
                match error {
                    Some(e) => write!(f, ": {e}"),
                    None => Ok(()),
                }
            }
            TlsError::SelfSigned(why) => f.write_str(why),
            TlsError::Config(why) => write!(f, "tls: {why}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn load_files(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            key: "tls.cert",
            path: cert.to_owned(),
            what: "cannot read certificates from",
            error: Some(e.to_string()),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Read {
            key: "tls.cert",
            path: cert.to_owned(),
            what: "no certificate in",
            error: None,
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        key: "tls.key",
        path: key.to_owned(),
        what: "cannot read a private key from",
        error: Some(e.to_string()),
    })?;
    Ok((chain, key))
}

fn self_signed(
    data_dir: &Path,
) -> Result<
    (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        PathBuf,
    ),
    TlsError,
> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| {
                TlsError::SelfSigned(format!("cannot generate a self-signed certificate: {e}"))
            })?;
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir)
        .map_err(|e| TlsError::SelfSigned(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("self-signed.pem");
    std::fs::write(&path, generated.cert.pem())
        .map_err(|e| TlsError::SelfSigned(format!("cannot write {}: {e}", path.display())))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    Ok((vec![generated.cert.der().clone()], key, path))
}

/// Builds the server's TLS configuration.
pub fn setup(source: &TlsSource, data_dir: &Path) -> Result<TlsSetup, TlsError> {
    let (chain, key, written_to) = match source {
        TlsSource::Files { cert, key } => {
            let (chain, key) = load_files(cert, key)?;
            (chain, key, None)
        }
        TlsSource::SelfSigned => {
            let (chain, key, path) = self_signed(data_dir)?;
            (chain, key, Some(path))
        }
    };
    let fingerprint = fingerprint(&chain[0]);
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                TlsError::Config(format!(
                    "the certificate and key do not form a usable pair: {e}"
                ))
            })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        fingerprint,
        written_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_setup_offers_h2_and_writes_its_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let setup = setup(&TlsSource::SelfSigned, dir.path()).unwrap();
        assert_eq!(setup.config.alpn_protocols[0], b"h2");
        assert_eq!(setup.fingerprint.len(), 32 * 3 - 1);
        let written = std::fs::read_to_string(setup.written_to.unwrap()).unwrap();
        assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn missing_files_name_the_key() {
        let err = setup(
            &TlsSource::Files {
                cert: "/nonexistent/cert.pem".into(),
                key: "/nonexistent/key.pem".into(),
            },
            Path::new("/tmp"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("tls.cert") && err.contains("/nonexistent/cert.pem"),
            "{err}"
        );
    }
}
