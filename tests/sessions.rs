//! The raw protocol and the session lifecycle of SPEC §5, with real
//! processes.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn close_of(close: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> (u16, String) {
    let close = close.expect("a Close frame with a code");
    (u16::from(close.code), close.reason.to_string())
}

#[tokio::test]
async fn exit_codes_and_signals_become_close_codes() {
    for (script, code, reason) in [
        ("exit 0", 1000, "exit 0"),
        ("exit 3", 4003, "exit 3"),
        ("exit 255", 4255, "exit 255"),
        ("kill -9 $$", 4137, "signal 9"),
        ("kill -TERM $$", 4143, "signal 15"),
    ] {
        let controller = Controller::shell(script).await;
        let server = TestServer::for_controller(&controller).await;
        let mut ws = server.connect("t").await;
        let (_, close) = collect(&mut ws).await;
        assert_eq!(close_of(close), (code, reason.to_string()), "script {script:?}");
    }
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_order() {
    let controller = Controller::shell("echo 1; echo 2 >&2; echo 3; echo 4 >&2; printf 5 >&2").await;
    let server = TestServer::for_controller(&controller).await;
    let (output, _) = collect(&mut server.connect("t").await).await;
    assert_eq!(output, b"1\n2\n3\n4\n5");
}

#[tokio::test]
async fn all_of_300k_lines_arrive_before_close() {
    let controller = Controller::allowing("/usr/bin/seq", &["1", "300000"]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut ws = server.connect("t").await;
    let mut messages = 0;
    let mut output = Vec::new();
    let close = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(data) => {
                assert!(data.len() <= 64 * 1024);
                messages += 1;
                output.extend_from_slice(&data);
            }
            Message::Close(frame) => break frame,
            _ => {}
        }
    };
    let expected: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(output.len(), expected.len());
    assert!(output == expected.as_bytes());
    assert_eq!(close_of(close).0, 1000);
    // Reads of whatever size the pipe gave, not a fixed small chunk.
    assert!(messages < output.len() / 1024, "{messages} messages for {} bytes", output.len());
}

#[tokio::test]
async fn eight_mib_of_random_bytes_echo_through_cat_unchanged() {
    let controller = Controller::allowing("/bin/cat", &[]).await;
    let server = TestServer::for_controller(&controller).await;
    let ws = server.connect("t").await;
    let (mut tx, mut rx) = ws.split();
    let mut data = vec![0u8; 8 * 1024 * 1024];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for byte in data.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in data.chunks(100_000) {
            tx.send(Message::Binary(Bytes::copy_from_slice(chunk))).await.unwrap();
        }
        tx
    });
    let mut echoed = Vec::with_capacity(expected.len());
    while echoed.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(chunk) => echoed.extend_from_slice(&chunk),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(echoed == expected, "echo differs");
    let mut tx = writer.await.unwrap();
    tx.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn text_and_binary_messages_go_to_stdin_as_is() {
    // `head -c 11` exits after 11 bytes: no newline may have been added.
    let controller = Controller::allowing("/usr/bin/head", &["-c", "11"]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut ws = server.connect("t").await;
    send_text(&mut ws, "hello").await;
    ws.send(Message::Binary(Bytes::from_static(b" wor"))).await.unwrap();
    send_text(&mut ws, "ld").await;
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"hello world");
    assert_eq!(close_of(close).0, 1000);
}

#[tokio::test]
async fn env_and_cwd_of_the_spec_apply() {
    let dir = scratch();
    let cwd = dir.path().canonicalize().unwrap();
    let body = serde_json::json!({
        "command": "/bin/sh",
        "args": ["-c", "echo \"$GREETING\"; pwd; echo \"${HOME:+home set}\""],
        "env": {"GREETING": "hi there"},
        "cwd": cwd,
        "unknown_extension": true,
    })
    .to_string();
    let controller = Controller::start(move |_| {
        let body = body.clone();
        async move { json(http::StatusCode::OK, body) }
    })
    .await;
    let mut config = config_for(&controller);
    let server = TestServer::start(config.clone()).await;
    let (output, _) = collect(&mut server.connect("t").await).await;
    let home = if std::env::var_os("HOME").is_some() { "home set\n" } else { "\n" };
    assert_eq!(String::from_utf8(output).unwrap(), format!("hi there\n{}\n{home}", cwd.display()));

    // With clear_env, only pass_env and the spec's env remain.
    config.clear_env = true;
    config.pass_env = vec!["PATH".into()];
    let server = TestServer::start(config).await;
    let (output, _) = collect(&mut server.connect("t").await).await;
    assert_eq!(String::from_utf8(output).unwrap(), format!("hi there\n{}\n\n", cwd.display()));
}

