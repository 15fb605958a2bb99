//! Reload on `SIGHUP` (SPEC §10): the real binary reads its file and flags
//! again and applies them to the next handshake or request; established
//! connections and running sessions keep what they had; a bad reload
//! changes nothing. And systemd's notifications around it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use http::StatusCode;
use rustix::process::Signal;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Writes the TOML configuration `body` (with the controller's URL and
/// port-0 listeners) to `dir/ws-subprocess.toml`.
fn write_config(dir: &Path, controller: &str, body: &str) -> PathBuf {
    let path = dir.join("ws-subprocess.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ncontroller_url = \"{controller}\"\n{body}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The binary, started with the configuration in `dir`.
async fn start(dir: &Path, env: &[(&str, &str)]) -> Binary {
    let file = dir.join("ws-subprocess.toml");
    Binary::start(&["--config", file.to_str().unwrap()], env, dir).await
}

/// Sends SIGHUP and waits for the `n`th reload outcome in the log.
async fn reload(server: &Binary, n: usize) {
    server.signal(Signal::HUP);
    let done = eventually(Duration::from_secs(5), || {
        let log = server.log();
        log.matches("reloaded").count() + log.matches("reload failed").count() >= n
    })
    .await;
    assert!(done, "reload {n} did not finish:\n{}", server.log());
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_handshakes_while_an_old_connection_keeps_working() {
    let dir = scratch();
    let (old_cert, old_key) = certificate(dir.path(), "old");
    let (new_cert, new_key) = certificate(dir.path(), "new");
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let tls = |cert: &Path, key: &Path| {
        format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"", cert.display(), key.display())
    };
    write_config(dir.path(), &controller.url(), &tls(&old_cert, &old_key));
    let server = start(dir.path(), &[]).await;
    let url = format!("wss://localhost:{}/ws?token=t", server.tcp().port());
    let stream = tls_connect(server.tcp(), &old_cert).await.unwrap();
    let (mut old, _) = tokio_tungstenite::client_async(url.clone(), stream).await.unwrap();
    echoes(&mut old, "before").await;

    write_config(dir.path(), &controller.url(), &tls(&new_cert, &new_key));
    reload(&server, 1).await;
    assert!(server.log().contains("reloaded"), "{}", server.log());
    // A client that trusts only the old certificate is refused now…
    assert!(tls_connect(server.tcp(), &old_cert).await.is_err(), "the old certificate is still served");
    // …one that trusts the new one gets a session…
    let stream = tls_connect(server.tcp(), &new_cert).await.unwrap();
    let (mut new, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    echoes(&mut new, "after").await;
    // …and the connection made before the reload goes on.
    echoes(&mut old, "still here").await;
    let text = server.metrics_text().await;
    assert!(text.contains(r#"ws_subprocess_reloads_total{result="ok"} 1"#), "{text}");
}

#[tokio::test]
async fn client_certificates_are_asked_for_after_a_reload_while_an_old_connection_keeps_working() {
    let dir = scratch();
    let (cert, key) = certificate(dir.path(), "server");
    let ca = certificate_authority(dir.path(), "clients-ca");
    let alice = client_certificate(dir.path(), "alice", "/CN=alice", &ca);
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let tls = format!("tls_cert_file = \"{}\"\ntls_key_file = \"{}\"", cert.display(), key.display());
    write_config(dir.path(), &controller.url(), &tls);
    let server = start(dir.path(), &[]).await;
    let url = format!("wss://localhost:{}/ws?token=t", server.tcp().port());
    let session = |client: Option<&(PathBuf, PathBuf)>| {
        let (url, client) = (url.clone(), client.cloned());
        let (addr, cert) = (server.tcp(), cert.clone());
        async move {
            let stream = tls_connect_as(addr, &cert, client.as_ref()).await.ok()?;
            tokio_tungstenite::client_async(url, stream).await.ok().map(|(ws, _)| ws)
        }
    };
    let mut old = session(None).await.expect("no certificate needed yet");
    echoes(&mut old, "before").await;

    write_config(dir.path(), &controller.url(), &format!("{tls}\ntls_client_ca_file = \"{}\"", ca.0.display()));
    reload(&server, 1).await;
    assert!(server.log().contains("reloaded"), "{}", server.log());
    assert!(session(None).await.is_none(), "a client without a certificate still gets in");
    let mut new = session(Some(&alice)).await.expect("alice's certificate is accepted");
    echoes(&mut new, "after").await;
    assert_eq!(controller.requests().last().unwrap().headers["x-client-cert-subject"], "CN=alice");
    echoes(&mut old, "still here").await;

    // Optional now: a token alone gets in again.
    write_config(
        dir.path(),
        &controller.url(),
        &format!("{tls}\ntls_client_ca_file = \"{}\"\ntls_client_auth = \"optional\"", ca.0.display()),
    );
    reload(&server, 2).await;
    let mut again = session(None).await.expect("optional");
    echoes(&mut again, "token alone").await;
}

#[tokio::test]
async fn an_invalid_reload_changes_nothing_and_says_why() {
    let dir = scratch();
    let controller = Controller::allowing("/bin/cat", &[]).await;
    write_config(dir.path(), &controller.url(), "allowed_origins = [\"https://good.example\"]");
    let server = start(dir.path(), &[]).await;
    let origin = |origin: &'static str| {
        let mut request = server.ws_url("t").into_client_request().unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        request
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(origin("https://good.example")).await.unwrap();
    echoes(&mut ws, "one").await;

    // Three broken configurations: a bad value, an unknown key, a user the
    // system does not know (found only when the new stack is built). Each is
    // refused whole, the origin list included.
    let broken = [
        ("allowed_origins = [\"https://other.example\"]\nmax_sessions = \"many\"", "max_sessions"),
        ("allowed_origins = [\"https://other.example\"]\nmax_sesions = 4", "max_sesions"),
        ("allowed_origins = [\"https://other.example\"]\nallowed_users = [\"no-such-user-here\"]", "allowed_users"),
    ];
    for (n, (body, named)) in broken.iter().enumerate() {
        write_config(dir.path(), &controller.url(), body);
        reload(&server, n + 1).await;
        let log = server.log();
        let failure = log.lines().filter(|l| l.contains("reload failed")).nth(n).unwrap().to_string();
        assert!(failure.contains(named), "the error does not name {named}: {failure}");
        let (status, _) = refusal(origin("https://other.example")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "reload {n} took effect");
        let (mut ws, _) = tokio_tungstenite::connect_async(origin("https://good.example")).await.unwrap();
        echoes(&mut ws, "still served").await;
    }
    echoes(&mut ws, "untouched").await;
    let text = server.metrics_text().await;
    assert!(text.contains(r#"ws_subprocess_reloads_total{result="error"} 3"#), "{text}");
    assert!(!text.contains(r#"result="ok""#), "{text}");

    // Fixed, it takes.
    write_config(dir.path(), &controller.url(), "allowed_origins = [\"https://other.example\"]");
    reload(&server, 4).await;
    assert_eq!(refusal(origin("https://good.example")).await.0, StatusCode::FORBIDDEN);
    let (mut ws, _) = tokio_tungstenite::connect_async(origin("https://other.example")).await.unwrap();
    echoes(&mut ws, "new origin").await;
    let log = server.log();
    let line = log.lines().find(|l| l.contains("reloaded")).unwrap();
    assert!(line.contains("allowed_origins = [\"https://other.example\"]"), "{line}");
}

#[tokio::test]
async fn a_lowered_session_limit_ends_nobody_and_socket_settings_wait_for_an_upgrade() {
    let dir = scratch();
    let controller = Controller::allowing("/bin/cat", &[]).await;
    write_config(dir.path(), &controller.url(), "max_sessions = 3\nkill_grace = \"5s\"");
    let server = start(dir.path(), &[]).await;
    let mut running = Vec::new();
    for i in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
        echoes(&mut ws, &format!("session {i}")).await;
        running.push(ws);
    }
    // `listen` and `http2` change only with an upgrade; the rest applies.
    let body = "max_sessions = 1\nkill_grace = \"5s\"\nhttp2 = true";
    let text = std::fs::read_to_string(write_config(dir.path(), &controller.url(), body)).unwrap();
    std::fs::write(
        dir.path().join("ws-subprocess.toml"),
        text.replace("127.0.0.1:0\"\nmetrics", "127.0.0.1:1\"\nmetrics"),
    )
    .unwrap();
    reload(&server, 1).await;
    let log = server.log();
    let warning = log.lines().find(|l| l.contains("change only with an upgrade")).expect("no warning");
    assert!(warning.contains("listen") && warning.contains("http2"), "{warning}");
    assert!(log.contains("max_sessions = 1"), "{log}");
    // Both sessions run on; a third is refused until one ends.
    for (i, ws) in running.iter_mut().enumerate() {
        echoes(ws, &format!("session {i} again")).await;
    }
    assert_eq!(refusal(server.ws_url("t")).await.0, StatusCode::SERVICE_UNAVAILABLE);
    for ws in running.drain(..) {
        drop(ws);
    }
    // The slot is free once both processes are gone (cat ends at stdin EOF).
    let mut admitted = None;
    for _ in 0..50 {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(server.ws_url("t")).await {
            admitted = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ws = admitted.expect("no session admitted after both ended");
    echoes(&mut ws, "third").await;
    // Still on the address it was started on.
    let (status, _, _) = http_request(server.tcp(), "GET /healthz HTTP/1.1").await;
    assert_eq!(status, 200);
}

/// Rotating the JWT secret: tokens of the old one are refused at once, the
/// new one's are allowed, and a token id used before the reload stays used.
#[cfg(feature = "jwt")]
#[tokio::test]
async fn a_rotated_jwt_secret_takes_effect_and_used_token_ids_stay_used() {
    use jsonwebtoken::{EncodingKey, Header};
    let dir = scratch();
    let (old, new) = ("old-secret-0123456789abcdef0123456789", "new-secret-0123456789abcdef0123456789");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, old).unwrap();
    let body = format!("auth = \"jwt\"\njwt_algorithms = [\"HS256\"]\njwt_secret_file = \"{}\"", secret.display());
    write_config(dir.path(), "http://127.0.0.1:1/unused", &body);
    let server = start(dir.path(), &[]).await;
    let token = |key: &str, jti: &str| {
        let now = ws_subprocess::auth::jwt::unix_now();
        let claims = json!({"command": "/bin/echo", "args": ["ok"], "exp": now + 60, "jti": jti});
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
    };
    let used = token(old, "used-before");
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(&used)).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");

    std::fs::write(&secret, new).unwrap();
    reload(&server, 1).await;
    assert_eq!(refusal(server.ws_url(&token(old, "a"))).await.0, StatusCode::FORBIDDEN);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(&token(new, "b"))).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");
    // The same id, now signed with the new secret: still spent.
    assert_eq!(refusal(server.ws_url(&token(new, "used-before"))).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn log_level_changes_with_a_reload() {
    let dir = scratch();
    let controller = Controller::allowing("/bin/echo", &["hi"]).await;
    write_config(dir.path(), &controller.url(), "log_level = \"info\"");
    let server = start(dir.path(), &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    collect(&mut ws).await;
    // "token allowed" is logged at debug level.
    assert!(!server.log().contains("token allowed"), "{}", server.log());
    write_config(dir.path(), &controller.url(), "log_level = \"info,ws_subprocess=debug\"");
    reload(&server, 1).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    collect(&mut ws).await;
    server.wait_for_log("token allowed", 1).await;
    // A filter that cannot be read is refused like any bad value.
    write_config(dir.path(), &controller.url(), "log_level = \"info,[bad\"");
    reload(&server, 2).await;
    assert!(server.log().contains("reload failed"), "{}", server.log());
}

/// `NOTIFY_SOCKET` as systemd's `Type=notify-reload` sets it: READY=1 once
/// listening, RELOADING=1 with MONOTONIC_USEC then READY=1 around a reload,
/// STOPPING=1 at shutdown; and no child sees the socket.
#[tokio::test]
async fn systemd_hears_ready_reloading_and_stopping_and_children_never_see_its_socket() {
    let dir = scratch();
    let socket_path = dir.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let controller = Controller::allowing("/usr/bin/env", &[]).await;
    write_config(dir.path(), &controller.url(), "");
    let mut server = start(dir.path(), &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]).await;
    let next = || async {
        let mut buf = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf)).await.expect("no message").unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    assert!(next().await.contains("READY=1"));
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    let env = String::from_utf8(collect(&mut ws).await.0).unwrap();
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("NOTIFY_SOCKET"), "a child saw NOTIFY_SOCKET: {env}");

    server.signal(Signal::HUP);
    let reloading = next().await;
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    let usec: u64 =
        reloading.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).expect("no MONOTONIC_USEC").parse().unwrap();
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(usec <= now_usec && now_usec - usec < 5_000_000, "{usec} vs {now_usec}");
    assert!(next().await.contains("READY=1"));

    server.signal(Signal::TERM);
    assert!(next().await.contains("STOPPING=1"));
    assert_eq!(server.exit_code(Duration::from_secs(10)).await, Some(0));
}

/// The controller, the static files and the per-address connection cap
/// change for the next request and connection; what is open stays open.
#[tokio::test]
async fn the_controller_static_files_and_connection_caps_change_for_the_next_request() {
    let dir = scratch();
    let (first_dir, second_dir) = (dir.path().join("a"), dir.path().join("b"));
    for (path, text) in [(&first_dir, "first page"), (&second_dir, "second page")] {
        std::fs::create_dir(path).unwrap();
        std::fs::write(path.join("index.html"), text).unwrap();
    }
    let first = Controller::allowing("/bin/echo", &["first"]).await;
    let second = Controller::allowing("/bin/echo", &["second"]).await;
    let body =
        |dir: &Path, per_ip: usize| format!("static_dir = \"{}\"\nmax_connections_per_ip = {per_ip}", dir.display());
    write_config(dir.path(), &first.url(), &body(&first_dir, 8));
    let server = start(dir.path(), &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"first\n");
    assert!(http_request(server.tcp(), "GET /index.html HTTP/1.1").await.2.contains("first page"));
    // Two connections held open from this address.
    let held = [connect_from("127.0.0.1", server.tcp()).await, connect_from("127.0.0.1", server.tcp()).await];

    write_config(dir.path(), &second.url(), &body(&second_dir, 2));
    reload(&server, 1).await;
    // A third connection from the same address is closed at once…
    let mut third = connect_from("127.0.0.1", server.tcp()).await;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await, "the lowered cap was not applied");
    // …another address is served: by the new controller, with the new files.
    let other: SocketAddr = format!("127.0.0.2:{}", server.tcp().port()).parse().unwrap();
    let stream = connect_from("127.0.0.2", server.tcp()).await;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{other}/ws?token=t"), stream).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"second\n");
    assert_eq!(second.requests().len(), 1);
    let mut page = connect_from("127.0.0.2", server.tcp()).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    page.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    page.read_to_string(&mut answer).await.unwrap();
    assert!(answer.contains("second page"), "{answer}");
    // The two connections from before are still open.
    for mut stream in held {
        assert!(!closed_within(&mut stream, Duration::from_millis(100)).await);
    }
}
