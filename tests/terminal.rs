//! PTY sessions and the Kubernetes channel protocol (SPEC §5), with real
//! processes and real sockets.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

async fn controller_for(spec: Value) -> Controller {
    let body = spec.to_string();
    Controller::start(move |_| {
        let body = body.clone();
        async move { json(StatusCode::OK, body) }
    })
    .await
}

/// Opens a session offering `protocols`; returns the socket and the
/// protocol the server chose.
async fn connect_with(server: &TestServer, protocols: &str) -> (Ws, Option<String>) {
    let mut request = server.ws_url("t").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    let chosen = response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    (ws, chosen)
}

/// Everything a channel session sends, by channel, then the Close code.
#[derive(Debug, Default)]
struct Channels {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<Value>,
    close: Option<u16>,
}

async fn collect_channels(ws: &mut Ws) -> Channels {
    let mut got = Channels::default();
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = ws.next().await {
            match message.expect("a clean session") {
                Message::Binary(data) if !data.is_empty() => match data[0] {
                    1 => got.stdout.extend_from_slice(&data[1..]),
                    2 => got.stderr.extend_from_slice(&data[1..]),
                    3 => {
                        assert!(got.status.is_none(), "two statuses");
                        got.status = Some(serde_json::from_slice(&data[1..]).unwrap());
                    }
                    other => panic!("server sent channel {other}"),
                },
                Message::Close(frame) => {
                    got.close = frame.map(|f| u16::from(f.code));
                    return;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(done.is_ok(), "session did not end: {got:?}");
    got
}

fn channel(ch: u8, data: &[u8]) -> Message {
    let mut message = vec![ch];
    message.extend_from_slice(data);
    Message::Binary(message.into())
}

/// Reads channel output until `needle` appears on stdout.
async fn read_stdout_until(ws: &mut Ws, needle: &str) -> String {
    let mut output = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Binary(data) = message
                && data.first() == Some(&1)
            {
                output.extend_from_slice(&data[1..]);
                if String::from_utf8_lossy(&output).contains(needle) {
                    return;
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&output).into_owned();
    assert!(found.is_ok(), "never saw {needle:?} in {text:?}");
    text
}

#[tokio::test]
async fn v5_is_chosen_over_v4_and_the_token_protocol_is_not_echoed() {
    let controller = Controller::allowing("/bin/true", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (_, chosen) = connect_with(&server, &format!("{V4}, {V5}")).await;
    assert_eq!(chosen.as_deref(), Some(V5));
    let (_, chosen) = connect_with(&server, V4).await;
    assert_eq!(chosen.as_deref(), Some(V4));
    // The token travels in the bearer protocol; only the real one is named.
    let mut request = format!("ws://{}/ws", server.addr).into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("base64url.bearer.authorization.k8s.io.c2VjcmV0LXRva2Vu, {V5}").parse().unwrap(),
    );
    let (_, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], V5);
    assert_eq!(controller.requests().last().unwrap().token().as_deref(), Some("secret-token"));
}

#[tokio::test]
async fn channel_protocols_separate_stdout_and_stderr_and_report_status() {
    for protocol in [V5, V4] {
        for (script, status) in [("echo out; echo err >&2; exit 0", 0), ("echo out; echo err >&2; exit 3", 3)] {
            let controller = Controller::shell(script).await;
            let server = TestServer::for_controller(&controller).await;
            let (mut ws, _) = connect_with(&server, protocol).await;
            let got = collect_channels(&mut ws).await;
            assert_eq!(got.stdout, b"out\n", "{protocol}");
            assert_eq!(got.stderr, b"err\n", "{protocol}");
            assert_eq!(got.close, Some(1000));
            let s = got.status.expect("a status on channel 3");
            if status == 0 {
                assert_eq!(s, json!({"metadata": {}, "status": "Success"}));
            } else {
                assert_eq!(s["status"], "Failure");
                assert_eq!(s["reason"], "NonZeroExitCode");
                assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
            }
        }
    }
}

#[tokio::test]
async fn signal_death_is_reported_as_128_plus_signal() {
    let controller = Controller::shell("kill -9 $$").await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    let got = collect_channels(&mut ws).await;
    let status = got.status.unwrap();
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "137");
}

#[tokio::test]
async fn v5_stdin_close_ends_cat_with_all_input_echoed() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    ws.send(channel(0, b"first\n")).await.unwrap();
    ws.send(channel(0, b"second, no newline")).await.unwrap();
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await.unwrap();
    // Input after the close is ignored.
    ws.send(channel(0, b"too late\n")).await.unwrap();
    let got = collect_channels(&mut ws).await;
    assert_eq!(got.stdout, b"first\nsecond, no newline");
    assert_eq!(got.status.unwrap()["status"], "Success");
}

#[tokio::test]
async fn sixteen_mib_on_stdout_arrive_intact() {
    let controller = Controller::shell("head -c 16777216 /dev/urandom | tee /dev/stderr | md5sum >&2").await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    let got = collect_channels(&mut ws).await;
    assert_eq!(got.stdout.len(), 0);
    // stderr carries the 16 MiB followed by their md5sum line.
    let (data, sum_line) = got.stderr.split_at(16 * 1024 * 1024);
    let sum = String::from_utf8_lossy(sum_line);
    let expected = {
        let mut child = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(sum, expected);

    let controller = Controller::allowing("/usr/bin/head", &["-c", "16777216", "/dev/zero"]).await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V4).await;
    let got = collect_channels(&mut ws).await;
    assert_eq!(got.stdout.len(), 16 * 1024 * 1024);
    assert!(got.stdout.iter().all(|&b| b == 0));
}

#[tokio::test]
async fn bad_channel_input_is_ignored_and_the_session_goes_on() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    for junk in [
        Message::Binary(Bytes::new()),
        channel(9, b"unknown channel"),
        channel(4, b"{not json"),
        channel(4, br#"{"Width":80,"Height":24}"#), // no terminal: ignored
        channel(255, &[7]),
        Message::Text("text is not a channel message".into()),
    ] {
        ws.send(junk).await.unwrap();
    }
    ws.send(channel(0, b"still alive\n")).await.unwrap();
    read_stdout_until(&mut ws, "still alive").await;
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await.unwrap();
    let got = collect_channels(&mut ws).await;
    assert_eq!(got.status.unwrap()["status"], "Success");
}

#[tokio::test]
async fn a_stalled_channel_client_stalls_the_process() {
    let dir = scratch();
    let (script, counter) = counting_producer(&dir);
    let controller = Controller::shell(&script).await;
    let server = TestServer::for_controller(&controller).await;
    let (ws, _) = connect_with(&server, V5).await;
    assert_producer_stalls(&counter).await;
    drop(ws);
}

#[tokio::test]
async fn a_stalled_client_stalls_a_tty_process_too() {
    let dir = scratch();
    let (script, counter) = counting_producer(&dir);
    let controller = controller_for(json!({"command": "/bin/sh", "args": ["-c", script], "tty": true})).await;
    let server = TestServer::for_controller(&controller).await;
    let (ws, _) = connect_with(&server, V5).await;
    assert_producer_stalls(&counter).await;
    drop(ws);
}

#[tokio::test]
async fn tty_session_has_a_terminal_of_the_spec_size_and_term() {
    let controller = controller_for(json!({
        "command": "/bin/sh",
        "args": ["-c", "tty; stty size; echo \"TERM=$TERM\"; read line; stty size"],
        "tty": true,
        "size": {"cols": 100, "rows": 40},
    }))
    .await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    let first = read_stdout_until(&mut ws, "TERM=xterm-256color").await;
    assert!(first.contains("/dev/pts/"), "{first:?}");
    assert!(first.contains("40 100"), "{first:?}");
    ws.send(channel(4, br#"{"Width":132,"Height":50}"#)).await.unwrap();
    ws.send(channel(0, b"go\r")).await.unwrap();
    let after = read_stdout_until(&mut ws, "50 132").await;
    assert!(after.contains("50 132"), "{after:?}");
    let got = collect_channels(&mut ws).await;
    assert_eq!(got.status.unwrap()["status"], "Success");
}

#[tokio::test]
async fn tty_session_default_size_and_term_override() {
    let controller = controller_for(json!({
        "command": "/bin/sh",
        "args": ["-c", "stty size; echo \"TERM=$TERM\""],
        "tty": true,
        "env": {"TERM": "vt100"},
    }))
    .await;
    let server = TestServer::for_controller(&controller).await;
    // The raw protocol works with a terminal too.
    let mut ws = server.connect("t").await;
    let (output, close) = collect(&mut ws).await;
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains("24 80"), "{output:?}");
    assert!(output.contains("TERM=vt100"), "{output:?}");
    assert_eq!(u16::from(close.unwrap().code), 1000);
}

#[tokio::test]
async fn typing_into_cat_on_a_tty_echoes_the_line() {
    let controller = controller_for(json!({"command": "/bin/cat", "tty": true})).await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    ws.send(channel(0, b"hello tty\r")).await.unwrap();
    // The terminal echoes the typed line, then cat writes it back: twice.
    let text = read_stdout_until(&mut ws, "hello tty\r\nhello tty\r\n").await;
    assert!(text.contains("hello tty\r\nhello tty\r\n"), "{text:?}");
    // End of input on a terminal is ^D; cat exits 0.
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await.unwrap();
    let got = collect_channels(&mut ws).await;
    let status = got.status.unwrap();
    assert_eq!(status["status"], "Success", "{status}");
}

#[tokio::test]
async fn leaving_a_tty_session_hangs_up_then_kills() {
    let dir = scratch();
    let (pidfile, got) = (path_in(&dir, "pid"), path_in(&dir, "got"));
    // The shell records the hang-up, and ignores it: SIGKILL must follow.
    let script = format!(
        "trap 'echo HUP >> {got}' HUP; echo $$ > {pid}; echo ready; while :; do sleep 0.05; done",
        got = got.display(),
        pid = pidfile.display()
    );
    let controller = controller_for(json!({"command": "/bin/sh", "args": ["-c", script], "tty": true})).await;
    let mut config = config_for(&controller);
    config.kill_signal = "SIGTERM".parse().unwrap();
    config.kill_grace = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    read_stdout_until(&mut ws, "ready").await;
    let pid = read_pid(&pidfile).await;
    drop(ws);
    assert!(eventually(Duration::from_secs(5), || is_dead(pid)).await);
    assert!(std::fs::read_to_string(&got).unwrap().contains("HUP"), "no SIGHUP before SIGKILL");
}

#[tokio::test]
async fn tty_output_at_exit_is_not_lost() {
    let controller = controller_for(json!({
        "command": "/bin/sh",
        "args": ["-c", "seq 1 20000; exit 4"],
        "tty": true,
    }))
    .await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    let got = collect_channels(&mut ws).await;
    let text = String::from_utf8(got.stdout).unwrap();
    let expected: String = (1..=20000).map(|i| format!("{i}\r\n")).collect();
    assert_eq!(text.len(), expected.len());
    assert!(text == expected);
    assert_eq!(got.status.unwrap()["details"]["causes"][0]["message"], "4");
}

#[tokio::test]
async fn resize_still_works_after_stdin_is_closed_on_a_tty() {
    let controller =
        controller_for(json!({"command": "/bin/sh", "args": ["-c", "sleep 0.5; stty size"], "tty": true})).await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    ws.send(Message::Binary(Bytes::from_static(&[255, 0]))).await.unwrap();
    ws.send(channel(4, br#"{"Width":100,"Height":30}"#)).await.unwrap();
    let got = collect_channels(&mut ws).await;
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(text.contains("30 100"), "{text:?}");
}

#[tokio::test]
async fn jobs_a_tty_shell_put_in_groups_of_their_own_end_with_the_session() {
    let dir = scratch();
    let pidfile = path_in(&dir, "job");
    // With job control (`set -m`) the background job gets its own process
    // group, out of reach of a signal to the leader's group.
    let script = format!("set -m; sleep 1000 & echo $! > {}; echo ready; wait", pidfile.display());
    let controller = controller_for(json!({"command": "/bin/sh", "args": ["-c", script], "tty": true})).await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, _) = connect_with(&server, V5).await;
    read_stdout_until(&mut ws, "ready").await;
    let job = read_pid(&pidfile).await;
    drop(ws);
    assert!(eventually(Duration::from_secs(5), || is_dead(job)).await, "a job of the session survived it");
}

#[tokio::test]
async fn base64_channel_variant_speaks_text() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let controller = Controller::shell("head -c 6; echo oops >&2; exit 2").await;
    let server = TestServer::for_controller(&controller).await;
    let (mut ws, chosen) = connect_with(&server, "v4.base64.channel.k8s.io").await;
    assert_eq!(chosen.as_deref(), Some("v4.base64.channel.k8s.io"));
    ws.send(Message::Text(format!("0{}", STANDARD.encode("hello\n")).into())).await.unwrap();
    let (mut stdout, mut stderr, mut status) = (Vec::new(), Vec::new(), None);
    while let Some(message) = ws.next().await {
        match message.unwrap() {
            Message::Text(text) => {
                let payload = STANDARD.decode(&text.as_bytes()[1..]).unwrap();
                match text.as_bytes()[0] {
                    b'1' => stdout.extend(payload),
                    b'2' => stderr.extend(payload),
                    b'3' => status = Some(serde_json::from_slice::<Value>(&payload).unwrap()),
                    other => panic!("channel {other}"),
                }
            }
            Message::Close(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stdout, b"hello\n");
    assert_eq!(stderr, b"oops\n");
    assert_eq!(status.unwrap()["details"]["causes"][0]["message"], "2");
}