/// Opens a session whose process starts a grandchild and runs until
/// killed; returns the socket and the two pids.
async fn session_with_grandchild(dir: &tempfile::TempDir) -> (TestServer, Ws, i32, i32) {
    let (leader, grandchild) = (path_in(dir, "leader"), path_in(dir, "grandchild"));
    let script = format!(
        "sleep 1000 & echo $! > {g}; echo $$ > {l}; echo ready; wait",
        g = grandchild.display(),
        l = leader.display()
    );
    let controller = Controller::shell(&script).await;
    let server = TestServer::for_controller(&controller).await;
    let mut ws = server.connect("t").await;
    read_until(&mut ws, b"ready").await;
    let pids = (read_pid(&leader).await, read_pid(&grandchild).await);
    (server, ws, pids.0, pids.1)
}

#[tokio::test]
async fn client_close_kills_the_whole_group() {
    let dir = scratch();
    let (_server, mut ws, leader, grandchild) = session_with_grandchild(&dir).await;
    ws.close(None).await.unwrap();
    // The server answers the Close.
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(_) = message {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answer, Ok(true));
    assert!(eventually(Duration::from_secs(5), || is_dead(leader) && is_dead(grandchild)).await);
}

#[tokio::test]
async fn vanished_client_kills_the_whole_group() {
    let dir = scratch();
    let (_server, ws, leader, grandchild) = session_with_grandchild(&dir).await;
    // Drop the TCP connection without a Close frame.
    drop(ws);
    assert!(eventually(Duration::from_secs(5), || is_dead(leader) && is_dead(grandchild)).await);
}

#[tokio::test]
async fn process_ignoring_polite_signals_is_killed_after_kill_grace() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let script =
        format!("trap '' INT TERM HUP; echo $$ > {}; echo ready; while :; do sleep 0.05; done", pidfile.display());
    let controller = Controller::shell(&script).await;
    let mut config = config_for(&controller);
    config.kill_grace = Duration::from_millis(800);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    read_until(&mut ws, b"ready").await;
    let pid = read_pid(&pidfile).await;
    let closed = Instant::now();
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!is_dead(pid), "SIGKILL came before kill_grace");
    assert!(eventually(Duration::from_secs(5), || is_dead(pid)).await);
    assert!(closed.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn kill_signal_is_configurable() {
    let dir = scratch();
    let (pidfile, got) = (path_in(&dir, "pid"), path_in(&dir, "got"));
    let script = format!(
        // The shell reports its killed `sleep` on stderr after the client
        // has gone: that must not end it with SIGPIPE before SIGTERM does.
        "trap 'echo TERM > {got}; exit 0' TERM; trap '' INT; echo $$ > {pid}; echo ready; while :; do sleep 0.05; done",
        got = got.display(),
        pid = pidfile.display()
    );
    let controller = Controller::shell(&script).await;
    let mut config = config_for(&controller);
    config.kill_signal = "SIGTERM".parse().unwrap();
    config.kill_grace = Duration::from_secs(5);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    read_until(&mut ws, b"ready").await;
    let pid = read_pid(&pidfile).await;
    drop(ws);
    assert!(eventually(Duration::from_secs(3), || is_dead(pid)).await, "SIGTERM did not end it before the grace");
    assert_eq!(std::fs::read_to_string(got).unwrap(), "TERM\n");
}

#[tokio::test]
async fn grandchild_holding_the_pipe_delays_close_at_most_kill_grace() {
    let dir = scratch();
    let grandchild = path_in(&dir, "grandchild");
    let script = format!("sleep 1000 & echo $! > {}; echo bye; exit 7", grandchild.display());
    let controller = Controller::shell(&script).await;
    let mut config = config_for(&controller);
    config.kill_grace = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let started = Instant::now();
    let mut ws = server.connect("t").await;
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output, b"bye\n");
    assert_eq!(close_of(close), (4007, "exit 7".into()));
    assert!(started.elapsed() < Duration::from_secs(3), "Close took {:?}", started.elapsed());
    let pid = read_pid(&grandchild).await;
    assert!(eventually(Duration::from_secs(3), || is_dead(pid)).await, "the grandchild outlived the session");
}

#[tokio::test]
async fn output_written_just_before_exit_is_delivered() {
    // A burst much larger than the pipe buffer, then an immediate exit.
    let controller = Controller::shell("head -c 3000000 /dev/zero | tr '\\0' x; exit 2").await;
    let server = TestServer::for_controller(&controller).await;
    let mut ws = server.connect("t").await;
    // Read slowly at first so the process exits long before we are done.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (output, close) = collect(&mut ws).await;
    assert_eq!(output.len(), 3_000_000);
    assert!(output.iter().all(|&b| b == b'x'));
    assert_eq!(close_of(close).0, 4002);
}

