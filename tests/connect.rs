//! `ws-subprocess connect` (SPEC §11), the real binary against the real
//! server: on a real pseudo-terminal (size, resize, typing, Ctrl-C, exit
//! statuses, the terminal put back), on pipes (stdin to its end, stdout and
//! stderr apart, byte for byte), refusals and failures (255 and one line),
//! the token kept out of argv, named sessions joined again gap-free after a
//! proxy in the test cuts the connection or the server upgrades (1012), the
//! detach keys, `--reconnect-timeout`, TLS with `--ca-file`, `--insecure`
//! and client certificates, and `--header`.

mod common;

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_ws-subprocess");

/// `connect` on a pseudo-terminal of the test: what it shows is collected,
/// keys are typed into it, and it can be resized.
struct OnTerminal {
    child: tokio::process::Child,
    input: pty_process::OwnedWritePty,
    shown: Arc<Mutex<Vec<u8>>>,
    /// The terminal's own side, kept to read its settings after the
    /// client left.
    pts: OwnedFd,
}

impl OnTerminal {
    fn start(args: &[&str], token: &str) -> Self {
        let (pty, pts) = pty_process::open().unwrap();
        pty.resize(pty_process::Size::new(24, 80)).unwrap();
        let pts_copy = pts.as_fd().try_clone_to_owned().unwrap();
        let child = pty_process::Command::new(BIN)
            .arg("connect")
            .args(args)
            .env("WS_SUBPROCESS_TOKEN", token)
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .spawn(pts)
            .unwrap();
        let (output, input) = pty.into_split();
        let (shown, _) = collect_bytes(output);
        Self { child, input, shown, pts: pts_copy }
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, needle: &str) {
        let found = eventually(Duration::from_secs(10), || self.shown().contains(needle)).await;
        assert!(found, "never showed {needle:?}; shown: {:?}", self.shown());
    }

    async fn type_in(&mut self, keys: &[u8]) {
        self.input.write_all(keys).await.unwrap();
    }

    fn resize(&self, rows: u16, columns: u16) {
        self.input.resize(pty_process::Size::new(rows, columns)).unwrap();
    }

    /// The terminal's settings, as `stty -g` would tell them.
    fn settings(&self) -> String {
        format!("{:?}", rustix::termios::tcgetattr(&self.pts).unwrap())
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the client did not exit; shown: {:?}", self.shown()))
            .unwrap();
        status.code().unwrap_or_else(|| panic!("the client died: {status:?}"))
    }
}

/// `ws-subprocess connect ARGS`: the token `t` in its environment, no
/// input, its output and errors piped, killed when dropped (callers change
/// what differs).
fn connect_command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("connect")
        .args(args)
        .env("WS_SUBPROCESS_TOKEN", "t")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// `connect` with `args` and the token `t`, stdin closed, its stdout
/// collected as it comes (stderr left to read at the end).
fn spawn_connect(args: &[&str]) -> (tokio::process::Child, Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let mut child = connect_command(args).spawn().unwrap();
    let (output, reader) = collect_bytes(child.stdout.take().unwrap());
    (child, output, reader)
}

/// `connect` on pipes: what it wrote on stdout and on stderr, and its
/// status.
struct Piped {
    status: i32,
    stdout: Vec<u8>,
    stderr: String,
    stderr_bytes: Vec<u8>,
}

async fn piped(args: &[&str], env: &[(&str, &str)], stdin: Vec<u8>) -> Piped {
    let mut child = connect_command(args)
        .env_remove("WS_SUBPROCESS_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = input.write_all(&stdin).await;
    });
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the client did not exit")
        .unwrap();
    Piped {
        status: output.status.code().expect("the client exited by a signal"),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stderr_bytes: output.stderr,
    }
}

