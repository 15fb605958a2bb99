//! Hostile clients (SPEC §7): each attack that once worked, run against the
//! server, and what must hold instead. Every load is bounded in count and
//! time and stays on loopback (127.0.0.1 is the attacker, 127.0.0.2 someone
//! else).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The status and `Retry-After` of a refused upgrade (or 101 and none).
async fn attempt_from(source: &str, server: &TestServer, token: &str) -> (u16, Option<String>) {
    let stream = connect_from(source, server.addr).await;
    match ws_over(stream, server.addr, token).await {
        Ok(_) => (101, None),
        Err(WsError::Http(response)) => {
            (response.status().as_u16(), response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()))
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

/// A plain HTTP/1.1 request from `source`; returns the status.
async fn status_from(source: &str, addr: std::net::SocketAddr, head: &str) -> u16 {
    let mut stream = connect_from(source, addr).await;
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    String::from_utf8_lossy(&raw).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[tokio::test]
async fn silent_connections_are_closed_at_request_header_timeout_and_descriptors_return() {
    let dir = scratch();
    // Long enough for all of them to be open at once, even on a loaded
    // machine.
    let server = Binary::start(&["--listen", "127.0.0.1:0", "--request-header-timeout", "3s"], &[], dir.path()).await;
    let pid = server.pid();
    assert_eq!(http_request(server.tcp(), "GET /healthz HTTP/1.1").await.0, 200);
    // The health check's connection may still be closing: the baseline is
    // what the count settles at.
    let mut baseline = fd_count(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = fd_count(pid);
        if now == baseline {
            break;
        }
        baseline = now;
    }
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(TcpStream::connect(server.tcp()).await.unwrap());
    }
    // Half a request head is no better than none.
    for _ in 0..10 {
        let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        silent.push(stream);
    }
    let accepted = eventually(Duration::from_secs(2), || fd_count(pid) >= baseline + 110).await;
    assert!(accepted, "not all were accepted: {} descriptors, baseline {baseline}", fd_count(pid));
    let closing = silent.iter_mut().map(|stream| closed_within(stream, Duration::from_secs(6)));
    let closed = futures_util::future::join_all(closing).await;
    assert!(closed.iter().all(|c| *c), "{} of 110 still open", closed.iter().filter(|c| !**c).count());
    let settled = eventually(Duration::from_secs(5), || fd_count(pid) <= baseline).await;
    assert!(settled, "descriptors {} (baseline {baseline})", fd_count(pid));
}

#[tokio::test]
async fn one_address_holding_silent_connections_does_not_stop_another() {
    let controller = Controller::allowing("/bin/echo", &["served"]).await;
    let dir = scratch();
    let url = controller.url();
    let server = Binary::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--controller-url",
            &url,
            "--max-connections-per-ip",
            "16",
            "--request-header-timeout",
            "30s",
        ],
        &[],
        dir.path(),
    )
    .await;
    let addr = server.tcp();
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    // Beyond its cap, the address's connections are closed at once.
    let closing = held.iter_mut().map(|stream| closed_within(stream, Duration::from_millis(500)));
    let closed = futures_util::future::join_all(closing).await.into_iter().filter(|c| *c).count();
    assert_eq!(closed, 24);
    // Another address is served, health check and session.
    assert_eq!(status_from("127.0.0.2", addr, "GET /healthz HTTP/1.1").await, 200);
    let stream = connect_from("127.0.0.2", addr).await;
    let mut ws = tokio_tungstenite::client_async(server.ws_url("t"), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap()
        .0;
    assert_eq!(collect(&mut ws).await.0, b"served\n");
    // The attacker's own address is still capped.
    assert_eq!(status_from("127.0.0.1", addr, "GET /healthz HTTP/1.1").await, 0);
}

#[tokio::test]
async fn a_connection_flood_from_many_addresses_never_takes_the_descriptors_of_sessions() {
    let controller = Controller::shell("echo ready; exec cat").await;
    let dir = scratch();
    let url = controller.url();
    // 256 descriptors: on two threads, the derived caps hold 44 sessions
    // and 47 connections.
    let server = Binary::start_wrapped(
        &["prlimit", "--nofile=256:256"],
        &["--listen", "127.0.0.1:0", "--controller-url", &url, "--request-header-timeout", "2s"],
        &[],
        dir.path(),
    )
    .await;
    let addr = server.tcp();
    let mut ws = connect_ws(&server, "first").await;
    read_until(&mut ws, b"ready").await;
    // Silent connections from many addresses, each under its own cap.
    let mut flood = Vec::new();
    for i in 0..400 {
        flood.push(connect_from(&format!("127.0.0.{}", 10 + i % 40), addr).await);
    }
    // The running session goes on, and the server never ran out of
    // descriptors.
    ws.send(Message::Text("still here\n".into())).await.unwrap();
    read_until(&mut ws, b"still here").await;
    assert!(server.log().contains("connections refused at their cap"), "{}", server.log());
    // Once the flood's connections have had their request_header_timeout,
    // new sessions start although the attacker never left.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut second = connect_ws(&server, "second").await;
    read_until(&mut second, b"ready").await;
    assert!(!server.log().contains("accept failed"), "{}", server.log());
    drop(flood);
}

/// A session with the binary, from 127.0.0.2.
async fn connect_ws(server: &Binary, token: &str) -> Ws {
    let stream = connect_from("127.0.0.2", server.tcp()).await;
    tokio_tungstenite::client_async(server.ws_url(token), tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
        .unwrap()
        .0
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn http2_is_refused_and_half_prefaces_time_out_when_http2_is_off() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let mut config = config_for(&controller);
    config.request_header_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let mut full = TcpStream::connect(server.addr).await.unwrap();
    full.write_all(H2_PREFACE).await.unwrap();
    assert!(closed_within(&mut full, Duration::from_millis(500)).await, "an h2 preface was held open");
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&H2_PREFACE[..10]).await.unwrap();
    assert!(closed_within(&mut half, Duration::from_secs(3)).await, "half a preface was held open");
    // An h2c client gets nowhere.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let h2 = hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await;
    if let Ok((mut sender, connection)) = h2 {
        tokio::spawn(connection);
        let request = http::Request::get(format!("http://{}/healthz", server.addr)).body(Default::default()).unwrap();
        assert!(sender.send_request(request).await.is_err());
    }
}

#[tokio::test]
async fn with_http2_on_h2_is_served_and_idle_h2_connections_are_closed_at_the_deadline() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let mut config = config_for(&controller);
    config.request_header_timeout = Duration::from_secs(1);
    config.http2 = true;
    let server = TestServer::start(config).await;
    let h2 = |stream| {
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
    };
    let (mut sender, connection) = h2(TcpStream::connect(server.addr).await.unwrap()).await.unwrap();
    let served = tokio::spawn(connection);
    for pause in [0, 600] {
        // Within the deadline, the connection serves the next request.
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let request = http::Request::get(format!("http://{}/healthz", server.addr)).body(Default::default()).unwrap();
        assert_eq!(sender.send_request(request).await.unwrap().status(), StatusCode::OK);
    }
    // After its requests, an h2 connection left idle is closed too, one
    // deadline after its last response (keepalive pings do not keep it).
    let ended = tokio::time::timeout(Duration::from_secs(4), served).await;
    assert!(ended.is_ok(), "an h2 connection idle after a request was held open");
    // A client that takes nothing of a response (a zero flow-control
    // window; it still answers pings) does not hold the connection either.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut stalled, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let served = tokio::spawn(connection);
    let request = http::Request::get(format!("http://{}/healthz", server.addr)).body(Default::default()).unwrap();
    let response = stalled.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(5), served).await;
    assert!(ended.is_ok(), "an h2 connection whose client took nothing of a response was held open");
    drop(response);
    // An h2 connection that never sends a request is closed at the deadline.
    let (_idle, connection) = h2(TcpStream::connect(server.addr).await.unwrap()).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(4), connection).await;
    assert!(ended.is_ok(), "an idle h2 connection was held open");
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&H2_PREFACE[..10]).await.unwrap();
    assert!(closed_within(&mut half, Duration::from_secs(3)).await, "half a preface was held open");
    // A WebSocket session (HTTP/1.1 upgrade) outlives the deadline.
    a_session_outlives_request_header_timeout(&server).await;
}

