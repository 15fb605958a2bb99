//! The browser client module, `example/web/ws-subprocess.js`, in a real
//! headless Chromium against the real server: the bearer subprotocol and the
//! channel protocol, echo, resize, the exit status, a connection cut while
//! output flows and reattached with no byte lost or duplicated, observers,
//! leaving while a reattach is pending. Needs `chromium` and
//! `npm ci --prefix example/web` (.ci/run installs both).
//!
//! The server serves `client-test.html` and the module (`static_dir`, same
//! origin as the endpoint); `example/web/client-test.mjs` drives the page and
//! prints what each session did as JSON.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The named session of the drop case: numbered lines, steadily, then exit 0.
const LINES: usize = 600;

fn counting_script() -> String {
    format!("i=0; while [ $i -lt {LINES} ]; do i=$((i+1)); echo \"line $i\"; sleep 0.01; done")
}

/// The spec for a token `<kind>:<session id>:<serial>`; each token once.
fn spec(token: &str) -> Option<Value> {
    let mut parts = token.splitn(3, ':');
    let (kind, id) = (parts.next()?, parts.next()?);
    let session = json!({"id": id, "keep": "30s", "history": "1MiB"});
    Some(match kind {
        "cat" => json!({"command": "/bin/cat"}),
        "tty" => json!({"command": "/bin/bash", "args": ["--norc", "--noprofile"], "tty": true}),
        "exit3" => json!({"command": "/bin/sh", "args": ["-c", "echo bye; exit 3"]}),
        "start" => json!({"command": "/bin/sh", "args": ["-c", counting_script()], "session": session}),
        "share" => json!({
            "command": "/bin/sh",
            "args": ["-c", "while read -r line; do echo \"got $line\"; [ \"$line\" = bye ] && exit 0; done"],
            "session": session,
        }),
        "attach" => json!({"attach": id}),
        "observe" => json!({"attach": id, "role": "observer"}),
        _ => return None,
    })
}

/// A TCP relay to `target` whose live connections a GET of the returned
/// controller-style HTTP server cuts at once (both sides closed, no
/// WebSocket Close): a dropped connection, as a browser sees one.
async fn cutting_relay(target: SocketAddr) -> (SocketAddr, Controller) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let live: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
    let relayed = live.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let task = tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
            relayed.lock().unwrap().push(task.abort_handle());
        }
    });
    let cutter = Controller::start(move |_| {
        let cut = live.lock().unwrap().drain(..).filter(|task| !task.is_finished()).inspect(AbortHandle::abort).count();
        async move { json(StatusCode::OK, cut.to_string()) }
    })
    .await;
    (addr, cutter)
}

