//! Sessions that outlive their connection (SPEC §9): resume with `since`,
//! repaint a terminal's screen, observers, `keep`, recording, balancing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A controller answering each token with its own spec.
async fn controller(specs: &[(&str, Value)]) -> Controller {
    Controller::answering(specs).await
}

/// One client of a session, in the raw protocol or v5.
struct Client {
    ws: Ws,
    v5: bool,
    output: Vec<u8>,
    info: Option<Value>,
    status: Option<Value>,
    close: Option<CloseFrame>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, token: &str, query: &str, v5: bool) -> Result<Self, WsError> {
        let mut request = format!("ws://{addr}/ws?token={token}{query}").into_client_request().unwrap();
        if v5 {
            request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { ws, v5, output: Vec::new(), info: None, status: None, close: None })
    }

    /// Handles one message; `false` once the session is over.
    fn take(&mut self, message: Message) -> bool {
        match (self.v5, message) {
            (false, Message::Binary(data)) => self.output.extend_from_slice(&data),
            (false, Message::Text(text)) => self.info = Some(serde_json::from_str(&text).unwrap()),
            (true, Message::Binary(data)) if !data.is_empty() => match data[0] {
                1 | 2 => self.output.extend_from_slice(&data[1..]),
                3 => self.status = Some(serde_json::from_slice(&data[1..]).unwrap()),
                5 => self.info = Some(serde_json::from_slice(&data[1..]).unwrap()),
                other => panic!("unexpected channel {other}"),
            },
            (_, Message::Close(frame)) => {
                self.close = frame;
                return false;
            }
            _ => {}
        }
        true
    }

    /// Reads until `needle` is in the output.
    async fn read_until(&mut self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while !contains(&self.output, needle.as_bytes()) {
                match self.ws.next().await {
                    Some(Ok(message)) => {
                        if !self.take(message) {
                            return false;
                        }
                    }
                    _ => return false,
                }
            }
            true
        })
        .await;
        assert!(matches!(found, Ok(true)), "never saw {needle:?} in {:?}", String::from_utf8_lossy(&self.output));
    }

    /// Reads until nothing came for `quiet`.
    async fn read_quiet(&mut self, quiet: Duration) {
        while let Ok(Some(Ok(message))) = tokio::time::timeout(quiet, self.ws.next()).await {
            if !self.take(message) {
                return;
            }
        }
    }

    /// Reads for `time`.
    async fn read_for(&mut self, time: Duration) {
        let _ = tokio::time::timeout(time, async {
            while let Some(Ok(message)) = self.ws.next().await {
                if !self.take(message) {
                    return;
                }
            }
        })
        .await;
    }

    /// Reads to the end of the session.
    async fn read_to_end(&mut self) {
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(message)) = self.ws.next().await {
                if !self.take(message) {
                    return;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the session did not end ({} bytes of output)", self.output.len());
    }

    async fn type_in(&mut self, text: &str) {
        self.ws.send(input_message(self.v5, text)).await.unwrap();
    }

    fn close_code(&self) -> u16 {
        self.close.as_ref().map_or(0, |c| u16::from(c.code))
    }
}

