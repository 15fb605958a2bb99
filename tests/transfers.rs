//! File transfers in a session (SPEC §12), with lrzsz on both ends: `sz`
//! or `rz` in the session, the other one on the client's side of a real
//! WebSocket. The writer that started a transfer gets its bytes; an
//! observer, and a writer replaying with `since`, get one line instead and
//! session info that keeps their offsets right; the recording holds a
//! marker, not the file, and asciinema still reads it. (The browser side:
//! tests/browser_files.rs.)

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What a client of the session received.
#[derive(Default, Debug)]
struct Received {
    output: Vec<u8>,
    infos: Vec<Value>,
    close: Option<u16>,
}

impl Received {
    /// Takes one v5 message; `false` at the Close.
    fn take(&mut self, message: Message) -> bool {
        match message {
            Message::Binary(data) if !data.is_empty() => match data[0] {
                1 | 2 => self.output.extend_from_slice(&data[1..]),
                5 => self.infos.push(serde_json::from_slice(&data[1..]).unwrap()),
                _ => {}
            },
            Message::Close(frame) => {
                self.close = Some(frame.map_or(0, |f| u16::from(f.code)));
                return false;
            }
            _ => {}
        }
        true
    }

    /// Where this client stands in the session's output, as the browser
    /// module counts it: the last info's offset, plus what came after it
    /// past the info's repaint bytes.
    fn position(&self, after_last_info: usize) -> u64 {
        let info = self.infos.last().expect("session info");
        info["offset"].as_u64().unwrap() + after_last_info as u64 - info["repaint"].as_u64().unwrap()
    }
}

async fn v5(addr: std::net::SocketAddr, token: &str, query: &str) -> Ws {
    let mut request = format!("ws://{addr}/ws?token={token}{query}").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", "v5.channel.k8s.io".parse().unwrap());
    tokio_tungstenite::connect_async(request).await.expect("upgrade").0
}

/// Reads `ws` until `needle` is in its output (or the Close).
async fn read_until(ws: &mut Ws, received: &mut Received, needle: &[u8]) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while !contains(&received.output, needle) {
            match ws.next().await {
                Some(Ok(message)) => {
                    if !received.take(message) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "never saw {:?} in {:?}",
        String::from_utf8_lossy(needle),
        String::from_utf8_lossy(&received.output)
    );
}

/// Reads `ws` to its Close.
async fn read_to_end(ws: &mut Ws, received: &mut Received) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(message)) = ws.next().await {
            if !received.take(message) {
                return;
            }
        }
    })
    .await
    .expect("the session ended");
}

/// Runs the local half of the transfer (`rz` or `sz` here, in `dir`)
/// against the session through `ws`, a v5 writer: the session's output goes
/// to its input and its output to the session's input, until it exits.
/// Returns what else the writer received.
async fn bridge(ws: &mut Ws, program: &[&str], dir: &std::path::Path) -> Received {
    let mut child = tokio::process::Command::new(program[0])
        .args(&program[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut received = Received::default();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut stdout_open = true;
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                read = stdout.read(&mut buffer), if stdout_open => match read.unwrap() {
                    0 => stdout_open = false,
                    n => {
                        let mut message = vec![0u8];
                        message.extend_from_slice(&buffer[..n]);
                        ws.send(Message::Binary(message.into())).await.unwrap();
                    }
                },
                message = ws.next() => {
                    let Some(Ok(message)) = message else { return };
                    let mut chunk = Received::default();
                    let open = chunk.take(message);
                    // The transfer's bytes go to the local program; the
                    // rest is kept.
                    if !chunk.output.is_empty() {
                        let _ = stdin.write_all(&chunk.output).await;
                    }
                    received.output.extend_from_slice(&chunk.output);
                    received.infos.extend(chunk.infos);
                    if !open {
                        received.close = chunk.close;
                        return;
                    }
                }
                // Done once it exited and all it wrote went on (its last
                // word, lrzsz's "OO", may come just before it exits).
                status = child.wait(), if !stdout_open => {
                    assert!(status.unwrap().success(), "{} failed", program[0]);
                    return;
                }
            }
        }
    })
    .await;
    assert!(done.is_ok(), "{} did not finish", program[0]);
    received
}

