//! Client certificates (SPEC §11): `tls_client_ca_file` and
//! `tls_client_auth`; the verified identity told to the controller in
//! headers no client can forge; a certificate standing for a token; JWTs
//! bound to a certificate (`cnf` / `x5t#S256`, RFC 8705). Certificates are
//! made by openssl for each test.

mod common;

use std::path::PathBuf;

use common::*;
use http::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use ws_subprocess::config::ClientAuth;

/// The files of one test's small PKI: the server's own certificate, a CA,
/// two clients it signed (alice and bob) and one a stranger signed.
struct Pki {
    _dir: tempfile::TempDir,
    server: (PathBuf, PathBuf),
    ca: PathBuf,
    alice: (PathBuf, PathBuf),
    bob: (PathBuf, PathBuf),
    stranger: (PathBuf, PathBuf),
}

impl Pki {
    fn new() -> Self {
        let dir = scratch();
        let server = certificate(dir.path(), "server");
        let ca = certificate_authority(dir.path(), "clients-ca");
        let alice = client_certificate(dir.path(), "alice", "/O=Example/CN=alice", &ca);
        let bob = client_certificate(dir.path(), "bob", "/O=Example/CN=bob", &ca);
        let other_ca = certificate_authority(dir.path(), "other-ca");
        let stranger = client_certificate(dir.path(), "stranger", "/O=Example/CN=alice", &other_ca);
        Self { server, ca: ca.0, alice, bob, stranger, _dir: dir }
    }

    /// A TLS server config asking for client certificates in `mode`.
    fn config(&self, controller: &Controller, mode: Option<ClientAuth>) -> ws_subprocess::Config {
        let mut config = config_for(controller);
        config.tls_cert_file = Some(self.server.0.clone());
        config.tls_key_file = Some(self.server.1.clone());
        config.tls_client_ca_file = Some(self.ca.clone());
        config.tls_client_auth = mode;
        config
    }
}

/// Opens a session on `server` over TLS as `client` (no certificate when
/// `None`), with `query` after `?` and the extra request `headers`: the
/// WebSocket, or the HTTP status of the refusal (`None` when the TLS
/// handshake or the connection failed).
async fn open(
    server: &TestServer,
    pki: &Pki,
    client: Option<&(PathBuf, PathBuf)>,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Option<StatusCode>,
> {
    let tls = tls_connect_as(server.addr, &pki.server.0, client).await.map_err(|_| None)?;
    let mut request = format!("wss://localhost:{}/ws?{query}", server.addr.port()).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Some(response.status())),
        Err(_) => Err(None),
    }
}

const FORGED: [(&str, &str); 2] = [
    ("x-client-cert-subject", "CN=admin"),
    ("x-client-cert-sha256", "0000000000000000000000000000000000000000000000000000000000000000"),
];

#[tokio::test]
async fn a_verified_certificate_is_named_to_the_controller_and_a_forged_name_never_is() {
    let pki = Pki::new();
    let controller = Controller::allowing("/bin/echo", &["in"]).await;
    let mut config = pki.config(&controller, None);
    // Even a header the operator asked to forward cannot carry a forgery.
    config.controller_forward_headers = vec!["x-client-cert-subject".parse().unwrap(), "x-team".parse().unwrap()];
    let server = TestServer::start(config).await;

    let mut ws = open(&server, &pki, Some(&pki.alice), "token=t", &[FORGED[0], FORGED[1], ("x-team", "blue")])
        .await
        .expect("alice gets a session");
    let (output, close) = collect(&mut ws).await;
    assert_eq!((output.as_slice(), close.map(|c| u16::from(c.code))), (&b"in\n"[..], Some(1000)));
    let seen = controller.requests().pop().unwrap();
    let values =
        |name: &str| seen.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(values("x-client-cert-subject"), ["CN=alice,O=Example"]);
    assert_eq!(values("x-client-cert-sha256"), [fingerprint(&pki.alice.0)]);
    assert_eq!(values("x-team"), ["blue"]);
    assert_eq!(seen.token().as_deref(), Some("t"));

    // Bob is told apart from alice.
    let mut ws = open(&server, &pki, Some(&pki.bob), "token=t", &[]).await.expect("bob gets a session");
    collect(&mut ws).await;
    let seen = controller.requests().pop().unwrap();
    assert_eq!(seen.headers["x-client-cert-subject"], "CN=bob,O=Example");
    assert_eq!(seen.headers["x-client-cert-sha256"], fingerprint(&pki.bob.0).as_str());
}

#[tokio::test]
async fn the_certificate_alone_stands_for_a_token_with_a_controller() {
    let pki = Pki::new();
    let controller = Controller::allowing("/bin/echo", &["by certificate"]).await;
    let server = TestServer::start(pki.config(&controller, None)).await;
    let mut ws = open(&server, &pki, Some(&pki.alice), "", &[]).await.expect("a session on the certificate alone");
    let (output, _) = collect(&mut ws).await;
    assert_eq!(output, b"by certificate\n");
    let seen = controller.requests().pop().unwrap();
    assert_eq!(seen.token(), None, "{}", seen.uri);
    assert_eq!(seen.headers["x-client-cert-subject"], "CN=alice,O=Example");
}

