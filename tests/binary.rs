//! The real binary: configuration, signals, logs, and leaks, observed from
//! outside the process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use rustix::process::Signal;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_ws-subprocess");

/// Runs the binary to completion (it must fail fast) and returns its exit
/// code and stderr.
fn run_to_exit(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> (i32, String) {
    let output = std::process::Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn config_precedence_is_file_then_env_then_flag() {
    let dir = scratch();
    std::fs::write(
        dir.path().join("ws-subprocess.toml"),
        "listen = \"127.0.0.1:0\"\npath = \"/from-file\"\ntoken_param = \"file_token\"\nmax_sessions = 3\n",
    )
    .unwrap();
    let controller = Controller::allowing("/bin/true", &[]).await;
    let url = controller.url();
    let server = Binary::start(
        &["--path", "/from-flag", "--controller-url", &url],
        &[("WS_SUBPROCESS_PATH", "/from-env"), ("WS_SUBPROCESS_TOKEN_PARAM", "env_token")],
        dir.path(),
    )
    .await;
    let addr = server.tcp();
    // The flag's path wins over env and file.
    assert_eq!(http_request(addr, "GET /from-flag?env_token=t HTTP/1.1").await.0, 426);
    assert_eq!(http_request(addr, "GET /from-env?env_token=t HTTP/1.1").await.0, 404);
    assert_eq!(http_request(addr, "GET /from-file?env_token=t HTTP/1.1").await.0, 404);
    // The env's token parameter wins over the file's.
    assert_eq!(http_request(addr, "GET /from-flag?file_token=t HTTP/1.1").await.0, 400);
    // The file's listen address was used: port 0, so some free port.
    assert!(addr.port() != 0 && addr.ip().is_loopback());
}

#[tokio::test]
async fn config_file_is_named_by_flag_or_environment() {
    let dir = scratch();
    let file = dir.path().join("elsewhere.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\npath = \"/named\"\n").unwrap();
    let server = Binary::start(&["--config", file.to_str().unwrap()], &[], dir.path()).await;
    assert_eq!(http_request(server.tcp(), "GET /named?token=t HTTP/1.1").await.0, 426);
    let server = Binary::start(&[], &[("WS_SUBPROCESS_CONFIG", file.to_str().unwrap())], dir.path()).await;
    assert_eq!(http_request(server.tcp(), "GET /named?token=t HTTP/1.1").await.0, 426);
    // A named file that does not exist is an error, not an empty config.
    let (code, stderr) = run_to_exit(&["--config", "/nonexistent.toml"], &[], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent.toml"), "{stderr}");
}

#[tokio::test]
async fn unknown_config_key_exits_2_naming_key_and_source() {
    let dir = scratch();
    std::fs::write(dir.path().join("ws-subprocess.toml"), "listen = \"127.0.0.1:0\"\nkill_grase = \"1s\"\n").unwrap();
    let (code, stderr) = run_to_exit(&[], &[], dir.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("`kill_grase`: unknown key") && stderr.contains("ws-subprocess.toml"), "{stderr}");

    let empty = scratch();
    let (code, stderr) = run_to_exit(&[], &[("WS_SUBPROCESS_PING_INTERVALL", "1s")], empty.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("WS_SUBPROCESS_PING_INTERVALL"), "{stderr}");

    let (code, stderr) = run_to_exit(&["--max-sessions", "0"], &[], empty.path());
    assert_eq!(code, 2);
    assert!(stderr.contains("`max_sessions`") && stderr.contains("--max-sessions"), "{stderr}");

    let (code, _) = run_to_exit(&["--no-such-flag"], &[], empty.path());
    assert_eq!(code, 2);
}

#[tokio::test]
async fn reference_config_lists_every_key_with_its_default() {
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ws-subprocess.toml");
    use figment::providers::Format;
    let figment = figment::Figment::new().merge(figment::providers::Toml::file_exact(&reference));
    let loaded = ws_subprocess::Config::from_figment(&figment).expect("the reference config loads");
    assert_eq!(loaded, ws_subprocess::Config::default());
    let text = std::fs::read_to_string(&reference).unwrap();
    let help = std::process::Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let defaults = serde_json::to_value(ws_subprocess::Config::default()).unwrap();
    for (key, default) in defaults.as_object().unwrap() {
        // A key without a default is shown commented out, with an example.
        let line = if default.is_null() { format!("# {key} = ") } else { format!("{key} = ") };
        assert!(text.lines().any(|l| l.starts_with(&line)), "`{line}` missing from ws-subprocess.toml");
        let flag = format!("--{}", key.replace('_', "-"));
        assert!(help.contains(&flag), "{flag} missing from --help");
    }
}

#[tokio::test]
async fn go_style_single_dash_flags_work() {
    let controller = Controller::allowing("/bin/echo", &["from go flags"]).await;
    let dir = scratch();
    let url = controller.url();
    let server = Binary::start(&["-listen", "127.0.0.1:0", "-controller-url", &url], &[], dir.path()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("t")).await.unwrap();
    assert_eq!(collect(&mut ws).await.0, b"from go flags\n");
}

#[tokio::test]
async fn unix_socket_listener_serves_and_is_removed_at_exit() {
    let dir = scratch();
    let socket = dir.path().join("ws.sock");
    let listen = format!("unix:{}", socket.display());
    let mut server = Binary::start(&["--listen", &listen], &[], dir.path()).await;
    assert_eq!(server.addr, listen);
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.signal(Signal::TERM);
    assert_eq!(server.exit_code(Duration::from_secs(5)).await, Some(0));
    assert!(!socket.exists());
}

#[tokio::test]
async fn open_file_soft_limit_is_raised_to_the_hard_limit() {
    let dir = scratch();
    let server = Binary::start(&["--listen", "127.0.0.1:0"], &[], dir.path()).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers[0], numbers[1], "{line}");
}

#[tokio::test]
async fn sigterm_ends_live_sessions_and_exits_0() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pids");
    // One process ignores SIGINT, so it needs the SIGKILL after kill_grace.
    let script = format!("trap '' INT; echo $$ >> {}; echo ready; while :; do sleep 0.05; done", pidfile.display());
    let controller = Controller::shell(&script).await;
    let url = controller.url();
    let mut server = Binary::start(
        &["--listen", "127.0.0.1:0", "--controller-url", &url, "--kill-grace", "300ms", "--shutdown-timeout", "5s"],
        &[],
        dir.path(),
    )
    .await;
    let mut clients = Vec::new();
    for token in ["a", "b", "c"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(token)).await.unwrap();
        read_until(&mut ws, b"ready").await;
        clients.push(ws);
    }
    let pids: Vec<i32> = std::fs::read_to_string(&pidfile).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    let started = Instant::now();
    server.signal(Signal::TERM);
    for ws in &mut clients {
        let (_, close) = collect(ws).await;
        assert_eq!(u16::from(close.unwrap().code), 1001);
    }
    assert_eq!(server.exit_code(Duration::from_secs(6)).await, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
    assert!(pids.iter().all(|&pid| is_dead(pid)), "a process outlived the server");
    // New connections are refused once it is gone.
    assert!(tokio::net::TcpStream::connect(server.tcp()).await.is_err());
}

#[tokio::test]
async fn tokens_never_reach_the_logs_even_at_trace() {
    const TOKEN: &str = "SeCrEt-T0KEN-a1b2c3d4e5f6g7h8";
    let dir = scratch();
    let allowing = Controller::allowing("/bin/echo", &["hi"]).await;
    let denying = Controller::start(|_| async { json(StatusCode::FORBIDDEN, "{}") }).await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut logs = String::new();
    for (url, json_logs) in [
        (allowing.url(), "text"),
        (allowing.url(), "json"),
        (denying.url(), "text"),
        (format!("http://127.0.0.1:{dead_port}/c"), "text"),
    ] {
        let server = Binary::start(
            &["--listen", "127.0.0.1:0", "--controller-url", &url, "--log-format", json_logs],
            &[("RUST_LOG", "trace")],
            dir.path(),
        )
        .await;
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(server.ws_url(TOKEN)).await {
            collect(&mut ws).await;
        }
        // Header and plain-GET variants as well.
        let head = format!("GET /ws HTTP/1.1\r\nAuthorization: Bearer {TOKEN}");
        http_request(server.tcp(), &head).await;
        http_request(server.tcp(), &format!("GET /other?token={TOKEN} HTTP/1.1")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        logs.push_str(&server.log());
    }
    assert!(logs.len() > 1000, "trace logging produced too little to prove anything:\n{logs}");
    assert!(logs.contains("token refused"), "{logs}");
    let hash = ws_subprocess::auth::token_hash(TOKEN);
    assert!(logs.contains(&hash), "the token's hash should identify it in the log");
    for needle in [TOKEN, "SeCrEt", "a1b2c3d4e5f6g7h8"] {
        assert!(!logs.contains(needle), "the log holds {needle:?}");
    }
}

#[tokio::test]
async fn many_sessions_leave_no_descriptor_process_or_zombie() {
    let dir = scratch();
    let grandchildren = path_in(&dir, "grandchildren");
    let script = format!(
        "sleep 1000 & echo $! >> {}; case \"$0\" in echo) echo done;; *) echo ready; exec cat;; esac",
        grandchildren.display()
    );
    // Each token picks how the session ends; `Connection: close` keeps the
    // server from pooling controller connections, so every socket it opens
    // must be closed again.
    let controller = Controller::start(move |seen| {
        let mode = seen.token().unwrap();
        let body = serde_json::json!({"command": "/bin/sh", "args": ["-c", script, mode]}).to_string();
        async move {
            let mut response = json(StatusCode::OK, body);
            response.headers_mut().insert("connection", "close".parse().unwrap());
            response
        }
    })
    .await;
    let url = controller.url();
    let server =
        Binary::start(&["--listen", "127.0.0.1:0", "--controller-url", &url, "--kill-grace", "200ms"], &[], dir.path())
            .await;
    let pid = server.pid();
    // One session first, so lazily created descriptors exist for the baseline.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("echo")).await.unwrap();
    collect(&mut ws).await;
    assert!(eventually(Duration::from_secs(5), || children_of(pid).is_empty()).await);
    let baseline = fd_count(pid);

    let modes = ["echo", "close", "vanish"];
    for batch in 0..15 {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let url = server.ws_url(modes[(batch * 10 + i) % 3]);
            let mode = modes[(batch * 10 + i) % 3];
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
                match mode {
                    "echo" => {
                        collect(&mut ws).await;
                    }
                    "close" => {
                        read_until(&mut ws, b"ready").await;
                        ws.send(Message::Text("some input\n".into())).await.unwrap();
                        read_until(&mut ws, b"some input").await;
                        ws.close(None).await.unwrap();
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                    _ => {
                        read_until(&mut ws, b"ready").await;
                        drop(ws);
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
    let settled =
        eventually(Duration::from_secs(10), || children_of(pid).is_empty() && fd_count(pid) <= baseline).await;
    assert!(settled, "children {:?}, fds {} (baseline {baseline})", children_of(pid), fd_count(pid));
    let pids: Vec<i32> =
        std::fs::read_to_string(&grandchildren).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 151);
    assert!(eventually(Duration::from_secs(5), || pids.iter().all(|&p| is_dead(p))).await, "a grandchild survived");
}

#[tokio::test]
async fn accept_errors_back_off_and_the_server_recovers() {
    let dir = scratch();
    // Few descriptors, and a connection cap set above what they hold (the
    // derived cap would refuse the extra connections before the table is
    // full): a burst of connections exhausts them (EMFILE).
    let server = Binary::start_wrapped(
        &["prlimit", "--nofile=80:80"],
        &["--listen", "127.0.0.1:0", "--max-connections", "1000"],
        &[],
        dir.path(),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..120 {
        idle.push(tokio::net::TcpStream::connect(server.tcp()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = server.log();
    let failures = log.matches("accept failed").count();
    assert!(failures >= 1, "descriptors were never exhausted:\n{log}");
    // Backing off (5 ms doubling to 1 s) means a handful of lines, not a
    // busy loop's thousands.
    assert!(failures < 20, "{failures} accept failures logged in 1.5 s");
    drop(idle);
    let healthy = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if http_request(server.tcp(), "GET /healthz HTTP/1.1").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(healthy.is_ok(), "the server did not recover");
}

#[tokio::test]
async fn prometheus_metrics_count_sessions_tokens_bytes_and_exits() {
    let controller = Controller::start(|seen| {
        let token = seen.token().unwrap_or_default();
        async move {
            match token.as_str() {
                "ok" => json(StatusCode::OK, r#"{"command": "/bin/echo", "args": ["12345"]}"#),
                "fail" => json(StatusCode::OK, r#"{"command": "/bin/sh", "args": ["-c", "exit 3"]}"#),
                _ => json(StatusCode::FORBIDDEN, "{}"),
            }
        }
    })
    .await;
    let dir = scratch();
    let url = controller.url();
    let server = Binary::start(
        &["--listen", "127.0.0.1:0", "--controller-url", &url, "--metrics-listen", "127.0.0.1:0"],
        &[],
        dir.path(),
    )
    .await;
    let metrics_addr = server.metrics_addr().await;
    for token in ["ok", "fail"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(token)).await.unwrap();
        ws.send(Message::Text("input".into())).await.unwrap();
        collect(&mut ws).await;
    }
    assert_eq!(refusal(server.ws_url("nope")).await.0, StatusCode::FORBIDDEN);
    // Sessions end on the server a moment after the client saw the Close.
    let mut text = String::new();
    for _ in 0..50 {
        let (status, _, body) = http_request(metrics_addr, "GET /metrics HTTP/1.1").await;
        assert_eq!(status, 200);
        text = body;
        if text.contains("ws_subprocess_sessions_active 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for line in [
        "ws_subprocess_sessions_total 2",
        r#"ws_subprocess_auth_results_total{backend="controller",result="allowed"} 2"#,
        r#"ws_subprocess_auth_results_total{backend="controller",result="denied"} 1"#,
        r#"ws_subprocess_auth_latency_seconds_count{backend="controller"} 3"#,
        r#"ws_subprocess_bytes_total{direction="out"} 6"#,
        r#"ws_subprocess_process_exits_total{kind="success"} 1"#,
        r#"ws_subprocess_process_exits_total{kind="failure"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    assert_eq!(http_request(metrics_addr, "GET /other HTTP/1.1").await.0, 404);
}