#[tokio::test]
async fn a_kept_alive_http1_connection_idle_after_a_request_is_closed_at_the_deadline() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let mut config = config_for(&controller);
    config.request_header_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, http_body_util::Empty<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let served = tokio::spawn(connection);
    for _ in 0..2 {
        sender.ready().await.unwrap();
        let request = http::Request::get("/healthz").body(Default::default()).unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        http_body_util::BodyExt::collect(response.into_body()).await.unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(4), served).await;
    assert!(ended.is_ok(), "a kept-alive connection idle after its requests was held open");
    // A WebSocket session is not an idle connection: it outlives the
    // deadline.
    a_session_outlives_request_header_timeout(&server).await;
}

/// A `cat` session on `server` (whose `request_header_timeout` is 1 s)
/// still echoes 2.5 s after it opened.
async fn a_session_outlives_request_header_timeout(server: &TestServer) {
    let mut ws = server.connect("token").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::Binary(bytes::Bytes::from_static(b"still here\n"))).await.unwrap();
    read_until(&mut ws, b"still here").await;
}

#[tokio::test]
async fn oversized_request_heads_get_431_and_memory_stays_bounded() {
    let dir = scratch();
    let server = Binary::start(&["--listen", "127.0.0.1:0"], &[], dir.path()).await;
    let addr = server.tcp();
    // Just over the limit: a clear answer.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024));
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
    // 200 connections each sending 400 KB of a head that never ends: each
    // is cut at max_header_size, so the server holds a few MB, not 80.
    let before = memory_kib(server.pid(), "VmRSS");
    let senders = (0..200).map(|_| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"GET /ws HTTP/1.1\r\nX-Big: ").await;
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..25 {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
        }
        stream
    });
    let _held = futures_util::future::join_all(senders).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak = memory_kib(server.pid(), "VmHWM");
    assert!(peak < before + 40 * 1024, "peak {peak} KiB from {before} KiB");
}