const NOTE_DOWNLOAD: &[u8] = b"[ws-subprocess: zmodem download not shown here]";
const NOTE_UPLOAD: &[u8] = b"[ws-subprocess: zmodem upload not shown here]";

/// The events of the one recording in `dir`, after its header; and what
/// asciinema's own reader makes of its output.
fn recording(dir: &std::path::Path) -> (Vec<Value>, String) {
    let file = std::fs::read_dir(dir).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&file).unwrap();
    let events = text.lines().skip(1).map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    (events, String::from_utf8(asciinema_output(&file)).unwrap())
}

#[tokio::test]
async fn a_zmodem_download_reaches_its_writer_only_and_the_recording_holds_a_marker() {
    let dir = scratch();
    let (records, remote, local) = (dir.path().join("records"), dir.path().join("remote"), dir.path().join("local"));
    for d in [&records, &remote, &local] {
        std::fs::create_dir(d).unwrap();
    }
    let file: Vec<u8> = random_bytes(300_000);
    std::fs::write(remote.join("f.bin"), &file).unwrap();
    // sz waits for the writer's rz; then the session goes on a while.
    let script = "sz -q f.bin; echo after-transfer; read line; echo \"bye $line\"";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "cwd": remote,
                      "session": {"id": "zd", "record": true, "history": "4MiB"}});
    let controller = Controller::answering(&[
        ("start", spec),
        ("watch", json!({"attach": "zd", "role": "observer"})),
        ("again", json!({"attach": "zd", "role": "writer"})),
    ])
    .await;
    let mut config = config_for(&controller);
    config.record_dir = Some(records.clone());
    let server = TestServer::start(config).await;

    let mut writer = v5(server.addr, "start", "&session=zd").await;
    let mut observer = v5(server.addr, "watch", "&session=zd").await;
    let mut watched = Received::default();
    let got = bridge(&mut writer, &["rz", "-q", "-E"], &local).await;
    assert_eq!(std::fs::read(local.join("f.bin")).expect("rz saved the file"), file, "bytes are bytes");
    assert!(!contains(&got.output, NOTE_DOWNLOAD), "the writer got the transfer itself");

    // The observer: the note, not the bytes; offsets right after it.
    read_until(&mut observer, &mut watched, b"after-transfer\n").await;
    assert!(contains(&watched.output, NOTE_DOWNLOAD), "{:?}", String::from_utf8_lossy(&watched.output));
    assert!(!contains(&watched.output, b"**\x18B0"), "an observer got a transfer's header");
    assert!(watched.output.len() < 1000, "an observer got {} bytes", watched.output.len());
    let transfer = watched.infos.iter().find(|i| i.get("transfer").is_some()).expect("an info naming the transfer");
    assert_eq!(transfer["transfer"], json!({"protocol": "zmodem", "direction": "download", "over": false}));
    let over = watched.infos.last().unwrap();
    assert_eq!(over["transfer"]["over"], true, "{:?}", watched.infos);
    assert_eq!(transfer["role"], "observer");
    let after = watched.output.len() - find(&watched.output, b"after-transfer").unwrap();

    // A writer replaying from the start: the note again, no transfer.
    let mut replay = v5(server.addr, "again", "&session=zd&since=0").await;
    let mut replayed = Received::default();
    read_until(&mut replay, &mut replayed, b"after-transfer\n").await;
    assert!(contains(&replayed.output, NOTE_DOWNLOAD));
    assert!(!contains(&replayed.output, b"**\x18B0"), "a replay started a transfer");
    let replay_after = replayed.output.len() - find(&replayed.output, b"after-transfer").unwrap();
    // Both count the session's bytes as the server does.
    let end = watched.position(after);
    assert_eq!(replayed.position(replay_after), end);
    assert!(end > file.len() as u64, "the transfer's bytes count as session output ({end})");

    replay.send(Message::Binary(b"\x00done\n".to_vec().into())).await.unwrap();
    read_to_end(&mut observer, &mut watched).await;
    read_to_end(&mut replay, &mut replayed).await;
    assert!(contains(&watched.output, b"bye done"));

    let (events, cat) = recording(&records);
    let markers: Vec<&str> = events.iter().filter(|e| e[1] == "m").map(|e| e[2].as_str().unwrap()).collect();
    let marker = markers.iter().find(|m| m.starts_with("transfer: ")).expect("a transfer marker");
    let bytes: u64 =
        marker.strip_prefix("transfer: zmodem download ").unwrap().strip_suffix(" bytes").unwrap().parse().unwrap();
    assert!(bytes >= file.len() as u64 && bytes < file.len() as u64 * 11 / 10, "{marker}");
    assert!(!cat.contains('\u{18}'), "transfer bytes in the recording");
    assert!(cat.len() < 1000, "{} bytes of output recorded", cat.len());
    assert!(cat.contains("after-transfer") && cat.contains("bye done"), "{cat:?}");
}

