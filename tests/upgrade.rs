//! In-place upgrade on `SIGUSR2` (SPEC §10), over the real binary: the same
//! process executes the new binary and hands it the listeners, the used
//! token ids and the sessions' cgroup root; a new binary that fails its
//! check is refused and the old program serves on.
//!
//! This version refuses an upgrade while sessions run (carrying them is the
//! next step); that refusal is tested too.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use rustix::process::Signal;

fn write_config(dir: &Path, body: &str) {
    let text = format!("listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n{body}\n");
    std::fs::write(dir.join("ws-subprocess.toml"), text).unwrap();
}

async fn start(dir: &Path, env: &[(&str, &str)]) -> Binary {
    let file = dir.join("ws-subprocess.toml");
    Binary::start(&["--config", file.to_str().unwrap()], env, dir).await
}

/// Sends SIGUSR2 and waits until the new program listens (the `n`th
/// upgrade: the `n + 1`th "listening" line).
async fn upgrade(server: &Binary, n: usize) {
    server.signal(Signal::USR2);
    server.wait_for_log("executing the new binary", n).await;
    server.wait_for_log("serving metrics", n + 1).await;
}

/// Sends SIGUSR2 and waits for the `n`th abandoned upgrade.
async fn refused_upgrade(server: &Binary, n: usize) -> String {
    server.signal(Signal::USR2);
    server.wait_for_log("upgrade abandoned", n).await;
    server.log().lines().filter(|l| l.contains("upgrade abandoned")).nth(n - 1).unwrap().to_string()
}

