//! `wss://` served directly (tls_cert_file / tls_key_file), with a
//! certificate made by openssl and a rustls client that trusts only it.

mod common;

use std::sync::Arc;

use common::*;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

/// A self-signed certificate for localhost and 127.0.0.1.
fn certificate(dir: &tempfile::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (cert, key)
}

fn connector(cert: &std::path::Path) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn wss_is_served_with_the_configured_certificate() {
    let dir = scratch();
    let (cert, key) = certificate(&dir);
    let controller = Controller::allowing("/bin/echo", &["over tls"]).await;
    let mut config = config_for(&controller);
    config.tls_cert_file = Some(cert.clone());
    config.tls_key_file = Some(key);
    let server = TestServer::start(config).await;

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector(&cert).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws?token=t", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"over tls\n");
    assert_eq!(u16::from(close.unwrap().code), 1000);
    assert_eq!(controller.requests()[0].headers["x-forwarded-proto"], "https");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let (status, _, _) = http_request(server.addr, "GET /healthz HTTP/1.1").await;
    assert_eq!(status, 0);
}

#[tokio::test]
async fn bad_tls_files_stop_the_binary_at_start() {
    let dir = scratch();
    let (cert, key) = certificate(&dir);
    let bin = env!("CARGO_BIN_EXE_ws-subprocess");
    let run = |args: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new(bin).arg("--listen").arg("127.0.0.1:0").args(args).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let (code, err) = run(&["--tls-cert-file".as_ref(), key.as_os_str(), "--tls-key-file".as_ref(), key.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_cert_file"), "{err}");
    let (code, err) = run(&["--tls-cert-file".as_ref(), cert.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("go together"), "{err}");
    let (code, err) =
        run(&["--tls-cert-file".as_ref(), cert.as_os_str(), "--tls-key-file".as_ref(), "/nonexistent".as_ref()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent"), "{err}");
}
