//! The request path of SPEC §3 and the controller contract of §4, over real
//! sockets with a real controller.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A script that leaves a mark when it runs, to prove it did not.
fn marker_script(dir: &tempfile::TempDir) -> (String, std::path::PathBuf) {
    let marker = path_in(dir, "ran");
    (format!("touch {}", marker.display()), marker)
}

#[tokio::test]
async fn allowed_token_runs_the_command() {
    let controller = Controller::allowing("/bin/echo", &["hello", "world"]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut ws = server.connect("tok").await;
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"hello world\n");
    let close = close.unwrap();
    assert_eq!((u16::from(close.code), close.reason.as_str()), (1000, "exit 0"));
    assert_eq!(controller.requests().len(), 1);
    assert_eq!(controller.requests()[0].token().as_deref(), Some("tok"));
}

#[tokio::test]
async fn missing_token_is_400_without_asking_the_controller() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let url = format!("ws://{}/ws", server.addr);
    let (status, body) = refusal(url.as_str()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body, "missing token\n");
    let (status, body) = refusal(format!("ws://{}/ws?token=", server.addr)).await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_REQUEST, "missing token\n"));
    assert!(controller.requests().is_empty());
}

#[tokio::test]
async fn token_in_bearer_header_is_used() {
    let controller = Controller::allowing("/bin/echo", &["via header"]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("authorization", "Bearer header-token".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"via header\n");
    assert_eq!(controller.requests()[0].token().as_deref(), Some("header-token"));
}

#[tokio::test]
async fn controller_403_and_404_deny_without_spawning() {
    let dir = scratch();
    let (script, marker) = marker_script(&dir);
    for status in [StatusCode::FORBIDDEN, StatusCode::NOT_FOUND, StatusCode::NO_CONTENT] {
        let body = serde_json::json!({"command": "/bin/sh", "args": ["-c", script]}).to_string();
        let controller = Controller::start(move |_| {
            let body = body.clone();
            async move { json(status, body) }
        })
        .await;
        let server = TestServer::for_controller(&controller).await;
        let (got, body) = server.refusal("secret-token").await;
        assert_eq!(got, StatusCode::FORBIDDEN, "controller answered {status}");
        assert_eq!(body, "forbidden\n");
        assert!(!body.contains("secret-token"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!marker.exists(), "a denied request started a process");
}

#[tokio::test]
async fn controller_500_is_502() {
    let controller = Controller::start(|_| async { json(StatusCode::INTERNAL_SERVER_ERROR, "{}") }).await;
    let server = TestServer::for_controller(&controller).await;
    let (status, body) = server.refusal("t").await;
    assert_eq!((status, body.as_str()), (StatusCode::BAD_GATEWAY, "authorization backend failed\n"));
}

#[tokio::test]
async fn unreachable_controller_is_502() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let controller = Controller::allowing("/bin/true", &[]).await;
    let mut config = config_for(&controller);
    config.controller_url = format!("http://127.0.0.1:{port}/c").parse().unwrap();
    let server = TestServer::start(config).await;
    let (status, _) = server.refusal("t").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn garbage_controller_body_is_502() {
    for body in ["not json", r#"{"args": ["x"]}"#, r#"{"command": "/bin/true", "args": "x"}"#, ""] {
        let controller = Controller::start(move |_| async move { json(StatusCode::OK, body) }).await;
        let server = TestServer::for_controller(&controller).await;
        let (status, _) = server.refusal("t").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "body {body:?}");
    }
}

#[tokio::test]
async fn controller_redirect_is_502_and_not_followed() {
    let target = Controller::allowing("/bin/true", &[]).await;
    let location = target.url();
    let controller = Controller::start(move |_| {
        let location = location.clone();
        async move {
            http::Response::builder()
                .status(StatusCode::FOUND)
                .header("location", location)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap()
        }
    })
    .await;
    let server = TestServer::for_controller(&controller).await;
    let (status, _) = server.refusal("t").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(target.requests().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn controller_body_over_64k_is_502() {
    let padding = "x".repeat(64 * 1024);
    let body = format!(r#"{{"command": "/bin/true", "pad": "{padding}"}}"#);
    let controller = Controller::start(move |_| {
        let body = body.clone();
        async move { json(StatusCode::OK, body) }
    })
    .await;
    let server = TestServer::for_controller(&controller).await;
    let (status, _) = server.refusal("t").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // Just under the cap is fine.
    let padding = "x".repeat(60 * 1024);
    let body = format!(r#"{{"command": "/bin/echo", "args": ["ok"], "pad": "{padding}"}}"#);
    let controller = Controller::start(move |_| {
        let body = body.clone();
        async move { json(StatusCode::OK, body) }
    })
    .await;
    let server = TestServer::for_controller(&controller).await;
    assert_eq!(collect(&mut server.connect("t").await).await.0, b"ok\n");
}

#[tokio::test]
async fn hanging_controller_is_504_within_the_timeout() {
    let controller = Controller::start(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        json(StatusCode::OK, "{}")
    })
    .await;
    let mut config = config_for(&controller);
    config.controller_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let started = Instant::now();
    let (status, body) = server.refusal("t").await;
    assert_eq!((status, body.as_str()), (StatusCode::GATEWAY_TIMEOUT, "authorization backend timed out\n"));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn relative_command_is_502() {
    let controller = Controller::allowing("bin/echo", &["x"]).await;
    let server = TestServer::for_controller(&controller).await;
    let (status, _) = server.refusal("t").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn nonexistent_binary_is_500_saying_why() {
    let controller = Controller::allowing("/nonexistent/program", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (status, body) = server.refusal("t").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, "process did not start: entity not found\n");
}

#[tokio::test]
async fn token_with_reserved_characters_reaches_the_controller_intact() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let mut config = config_for(&controller);
    config.controller_url =
        format!("http://{}/ws-controller?site=a%26b&token=stale&x=1", controller.addr).parse().unwrap();
    let server = TestServer::start(config).await;
    let token = "a+b/c?d&e=f g%h#i\u{e9}";
    let mut ws = server.connect(token).await;
    collect(&mut ws).await;
    let seen = &controller.requests()[0];
    assert_eq!(seen.token().as_deref(), Some(token));
    assert_eq!(seen.uri.path(), "/ws-controller");
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(seen.uri.query().unwrap().as_bytes()).into_owned().collect();
    // The configured query is kept, except a `token` of its own.
    assert_eq!(query[..2], [("site".into(), "a&b".into()), ("x".into(), "1".into())]);
    assert_eq!(query.iter().filter(|(name, _)| name == "token").count(), 1);
}

#[tokio::test]
async fn plain_get_is_426_without_asking_the_controller() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (status, head, _) = http_request(server.addr, "GET /ws?token=t HTTP/1.1").await;
    assert_eq!(status, 426);
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    let (status, _, _) = http_request(server.addr, "POST /ws?token=t HTTP/1.1\r\nContent-Length: 0").await;
    assert_eq!(status, 400);
    let bad_key = "GET /ws?token=t HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short";
    assert_eq!(http_request(server.addr, bad_key).await.0, 400);
    let old_version = "GET /ws?token=t HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
    let (status, head, _) = http_request(server.addr, old_version).await;
    assert_eq!(status, 426);
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
    assert!(controller.requests().is_empty());
}

#[tokio::test]
async fn unknown_path_is_404_and_healthz_is_200() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (status, _, body) = http_request(server.addr, "GET /other?token=t HTTP/1.1").await;
    assert_eq!((status, body.as_str()), (404, "not found\n"));
    let (status, _, body) = http_request(server.addr, "GET /healthz HTTP/1.1").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(controller.requests().is_empty());
}

#[tokio::test]
async fn forwarding_headers_reach_the_controller() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let mut config = config_for(&controller);
    config.controller_forward_headers = vec![http::header::COOKIE];
    // The test client stands for a reverse proxy the operator trusts.
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = TestServer::start(config).await;
    let mut request = server.ws_url("t").into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", "https://app.example".parse().unwrap());
    headers.insert("user-agent", "test-agent/1".parse().unwrap());
    headers.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    headers.insert("cookie", "session=abc".parse().unwrap());
    headers.insert("x-not-forwarded", "nope".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    collect(&mut ws).await;
    let seen = &controller.requests()[0].headers;
    assert_eq!(seen["origin"], "https://app.example");
    assert_eq!(seen["user-agent"], "test-agent/1");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], server.addr.to_string().as_str());
    assert_eq!(seen["cookie"], "session=abc");
    assert!(seen.get("x-not-forwarded").is_none());
}

#[tokio::test]
async fn disallowed_origin_is_403_before_the_controller() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let mut config = config_for(&controller);
    config.allowed_origins = vec!["https://good.example".into()];
    let server = TestServer::start(config).await;
    let mut request = server.ws_url("t").into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let (status, body) = refusal(request).await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "origin not allowed\n"));
    // No Origin at all fails too when origins are restricted.
    assert_eq!(server.refusal("t").await.0, StatusCode::FORBIDDEN);
    assert!(controller.requests().is_empty());

    let mut request = server.ws_url("t").into_client_request().unwrap();
    request.headers_mut().insert("origin", "https://good.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    collect(&mut ws).await;
}

