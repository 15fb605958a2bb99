//! The demo in `example/`: its controller mints single-use tokens that the
//! real server accepts once.

mod common;

#[path = "../example/controller.rs"]
#[allow(dead_code)]
mod demo;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn demo_page_token_runs_the_command_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let demo_addr = listener.local_addr().unwrap();
    tokio::spawn(demo::serve(
        listener,
        demo::Demo::new("ws://unused/ws".into(), vec!["/bin/echo".into(), "demo".into()]),
    ));

    // A stand-in controller only provides the harness's config; the server
    // asks the demo.
    let placeholder = Controller::allowing("/bin/false", &[]).await;
    let mut config = config_for(&placeholder);
    config.controller_url = format!("http://{demo_addr}/ws-controller").parse().unwrap();
    let server = TestServer::start(config).await;

    let (status, _, page) = http_request(demo_addr, "GET / HTTP/1.1").await;
    assert_eq!(status, 200);
    assert!(page.contains("ws-subprocess.js"));
    let (status, _, token) = http_request(demo_addr, "GET /token?session=demo-1 HTTP/1.1").await;
    assert_eq!(status, 200);
    assert_eq!(token.len(), 32);

    // The first token starts the named session.
    let mut ws = server.connect(&token).await;
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"demo\n");
    assert_eq!(u16::from(close.unwrap().code), 1000);
    // Single use.
    assert_eq!(server.refusal(&token).await.0, StatusCode::FORBIDDEN);
    // Later tokens for the id attach; it has ended, so there is nothing to
    // attach to.
    let (_, _, again) = http_request(demo_addr, "GET /token?session=demo-1 HTTP/1.1").await;
    assert_eq!(server.refusal(&again).await.0, StatusCode::NOT_FOUND);
    assert!(placeholder.requests().is_empty());
}

#[tokio::test]
async fn the_demo_in_jwt_mode_hands_out_single_use_jwts_the_server_checks_itself() {
    let mut demo = DemoProcess::start(&["--jwt", "--", "/bin/echo", "stateless"], &[]).await;
    let (status, _, page) = http_request(demo.page, "GET / HTTP/1.1").await;
    assert_eq!(status, 200);
    let ws_url = page.split('"').find(|part| part.starts_with("ws://")).expect("the page names the server").to_string();
    let (status, _, token) = http_request(demo.page, "GET /token?session=jwt-1 HTTP/1.1").await;
    assert_eq!(status, 200);
    assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
    let request = |token: &str| {
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{ws_url}?token={token}"
        ))
        .unwrap();
        request.headers_mut().insert("origin", format!("http://{}", demo.page).parse().unwrap());
        request
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(request(&token)).await.unwrap();
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"stateless\r\n", "on a terminal");
    assert_eq!(u16::from(close.unwrap().code), 1000);
    // Single use, and only the page's origin.
    assert_eq!(refusal(request(&token)).await.0, StatusCode::FORBIDDEN);
    let (_, _, other) = http_request(demo.page, "GET /token?session=jwt-2 HTTP/1.1").await;
    let mut foreign = request(&other);
    foreign.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    assert_eq!(refusal(foreign).await.0, StatusCode::FORBIDDEN);
    assert!(demo.output().contains("(JWT (stateless) mode)"), "{}", demo.output());
    assert_eq!(demo.interrupt(std::time::Duration::from_secs(10)).await, Some(0), "{}", demo.output());
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(version) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing (.ci/run installs Debian's systemd)");
    };
    let version: u32 = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("systemd-analyze --version says its version");
    let dir = scratch();
    let root = env!("CARGO_MANIFEST_DIR");
    let mut unit = std::fs::read_to_string(format!("{root}/example/ws-subprocess.service")).unwrap();
    assert!(unit.contains("\nType=notify-reload\n"), "SPEC §10: the unit is Type=notify-reload");
    if version < 253 {
        // What the package installs on such a host: its drop-in's settings
        // instead of the type this systemd does not know.
        let dropin =
            std::fs::read_to_string(format!("{root}/example/ws-subprocess.service.d/systemd-252.conf")).unwrap();
        let settings: String = dropin
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        unit = unit.replace("Type=notify-reload\n", &settings);
        eprintln!(
            "systemd {version} does not know Type=notify-reload: verified with the drop-in for systemd before 253"
        );
    }
    // The unit names the installed path; verify it against the built binary.
    let unit = unit.replace("/usr/bin/ws-subprocess", env!("CARGO_BIN_EXE_ws-subprocess"));
    let path = dir.path().join("ws-subprocess.service");
    std::fs::write(&path, unit).unwrap();
    let verified = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success() && complaints.trim().is_empty(), "{complaints}");
}