#[tokio::test]
async fn oversize_message_closes_with_1009_and_kills_the_process() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let controller = Controller::shell(&format!("echo $$ > {}; echo ready; exec cat", pidfile.display())).await;
    let mut config = config_for(&controller);
    config.max_message_size = bytesize::ByteSize::kib(64);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    read_until(&mut ws, b"ready").await;
    let pid = read_pid(&pidfile).await;
    // At the limit is fine.
    ws.send(Message::Binary(vec![b'a'; 64 * 1024].into())).await.unwrap();
    read_until(&mut ws, b"aaaa").await;
    ws.send(Message::Binary(vec![b'b'; 64 * 1024 + 1].into())).await.unwrap();
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame;
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(close_of(close).0, 1009);
    assert!(eventually(Duration::from_secs(5), || is_dead(pid)).await);
}

#[tokio::test]
async fn silent_client_is_dropped_after_pong_timeout() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let controller = Controller::shell(&format!("echo $$ > {}; exec sleep 1000", pidfile.display())).await;
    let mut config = config_for(&controller);
    config.ping_interval = Duration::from_millis(100);
    config.pong_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;

    // A client that reads (and so answers pings) stays connected.
    let mut live = server.connect("live").await;
    let live_pid = read_pid(&pidfile).await;
    std::fs::remove_file(&pidfile).unwrap();
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(message)) = live.next().await {
            if let Message::Ping(_) = message {
                pings += 1;
            }
        }
        pings
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!reader.is_finished(), "the live session ended");
    assert!(!is_dead(live_pid));

    // A raw TCP client that completes the handshake and then never reads or
    // answers is dropped, and its process killed.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = "GET /ws?token=silent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut silent, request.as_bytes()).await.unwrap();
    let silent_pid = read_pid(&pidfile).await;
    assert!(eventually(Duration::from_secs(3), || is_dead(silent_pid)).await);
    assert!(!is_dead(live_pid));
    reader.abort();
    assert!(eventually(Duration::from_secs(3), || is_dead(live_pid)).await);
}

#[tokio::test]
async fn a_client_that_stops_reading_stalls_the_process() {
    let dir = scratch();
    let (script, counter) = counting_producer(&dir);
    let controller = Controller::shell(&script).await;
    let server = TestServer::for_controller(&controller).await;
    let ws = server.connect("t").await;
    assert_producer_stalls(&counter).await;
    drop(ws);
}

#[tokio::test]
async fn graceful_stop_sends_1001_and_ends_processes() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let controller = Controller::shell(&format!("echo $$ >> {}; echo ready; exec sleep 1000", pidfile.display())).await;
    let server = TestServer::for_controller(&controller).await;
    let mut first = server.connect("a").await;
    let mut second = server.connect("b").await;
    read_until(&mut first, b"ready").await;
    read_until(&mut second, b"ready").await;
    let pids: Vec<i32> =
        std::fs::read_to_string(&pidfile).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2);
    let stopped = tokio::spawn(server.stop());
    for ws in [&mut first, &mut second] {
        let (_, close) = collect(ws).await;
        assert_eq!(close_of(close).0, 1001);
    }
    tokio::time::timeout(Duration::from_secs(5), stopped).await.unwrap().unwrap();
    assert!(pids.iter().all(|&pid| is_dead(pid)));
}