#[tokio::test]
async fn required_refuses_a_client_without_a_certificate_from_the_ca_before_anything_is_asked() {
    let pki = Pki::new();
    let controller = Controller::allowing("/bin/echo", &["never"]).await;
    let server = TestServer::start(pki.config(&controller, Some(ClientAuth::Required))).await;
    for (who, client) in [("no certificate", None), ("a stranger's CA", Some(&pki.stranger))] {
        let refused = open(&server, &pki, client, "token=t", &[]).await;
        assert!(matches!(refused, Err(None)), "{who}: not refused in the handshake");
    }
    assert!(controller.requests().is_empty());
    // The server still serves the right client.
    let mut ws = open(&server, &pki, Some(&pki.alice), "token=t", &[]).await.expect("alice");
    assert_eq!(collect(&mut ws).await.0, b"never\n");
}

#[tokio::test]
async fn optional_lets_a_token_in_without_a_certificate_and_names_nobody() {
    let pki = Pki::new();
    let controller = Controller::allowing("/bin/echo", &["token only"]).await;
    let mut config = pki.config(&controller, Some(ClientAuth::Optional));
    config.controller_forward_headers = FORGED.iter().map(|(name, _)| name.parse().unwrap()).collect();
    let server = TestServer::start(config).await;
    let mut ws = open(&server, &pki, None, "token=t", &FORGED).await.expect("a token without a certificate");
    assert_eq!(collect(&mut ws).await.0, b"token only\n");
    let seen = controller.requests().pop().unwrap();
    assert!(seen.headers.get("x-client-cert-subject").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("x-client-cert-sha256").is_none(), "{:?}", seen.headers);
    // Neither token nor certificate: 400, the controller not asked.
    let asked = controller.requests().len();
    assert_eq!(open(&server, &pki, None, "", &FORGED).await.err(), Some(Some(StatusCode::BAD_REQUEST)));
    assert_eq!(controller.requests().len(), asked);
    // A certificate from another CA still fails the handshake.
    assert!(matches!(open(&server, &pki, Some(&pki.stranger), "token=t", &[]).await, Err(None)));
}

#[tokio::test]
async fn a_jwt_bound_to_a_certificate_works_only_over_a_connection_that_presented_it() {
    let pki = Pki::new();
    let dir = scratch();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a secret of at least thirty-two bytes!!").unwrap();
    let controller = Controller::allowing("/bin/false", &[]).await;
    let mut config = pki.config(&controller, Some(ClientAuth::Optional));
    config.auth = ws_subprocess::config::AuthBackend::Jwt;
    config.jwt_secret_file = Some(secret.clone());
    config.jwt_algorithms = vec!["HS256".parse().unwrap()];
    let server = TestServer::start(config).await;

    // Minted by the binary, as an operator would.
    let mint = |bind: Option<&PathBuf>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ws-subprocess"));
        command.arg("mint-token").arg("--secret-file").arg(&secret);
        if let Some(cert) = bind {
            command.arg("--bind-cert").arg(cert);
        }
        let output = command.args(["--", "/bin/echo", "bound"]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let bound = mint(Some(&pki.alice.0));
    // Refused over bob's connection and over one without a certificate…
    for client in [Some(&pki.bob), None] {
        let refused = open(&server, &pki, client, &format!("token={bound}"), &[]).await;
        assert_eq!(refused.err(), Some(Some(StatusCode::FORBIDDEN)));
    }
    // …its single use not spent by those tries: alice's works.
    let mut ws = open(&server, &pki, Some(&pki.alice), &format!("token={bound}"), &[]).await.expect("alice");
    assert_eq!(collect(&mut ws).await.0, b"bound\n");
    assert_eq!(
        open(&server, &pki, Some(&pki.alice), &format!("token={bound}"), &[]).await.err(),
        Some(Some(StatusCode::FORBIDDEN))
    );
    // An unbound token works over any connection; a certificate never
    // stands for a JWT.
    let mut ws = open(&server, &pki, Some(&pki.bob), &format!("token={}", mint(None)), &[]).await.expect("unbound");
    assert_eq!(collect(&mut ws).await.0, b"bound\n");
    assert_eq!(open(&server, &pki, Some(&pki.alice), "", &[]).await.err(), Some(Some(StatusCode::BAD_REQUEST)));
}

#[tokio::test]
async fn client_certificate_settings_are_checked_at_start() {
    let pki = Pki::new();
    let bin = env!("CARGO_BIN_EXE_ws-subprocess");
    let run = |args: &[&std::ffi::OsStr]| {
        let output = std::process::Command::new(bin).arg("--listen").arg("127.0.0.1:0").args(args).output().unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let tls =
        ["--tls-cert-file".as_ref(), pki.server.0.as_os_str(), "--tls-key-file".as_ref(), pki.server.1.as_os_str()];
    let (code, err) = run(&["--tls-client-ca-file".as_ref(), pki.ca.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_client_ca_file") && err.contains("needs tls_cert_file"), "{err}");
    let (code, err) = run(&[&tls[..], &["--tls-client-auth".as_ref(), "optional".as_ref()]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_client_auth") && err.contains("needs tls_client_ca_file"), "{err}");
    // A file without a CA certificate in it (a key) is named.
    let (code, err) = run(&[&tls[..], &["--tls-client-ca-file".as_ref(), pki.alice.1.as_os_str()]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_client_ca_file") && err.contains("alice.key"), "{err}");
    let (code, err) = run(&[&tls[..], &["--tls-client-auth".as_ref(), "sometimes".as_ref()]].concat());
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_client_auth"), "{err}");
}
