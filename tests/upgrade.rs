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
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

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
                // A request, and every tenth time a whole session.
                let (status, _, body) = http_request(addr, "GET /healthz HTTP/1.1").await;
                if status == 200 && body == "ok\n" {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push((i, status));
                }
                if i % 10 == 0 {
                    let served = match tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=t")).await {
                        Ok((mut ws, _)) => collect(&mut ws).await,
                        Err(err) => panic!("{err}"),
                    };
                    if served.0 != b"hi\n" {
                        panic!("{served:?}");
                    }
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
async fn ten_upgrades_with_live_sessions_leave_descriptors_memory_and_cgroups_where_they_were() {
    let dir = scratch();
    let controller = Controller::answering(&[
        ("plain", json!({"command": "/bin/sh", "args": ["-c", COUNTER]})),
        ("named", json!({"command": "/bin/sh", "args": ["-c", COUNTER], "tty": true, "session": {"id": "ten"}})),
    ])
    .await;
    write_config(dir.path(), &format!("controller_url = \"{}\"", controller.url()));
    let server = start(dir.path(), &[]).await;
    let mut clients = vec![
        Watcher::start(connect(&server, "plain", "", false).await, false),
        Watcher::start(connect(&server, "named", "&session=ten", true).await, true),
    ];
    for client in &clients {
        client.wait_for("line 3").await;
    }
    upgrade(&server, 1).await;
    let (fds, rss) = (fd_count(server.pid()), memory_kib(server.pid(), "VmRSS"));
    for n in 2..=11 {
        upgrade(&server, n).await;
        for client in &mut clients {
            client.type_in(&format!("upgrade {n}\r\n")).await;
        }
        for client in &clients {
            client.wait_for(&format!("got upgrade {n}")).await;
        }
    }
    let (fds_after, rss_after) = (fd_count(server.pid()), memory_kib(server.pid(), "VmRSS"));
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert!(rss_after < rss + rss / 4, "memory grew from {rss} KiB to {rss_after} KiB");
    for client in &clients {
        assert_eq!(client.ended(), None);
        assert_gap_free(&client.output(), "across ten upgrades");
    }
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

/// Connects to `server` with `token` (and `query`), over the channel
/// protocol when `v5`.
async fn connect(server: &Binary, token: &str, query: &str, v5: bool) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("{}{query}", server.ws_url(token)).into_client_request().unwrap();
    if v5 {
        request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.expect("upgrade").0
}

#[tokio::test]
async fn upgrades_under_live_sessions_keep_every_pid_and_lose_or_repeat_no_byte() {
    let dir = scratch();
    let named = json!({"command": "/bin/sh", "args": ["-c", COUNTER], "tty": true,
                       "session": {"id": "live", "keep": "30s"}});
    let controller = Controller::answering(&[
        ("plain", json!({"command": "/bin/sh", "args": ["-c", COUNTER]})),
        ("named", named),
        // All of it on stderr (a bare `>&2` after the script would take only its last loop).
        ("stderr", json!({"command": "/bin/sh", "args": ["-c", format!("exec >&2; {COUNTER}")]})),
    ])
    .await;
    write_config(dir.path(), &format!("controller_url = \"{}\"", controller.url()));
    let server = start(dir.path(), &[]).await;
    let pid = server.pid();
    // A pipe session in the raw protocol, a named terminal session and a
    // pipe session whose output is stderr, both over the channel protocol.
    let mut clients = vec![
        ("plain", Watcher::start(connect(&server, "plain", "", false).await, false)),
        ("named", Watcher::start(connect(&server, "named", "&session=live", true).await, true)),
        ("stderr", Watcher::start(connect(&server, "stderr", "", true).await, true)),
    ];
    for (_, client) in &clients {
        client.wait_for("line 5").await;
    }
    let mut pids = children_of(pid);
    pids.sort_unstable();
    assert_eq!(pids.len(), 3, "{pids:?}");
    for n in 1..=3 {
        for (_, client) in &mut clients {
            client.type_in(&format!("before {n}\r\n")).await;
        }
        upgrade(&server, n).await;
        for (_, client) in &mut clients {
            client.type_in(&format!("after {n}\r\n")).await;
        }
        for (name, client) in &clients {
            client.wait_for(&format!("got after {n}")).await;
            assert_eq!(client.ended(), None, "{name} ended at upgrade {n}");
        }
        assert_eq!(server.pid(), pid);
        let mut now = children_of(pid);
        now.sort_unstable();
        assert_eq!(now, pids, "the sessions' processes changed at upgrade {n}");
    }
    let last = clients.iter().map(|(_, c)| line_numbers(&c.output()).last().copied().unwrap_or(0)).min().unwrap();
    for (_, client) in &clients {
        client.wait_for(&format!("line {}", last + 10)).await;
    }
    for (name, client) in &clients {
        let output = client.output();
        assert_gap_free(&output, name);
        for n in 1..=3 {
            for word in ["before", "after"] {
                let answer = format!("got {word} {n}");
                let count = String::from_utf8_lossy(&output).matches(&answer).count();
                assert_eq!(count, 1, "{name}: {answer:?} {count} times");
            }
        }
    }
    let text = server.metrics_text().await;
    assert!(text.contains(r#"ws_subprocess_upgrades_total{result="ok"} 3"#), "{text}");
    assert!(text.contains("ws_subprocess_sessions_active 3"), "{text}");
}

/// 1,200,000 numbers, one a line, in bursts of 20,000.
const BURSTS: &str = "i=0; while [ $i -lt 60 ]; do seq $((i*20000+1)) $((i*20000+20000)); i=$((i+1)); sleep 0.02; done";

#[tokio::test]
async fn bulk_output_and_input_cross_upgrades_byte_for_byte() {
    let dir = scratch();
    let controller = Controller::answering(&[
        // Bursts of 20,000 numbers at full speed for about a second.
        ("output", json!({"command": "/bin/sh", "args": ["-c", BURSTS]})),
        ("input", json!({"command": "/usr/bin/sha256sum"})),
    ])
    .await;
    write_config(dir.path(), &format!("controller_url = \"{}\"", controller.url()));
    let server = start(dir.path(), &[]).await;
    let output = Watcher::start(connect(&server, "output", "", true).await, true);
    let mut input = Watcher::start(connect(&server, "input", "", true).await, true);
    // Upgrades while output pours out as fast as it is read and input goes
    // in 64 KiB at a time.
    let upgrading = async {
        for n in 1..=3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            upgrade(&server, n).await;
        }
    };
    let mut data = vec![0u8; 6 * 1024 * 1024];
    rustix::rand::getrandom(&mut data, rustix::rand::GetRandomFlags::empty()).unwrap();
    let sending = async {
        for chunk in data.chunks(64 * 1024) {
            let mut message = vec![0u8];
            message.extend_from_slice(chunk);
            input.send(Message::Binary(message.into())).await;
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        // v5: the end of stdin.
        input.send(Message::Binary(vec![255, 0].into())).await;
    };
    tokio::join!(upgrading, sending);
    assert_eq!(output.wait_for_end().await, Some((1000, String::new())));
    assert_eq!(input.wait_for_end().await, Some((1000, String::new())));
    let numbers: Vec<u64> = String::from_utf8(output.output()).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(numbers.len(), 1_200_000, "numbers lost or repeated");
    assert!(numbers.iter().enumerate().all(|(i, &n)| n == i as u64 + 1), "numbers out of order");
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    let expected = format!("{hex}  -\n");
    assert_eq!(String::from_utf8_lossy(&input.output()), expected, "input lost or repeated");
    assert!(server.log().matches("executing the new binary").count() == 3);
}

#[tokio::test]
async fn a_connection_on_a_unix_socket_is_carried_too() {
    let dir = scratch();
    let socket = dir.path().join("ws.sock");
    let controller = Controller::answering(&[("plain", json!({"command": "/bin/sh", "args": ["-c", COUNTER]}))]).await;
    let body = format!("controller_url = \"{}\"", controller.url());
    let text = format!("listen = \"unix:{}\"\nmetrics_listen = \"127.0.0.1:0\"\n{body}\n", socket.display());
    std::fs::write(dir.path().join("ws-subprocess.toml"), text).unwrap();
    let server = start(dir.path(), &[]).await;
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async("ws://localhost/ws?token=plain", stream).await.unwrap();
    let mut client = Watcher::start(ws, false);
    client.wait_for("line 5").await;
    upgrade(&server, 1).await;
    client.type_in("after\n").await;
    client.wait_for("got after").await;
    let last = line_numbers(&client.output()).last().copied().unwrap();
    client.wait_for(&format!("line {}", last + 5)).await;
    assert_eq!(client.ended(), None);
    assert_gap_free(&client.output(), "over the Unix socket");
}

#[tokio::test]
async fn tls_clients_get_1012_and_a_named_session_resumes_without_loss() {
    let dir = scratch();
    let (cert, key) = certificate(dir.path(), "server");
    let named = json!({"command": "/bin/sh", "args": ["-c", COUNTER], "session": {"id": "secure", "keep": "30s"}});
    let controller = Controller::answering(&[
        ("named", named),
        ("again", json!({"attach": "secure"})),
        ("plain", json!({"command": "/bin/cat"})),
    ])
    .await;
    let body = format!(
        "controller_url = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        controller.url(),
        cert.display(),
        key.display()
    );
    write_config(dir.path(), &body);
    let server = start(dir.path(), &[]).await;
    let wss = |token: &str, query: &str| {
        let (cert, addr) = (cert.clone(), server.tcp());
        let url = format!("wss://localhost:{}/ws?token={token}{query}", addr.port());
        async move {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut request = url.into_client_request().unwrap();
            request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
            let tls = tls_connect(addr, &cert).await.unwrap();
            tokio_tungstenite::client_async(request, tls).await.unwrap().0
        }
    };
    let first = Watcher::start(wss("named", "&session=secure").await, true);
    let plain = Watcher::start(wss("plain", "").await, true);
    first.wait_for("line 5").await;
    let cat = children_of(server.pid())
        .into_iter()
        .find(|&p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "cat"));
    let cat = cat.expect("the plain session's cat");
    upgrade(&server, 1).await;
    // TLS state cannot be carried: both are told the service restarts.
    assert_eq!(first.wait_for_end().await, Some((1012, "service restart".into())));
    assert_eq!(plain.wait_for_end().await, Some((1012, "service restart".into())));
    // The plain session ends as if its client had left; the named one runs
    // on and its client picks up where it was.
    assert!(eventually(Duration::from_secs(5), || is_dead(cat)).await, "the plain session's process outlived it");
    let had = first.output().len();
    let again = Watcher::start(wss("again", &format!("&session=secure&since={had}")).await, true);
    let last = line_numbers(&first.output()).last().copied().unwrap();
    again.wait_for(&format!("line {}", last + 20)).await;
    assert_eq!(again.seen.lock().unwrap().info.as_ref().unwrap()["offset"], had as u64);
    let mut all = first.output();
    all.extend_from_slice(&again.output());
    assert_gap_free(&all, "across the upgrade and the reattach");
}

/// An upgrade binary that runs `real`, but first, when it is the
/// successor (not the check), creates `go` and waits a little: a session
/// process waiting for `go` exits while no program watches it.
fn slow_successor(dir: &Path, real: &str, go: &Path) -> std::path::PathBuf {
    let path = dir.join("slow-successor");
    let script = format!(
        "#!/usr/bin/env python3\nimport os, sys, time\nargs = sys.argv[1:]\n\
         if '--check-upgrade' not in args:\n    open({go:?}, 'w').close()\n    time.sleep(0.8)\n\
         os.execv({real:?}, [{real:?}] + args)\n",
        go = go.display().to_string(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn a_process_that_exits_during_the_upgrade_reports_its_status_afterwards() {
    let dir = scratch();
    let go = dir.path().join("go");
    let script = format!("echo ready; while [ ! -e {} ]; do sleep 0.02; done; echo leaving; exit 7", go.display());
    let controller = Controller::answering(&[
        ("raw", json!({"command": "/bin/sh", "args": ["-c", &script]})),
        ("v5", json!({"command": "/bin/sh", "args": ["-c", &script], "session": {"id": "exits"}})),
    ])
    .await;
    let successor = slow_successor(dir.path(), env!("CARGO_BIN_EXE_ws-subprocess"), &go);
    let body = format!("controller_url = \"{}\"\nupgrade_binary = \"{}\"", controller.url(), successor.display());
    write_config(dir.path(), &body);
    let server = start(dir.path(), &[]).await;
    let raw = Watcher::start(connect(&server, "raw", "", false).await, false);
    let v5 = Watcher::start(connect(&server, "v5", "", true).await, true);
    raw.wait_for("ready").await;
    v5.wait_for("ready").await;
    let leaders = children_of(server.pid());
    upgrade(&server, 1).await;
    // The processes exited while the successor started; it reaped them and
    // reports their real status.
    assert_eq!(raw.wait_for_end().await, Some((4007, "exit 7".into())));
    assert_eq!(v5.wait_for_end().await, Some((1000, String::new())));
    assert!(raw.output().ends_with(b"ready\nleaving\n"), "{:?}", String::from_utf8_lossy(&raw.output()));
    assert!(v5.output().ends_with(b"ready\nleaving\n"));
    let status = v5.seen.lock().unwrap().status.clone().unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "7", "{status}");
    // Each session's last line, from the new program.
    server.wait_for_log("status=exit status: 7", 2).await;
    let log = server.log();
    let after = log.split("executing the new binary").nth(1).unwrap();
    assert_eq!(after.matches("status=exit status: 7").count(), 2, "{log}");
    for pid in leaders {
        // Gone, not a zombie: reaped.
        let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
        assert!(eventually(Duration::from_secs(2), gone).await, "{pid} was not reaped");
    }
}

#[tokio::test]
async fn a_recording_goes_on_across_the_upgrade() {
    let dir = scratch();
    let records = dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let script = "echo before; read l; echo \"then $l\"; exit 3";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "tty": true,
                      "session": {"id": "taped", "record": true}});
    let controller = Controller::answering(&[("start", spec)]).await;
    let body = format!("controller_url = \"{}\"\nrecord_dir = \"{}\"", controller.url(), records.display());
    write_config(dir.path(), &body);
    let server = start(dir.path(), &[]).await;
    let mut client = Watcher::start(connect(&server, "start", "", false).await, false);
    client.wait_for("before").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    upgrade(&server, 1).await;
    client.type_in("after\r").await;
    assert_eq!(client.wait_for_end().await, Some((4003, "exit 3".into())));
    let file = std::fs::read_dir(&records).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 1, "one recording, not one per program");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines[0]["version"], 2);
    let events = &lines[1..];
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "times go back across the upgrade: {times:?}");
    assert!(times.last().unwrap() >= &0.2, "{times:?}");
    let replayed: String = events.iter().filter(|e| e[1] == "o").map(|e| e[2].as_str().unwrap()).collect();
    assert_eq!(replayed.as_bytes(), client.output().as_slice());
    assert!(replayed.contains("before") && replayed.contains("then after"), "{replayed:?}");
    assert_eq!(events.last().unwrap()[1], "m");
    assert_eq!(events.last().unwrap()[2], "exit 3");
}