#[tokio::test]
async fn garbage_tokens_against_a_slow_controller_leave_other_addresses_unaffected() {
    let controller = Controller::start(|seen| async move {
        if seen.token().as_deref() == Some("good") {
            json(StatusCode::OK, r#"{"command": "/bin/echo", "args": ["good"]}"#)
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
            json(StatusCode::FORBIDDEN, "{}")
        }
    })
    .await;
    let mut config = config_for(&controller);
    config.controller_timeout = Duration::from_secs(5);
    config.max_sessions = 40;
    let server = TestServer::start(config).await;
    let attacker = (0..100).map(|i| {
        let server = &server;
        async move { attempt_from("127.0.0.1", server, &format!("garbage-{i}")).await }
    });
    let attack = futures_util::future::join_all(attacker);
    let victim = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stream = connect_from("127.0.0.2", server.addr).await;
        let mut ws = ws_over(stream, server.addr, "good").await.expect("a valid token from elsewhere runs");
        collect(&mut ws).await.0
    };
    let (answers, output) = tokio::join!(attack, victim);
    assert_eq!(output, b"good\n");
    let waited = answers.iter().filter(|(status, _)| *status == 403).count();
    let refused: Vec<_> = answers.iter().filter(|(status, _)| *status == 429).collect();
    assert_eq!(waited, 32, "{answers:?}");
    assert_eq!(refused.len(), 68, "{answers:?}");
    assert!(refused.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
}

#[tokio::test]
async fn requests_waiting_beyond_the_global_cap_get_503_with_retry_after() {
    let controller = Controller::start(|_| async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        json(StatusCode::FORBIDDEN, "{}")
    })
    .await;
    let mut config = config_for(&controller);
    config.max_pending_auth = 4;
    let server = TestServer::start(config).await;
    let sources = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];
    let attempts = (0..10).map(|i| {
        let server = &server;
        async move { attempt_from(sources[i % 5], server, "x").await }
    });
    let answers = futures_util::future::join_all(attempts).await;
    let unavailable: Vec<_> = answers.iter().filter(|(status, _)| *status == 503).collect();
    assert_eq!(unavailable.len(), 6, "{answers:?}");
    assert!(unavailable.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
}

