//! `wss://` served directly (tls_cert_file / tls_key_file), with a
//! certificate made by openssl and a rustls client that trusts only it.

mod common;

use common::*;

#[tokio::test]
async fn wss_is_served_with_the_configured_certificate() {
    let dir = scratch();
    let (cert, key) = certificate(dir.path(), "cert");
    let controller = Controller::allowing("/bin/echo", &["over tls"]).await;
    let mut config = config_for(&controller);
    config.tls_cert_file = Some(cert.clone());
    config.tls_key_file = Some(key);
    let server = TestServer::start(config).await;

    let tls = tls_connect(server.addr, &cert).await.unwrap();
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
    let (cert, key) = certificate(dir.path(), "cert");
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