#[tokio::test]
async fn a_zmodem_upload_keeps_its_input_out_of_the_recording() {
    let dir = scratch();
    let (records, remote, local) = (dir.path().join("records"), dir.path().join("remote"), dir.path().join("local"));
    for d in [&records, &remote, &local] {
        std::fs::create_dir(d).unwrap();
    }
    let file: Vec<u8> = random_bytes(200_000);
    std::fs::write(local.join("up.bin"), &file).unwrap();
    let script = "rz -q -E; echo uploaded; read line";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "cwd": remote,
                      "session": {"id": "zu", "record": true}});
    let controller =
        Controller::answering(&[("start", spec), ("watch", json!({"attach": "zu", "role": "observer"}))]).await;
    let mut config = config_for(&controller);
    config.record_dir = Some(records.clone());
    config.record_input = true;
    let server = TestServer::start(config).await;

    let mut writer = v5(server.addr, "start", "&session=zu").await;
    let mut observer = v5(server.addr, "watch", "&session=zu").await;
    bridge(&mut writer, &["sz", "-q", "up.bin"], &local).await;
    let mut watched = Received::default();
    read_until(&mut observer, &mut watched, b"uploaded").await;
    assert_eq!(std::fs::read(remote.join("up.bin")).expect("rz saved the file"), file);
    assert!(contains(&watched.output, NOTE_UPLOAD), "{:?}", String::from_utf8_lossy(&watched.output));
    assert!(!contains(&watched.output, b"**\x18B0"));
    // rz's ZFIN is its last output: the upload's end is found only when the
    // next output comes, where the observer already stands; it still hears
    // that the transfer is over, and counts the session's bytes as the
    // server does.
    let over = watched.infos.iter().find(|i| i["transfer"]["over"] == true).expect("an info saying it is over");
    let start = watched.infos.iter().find(|i| i["transfer"]["over"] == false).unwrap();
    assert!(over["offset"].as_u64() > start["offset"].as_u64(), "{:?}", watched.infos);
    let after = watched.output.len() - find(&watched.output, b"uploaded").unwrap();
    let mut replay = Received::default();
    {
        let mut again = v5(server.addr, "watch", "&session=zu&since=0").await;
        read_until(&mut again, &mut replay, b"uploaded").await;
    }
    let replay_after = replay.output.len() - find(&replay.output, b"uploaded").unwrap();
    assert_eq!(watched.position(after), replay.position(replay_after));
    writer.send(Message::Binary(b"\x00x\n".to_vec().into())).await.unwrap();
    read_to_end(&mut observer, &mut watched).await;

    let (events, cat) = recording(&records);
    let marker =
        events.iter().filter(|e| e[1] == "m").map(|e| e[2].as_str().unwrap()).find(|m| m.starts_with("transfer: "));
    let marker = marker.expect("a transfer marker");
    let bytes: u64 =
        marker.strip_prefix("transfer: zmodem upload ").unwrap().strip_suffix(" bytes").unwrap().parse().unwrap();
    assert!(bytes >= file.len() as u64, "{marker}");
    let input: usize = events.iter().filter(|e| e[1] == "i").map(|e| e[2].as_str().unwrap().len()).sum();
    assert!(input < 1000, "{input} bytes of an upload recorded as input");
    assert!(events.iter().any(|e| e[1] == "i" && e[2] == "x\n"), "input after the transfer is recorded");
    assert!(cat.contains("uploaded") && !cat.contains('\u{18}'), "{cat:?}");
}