#[tokio::test]
async fn attempts_beyond_the_rate_per_address_get_429_with_retry_after() {
    let controller = Controller::start(|_| async { json(StatusCode::FORBIDDEN, "{}") }).await;
    let mut config = config_for(&controller);
    config.auth_rate_per_ip = Some("1/min".parse().unwrap());
    config.auth_burst_per_ip = std::num::NonZeroU32::new(3);
    let server = TestServer::start(config).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(attempt_from("127.0.0.1", &server, "x").await);
    }
    assert_eq!(statuses.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [403, 403, 403, 429, 429, 429]);
    let retry: u64 = statuses[3].1.as_deref().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The controller was asked only for the allowed attempts.
    assert_eq!(controller.requests().len(), 3);
    assert_eq!(attempt_from("127.0.0.2", &server, "x").await.0, 403);
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_never_reads_ends_its_session_and_memory_stays_bounded() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let controller = Controller::shell(&format!("echo $$ > {}; exec cat", pidfile.display())).await;
    let url = controller.url();
    let server = Binary::start(
        &["--listen", "127.0.0.1:0", "--controller-url", &url, "--ping-interval", "1s", "--pong-timeout", "2s"],
        &[],
        dir.path(),
    )
    .await;
    let before = memory_kib(server.pid(), "VmRSS");
    let mut stream = TcpStream::connect(server.tcp()).await.unwrap();
    let head = "GET /ws?token=t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        let mut byte = [0];
        stream.read_exact(&mut byte).await.unwrap();
        answer.push(byte[0]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 101"));
    let cat = read_pid(&pidfile).await;
    // Masked pings with 125-byte payloads, as fast as the socket takes
    // them; nothing is ever read.
    let mut ping = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    ping.extend(std::iter::repeat_n(0u8, 125));
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 256).collect();
    let started = Instant::now();
    let flood = async {
        loop {
            if stream.write_all(&burst).await.is_err() {
                return true;
            }
            if started.elapsed() > Duration::from_secs(20) {
                return false;
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(20), flood).await.unwrap_or(false);
    // Alone, this ends after about ping_interval + pong_timeout once the
    // buffers are full; the bound is wide for a loaded machine.
    assert!(ended, "the server kept the flooding session for 20 s");
    assert!(eventually(Duration::from_secs(3), || is_dead(cat)).await, "the session's process outlived it");
    let peak = memory_kib(server.pid(), "VmHWM");
    assert!(peak < before + 30 * 1024, "peak {peak} KiB from {before} KiB");
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_not_believed() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url("t")).unwrap();
    let headers = request.headers_mut();
    headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
    headers.insert("x-forwarded-proto", "https".parse().unwrap());
    headers.insert("x-forwarded-host", "admin.internal".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    collect(&mut ws).await;
    let seen = &controller.requests()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], server.addr.to_string().as_str());
}

#[tokio::test]
async fn a_client_that_stops_reading_a_response_does_not_hold_its_connection() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let dir = scratch();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    // Far more than the socket buffers hold.
    std::fs::write(root.join("big.bin"), vec![b'x'; 32 << 20]).unwrap();
    let mut config = config_for(&controller);
    config.static_dir = Some(root);
    config.request_header_timeout = Duration::from_secs(1);
    let server = TestServer::start(config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // It reads a little, then nothing: the server is stuck writing.
    let mut first = [0u8; 4096];
    let n = stream.read(&mut first).await.unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Closed by now: what is left to read ends well short of the file.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok() && rest.len() < 32 << 20,
        "a connection whose client stopped reading was held open ({} bytes more)",
        rest.len()
    );
}

#[tokio::test]
async fn static_dir_serves_nothing_outside_no_dotfiles_and_no_foreign_redirects() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let dir = scratch();
    let root = dir.path().join("www");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("index.html"), "home").unwrap();
    std::fs::write(root.join(".env"), "SECRET=1").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
    let mut config = config_for(&controller);
    config.static_dir = Some(root);
    let server = TestServer::start(config).await;
    assert_eq!(http_request(server.addr, "GET / HTTP/1.1").await.2, "home");
    for path in ["/etc/passwd", "/.env", "/%2Eenv", "//sub", "//127.0.0.1/", "/sub//"] {
        let (status, head, _) = http_request(server.addr, &format!("GET {path} HTTP/1.1")).await;
        assert_eq!(status, 404, "{path}: {head}");
    }
    let (status, head, _) = http_request(server.addr, "GET /sub HTTP/1.1").await;
    assert!((300..400).contains(&status), "{head}");
    assert!(head.to_ascii_lowercase().contains("location: /sub/\r\n"), "{head}");
}

