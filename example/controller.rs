//! A demo controller: serves a page that opens a session, and answers
//! ws-subprocess's token checks.
//!
//! Every page load mints a random single-use token for the command given on
//! the command line; the controller allows each token once.
//!
//! ```text
//! cargo run --example controller -- /usr/bin/top -b -d 1      # terminal 1
//! cargo run -- --controller-url http://127.0.0.1:5000/ws-controller   # terminal 2
//! open http://127.0.0.1:5000
//! ```
//!
//! Options (before the command): `--listen ADDR` (default
//! `127.0.0.1:5000`), `--ws-url URL` (default `ws://127.0.0.1:8866/ws`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the demo serves: one command, and the tokens minted for it.
#[derive(Clone)]
pub struct Demo {
    ws_url: String,
    command: Arc<Vec<String>>,
    tokens: Arc<Mutex<HashMap<String, ()>>>,
}

impl Demo {
    /// A demo whose page connects to `ws_url` and runs `command`.
    pub fn new(ws_url: String, command: Vec<String>) -> Self {
        Self { ws_url, command: Arc::new(command), tokens: Arc::default() }
    }

    fn mint(&self) -> String {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.tokens.lock().unwrap().insert(token.clone(), ());
        token
    }

    /// Allows a token once.
    fn redeem(&self, token: &str) -> bool {
        self.tokens.lock().unwrap().remove(token).is_some()
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        match request.uri().path() {
            "/" => {
                let page = PAGE
                    .replace("WS_URL", &serde_json::to_string(&self.ws_url).unwrap())
                    .replace("TOKEN", &serde_json::to_string(&self.mint()).unwrap());
                respond(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            "/ws-controller" => {
                let token = request.uri().query().and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
                });
                match token {
                    Some(token) if self.redeem(&token) => {
                        let (command, args) = self.command.split_first().expect("a command");
                        let body = serde_json::json!({ "command": command, "args": args });
                        respond(StatusCode::OK, "application/json", body.to_string())
                    }
                    _ => respond(StatusCode::FORBIDDEN, "text/plain", "unknown or used token\n".into()),
                }
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", content_type).body(Full::new(body.into())).unwrap()
}

/// Serves the demo on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, demo: Demo) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let demo = demo.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = demo.answer(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>ws-subprocess demo</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; }
  pre { background: #111; color: #ddd; padding: 1rem; min-height: 20rem; white-space: pre-wrap; }
</style>
<h1>ws-subprocess demo</h1>
<pre id="output"></pre>
<form id="input"><input id="line" size="60" autofocus> <button>Send line</button></form>
<p id="status">connecting…</p>
<script>
  const output = document.getElementById("output");
  const status = document.getElementById("status");
  const socket = new WebSocket(WS_URL + "?token=" + encodeURIComponent(TOKEN));
  socket.binaryType = "arraybuffer";
  const decoder = new TextDecoder();
  socket.onopen = () => { status.textContent = "running"; };
  socket.onmessage = (event) => { output.textContent += decoder.decode(event.data, { stream: true }); };
  socket.onclose = (event) => { status.textContent = `closed: ${event.code} ${event.reason}`; };
  document.getElementById("input").onsubmit = (event) => {
    event.preventDefault();
    const line = document.getElementById("line");
    socket.send(line.value + "\n");
    line.value = "";
  };
</script>
"#;

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let (mut listen, mut ws_url) = ("127.0.0.1:5000".to_string(), "ws://127.0.0.1:8866/ws".to_string());
    loop {
        match args.peek().map(String::as_str) {
            Some("--listen") => {
                args.next();
                listen = args.next().expect("--listen ADDR");
            }
            Some("--ws-url") => {
                args.next();
                ws_url = args.next().expect("--ws-url URL");
            }
            Some("--") => {
                args.next();
                break;
            }
            _ => break,
        }
    }
    let command: Vec<String> = args.collect();
    if command.first().is_none_or(|c| !c.starts_with('/')) {
        eprintln!("usage: controller [--listen ADDR] [--ws-url URL] [--] /absolute/command [args...]");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(&listen).await.expect("bind");
    eprintln!("demo page on http://{listen}/ (sessions at {ws_url}) running {command:?}");
    serve(listener, Demo::new(ws_url, command)).await;
}