#[tokio::test]
async fn when_the_new_program_cannot_be_executed_every_session_runs_on_here() {
    let dir = scratch();
    let controller = Controller::answering(&[
        ("plain", json!({"command": "/bin/sh", "args": ["-c", COUNTER]})),
        ("named", json!({"command": "/bin/sh", "args": ["-c", COUNTER], "tty": true, "session": {"id": "stays"}})),
    ])
    .await;
    // It passes its check, and is gone when it is to be executed.
    let vanishing = dir.path().join("vanishing");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *\" --check-upgrade \"*) rm -f \"$0\";; esac\nexec {} \"$@\"\n",
        env!("CARGO_BIN_EXE_ws-subprocess")
    );
    std::fs::write(&vanishing, script).unwrap();
    std::fs::set_permissions(&vanishing, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let body = format!("controller_url = \"{}\"\nupgrade_binary = \"{}\"", controller.url(), vanishing.display());
    write_config(dir.path(), &body);
    let server = start(dir.path(), &[]).await;
    let mut clients = vec![
        Watcher::start(connect(&server, "plain", "", false).await, false),
        Watcher::start(connect(&server, "named", "&session=stays", true).await, true),
    ];
    for client in &clients {
        client.wait_for("line 5").await;
    }
    let pids = children_of(server.pid());
    let line = refused_upgrade(&server, 1).await;
    assert!(line.contains("cannot execute"), "{line}");
    for client in &mut clients {
        client.type_in("still here\r\n").await;
    }
    for client in &clients {
        client.wait_for("got still here").await;
        assert_eq!(client.ended(), None);
    }
    assert_eq!(children_of(server.pid()), pids);
    let last = clients.iter().map(|c| line_numbers(&c.output()).last().copied().unwrap()).min().unwrap();
    for client in &clients {
        client.wait_for(&format!("line {}", last + 5)).await;
        assert_gap_free(&client.output(), "across the failed upgrade");
    }
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("plain")).await.unwrap();
    Watcher::start(ws, false).wait_for("line 3").await;
    let text = server.metrics_text().await;
    assert!(text.contains(r#"ws_subprocess_upgrades_total{result="error"} 1"#), "{text}");
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