/// The server's endpoint for `connect`, without a token.
fn endpoint(server: &TestServer) -> String {
    format!("ws://{}{}", server.addr, server.config.path)
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> String {
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn on_a_terminal_size_resizes_typing_and_the_exit_status_pass_through_and_the_terminal_is_put_back() {
    // The remote shell prints its terminal's size for each line typed, and
    // exits 7 on `q`.
    let script = "stty size; while read l; do [ \"$l\" = q ] && exit 7; echo \"typed $l\"; stty size; done";
    let controller =
        Controller::answering(&[("t", serde_json::json!({"command": "/bin/sh", "args": ["-c", script], "tty": true}))])
            .await;
    let server = TestServer::for_controller(&controller).await;
    let mut client = OnTerminal::start(&[&endpoint(&server)], "t");
    let cooked = client.settings();
    client.wait_for("24 80").await;
    // Raw mode: the local terminal echoes nothing, the remote one does.
    assert_ne!(client.settings(), cooked, "the terminal is not in raw mode");
    client.type_in(b"hello\r").await;
    client.wait_for("typed hello").await;
    client.resize(30, 100);
    let mut resized = false;
    for _ in 0..50 {
        client.type_in(b"s\r").await;
        if eventually(Duration::from_millis(200), || client.shown().contains("30 100")).await {
            resized = true;
            break;
        }
    }
    assert!(resized, "the remote terminal never got the new size; shown: {:?}", client.shown());
    client.type_in(b"q\r").await;
    assert_eq!(client.exit_code().await, 7);
    assert_eq!(client.settings(), cooked, "the terminal was not put back");
    // The URL had no token: the client sent the environment's in its header.
    assert_eq!(controller.requests()[0].token().as_deref(), Some("t"));
    server.stop().await;
}

#[tokio::test]
async fn ctrl_c_reaches_the_remote_process_and_a_death_by_signal_is_128_plus_n() {
    let script = "trap 'echo caught; exit 5' INT; echo ready; while :; do sleep 0.05; done";
    let controller = Controller::answering(&[
        ("int", serde_json::json!({"command": "/bin/sh", "args": ["-c", script], "tty": true})),
        ("term", serde_json::json!({"command": "/bin/sh", "args": ["-c", "echo ready; sleep 0.2; kill -TERM $$"], "tty": true})),
    ])
    .await;
    let server = TestServer::for_controller(&controller).await;
    let mut client = OnTerminal::start(&[&endpoint(&server)], "int");
    client.wait_for("ready").await;
    client.type_in(b"\x03").await;
    client.wait_for("caught").await;
    assert_eq!(client.exit_code().await, 5);

    let mut client = OnTerminal::start(&[&endpoint(&server)], "term");
    let cooked = client.settings();
    assert_eq!(client.exit_code().await, 128 + 15);
    assert_eq!(client.settings(), cooked);
    server.stop().await;
}

#[tokio::test]
async fn a_signal_to_the_client_puts_the_terminal_back_and_exits_128_plus_n() {
    let controller = Controller::shell("echo ready; sleep 30").await;
    let mut config = config_for(&controller);
    config.kill_grace = Duration::from_millis(100);
    let server = TestServer::start(config).await;
    let mut client = OnTerminal::start(&[&endpoint(&server)], "t");
    let cooked = client.settings();
    client.wait_for("ready").await;
    assert_ne!(client.settings(), cooked);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(client.child.id().unwrap() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert_eq!(client.exit_code().await, 128 + 15);
    assert_eq!(client.settings(), cooked, "the terminal was not put back after SIGTERM");
    // The session ended with the client.
    assert!(
        eventually(Duration::from_secs(5), || server.metrics.render().contains("ws_subprocess_sessions_active 0"))
            .await
    );
    server.stop().await;
}

#[tokio::test]
async fn on_pipes_stdin_streams_to_its_end_and_stdout_and_stderr_stay_apart_byte_for_byte() {
    // Every byte of stdin back on both streams: cat's copy on stdout, tee's
    // on stderr.
    let controller = Controller::shell("tee /dev/stderr; echo done >&2; exit 3").await;
    let server = TestServer::for_controller(&controller).await;
    let input: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let dir = scratch();
    let file = token_file(&dir, "t");
    let run = piped(&[&endpoint(&server), "--token-file", &file], &[], input.clone()).await;
    assert_eq!(run.status, 3, "stderr: {:?}", run.stderr.chars().take(300).collect::<String>());
    assert_eq!(run.stdout.len(), input.len());
    assert!(run.stdout == input, "stdout differs");
    let mut expected_err = input.clone();
    expected_err.extend_from_slice(b"done\n");
    assert_eq!(run.stderr_bytes.len(), expected_err.len());
    assert!(run.stderr_bytes == expected_err, "stderr differs");
    server.stop().await;
}

#[tokio::test]
async fn stderr_bytes_arrive_unchanged() {
    // Binary bytes (not UTF-8) on stderr, compared as bytes.
    let controller = Controller::shell("head -c 100000 /dev/zero | tr '\\0' '\\377' >&2; printf out").await;
    let server = TestServer::for_controller(&controller).await;
    let run = piped(&[&endpoint(&server)], &[("WS_SUBPROCESS_TOKEN", "t")], Vec::new()).await;
    assert_eq!((run.status, run.stdout.as_slice()), (0, &b"out"[..]));
    assert!(run.stderr_bytes == vec![0xff; 100000], "stderr differs: {} bytes", run.stderr_bytes.len());
    server.stop().await;
}

#[tokio::test]
async fn a_refused_token_and_a_server_not_there_end_with_255_and_one_line() {
    let controller = Controller::answering(&[("good", serde_json::json!({"command": "/bin/true"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    let run = piped(&[&endpoint(&server)], &[("WS_SUBPROCESS_TOKEN", "bad")], Vec::new()).await;
    assert_eq!(run.status, 255);
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    assert!(run.stderr.starts_with("ws-subprocess: the server refused: 403"), "{:?}", run.stderr);
    assert!(!run.stderr.contains("bad"), "the token was shown: {:?}", run.stderr);
    let good = piped(&[&endpoint(&server)], &[("WS_SUBPROCESS_TOKEN", "good")], Vec::new()).await;
    assert_eq!(good.status, 0, "{}", good.stderr);

    // Nothing listens on a port just freed.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let run = piped(&[&format!("ws://{gone}/ws")], &[("WS_SUBPROCESS_TOKEN", "good")], Vec::new()).await;
    assert_eq!(run.status, 255);
    assert_eq!(run.stderr.lines().count(), 1, "{:?}", run.stderr);
    assert!(run.stderr.contains("cannot connect to"), "{:?}", run.stderr);
    server.stop().await;
}

#[tokio::test]
async fn the_token_is_never_in_argv_and_a_header_goes_with_the_request() {
    let controller =
        Controller::answering(&[("secret-token", serde_json::json!({"command": "/bin/sleep", "args": ["2"]}))]).await;
    let mut config = config_for(&controller);
    config.controller_forward_headers = vec!["x-team".parse().unwrap()];
    let server = TestServer::start(config).await;
    let dir = scratch();
    let file = token_file(&dir, "secret-token");
    let mut child = connect_command(&[&endpoint(&server), "--token-file", &file, "-H", "X-Team: blue"])
        .env_remove("WS_SUBPROCESS_TOKEN")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    assert!(eventually(Duration::from_secs(5), || !controller.requests().is_empty()).await);
    let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!contains(&argv, b"secret-token"), "the token is in argv");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    assert!(!contains(&environ, b"secret-token"));
    let seen = &controller.requests()[0];
    assert_eq!(seen.token().as_deref(), Some("secret-token"));
    assert_eq!(seen.headers.get("x-team").unwrap(), "blue");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    // And there is no flag to put it in argv by mistake.
    let run = piped(&[&endpoint(&server), "--token", "x"], &[], Vec::new()).await;
    assert_eq!(run.status, 2, "{}", run.stderr);
    server.stop().await;
}

/// A TCP proxy that can cut every connection it carries, and stop taking
/// new ones.
struct CuttingProxy {
    addr: SocketAddr,
    cut: Arc<Mutex<CancellationToken>>,
    refuse: CancellationToken,
    connections: Arc<AtomicUsize>,
}

impl CuttingProxy {
    async fn start(to: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let refuse = CancellationToken::new();
        let connections = Arc::new(AtomicUsize::new(0));
        let (cuts, refusing, count) = (cut.clone(), refuse.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = refusing.cancelled() => return,
                };
                let Ok((mut client, _)) = accepted else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let cut = cuts.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(to).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, cut, refuse, connections }
    }

    /// Drops every connection carried now, without a Close.
    fn cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        cut.cancel();
        *cut = CancellationToken::new();
    }
}

/// A controller whose first answer for a token starts the named session
/// `id` with `spec`, and whose later answers attach to it (as a controller
/// that knows its sessions does).
async fn session_controller(id: &str, mut spec: serde_json::Value) -> Controller {
    spec["session"] = serde_json::json!({"id": id, "keep": "1m"});
    let attach = serde_json::json!({"attach": id}).to_string();
    let start = spec.to_string();
    let asked = Arc::new(AtomicUsize::new(0));
    Controller::start(move |_| {
        let body = if asked.fetch_add(1, Ordering::SeqCst) == 0 { start.clone() } else { attach.clone() };
        async move { json(StatusCode::OK, body) }
    })
    .await
}

#[tokio::test]
async fn a_named_session_survives_cut_connections_with_nothing_lost_or_repeated() {
    let script = "i=0; while [ $i -lt 1500 ]; do i=$((i+1)); echo \"line $i\"; sleep 0.002; done; exit 4";
    let controller =
        session_controller("cut-1", serde_json::json!({"command": "/bin/sh", "args": ["-c", script]})).await;
    let server = TestServer::for_controller(&controller).await;
    let proxy = CuttingProxy::start(server.addr).await;
    let url = format!("ws://{}{}", proxy.addr, server.config.path);
    let (mut child, output, reader) = spawn_connect(&[&url, "--session", "cut-1"]);
    // Cut three times while output flows.
    for round in 1..=3 {
        let lines = round * 300;
        assert!(
            eventually(Duration::from_secs(20), || line_numbers(&output.lock().unwrap()).len() >= lines).await,
            "output stalled before cut {round}"
        );
        proxy.cut();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    reader.await.unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert_eq!(status.code(), Some(4), "stderr: {stderr}");
    let output = output.lock().unwrap().clone();
    assert_gap_free(&output, "connect across cut connections");
    assert_eq!(line_numbers(&output).len(), 1500);
    assert!(proxy.connections.load(Ordering::SeqCst) >= 4, "the client did not connect again");
    assert_eq!(stderr.matches("connected again").count(), 3, "{stderr}");
    server.stop().await;
}

#[tokio::test]
async fn the_detach_keys_leave_the_session_running_and_connect_joins_it_again() {
    let script = "echo started; while read l; do echo \"typed $l\"; done";
    let controller =
        session_controller("keys-1", serde_json::json!({"command": "/bin/sh", "args": ["-c", script], "tty": true}))
            .await;
    let server = TestServer::for_controller(&controller).await;
    let url = endpoint(&server);
    let mut client = OnTerminal::start(&[&url, "--session", "keys-1"], "t");
    let cooked = client.settings();
    client.wait_for("started").await;
    client.type_in(b"one\r").await;
    client.wait_for("typed one").await;
    // Ctrl-] alone is held (the client stays); then d leaves.
    client.type_in(b"\x1d").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(client.child.try_wait().unwrap().is_none(), "Ctrl-] alone left");
    client.type_in(b"d").await;
    assert_eq!(client.exit_code().await, 0);
    assert!(client.shown().contains("detached"), "{:?}", client.shown());
    assert_eq!(client.settings(), cooked);

    // The session runs on: a second client gets its screen and types on.
    let mut again = OnTerminal::start(&[&url, "--session", "keys-1", "--detach-keys", "ctrl-p,ctrl-q"], "t");
    again.wait_for("typed one").await;
    again.type_in(b"two\r").await;
    again.wait_for("typed two").await;
    // Ctrl-] d is typing now (it reaches the shell); Ctrl-P Ctrl-Q leaves.
    again.type_in(b"\x1dd\r").await;
    again.wait_for("typed \u{1d}d").await;
    again.type_in(b"\x10\x11").await;
    assert_eq!(again.exit_code().await, 0);
    server.stop().await;
}

#[tokio::test]
async fn a_session_that_cannot_be_reached_again_ends_with_255_after_the_reconnect_timeout() {
    let controller =
        session_controller("gone-1", serde_json::json!({"command": "/bin/sh", "args": ["-c", "echo up; sleep 30"]}))
            .await;
    let server = TestServer::for_controller(&controller).await;
    let proxy = CuttingProxy::start(server.addr).await;
    let url = format!("ws://{}{}", proxy.addr, server.config.path);
    let mut child = connect_command(&[&url, "--session", "gone-1", "--reconnect-timeout", "1s"]).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0; 3];
    stdout.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"up\n");
    proxy.refuse.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.cut();
    let started = std::time::Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(255), "{stderr}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(8), "gave up after {waited:?}");
    assert!(stderr.trim_end().lines().last().unwrap().contains("cannot connect again within 1s"), "{stderr}");
    server.stop().await;
}

/// A TLS server for `controller` asking for client certificates (in
/// `auth` mode) of an authority of its own: the server, the file to trust
/// it by (`--ca-file`), and alice's certificate and key from that
/// authority.
async fn tls_server_asking_certificates(
    dir: &Path,
    controller: &Controller,
    auth: ws_subprocess::config::ClientAuth,
) -> (TestServer, String, (PathBuf, PathBuf)) {
    let server_cert = certificate(dir, "server");
    let ca = certificate_authority(dir, "clients");
    let alice = client_certificate(dir, "alice", "/O=Example/CN=alice", &ca);
    let mut config = config_for(controller);
    config.tls_cert_file = Some(server_cert.0.clone());
    config.tls_key_file = Some(server_cert.1.clone());
    config.tls_client_ca_file = Some(ca.0.clone());
    config.tls_client_auth = Some(auth);
    (TestServer::start(config).await, server_cert.0.display().to_string(), alice)
}

#[tokio::test]
async fn tls_with_a_ca_file_insecure_and_a_client_certificate() {
    let dir = scratch();
    let controller = Controller::shell("echo over tls").await;
    let (server, ca_file, alice) =
        tls_server_asking_certificates(dir.path(), &controller, ws_subprocess::config::ClientAuth::Optional).await;
    let url = format!("wss://localhost:{}{}", server.addr.port(), server.config.path);
    let token = [("WS_SUBPROCESS_TOKEN", "t")];

    let run = piped(&[&url, "--ca-file", &ca_file], &token, Vec::new()).await;
    assert_eq!((run.status, run.stdout.as_slice()), (0, &b"over tls\n"[..]), "{}", run.stderr);
    // Not trusted: one line, 255.
    let run = piped(&[&url], &token, Vec::new()).await;
    assert_eq!(run.status, 255);
    assert!(run.stderr.starts_with("ws-subprocess: TLS with localhost:"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1);
    let run = piped(&[&url, "--insecure"], &token, Vec::new()).await;
    assert_eq!(run.status, 0, "{}", run.stderr);

    // A client certificate: its identity reaches the controller.
    let (cert, key) = (alice.0.display().to_string(), alice.1.display().to_string());
    let run = piped(&[&url, "--ca-file", &ca_file, "--cert", &cert, "--key", &key], &token, Vec::new()).await;
    assert_eq!(run.status, 0, "{}", run.stderr);
    let seen = controller.requests().last().unwrap().clone();
    assert_eq!(seen.headers.get("x-client-cert-subject").unwrap(), "CN=alice,O=Example");
    assert_eq!(seen.headers.get("x-client-cert-sha256").unwrap(), fingerprint(&alice.0).as_str());
    server.stop().await;
}

#[tokio::test]
async fn a_client_certificate_is_required_where_the_server_requires_one() {
    let dir = scratch();
    let controller = Controller::shell("echo hi").await;
    let (server, ca_file, alice) =
        tls_server_asking_certificates(dir.path(), &controller, ws_subprocess::config::ClientAuth::Required).await;
    let url = format!("wss://127.0.0.1:{}{}", server.addr.port(), server.config.path);
    // A token but no certificate: the handshake itself fails.
    let run = piped(&[&url, "--ca-file", &ca_file], &[("WS_SUBPROCESS_TOKEN", "t")], Vec::new()).await;
    assert_eq!(run.status, 255, "{}", run.stderr);
    assert!(run.stderr.starts_with("ws-subprocess: TLS with 127.0.0.1:"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    // The key in the certificate's file works as well as beside it.
    let both = dir.path().join("alice-both.pem");
    let mut pem = std::fs::read(&alice.0).unwrap();
    pem.extend(std::fs::read(&alice.1).unwrap());
    std::fs::write(&both, pem).unwrap();
    let run = piped(&[&url, "--ca-file", &ca_file, "--cert", &both.display().to_string()], &[], Vec::new()).await;
    assert_eq!((run.status, run.stdout.as_slice()), (0, &b"hi\n"[..]), "{}", run.stderr);
    server.stop().await;
}

/// Where the real binary, serving TLS, upgrades itself (SIGUSR2): a named
/// session's client gets 1012 and joins again with `since`, gap-free.
#[tokio::test]
async fn a_close_1012_from_an_upgrade_is_joined_again_gap_free() {
    let dir = scratch();
    let cert = certificate(dir.path(), "server");
    let script = "i=0; while [ $i -lt 1000 ]; do i=$((i+1)); echo \"line $i\"; sleep 0.003; done";
    let controller =
        session_controller("up-1", serde_json::json!({"command": "/bin/sh", "args": ["-c", script]})).await;
    let (cert_path, key_path) = (cert.0.display().to_string(), cert.1.display().to_string());
    let config = dir.path().join("ws-subprocess.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ncontroller_url = \"{}\"\n\
             tls_cert_file = \"{cert_path}\"\ntls_key_file = \"{key_path}\"\n",
            controller.url()
        ),
    )
    .unwrap();
    let mut server = Binary::start(&["--config", config.to_str().unwrap()], &[], dir.path()).await;
    let url = format!("wss://localhost:{}/ws", server.tcp().port());
    let (mut child, output, reader) = spawn_connect(&[&url, "--session", "up-1", "--ca-file", &cert_path]);
    assert!(eventually(Duration::from_secs(20), || line_numbers(&output.lock().unwrap()).len() >= 200).await);
    server.signal(rustix::process::Signal::USR2);
    server.wait_for_log("executing the new binary", 1).await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    reader.await.unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}\nserver: {}", server.log());
    assert!(stderr.contains("restarting"), "no 1012 seen: {stderr}");
    let output = output.lock().unwrap().clone();
    assert_gap_free(&output, "connect across an upgrade");
    assert_eq!(line_numbers(&output).len(), 1000);
    server.signal(rustix::process::Signal::TERM);
    let _ = server.exit_code(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn server_settings_are_refused_with_connect() {
    let run = piped(&["ws://127.0.0.1:1/ws", "--max-sessions", "3"], &[], Vec::new()).await;
    assert_eq!(run.status, 2);
    assert!(run.stderr.contains("--max-sessions is a server setting"), "{}", run.stderr);
}

#[tokio::test]
async fn an_observer_sees_the_session_sends_nothing_and_gets_its_exit_status() {
    let script = "while read l; do [ \"$l\" = end ] && exit 3; echo \"got $l\"; done";
    let controller = Controller::answering(&[
        ("start", serde_json::json!({"command": "/bin/sh", "args": ["-c", script], "session": {"id": "obs-1"}})),
        // The server would take its input: it is `--observer` that sends none.
        ("t", serde_json::json!({"attach": "obs-1"})),
    ])
    .await;
    let server = TestServer::for_controller(&controller).await;
    let mut writer = Watcher::start(server.connect("start").await, false);
    writer.type_in("one\n").await;
    writer.wait_for("got one").await;
    // The observer's own input, which must reach nobody.
    let mut observer = connect_command(&[&endpoint(&server), "--session", "obs-1", "--observer"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    observer.stdin.take().unwrap().write_all(b"from-observer\n").await.unwrap();
    let (seen, _) = collect_bytes(observer.stdout.take().unwrap());
    let shows = |text: &str| contains(&seen.lock().unwrap(), text.as_bytes());
    // Attached: the history came first.
    assert!(eventually(Duration::from_secs(10), || shows("got one")).await);
    writer.type_in("two\n").await;
    assert!(eventually(Duration::from_secs(10), || shows("got two")).await);
    writer.type_in("end\n").await;
    let status = tokio::time::timeout(Duration::from_secs(20), observer.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(!shows("from-observer") && !contains(&writer.output(), b"from-observer"), "the observer's input arrived");
    server.stop().await;
}