#[tokio::test]
async fn the_client_that_started_a_session_gets_a_transfer_announced_before_it_read() {
    // `sz` as the session's own program announces itself at once, perhaps
    // before the connection that started it reads anything: that is still
    // its live output.
    let dir = scratch();
    let (remote, local) = (dir.path().join("remote"), dir.path().join("local"));
    for d in [&remote, &local] {
        std::fs::create_dir(d).unwrap();
    }
    let file: Vec<u8> = random_bytes(100_000);
    std::fs::write(remote.join("f.bin"), &file).unwrap();
    for round in 0..3 {
        let id = format!("direct-{round}");
        let spec = json!({"command": "/usr/bin/sz", "args": ["-q", remote.join("f.bin")], "session": {"id": id}});
        let controller = Controller::answering(&[("start", spec)]).await;
        let server = TestServer::for_controller(&controller).await;
        let mut writer = v5(server.addr, "start", &format!("&session={id}")).await;
        let _ = std::fs::remove_file(local.join("f.bin"));
        let got = bridge(&mut writer, &["rz", "-q", "-y"], &local).await;
        assert!(!contains(&got.output, NOTE_DOWNLOAD), "round {round}: the note instead of the transfer");
        assert_eq!(std::fs::read(local.join("f.bin")).expect("rz saved the file"), file);
    }
}

#[tokio::test]
async fn a_download_its_receiver_cancels_ends_and_the_prompt_is_shown_again() {
    // After the receiver's cancel (the page aborting: ten CANs), lrzsz's sz
    // sometimes answers with CANs of its own, and sometimes stops in the
    // middle of its data and exits without a word.
    let dir = scratch();
    std::fs::write(dir.path().join("big.bin"), random_bytes(8 << 20)).unwrap();
    for round in 0..3 {
        let id = format!("cancelled-{round}");
        let script = "sz -q big.bin; echo after-cancel-$((6*7)); read line";
        let spec = json!({"command": "/bin/sh", "args": ["-c", script], "cwd": dir.path(), "tty": true,
                          "session": {"id": id, "record": true}});
        let watch = json!({"attach": id, "role": "observer"});
        let controller = Controller::answering(&[("start", spec), ("watch", watch)]).await;
        let records = dir.path().join(format!("records-{round}"));
        std::fs::create_dir(&records).unwrap();
        let mut config = config_for(&controller);
        config.record_dir = Some(records.clone());
        let server = TestServer::start(config).await;
        let query = format!("&session={id}");
        let mut writer = v5(server.addr, "start", &query).await;
        let mut observer = v5(server.addr, "watch", &query).await;
        // The receiver: asks for the file, takes 1 MB of it, gives up.
        let mut received = Received::default();
        read_until(&mut writer, &mut received, b"**\x18B00").await;
        let zrinit = b"\x00**\x18B0100000023be50\r\x8a\x11";
        writer.send(Message::Binary(zrinit.to_vec().into())).await.unwrap();
        let zrpos = b"\x00**\x18B0900000000a87c\r\x8a\x11";
        writer.send(Message::Binary(zrpos.to_vec().into())).await.unwrap();
        while received.output.len() < 1 << 20 {
            let message = tokio::time::timeout(Duration::from_secs(10), writer.next()).await.unwrap().unwrap().unwrap();
            assert!(received.take(message));
        }
        let mut cancel = vec![0u8];
        cancel.extend_from_slice(&[0x18; 10]);
        cancel.extend_from_slice(&[0x08; 10]);
        writer.send(Message::Binary(cancel.into())).await.unwrap();
        read_until(&mut writer, &mut received, b"after-cancel-42").await;
        let mut watched = Received::default();
        read_until(&mut observer, &mut watched, b"after-cancel-42").await;
        assert!(contains(&watched.output, NOTE_DOWNLOAD), "round {round}");
        writer.send(Message::Binary(b"\x00x\r".to_vec().into())).await.unwrap();
        read_to_end(&mut observer, &mut watched).await;
        let (events, cat) = recording(&records);
        let marker =
            events.iter().filter(|e| e[1] == "m").map(|e| e[2].as_str().unwrap()).find(|m| m.starts_with("transfer: "));
        // Ended by the cancel, or by the CANs sz answered it with.
        assert!(marker.is_some_and(|m| m.starts_with("transfer: zmodem download ")), "{events:?}");
        assert!(cat.contains("after-cancel-42"), "round {round}: the recording stopped at the transfer");
        // What sz had in flight when it was cancelled drained with it.
        assert!(!cat.contains('\u{18}'), "round {round}: ZMODEM data in the recording: {cat:?}");
        assert!(cat.len() < 1000, "round {round}: {} bytes of output recorded", cat.len());
        let note = find(&watched.output, NOTE_DOWNLOAD).unwrap();
        let shown = &watched.output[note..find(&watched.output, b"after-cancel-42").unwrap()];
        assert!(shown.len() < 300, "round {round}: the observer got {:?}", String::from_utf8_lossy(shown));
    }
}