#[tokio::test]
async fn an_upgrade_keeps_the_pid_and_listeners_and_refuses_no_connection() {
    let dir = scratch();
    let socket_path = dir.path().join("notify");
    let notify = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let controller = Controller::allowing("/bin/echo", &["hi"]).await;
    write_config(dir.path(), &format!("controller_url = \"{}\"", controller.url()));
    let server = start(dir.path(), &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]).await;
    let (pid, addr) = (server.pid(), server.tcp());
    let next = || async {
        let mut buf = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), notify.recv(&mut buf)).await.expect("no message").unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    };
    assert!(next().await.contains("READY=1"));

    // Clients connect throughout: every one is answered.
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let clients = tokio::spawn({
        let (done, answered) = (done.clone(), answered.clone());
        async move {
            let mut failures = Vec::new();
            for i in 0..2000 {
                if done.load(Ordering::Acquire) {
                    break;
                }
                let (status, _, body) = http_request(addr, "GET /healthz HTTP/1.1").await;
                if status == 200 && body == "ok\n" {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push((i, status));
                }
            }
            failures
        }
    });
    for n in 1..=3 {
        upgrade(&server, n).await;
        assert!(next().await.contains("RELOADING=1"), "upgrade {n}");
        assert!(next().await.contains("READY=1"), "upgrade {n}");
        assert_eq!(server.pid(), pid);
    }
    done.store(true, Ordering::Release);
    let failures = clients.await.unwrap();
    assert!(failures.is_empty(), "refused during an upgrade: {failures:?}");
    assert!(answered.load(Ordering::Relaxed) > 0);
    // The same addresses, the same process, a session as before.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=t")).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"hi\n");
    let text = server.metrics_text().await;
    assert!(text.contains(r#"ws_subprocess_upgrades_total{result="ok"} 3"#), "{text}");
    let log = server.log();
    assert_eq!(log.lines().filter(|l| l.contains("listening") && l.contains(&addr.to_string())).count(), 4, "{log}");
}

#[tokio::test]
async fn ten_upgrades_leave_descriptors_memory_and_cgroups_where_they_were() {
    let dir = scratch();
    write_config(dir.path(), "");
    let server = start(dir.path(), &[]).await;
    upgrade(&server, 1).await;
    let (fds, rss) = (fd_count(server.pid()), memory_kib(server.pid(), "VmRSS"));
    for n in 2..=11 {
        upgrade(&server, n).await;
    }
    let (fds_after, rss_after) = (fd_count(server.pid()), memory_kib(server.pid(), "VmRSS"));
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert!(rss_after < rss + rss / 4, "memory grew from {rss} KiB to {rss_after} KiB");
    // Where sessions get cgroups, every program used the same root.
    let log = server.log();
    let roots: std::collections::HashSet<&str> =
        log.lines().filter(|l| l.contains("one cgroup per session")).filter_map(|l| l.split("dir=").nth(1)).collect();
    assert!(roots.len() <= 1, "a new cgroup root per upgrade: {roots:?}");
}

#[tokio::test]
async fn a_new_binary_that_fails_its_check_is_refused_and_the_old_program_serves_on() {
    let dir = scratch();
    let controller = Controller::allowing("/bin/echo", &["still here"]).await;
    let cases = [
        ("exit 1", "exited with"),
        ("echo 'ws-subprocess hand-off versions: 99'", "reads hand-off versions 99"),
        ("echo hello", "does not say"),
    ];
    // Written before the server starts, and chosen through a symlink: a
    // script executed right after it was written can meet ETXTBSY while
    // another test's child, forked meanwhile, still holds it open.
    for (n, (body, _)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("broken-{n}"));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let script = dir.path().join("broken");
    write_config(
        dir.path(),
        &format!("controller_url = \"{}\"\nupgrade_binary = \"{}\"", controller.url(), script.display()),
    );
    let server = start(dir.path(), &[]).await;
    for (n, (_, why)) in cases.iter().enumerate() {
        let _ = std::fs::remove_file(&script);
        std::os::unix::fs::symlink(dir.path().join(format!("broken-{n}")), &script).unwrap();
        let line = refused_upgrade(&server, n + 1).await;
        assert!(line.contains(why), "{line}");
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
        assert_eq!(collect(&mut ws).await.0, b"still here\n");
    }
    // A binary that is not there at all.
    std::fs::remove_file(&script).unwrap();
    refused_upgrade(&server, 4).await;
    assert!(!server.log().contains("executing the new binary"));
    let text = server.metrics_text().await;
    assert!(text.contains(r#"ws_subprocess_upgrades_total{result="error"} 4"#), "{text}");
}

#[tokio::test]
async fn an_upgrade_carries_a_plain_session_with_its_process_and_connection() {
    let dir = scratch();
    let controller = Controller::allowing("/bin/cat", &[]).await;
    write_config(dir.path(), &format!("controller_url = \"{}\"", controller.url()));
    let server = start(dir.path(), &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    echoes(&mut ws, "before").await;
    let cat = children_of(server.pid());
    assert_eq!(cat.len(), 1, "{cat:?}");
    upgrade(&server, 1).await;
    assert_eq!(children_of(server.pid()), cat, "the session's process changed: {}", server.log());
    echoes(&mut ws, "after").await;
    let (mut second, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    echoes(&mut second, "new").await;
    echoes(&mut ws, "still").await;
}

#[cfg(feature = "jwt")]
#[tokio::test]
async fn a_token_id_used_before_an_upgrade_is_refused_after_it() {
    use jsonwebtoken::{EncodingKey, Header};
    let dir = scratch();
    let secret = "a-secret-0123456789abcdef0123456789abcdef";
    std::fs::write(dir.path().join("secret"), secret).unwrap();
    let body = format!(
        "auth = \"jwt\"\njwt_algorithms = [\"HS256\"]\njwt_secret_file = \"{}\"",
        dir.path().join("secret").display()
    );
    write_config(dir.path(), &body);
    let server = start(dir.path(), &[]).await;
    let token = |jti: &str| {
        let now = ws_subprocess::auth::jwt::unix_now();
        let claims = serde_json::json!({"command": "/bin/echo", "args": ["ok"], "exp": now + 60, "jti": jti});
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(&token("once"))).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");
    // The session is over before the upgrade is asked for.
    server.wait_for_log("session ended", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    upgrade(&server, 1).await;
    assert_eq!(refusal(server.ws_url(&token("once"))).await.0, StatusCode::FORBIDDEN);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(&token("twice"))).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"ok\n");
}