/// The first line where `got` and `want` differ, for a readable failure.
fn first_difference(got: &str, want: &str) -> String {
    let (got, want): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
    let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
    format!(
        "{} lines, {} expected; from line {}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        at + 1,
        &got[at..got.len().min(at + 3)],
        &want[at..want.len().min(at + 3)]
    )
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_module_echoes_resizes_exits_and_reattaches_in_chromium() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "run `npm ci --prefix example/web` first (.ci/run does)"
    );
    let site = scratch();
    for file in ["client-test.html", "ws-subprocess.js"] {
        std::fs::copy(web.join(file), site.path().join(file)).unwrap();
    }

    // Tokens are single-use, as the module expects: a reused one is denied.
    let used = Mutex::new(HashSet::new());
    let controller = Controller::start(move |request| {
        let token = request.token().unwrap_or_default();
        let fresh = used.lock().unwrap().insert(token.clone());
        let answer = spec(&token).filter(|_| fresh);
        async move {
            match answer {
                Some(spec) => json(StatusCode::OK, spec.to_string()),
                None => json(StatusCode::FORBIDDEN, "{}"),
            }
        }
    })
    .await;
    let mut config = config_for(&controller);
    config.static_dir = Some(site.path().to_path_buf());
    let server = TestServer::start(config).await;
    let (relay, cutter) = cutting_relay(server.addr).await;

    let run = tokio::process::Command::new("node")
        .arg(web.join("client-test.mjs"))
        .arg(format!("http://{}/client-test.html", server.addr))
        .arg(format!("ws://{}/ws", server.addr))
        .arg(format!("ws://{relay}/ws"))
        .arg(cutter.url())
        .env("TERM", "dumb")
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(240), run).await.expect("the browser test ends").expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "browser test failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let results: Value = serde_json::from_str(&stdout).unwrap();

    // 1. Echo over the channel protocol, the token in the bearer subprotocol
    // only (never in the URL), a fresh one per connection.
    let echo = &results["echo"];
    assert_eq!(echo["output"], "hello from ws-subprocess.js\n", "{echo}");
    let protocols = echo["socket"]["protocols"].as_array().unwrap();
    assert_eq!(protocols[0], "v5.channel.k8s.io");
    let token = echo["tokens"][0].as_str().unwrap();
    let bearer = protocols[1].as_str().unwrap().strip_prefix("base64url.bearer.authorization.k8s.io.");
    let decoded = bearer.and_then(|b| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(b).ok());
    assert_eq!(decoded.as_deref(), Some(token.as_bytes()), "not the token as the bearer subprotocol: {protocols:?}");
    assert!(!echo["socket"]["url"].as_str().unwrap().contains("token"), "{echo}");
    assert!(
        controller.requests().iter().any(|seen| seen.token().as_deref() == Some(token)),
        "the controller never saw {token}"
    );
    assert_eq!(echo["exit"]["code"], Value::Null, "leaving is not an exit status: {echo}");

    // 2. The size set before connecting, then a resize.
    assert_eq!(results["tty"]["sizes"], json!(["30 100", "40 120"]), "{}", results["tty"]);
    assert_eq!(results["tty"]["exit"]["code"], 7);

    // 3. The exit status.
    assert_eq!(results["exit"]["output"], "bye\n");
    assert_eq!(results["exit"]["exit"]["code"], 3, "{}", results["exit"]);
    assert_eq!(results["exit"]["exit"]["status"]["reason"], "NonZeroExitCode");

    // 4. The drop: every line exactly once, in order, then the exit status.
    let drop = &results["drop"];
    let want: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    let got = drop["output"].as_str().unwrap();
    assert!(got == want, "lost or duplicated output across the drop: {}", first_difference(got, &want));
    assert_eq!(drop["exit"]["code"], 0, "{}", drop["exit"]);
    assert_eq!(drop["cut"], "1", "the relay cut no connection");
    // It was a real drop (no Close frame), and the module reattached once,
    // by itself, with `since` = the bytes its first connection delivered.
    let states = drop["states"].as_array().unwrap();
    let names: Vec<&str> = states.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(names, ["open", "attached", "reattaching", "open", "attached"], "{states:?}");
    assert_eq!(states[2]["code"], 1006, "not an abnormal closure: {states:?}");
    let sockets = drop["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "{sockets:?}");
    let id = drop["id"].as_str().unwrap();
    let (first, second) = (sockets[0]["url"].as_str().unwrap(), sockets[1]["url"].as_str().unwrap());
    assert_eq!(query_param(first, "session").as_deref(), Some(id));
    assert_eq!(query_param(first, "since"), None);
    assert_eq!(query_param(second, "session").as_deref(), Some(id));
    let since: usize = query_param(second, "since").expect("a reattach with since").parse().unwrap();
    let tokens = drop["tokens"].as_array().unwrap();
    assert!(tokens[0].as_str().unwrap().starts_with("start:") && tokens[1].as_str().unwrap().starts_with("attach:"));
    // The first connection delivered exactly `since` bytes: whole lines, at
    // least 150 of them, and several hundred came after the drop.
    let chunks = drop["chunks"].as_array().unwrap();
    let dropped_at = states[2]["at"].as_f64().unwrap();
    let before: Vec<&Value> = chunks.iter().filter(|c| c["at"].as_f64().unwrap() < dropped_at).collect();
    let bytes_before: usize = before.iter().map(|c| c["bytes"].as_u64().unwrap() as usize).sum();
    assert_eq!(since, bytes_before, "since is not what the first connection delivered");
    let lines_before: usize = before.iter().map(|c| c["lines"].as_u64().unwrap() as usize).sum();
    assert!(lines_before >= 150 && LINES - lines_before >= 300, "{lines_before} lines before the drop");
    assert_eq!(drop["info"][1]["offset"], since, "the server resumed elsewhere: {}", drop["info"]);
    // Output went on while no one was connected: the reattach brought it
    // at once, far more lines than the session prints in that instant.
    let reattached = states[4]["at"].as_f64().unwrap();
    let gap = reattached - dropped_at;
    let first_connection = dropped_at - states[1]["at"].as_f64().unwrap();
    let per_ms = lines_before as f64 / first_connection;
    let replay: u64 = chunks
        .iter()
        .filter(|c| (reattached..reattached + 200.0).contains(&c["at"].as_f64().unwrap()))
        .map(|c| c["lines"].as_u64().unwrap())
        .sum();
    assert!(gap >= 250.0, "reattached after {gap} ms");
    assert!(
        replay as f64 >= (per_ms * gap / 3.0).max(3.0),
        "no output kept while detached: {replay} lines at once after a {gap} ms gap, at {per_ms} lines/ms"
    );

    // 5. The observer saw the writer's input echoed, not its own.
    let observer = &results["observer"];
    assert_eq!(observer["role"], "observer");
    assert_eq!(results["writer"]["role"], "writer");
    let echoed = "got from-writer-1\ngot from-writer-2\ngot bye\n";
    assert_eq!(observer["output"], echoed, "{observer}");
    assert_eq!(results["writer"]["output"], echoed);
    assert_eq!(observer["exit"]["code"], 0);
    assert_eq!(results["writer"]["exit"]["code"], 0);

    // 6. close() while a reattach is pending: it stays closed.
    let leave = &results["leave"];
    assert_eq!(leave["cut"], "1");
    assert_eq!(leave["sockets"], 1, "a connection was opened after close(): {leave}");
    assert_eq!(leave["states"], json!(["open", "attached", "reattaching"]), "{leave}");
    assert!(leave["exit"].is_object() && leave["exit"]["code"].is_null(), "close() is the end: {leave}");

    server.stop().await;
}