#[tokio::test]
async fn a_client_that_vanishes_while_stdin_is_full_still_ends_the_session() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    // Never reads its stdin, so writes to it block once the pipe is full.
    let controller = Controller::shell(&format!("echo $$ > {}; echo ready; exec sleep 1000", pidfile.display())).await;
    let mut config = config_for(&controller);
    config.ping_interval = Duration::from_millis(100);
    config.pong_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    read_until(&mut ws, b"ready").await;
    let pid = read_pid(&pidfile).await;
    let flood = tokio::spawn(async move {
        for _ in 0..64 {
            if ws.send(Message::Binary(vec![b'x'; 16 * 1024].into())).await.is_err() {
                break;
            }
        }
        ws
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The socket goes away mid-flood, without a Close.
    flood.abort();
    let _ = flood.await;
    assert!(eventually(Duration::from_secs(5), || is_dead(pid)).await, "the session outlived its client");
}

#[tokio::test]
async fn steady_output_keeps_the_session_alive_and_pinged() {
    let controller = Controller::allowing("/usr/bin/yes", &[]).await;
    let mut config = config_for(&controller);
    config.ping_interval = Duration::from_millis(100);
    config.pong_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    let mut pings = 0;
    let mut bytes = 0;
    let read = tokio::time::timeout(Duration::from_millis(1500), async {
        while let Some(message) = ws.next().await {
            match message.unwrap() {
                Message::Ping(_) => pings += 1,
                Message::Binary(data) => bytes += data.len(),
                Message::Close(frame) => panic!("session ended: {frame:?}"),
                _ => {}
            }
        }
    })
    .await;
    assert!(read.is_err(), "the session ended");
    assert!(bytes > 1_000_000, "only {bytes} bytes of output");
    assert!(pings >= 5, "{pings} pings in 1.5 s at a 100 ms interval");
}

#[tokio::test]
async fn a_busy_leftover_writer_delays_close_at_most_kill_grace() {
    let dir = scratch();
    let pidfile = path_in(&dir, "yes");
    // `yes` keeps the pipe busy after the leader exits.
    let controller = Controller::shell(&format!("yes & echo $! > {}; exit 6", pidfile.display())).await;
    let mut config = config_for(&controller);
    config.kill_grace = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let started = Instant::now();
    let mut ws = server.connect("t").await;
    let (output, close) = collect(&mut ws).await;
    assert!(!output.is_empty());
    assert_eq!(close_of(close), (4006, "exit 6".into()));
    assert!(started.elapsed() < Duration::from_secs(5), "Close took {:?}", started.elapsed());
    let pid = read_pid(&pidfile).await;
    assert!(eventually(Duration::from_secs(3), || is_dead(pid)).await);
}

#[tokio::test]
async fn idle_sessions_are_closed_with_1008_and_activity_keeps_them() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let controller = Controller::shell(&format!("echo $$ >> {}; exec cat", pidfile.display())).await;
    let mut config = config_for(&controller);
    config.idle_timeout = Some(Duration::from_millis(600));
    let server = TestServer::start(config).await;

    // Typing every 200 ms keeps a session alive well past the timeout.
    let mut busy = server.connect("busy").await;
    for i in 0..8 {
        send_text(&mut busy, &format!("line {i}\n")).await;
        read_until(&mut busy, format!("line {i}\n").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then silence ends it.
    let started = Instant::now();
    let (_, close) = collect(&mut busy).await;
    assert_eq!(close_of(close), (1008, "idle timeout".into()));
    assert!(started.elapsed() < Duration::from_secs(3));
    let pid = read_pid(&pidfile).await;
    assert!(eventually(Duration::from_secs(3), || is_dead(pid)).await);
}

#[tokio::test]
async fn sessions_end_at_max_session_duration() {
    let controller = Controller::allowing("/usr/bin/yes", &[]).await;
    let mut config = config_for(&controller);
    config.max_session_duration = Some(Duration::from_millis(500));
    let server = TestServer::start(config).await;
    let started = Instant::now();
    let mut ws = server.connect("t").await;
    let (output, close) = collect(&mut ws).await;
    assert!(!output.is_empty());
    assert_eq!(close_of(close), (1008, "session time limit".into()));
    assert!(started.elapsed() >= Duration::from_millis(500) && started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn limits_do_not_override_an_exit_being_drained() {
    // The process exits inside the idle window, leaving a grandchild on the
    // pipe; the drain outlasts the idle timeout, and the exit still wins.
    let controller = Controller::shell("sleep 0.3; sleep 100 & exit 0").await;
    let mut config = config_for(&controller);
    config.idle_timeout = Some(Duration::from_millis(400));
    config.kill_grace = Duration::from_millis(800);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    let (_, close) = collect(&mut ws).await;
    assert_eq!(close_of(close), (1000, "exit 0".into()));
}

#[tokio::test]
async fn the_leader_stays_unreaped_until_its_group_is_killed() {
    // While a leftover holds the pipe, the exited leader is kept as a
    // zombie: its pid (the group id) cannot be reused, so the final SIGKILL
    // to the group cannot reach a stranger. Then it is reaped.
    let dir = scratch();
    let leader = path_in(&dir, "leader");
    let controller = Controller::shell(&format!("echo $$ > {}; sleep 100 & exit 0", leader.display())).await;
    let mut config = config_for(&controller);
    config.kill_grace = Duration::from_millis(1500);
    let server = TestServer::start(config).await;
    let mut ws = server.connect("t").await;
    let pid = read_pid(&leader).await;
    let state = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
    };
    assert!(eventually(Duration::from_secs(1), || state() == Some('Z')).await, "state {:?}", state());
    assert!(children_of(std::process::id() as i32).contains(&pid), "the zombie is ours");
    let (_, close) = collect(&mut ws).await;
    assert_eq!(close_of(close), (1000, "exit 0".into()));
    assert!(eventually(Duration::from_secs(3), || state().is_none()).await, "never reaped: {:?}", state());
}