#[tokio::test]
async fn after_an_in_place_upgrade_a_transfer_still_reaches_only_its_writer() {
    // The connections are carried into the new program with what they
    // were told: the observer still hears session info around the note.
    let dir = scratch();
    let (remote, local) = (dir.path().join("remote"), dir.path().join("local"));
    for d in [&remote, &local] {
        std::fs::create_dir(d).unwrap();
    }
    let file = random_bytes(200_000);
    std::fs::write(remote.join("f.bin"), &file).unwrap();
    let script = "read go; sz -q f.bin; echo after-$((6*7)); read line";
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "cwd": remote, "session": {"id": "up"}});
    let controller =
        Controller::answering(&[("start", spec), ("watch", json!({"attach": "up", "role": "observer"}))]).await;
    let config = dir.path().join("ws-subprocess.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ncontroller_url = \"{}\"\n",
        controller.url()
    );
    std::fs::write(&config, text).unwrap();
    let server = Binary::start(&["--config", config.to_str().unwrap()], &[], dir.path()).await;
    let mut writer = v5(server.tcp(), "start", "&session=up").await;
    let mut observer = v5(server.tcp(), "watch", "&session=up").await;
    let mut watched = Received::default();
    while watched.infos.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(10), observer.next()).await.unwrap().unwrap().unwrap();
        assert!(watched.take(message));
    }
    server.signal(rustix::process::Signal::USR2);
    server.wait_for_log("executing the new binary", 1).await;
    server.wait_for_log("serving metrics", 2).await;
    writer.send(Message::Binary(b"\x00go\n".to_vec().into())).await.unwrap();
    bridge(&mut writer, &["rz", "-q", "-y"], &local).await;
    assert_eq!(std::fs::read(local.join("f.bin")).expect("rz saved the file"), file);
    read_until(&mut observer, &mut watched, b"after-42").await;
    assert!(contains(&watched.output, NOTE_DOWNLOAD), "{:?}", String::from_utf8_lossy(&watched.output));
    assert!(!contains(&watched.output, b"**\x18B0"));
    let over: Vec<&Value> = watched.infos.iter().filter_map(|i| i.get("transfer")).map(|t| &t["over"]).collect();
    assert_eq!(over, [&json!(false), &json!(true)], "{:?}", watched.infos);
}

/// The Python that has PyPI's trzsz (scripts/test installs it), and the
/// trzsz client on pipes (the npm package's, as the page uses it).
fn trzsz() -> (String, String) {
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys, trzsz.svr.send; print(sys.executable)"])
        .output()
        .expect("python3");
    assert!(python.status.success(), "PyPI's trzsz is not installed (scripts/test installs it)");
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    assert!(web.join("node_modules/trzsz").is_dir(), "run `npm ci --prefix example/web` (scripts/test does)");
    (String::from_utf8(python.stdout).unwrap().trim().to_string(), web.join("trzsz-pipe.mjs").display().to_string())
}

