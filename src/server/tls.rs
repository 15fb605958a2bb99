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
    /// The client CA file holds no usable PEM certificate.
    #[error("tls_client_ca_file: no usable PEM CA certificate in `{}`", .0.display())]
    NoClientCa(PathBuf),
    /// rustls refused to verify clients with these CA certificates.
    #[error("tls_client_ca_file: rejected by rustls")]
    ClientCa(#[source] tokio_rustls::rustls::server::VerifierBuilderError),
}

/// Which clients a TLS endpoint asks for a certificate, and whether it
/// insists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCa {
    /// PEM file of the CA certificates a client certificate must chain to.
    pub file: PathBuf,
    /// Refuse the handshake of a client without a certificate (with one that
    /// does not verify, the handshake fails either way).
    pub required: bool,
}

/// A TLS acceptor for the certificate chain and private key in these PEM
/// files (TLS 1.2 and 1.3, rustls with aws-lc-rs), verifying client
/// certificates against `client_ca` when it is given.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path, client_ca: Option<&ClientCa>) -> Result<TlsAcceptor, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};
    let read = |path: &Path| std::fs::read(path).map_err(|cause| TlsError::Read { path: path.to_path_buf(), cause });
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let cert_pem = read(cert_file)?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_file)?).map_err(|_| TlsError::NoKey(key_file.to_path_buf()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let pem = read(&ca.file)?;
            for cert in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
                // One unusable certificate among several is skipped, as a
                // system trust store does; none at all is an error below.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoClientCa(ca.file.clone()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if ca.required { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(TlsError::ClientCa)?)
        }
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
