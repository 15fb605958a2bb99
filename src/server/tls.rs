//! TLS from PEM files, with rustls.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// Why TLS could not be set up; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read `{}`", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        cause: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("tls_cert_file: no PEM certificate in `{}`", .0.display())]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("tls_key_file: no PEM private key in `{}`", .0.display())]
    NoKey(PathBuf),
    /// rustls refused the certificate and key.
    #[error("tls_cert_file/tls_key_file: rejected by rustls")]
    Rejected(#[from] tokio_rustls::rustls::Error),
}

/// A TLS acceptor for the certificate chain and private key in these PEM
/// files (TLS 1.2 and 1.3, rustls with aws-lc-rs).
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto};
    let read = |path: &Path| std::fs::read(path).map_err(|cause| TlsError::Read { path: path.to_path_buf(), cause });
    let cert_pem = read(cert_file)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|_| TlsError::NoKey(key_file.to_path_buf()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