#[tokio::test]
async fn trzsz_both_ways_on_a_terminal_reaches_only_its_writer() {
    let (python, client) = trzsz();
    let dir = scratch();
    let (records, remote, local) = (dir.path().join("records"), dir.path().join("remote"), dir.path().join("local"));
    for d in [&records, &remote, &local] {
        std::fs::create_dir(d).unwrap();
    }
    let down: Vec<u8> = random_bytes(300_000);
    let up: Vec<u8> = random_bytes(200_000);
    std::fs::write(remote.join("down.bin"), &down).unwrap();
    std::fs::write(local.join("up.bin"), &up).unwrap();
    let program =
        |module: &str| format!("{python} -c 'import sys; from trzsz.svr.{module} import main; sys.exit(main())'");
    let script = format!(
        "{} down.bin; echo after-download; {} .; echo after-upload; read line; echo \"bye $line\"",
        program("send"),
        program("recv")
    );
    let spec = json!({"command": "/bin/sh", "args": ["-c", script], "cwd": remote, "tty": true,
                      "session": {"id": "tz", "record": true}});
    let controller = Controller::answering(&[
        ("start", spec),
        ("watch", json!({"attach": "tz", "role": "observer"})),
        ("again", json!({"attach": "tz"})),
    ])
    .await;
    let mut config = config_for(&controller);
    config.record_dir = Some(records.clone());
    let server = TestServer::start(config).await;

    let mut writer = v5(server.addr, "start", "&session=tz").await;
    let mut observer = v5(server.addr, "watch", "&session=tz").await;
    let local_dir = local.display().to_string();
    let got = bridge(&mut writer, &["node", &client, "download", &local_dir], &local).await;
    assert_eq!(std::fs::read(local.join("down.bin")).expect("trzsz saved the file"), down, "bytes are bytes");
    assert!(!contains(&got.output, b"not shown here"));
    let up_path = local.join("up.bin").display().to_string();
    bridge(&mut writer, &["node", &client, "upload", &up_path], &local).await;
    let mut watched = Received::default();
    read_until(&mut observer, &mut watched, b"after-upload").await;
    assert_eq!(std::fs::read(remote.join("up.bin")).expect("trz saved the file"), up);
    assert!(contains(&watched.output, b"[ws-subprocess: trzsz download not shown here]"));
    assert!(contains(&watched.output, b"[ws-subprocess: trzsz upload not shown here]"));
    assert!(!contains(&watched.output, b"::TRZSZ:TRANSFER:"), "an observer got trzsz's announcement");
    assert!(watched.output.len() < 2000, "an observer got {} bytes", watched.output.len());
    // A writer attaching now gets the screen repainted: the screen model
    // never saw the transfers, so the repaint starts none.
    let mut again = v5(server.addr, "again", "&session=tz").await;
    let mut repainted = Received::default();
    read_until(&mut again, &mut repainted, b"after-upload").await;
    assert_eq!(repainted.infos[0]["repaint"].as_u64(), Some(repainted.output.len() as u64), "only the repaint came");
    assert!(!contains(&repainted.output, b"TRZSZ") && !contains(&repainted.output, b"#DATA"));
    writer.send(Message::Binary(b"\x00x\r".to_vec().into())).await.unwrap();
    read_to_end(&mut observer, &mut watched).await;

    let (events, cat) = recording(&records);
    let markers: Vec<&str> = events.iter().filter(|e| e[1] == "m").map(|e| e[2].as_str().unwrap()).collect();
    let bytes = |prefix: &str| -> u64 {
        let marker = markers.iter().find_map(|m| m.strip_prefix(prefix)).unwrap_or_else(|| panic!("{markers:?}"));
        marker.strip_suffix(" bytes").unwrap().parse().unwrap()
    };
    // base64 of compressed random bytes: a third more.
    assert!(bytes("transfer: trzsz download ") > down.len() as u64, "{markers:?}");
    assert!(bytes("transfer: trzsz upload ") > up.len() as u64, "{markers:?}");
    assert!(!cat.contains("TRZSZ") && !cat.contains("#DATA"), "transfer bytes in the recording: {cat:?}");
    assert!(cat.contains("after-upload") && cat.contains("bye x"), "{cat:?}");
}

/// `len` random bytes (they do not compress).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut bytes).unwrap();
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