/// Tries attaching with `token` until the answer is 404 (the session is
/// gone), for at most 5 seconds.
async fn until_no_such_session(server: &TestServer, token: &str) {
    let gone = async {
        loop {
            match tokio_tungstenite::connect_async(server.ws_url(token)).await {
                Err(WsError::Http(response)) if response.status() == StatusCode::NOT_FOUND => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone).await.expect("the session outlived keep");
}

async fn resume(v5: bool, tty: bool) {
    let spec = json!({"command": "/bin/sh", "args": ["-c", COUNTER], "tty": tty,
                      "session": {"id": "resume-me", "keep": "30s"}});
    let controller = controller(&[("start", spec), ("again", json!({"attach": "resume-me"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut first = Client::connect(server.addr, "start", "&session=resume-me", v5).await.unwrap();
    first.read_until("line 5").await;
    assert_eq!(first.info.as_ref().unwrap()["offset"], 0, "{:?}", first.info);
    let had = first.output.len();
    // Dropped without a Close: the link is gone.
    drop(first.ws);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut again =
        Client::connect(server.addr, "again", &format!("&session=resume-me&since={had}"), v5).await.unwrap();
    again.read_until("line 40").await;
    assert_eq!(again.info.as_ref().unwrap()["offset"], had as u64);
    let mut all = first.output.clone();
    all.extend_from_slice(&again.output);
    assert_gap_free(&all, "across the reattach");
    // Typing works again.
    again.type_in("hello\n").await;
    again.read_until("got hello").await;
}

#[tokio::test]
async fn a_dropped_pipe_session_resumes_with_exactly_the_missing_bytes() {
    resume(false, false).await;
}

#[tokio::test]
async fn a_dropped_terminal_session_resumes_over_the_channel_protocol() {
    resume(true, true).await;
}

#[tokio::test]
async fn resuming_after_the_history_wrapped_starts_at_the_oldest_kept_byte() {
    // 50 bytes a line, 50 lines a second (30 on a loaded machine): the
    // history wraps within a second.
    let script =
        "i=0; while :; do i=$((i+1)); echo \"line $i ........................................\"; sleep 0.02; done";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script],
                      "session": {"id": "wraps", "history": "1KiB"}});
    let controller = controller(&[("start", spec), ("again", json!({"attach": "wraps"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut first = Client::connect(server.addr, "start", "&session=wraps", false).await.unwrap();
    first.read_until("line 3 ").await;
    let had = first.output.len();
    drop(first.ws);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let mut again = Client::connect(server.addr, "again", &format!("&session=wraps&since={had}"), false).await.unwrap();
    again.read_for(Duration::from_millis(300)).await;
    let start = again.info.as_ref().unwrap()["offset"].as_u64().unwrap();
    assert!(start > had as u64 + 1024, "offset {start}, had {had}");
    // The oldest kept byte may be in the middle of a line; whole lines
    // after it follow on.
    let numbers = line_numbers(&again.output);
    assert!(numbers.len() > 20 && numbers[0] > 20, "{numbers:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert!(again.output.len() >= 1000);
}

#[tokio::test]
async fn keep_ends_the_process_with_no_writer_and_frees_the_id() {
    let dir = scratch();
    let pidfile = path_in(&dir, "pid");
    let script = format!("setsid sleep 1000 & echo $! > {}; echo ready; exec cat", pidfile.display());
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "session": {"id": "kept", "keep": "700ms"}});
    let peek = json!({"attach": "kept", "role": "observer"});
    let controller = controller(&[("start", spec), ("again", json!({"attach": "kept"})), ("peek", peek)]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut first = Client::connect(server.addr, "start", "", false).await.unwrap();
    first.read_until("ready").await;
    let daemon = read_pid(&pidfile).await;
    drop(first.ws);
    // Still there within keep...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = Client::connect(server.addr, "again", "", false).await.unwrap();
    drop(again.ws);
    // ...and gone after it, the whole session with it (with cgroups, the
    // setsid daemon too). (Watching as an observer: writers keep it.)
    until_no_such_session(&server, "peek").await;
    if server.cgroups.is_some() {
        assert!(eventually(Duration::from_secs(2), || is_dead(daemon)).await, "the daemon outlived the session");
    }
}

#[tokio::test]
async fn ids_are_unique_attach_needs_a_running_session_and_session_must_match() {
    let spec = json!({"command": "/bin/cat", "session": {"id": "only"}});
    let controller = controller(&[
        ("start", spec),
        ("again", json!({"attach": "only"})),
        ("nobody", json!({"attach": "nobody-here"})),
    ])
    .await;
    let server = TestServer::for_controller(&controller).await;
    let _running = Client::connect(server.addr, "start", "", false).await.unwrap();
    assert_eq!(refusal(server.ws_url("start")).await, (StatusCode::CONFLICT, "session exists\n".into()));
    assert_eq!(refusal(server.ws_url("nobody")).await, (StatusCode::NOT_FOUND, "no such session\n".into()));
    let mismatch = format!("{}&session=other", server.ws_url("again"));
    assert_eq!(refusal(mismatch).await, (StatusCode::BAD_REQUEST, "session does not match\n".into()));
    assert!(Client::connect(server.addr, "again", "&session=only", false).await.is_ok());
}

/// A client that asks to resume from a `since` the server cannot read gets
/// 400, before the backend is asked, rather than the whole history.
#[tokio::test]
async fn a_malformed_or_repeated_since_is_400_and_the_backend_is_not_asked() {
    let controller = controller(&[("again", json!({"attach": "any"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    for (query, body) in [
        ("&session=any&since=abc", "since must be a number of bytes\n"),
        ("&session=any&since=-5", "since must be a number of bytes\n"),
        ("&since=1&since=2", "since given more than once\n"),
        ("&session=a&session=b", "session given more than once\n"),
    ] {
        let url = format!("{}{query}", server.ws_url("again"));
        assert_eq!(refusal(url).await, (StatusCode::BAD_REQUEST, body.into()), "{query}");
    }
    assert!(controller.requests().is_empty(), "the controller was asked");
}

#[tokio::test]
async fn keep_and_history_are_capped_by_the_server() {
    let script = "head -c 4000 /dev/zero | tr '\\0' x; echo; echo line 2; exec cat";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script],
                      "session": {"id": "greedy", "keep": "10h", "history": "10MiB"}});
    let peek = json!({"attach": "greedy", "role": "observer"});
    let controller = controller(&[("start", spec), ("again", json!({"attach": "greedy"})), ("peek", peek)]).await;
    let mut config = config_for(&controller);
    config.max_keep = Duration::from_millis(800);
    config.max_history = bytesize::ByteSize::b(512);
    let server = TestServer::start(config).await;
    // The first client leaves at once (the burst is more than the capped
    // history, so it would be too slow anyway).
    let first = Client::connect(server.addr, "start", "", false).await.unwrap();
    drop(first.ws);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect(server.addr, "peek", "&session=greedy&since=0", false).await.unwrap();
    again.read_for(Duration::from_millis(100)).await;
    assert!(again.info.as_ref().unwrap()["offset"].as_u64().unwrap() > 0, "history was not capped");
    assert_eq!(again.output.len(), 512, "{:?}", again.info);
    drop(again.ws);
    until_no_such_session(&server, "peek").await;
}

#[tokio::test]
async fn a_reattached_terminal_shows_the_same_screen_after_the_history_wrapped() {
    let dir = scratch();
    let file = path_in(&dir, "notes.txt");
    std::fs::write(&file, (1..=60).map(|i| format!("note {i}\n")).collect::<String>()).unwrap();
    let spec = json!({"command": "/usr/bin/nano", "args": [file], "tty": true,
                      "size": {"cols": 80, "rows": 24}, "session": {"id": "screen", "history": "4KiB"}});
    let controller = controller(&[("start", spec), ("again", json!({"attach": "screen"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut first = Client::connect(server.addr, "start", "", false).await.unwrap();
    first.read_until("note 1").await;
    // Page down and up a few times (the history wraps), and type, so the
    // screen is not the first one drawn.
    for key in ["\x16", "\x16", "\x19", "\x16", "\x16"] {
        first.type_in(key).await;
        first.read_quiet(Duration::from_millis(300)).await;
    }
    // Enough typing for the history (4 KiB) to wrap.
    for i in 0..80 {
        first.type_in(&format!("typed line {i}\r")).await;
        first.read_quiet(Duration::from_millis(15)).await;
    }
    first.type_in("typed here").await;
    first.read_until("typed here").await;
    first.read_quiet(Duration::from_millis(400)).await;
    let mut before = vt100::Parser::new(24.try_into().unwrap(), 80.try_into().unwrap(), 0);
    before.process(&first.output);
    assert!(first.output.len() > 4096, "the history did not wrap");
    drop(first.ws);
    let mut again = Client::connect(server.addr, "again", "&session=screen", false).await.unwrap();
    again.read_quiet(Duration::from_millis(500)).await;
    assert!(again.info.as_ref().unwrap()["repaint"].as_u64().unwrap() > 0);
    let mut after = vt100::Parser::new(24.try_into().unwrap(), 80.try_into().unwrap(), 0);
    after.process(&again.output);
    assert_eq!(after.screen().contents(), before.screen().contents());
    assert_eq!(after.screen().cursor_position(), before.screen().cursor_position());
    assert!(after.screen().contents().contains("typed here"));
}

#[tokio::test]
async fn observers_see_everything_change_nothing_and_a_stalled_one_is_closed_alone() {
    // 20 MB in 16 KiB writes, then an echo of the input, then exit 0.
    let script = "read first; echo \"got $first\"; read go; \
                  for i in $(seq 1 1280); do head -c 16384 /dev/zero; done; echo done";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "session": {"id": "watched", "history": "1MiB"}});
    let controller = controller(&[("start", spec), ("watch", json!({"attach": "watched", "role": "observer"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut writer = Client::connect(server.addr, "start", "", false).await.unwrap();
    let mut observer = Client::connect(server.addr, "watch", "", false).await.unwrap();
    // A stalled observer with small socket buffers: it never reads until
    // the end.
    let stalled = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(server.addr).await.unwrap();
        let url = server.ws_url("watch");
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap().0
    };
    // The observer's input changes nothing.
    observer.type_in("from the observer\n").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.type_in("from the writer\n").await;
    writer.read_until("got from the writer").await;
    observer.read_until("got from the writer").await;
    assert!(!contains(&writer.output, b"observer"));
    writer.type_in("go\n").await;
    tokio::join!(writer.read_to_end(), observer.read_to_end());
    assert!(writer.output.ends_with(b"done\n"));
    assert!(observer.output.ends_with(b"done\n"));
    assert_eq!((writer.close_code(), observer.close_code()), (1000, 1000), "exit reaches every client");
    let mut stalled = Client { ws: stalled, v5: false, output: Vec::new(), info: None, status: None, close: None };
    stalled.read_to_end().await;
    let close = stalled.close.clone().unwrap();
    assert_eq!((u16::from(close.code), close.reason.as_str()), (1008, "too slow"));
}

#[tokio::test]
async fn a_recording_is_asciicast_v2_that_replays_the_output() {
    let dir = scratch();
    let records = dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    let script = "echo hello; read l; printf 'caf\\303\\251 %s\\n' \"$l\"; exit 3";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "tty": true,
                      "session": {"id": "taped", "record": true}});
    let controller = controller(&[("start", spec)]).await;
    let mut config = config_for(&controller);
    config.record_dir = Some(records.clone());
    let server = TestServer::start(config).await;
    let mut client = Client::connect(server.addr, "start", "", false).await.unwrap();
    client.read_until("hello").await;
    client.type_in("secret-input\r").await;
    client.read_to_end().await;
    assert_eq!(client.close_code(), 4003);
    let file = std::fs::read_dir(&records).unwrap().next().unwrap().unwrap().path();
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("taped-") && name.ends_with("Z.cast"), "{name}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines[0]["version"], 2);
    assert_eq!((lines[0]["width"].as_u64(), lines[0]["height"].as_u64()), (Some(80), Some(24)));
    assert_eq!(lines[0]["env"]["TERM"], "xterm-256color");
    let events = &lines[1..];
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(events.iter().all(|e| e[1] != "i"), "input recorded without record_input");
    let replayed: String = events.iter().filter(|e| e[1] == "o").map(|e| e[2].as_str().unwrap()).collect();
    assert_eq!(replayed.as_bytes(), client.output.as_slice());
    assert_eq!(events.last().unwrap()[1], "m");
    assert_eq!(events.last().unwrap()[2], "exit 3");
    // asciinema's own reader reads it to the same output.
    assert_eq!(asciinema_output(&file), client.output);
}

#[tokio::test]
async fn two_instances_behind_nginx_route_every_reattach_to_its_session() {
    every_reattach_reaches_its_session(Balancer::Nginx).await;
}

#[tokio::test]
async fn two_instances_behind_haproxy_route_every_reattach_to_its_session() {
    every_reattach_reaches_its_session(Balancer::Haproxy).await;
}

/// Ten named sessions started through `balancer` in front of two
/// instances, each dropped and reattached through it with `since=0` (in
/// reverse order): every reattach finds its session (its output, then
/// typing works), and both instances had sessions.
async fn every_reattach_reaches_its_session(balancer: Balancer) {
    let mut specs = Vec::new();
    for i in 0..10 {
        let id = format!("balanced-{i}");
        specs.push((format!("start-{i}"), json!({"command": "/bin/cat", "session": {"id": id}})));
        specs.push((format!("attach-{i}"), json!({"attach": id})));
    }
    let specs: Vec<(&str, Value)> = specs.iter().map(|(t, s)| (t.as_str(), s.clone())).collect();
    let controller = controller(&specs).await;
    let one = TestServer::for_controller(&controller).await;
    let two = TestServer::for_controller(&controller).await;
    let balancer = balancer.start(&[one.addr, two.addr]).await;
    let mut served_by = HashMap::new();
    let mut clients = Vec::new();
    for i in 0..10 {
        let query = format!("&session=balanced-{i}");
        let mut client = Client::connect(balancer.addr, &format!("start-{i}"), &query, false).await.unwrap();
        client.type_in(&format!("first {i}\n")).await;
        client.read_until(&format!("first {i}")).await;
        clients.push(client);
    }
    // In reverse order, so that a balancer taking turns (not hashing)
    // would send every reattach to the other instance.
    for (i, client) in clients.into_iter().enumerate().rev() {
        drop(client.ws);
        let query = format!("&session=balanced-{i}&since=0");
        let mut again = Client::connect(balancer.addr, &format!("attach-{i}"), &query, false).await.unwrap();
        again.read_until(&format!("first {i}")).await;
        again.type_in(&format!("second {i}\n")).await;
        again.read_until(&format!("second {i}")).await;
        *served_by.entry(again.info.unwrap()["session"].to_string()).or_insert(0) += 1;
    }
    assert_eq!(served_by.len(), 10);
    // Both instances had sessions (the hash spreads ten ids).
    let started = |server: &TestServer| {
        server.metrics.render().lines().any(|l| l.starts_with("ws_subprocess_sessions_total ") && !l.ends_with(" 0"))
    };
    assert!(started(&one) && started(&two), "all sessions went to one instance");
}

/// A balancer from Debian's packages, hashing on `?session=`, run by the
/// test on a loopback port with the configuration the README shows.
#[derive(Debug, Clone, Copy)]
enum Balancer {
    Nginx,
    Haproxy,
}

/// A running balancer.
struct Balanced {
    addr: std::net::SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    async fn start(self, upstreams: &[std::net::SocketAddr]) -> Balanced {
        let dir = scratch();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let root = dir.path().display();
        let log = dir.path().join("error.log");
        let (program, config) = match self {
            Self::Nginx => ("nginx", nginx_config(upstreams, port, &root.to_string())),
            Self::Haproxy => ("haproxy", haproxy_config(upstreams, port)),
        };
        let file = dir.path().join("balancer.conf");
        std::fs::write(&file, config).unwrap();
        let mut command = tokio::process::Command::new(program);
        match self {
            Self::Nginx => command.arg("-c").arg(&file).arg("-e").arg(&log),
            // In the foreground, its log on stderr.
            Self::Haproxy => command.arg("-db").arg("-f").arg(&file).stderr(std::fs::File::create(&log).unwrap()),
        };
        let child = command
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("{program} is installed (scripts/test installs it): {err}"));
        let up =
            eventually(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await;
        assert!(up, "{program} did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        Balanced { addr: ([127, 0, 0, 1], port).into(), _child: child, _dir: dir }
    }
}

/// The README's nginx configuration, in a file of its own.
fn nginx_config(upstreams: &[std::net::SocketAddr], port: u16, root: &str) -> String {
    let servers: String = upstreams.iter().map(|a| format!("        server {a};\n")).collect();
    format!(
        "daemon off;\nmaster_process off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {root}/body;\n\
         proxy_temp_path {root}/proxy;\n    fastcgi_temp_path {root}/fastcgi;\n\
         uwsgi_temp_path {root}/uwsgi;\n    scgi_temp_path {root}/scgi;\n\
         upstream sessions {{\n        hash $arg_session consistent;\n{servers}    }}\n\
         server {{\n        listen 127.0.0.1:{port};\n        location /ws {{\n\
         proxy_pass http://sessions;\n            proxy_http_version 1.1;\n\
         proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection \"upgrade\";\n\
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         proxy_read_timeout 1h;\n        }}\n    }}\n}}\n"
    )
}

/// The README's HAProxy backend (health checks on `/healthz` included),
/// behind a frontend on `port`.
fn haproxy_config(upstreams: &[std::net::SocketAddr], port: u16) -> String {
    let servers: String =
        upstreams.iter().enumerate().map(|(i, a)| format!("    server s{i} {a} check inter 500ms\n")).collect();
    format!(
        "global\n    maxconn 256\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
         frontend sessions\n    bind 127.0.0.1:{port}\n    option forwardfor\n    default_backend ws_subprocess\n\
         backend ws_subprocess\n    balance url_param session\n    hash-type consistent\n\
         option httpchk GET /healthz\n    timeout tunnel 1h\n{servers}"
    )
}

#[tokio::test]
async fn an_observers_resize_changes_nothing_and_a_writers_does() {
    let script = "while read l; do stty size; done";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "tty": true,
                      "size": {"cols": 80, "rows": 24}, "session": {"id": "sized"}});
    let controller = controller(&[("start", spec), ("watch", json!({"attach": "sized", "role": "observer"}))]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut writer = Client::connect(server.addr, "start", "", true).await.unwrap();
    let mut observer = Client::connect(server.addr, "watch", "", true).await.unwrap();
    let resize = |cols: u16, rows: u16| {
        let mut data = vec![4u8];
        data.extend_from_slice(json!({"Width": cols, "Height": rows}).to_string().as_bytes());
        Message::Binary(data.into())
    };
    observer.ws.send(resize(100, 40)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.type_in("a\r").await;
    writer.read_until("24 80").await;
    writer.ws.send(resize(120, 50)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.type_in("b\r").await;
    writer.read_until("50 120").await;
    observer.read_until("50 120").await;
    assert!(!contains(&writer.output, b"40 100"));
}

#[tokio::test]
async fn a_writer_loses_no_output_however_far_it_outgrows_the_history() {
    // 8 MiB on stdout and 1 MiB on stderr at once through a 4 KiB history,
    // to a writer that does not read for the first second: the session
    // waits for its writer, as a plain session waits for its client.
    let script = "head -c 1048576 /dev/zero >&2 & head -c 8388608 /dev/zero; wait; echo done";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "session": {"id": "bulk", "history": "4KiB"}});
    let controller = controller(&[("start", spec)]).await;
    let server = TestServer::for_controller(&controller).await;
    let mut writer = Client::connect(server.addr, "start", "", true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    writer.read_to_end().await;
    assert_eq!(writer.output.len(), 8 * 1024 * 1024 + 1024 * 1024 + 5, "bytes lost or repeated");
    // stdout and stderr are two pipes: the last of stderr may be read after
    // `done` on stdout.
    let at = writer.output.windows(5).position(|w| w == b"done\n").expect("done");
    assert!(writer.output[..at].iter().chain(&writer.output[at + 5..]).all(|&b| b == 0));
    assert_eq!(writer.status.as_ref().unwrap()["status"], "Success", "{:?}", writer.status);
}

#[tokio::test]
async fn a_stalled_writer_holds_the_session_only_until_it_is_dropped_at_pong_timeout() {
    let dir = scratch();
    let marker = path_in(&dir, "finished");
    let script = format!("head -c 4194304 /dev/zero; echo > {}; exec sleep 1000", marker.display());
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "session": {"id": "held", "history": "4KiB"}});
    let controller = controller(&[("start", spec)]).await;
    let mut config = config_for(&controller);
    config.ping_interval = Duration::from_millis(100);
    config.pong_timeout = Duration::from_millis(400);
    let server = TestServer::start(config).await;
    // A writer with a small socket buffer that never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (stalled, _) =
        tokio_tungstenite::client_async(server.ws_url("start"), tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    // The output outgrows the history and the socket buffers many times:
    // the process waits for its writer, until the writer is dropped.
    assert!(eventually(Duration::from_secs(10), || marker.exists()).await, "the process stayed held");
    let mut stalled = Client { ws: stalled, v5: false, output: Vec::new(), info: None, status: None, close: None };
    stalled.read_for(Duration::from_secs(2)).await;
    assert!(stalled.output.len() < 4194304, "the stalled writer was not dropped");
}

#[tokio::test]
async fn idle_timeout_and_the_time_limit_end_named_sessions_too() {
    // One engine for every session: the limits of a plain session hold for
    // a named one, and every attached client hears why it ended.
    let spec = json!({"command": "/bin/cat", "session": {"id": "idle", "keep": "30s"}});
    let watch = json!({"attach": "idle", "role": "observer"});
    let controller = controller(&[("start", spec), ("watch", watch)]).await;
    let mut config = config_for(&controller);
    config.idle_timeout = Some(Duration::from_millis(800));
    let server = TestServer::start(config).await;
    let mut writer = Client::connect(server.addr, "start", "", false).await.unwrap();
    let mut observer = Client::connect(server.addr, "watch", "", false).await.unwrap();
    // Activity keeps it: input echoed, within the window.
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        writer.type_in(&format!("tick {n}\n")).await;
        writer.read_until(&format!("tick {n}")).await;
    }
    writer.read_to_end().await;
    observer.read_to_end().await;
    for client in [&writer, &observer] {
        let close = client.close.as_ref().expect("a Close frame");
        assert_eq!((u16::from(close.code), close.reason.as_str()), (1008, "idle timeout"));
    }
    until_no_such_session(&server, "watch").await;

    let spec = json!({"command": "/bin/cat", "session": {"id": "limited"}});
    let controller = self::controller(&[("start", spec)]).await;
    let mut config = config_for(&controller);
    config.max_session_duration = Some(Duration::from_millis(600));
    let server = TestServer::start(config).await;
    let mut writer = Client::connect(server.addr, "start", "", false).await.unwrap();
    writer.read_to_end().await;
    assert_eq!(writer.close_code(), 1008);
    assert_eq!(writer.close.as_ref().unwrap().reason.as_str(), "session time limit");
}