#[tokio::test]
async fn offering_only_the_bearer_subprotocol_is_400_before_the_controller_is_asked() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (status, head, body) = http_request(
        server.addr,
        "GET /ws HTTP/1.1\r\nSec-WebSocket-Protocol: base64url.bearer.authorization.k8s.io.dA\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    assert!(body.contains("v5.channel.k8s.io"), "{body}");
    assert!(controller.requests().is_empty());
}

#[tokio::test]
async fn session_payloads_never_reach_the_log_even_at_trace() {
    const SECRET_IN: &str = "typed-PAYLOAD-4f1c9e";
    const SECRET_OUT: &str = "printed-PAYLOAD-7a2b3d";
    let controller = Controller::shell(&format!("echo {SECRET_OUT}; exec cat")).await;
    let dir = scratch();
    let url = controller.url();
    for filter in ["trace", "tungstenite=trace,tokio_tungstenite=trace,ws_subprocess=trace"] {
        let server =
            Binary::start(&["--listen", "127.0.0.1:0", "--controller-url", &url], &[("RUST_LOG", filter)], dir.path())
                .await;
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
        read_until(&mut ws, SECRET_OUT.as_bytes()).await;
        ws.send(Message::Text(format!("{SECRET_IN}\n").into())).await.unwrap();
        read_until(&mut ws, SECRET_IN.as_bytes()).await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = server.log();
        assert!(log.contains("token allowed"), "debug logging did not reach the log:\n{log}");
        for needle in [SECRET_IN, SECRET_OUT, "PAYLOAD"] {
            assert!(!log.contains(needle), "the log ({filter}) holds {needle:?}");
        }
    }
}

#[tokio::test]
async fn sessions_that_outgrow_the_open_file_limit_get_503_and_start_no_process() {
    // Channel-protocol pipe sessions hold a descriptor more than the
    // open-file limit was shared for (their stderr): 256 descriptors hold
    // 50 sessions on paper, and the descriptors run out before the 50th.
    let controller = Controller::shell("echo ready; exec cat").await;
    let dir = scratch();
    let url = controller.url();
    let server = Binary::start_wrapped(
        &["prlimit", "--nofile=256:256"],
        &["--listen", "127.0.0.1:0", "--controller-url", &url, "--max-sessions", "60", "--max-pending-auth", "1"],
        &[],
        dir.path(),
    )
    .await;
    assert!(server.log().contains("sessions=50"), "{}", server.log());
    let mut sessions = Vec::new();
    let refusal = loop {
        assert!(sessions.len() < 50, "50 sessions opened and the descriptors never ran out");
        let stream = TcpStream::connect(server.tcp()).await.unwrap();
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.ws_url(&format!("t{}", sessions.len())),
        )
        .unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
        match tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await {
            Ok((mut ws, _)) => {
                read_until(&mut ws, b"ready").await;
                sessions.push(ws);
            }
            Err(WsError::Http(response)) => break response,
            Err(other) => panic!("after {} sessions: {other}", sessions.len()),
        }
    };
    assert!(sessions.len() >= 30, "only {} sessions", sessions.len());
    assert_eq!(refusal.status(), StatusCode::SERVICE_UNAVAILABLE, "{:?}\n{}", refusal.body(), server.log());
    assert_eq!(refusal.headers()["retry-after"], "1");
    let body = String::from_utf8_lossy(refusal.body().as_deref().unwrap_or_default()).to_string();
    assert_eq!(body, "server at capacity\n");
    // No process started for the refusal, and every session goes on.
    assert_eq!(children_of(server.pid()).len(), sessions.len());
    let last = sessions.last_mut().unwrap();
    last.send(Message::Binary(bytes::Bytes::from_static(b"\x00still here\n"))).await.unwrap();
    read_until(last, b"still here").await;
    assert!(server.log().contains("no descriptors or processes left"), "{}", server.log());
    // Once a session ends, its descriptors serve the next one.
    drop(sessions.remove(0));
    let mut next = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stream = TcpStream::connect(server.tcp()).await.unwrap();
        if let Ok(ws) = ws_over(stream, server.tcp(), "next").await {
            next = Some(ws);
            break;
        }
    }
    read_until(next.as_mut().expect("no session after one ended"), b"ready").await;
}