#[tokio::test]
async fn command_outside_allowed_commands_is_403_without_spawning() {
    let dir = scratch();
    let (script, marker) = marker_script(&dir);
    let controller = Controller::shell(&script).await;
    let mut config = config_for(&controller);
    config.allowed_commands = vec!["/bin/echo".into()];
    let server = TestServer::start(config).await;
    let (status, body) = server.refusal("t").await;
    assert_eq!((status, body.as_str()), (StatusCode::FORBIDDEN, "command not allowed\n"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!marker.exists());
}

#[tokio::test]
async fn session_limit_is_503_with_retry_after_before_the_controller() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let mut config = config_for(&controller);
    config.max_sessions = 2;
    let server = TestServer::start(config).await;
    let first = server.connect("a").await;
    let second = server.connect("b").await;
    let (status, head, body) = http_request(
        server.addr,
        "GET /ws?token=c HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    .await;
    assert_eq!((status, body.as_str()), (503, "too many sessions\n"));
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(controller.requests().len(), 2, "the refused token reached the controller");

    // A place frees up when a session ends.
    drop(first);
    let reopened = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.ws_url("d")).await {
                return ws;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a place frees up after a session ends");
    drop((second, reopened));
}

#[tokio::test]
async fn static_dir_serves_files_beside_the_endpoint() {
    let dir = scratch();
    std::fs::write(dir.path().join("index.html"), "<h1>terminal</h1>").unwrap();
    std::fs::write(dir.path().join("app.js"), "console.log(1)").unwrap();
    let outside = scratch();
    std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
    let controller = Controller::allowing("/bin/echo", &["still here"]).await;
    let mut config = config_for(&controller);
    config.static_dir = Some(dir.path().to_path_buf());
    let server = TestServer::start(config).await;
    let (status, head, body) = http_request(server.addr, "GET / HTTP/1.1").await;
    assert_eq!((status, body.as_str()), (200, "<h1>terminal</h1>"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/html"), "{head}");
    assert_eq!(http_request(server.addr, "GET /app.js HTTP/1.1").await.2, "console.log(1)");
    assert_eq!(http_request(server.addr, "GET /missing.txt HTTP/1.1").await.0, 404);
    let escape = format!("GET /../{}/secret HTTP/1.1", outside.path().file_name().unwrap().to_str().unwrap());
    let (status, _, body) = http_request(server.addr, &escape).await;
    assert!(status == 404 || status == 400, "{status}");
    assert!(!body.contains("s3cret"));
    // The endpoint and the health check still come first.
    assert_eq!(http_request(server.addr, "GET /healthz HTTP/1.1").await.2, "ok\n");
    let (output, _) = collect(&mut server.connect("t").await).await;
    assert_eq!(output, b"still here\n");
}
