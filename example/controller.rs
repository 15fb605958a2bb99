//! A demo controller: serves a browser terminal (xterm.js) that opens a
//! session, and answers ws-subprocess's token checks.
//!
//! Every page load mints a random single-use token for the command given on
//! the command line; the controller allows each token once. The page speaks
//! the channel protocol (`v5.channel.k8s.io`): output on channels 1 and 2,
//! keystrokes on 0, resizes on 4, the exit status on 3.
//!
//! ```text
//! npm ci --prefix example/web                                  # once: xterm.js
//! cargo run --example controller -- --tty /usr/bin/nano        # terminal 1
//! cargo run -- --controller-url http://127.0.0.1:5000/ws-controller   # terminal 2
//! open http://127.0.0.1:5000
//! ```
//!
//! Options (before the command): `--listen ADDR` (default
//! `127.0.0.1:5000`), `--ws-url URL` (default `ws://127.0.0.1:8866/ws`),
//! `--tty` (run the command on a terminal), `--assets DIR` (default
//! `example/web/node_modules`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Read;
use std::path::PathBuf;
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
    tty: bool,
    assets: PathBuf,
    tokens: Arc<Mutex<HashMap<String, ()>>>,
}

/// Files the page loads, by URL path: where they are under `node_modules`.
const ASSETS: [(&str, &str, &str); 3] = [
    ("/assets/xterm.js", "@xterm/xterm/lib/xterm.js", "text/javascript"),
    ("/assets/xterm.css", "@xterm/xterm/css/xterm.css", "text/css"),
    ("/assets/addon-fit.js", "@xterm/addon-fit/lib/addon-fit.js", "text/javascript"),
];

impl Demo {
    /// A demo whose page connects to `ws_url` and runs `command`.
    pub fn new(ws_url: String, command: Vec<String>) -> Self {
        Self {
            ws_url,
            command: Arc::new(command),
            tty: false,
            assets: PathBuf::from("example/web/node_modules"),
            tokens: Arc::default(),
        }
    }

    /// Runs the command on a terminal.
    pub fn tty(mut self, tty: bool) -> Self {
        self.tty = tty;
        self
    }

    /// Serves xterm.js from this `node_modules` directory.
    pub fn assets(mut self, dir: PathBuf) -> Self {
        self.assets = dir;
        self
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
        if let Some((_, file, content_type)) = ASSETS.iter().find(|(path, _, _)| *path == request.uri().path()) {
            return match std::fs::read_to_string(self.assets.join(file)) {
                Ok(body) => respond(StatusCode::OK, content_type, body),
                Err(_) => respond(StatusCode::NOT_FOUND, "text/plain", "run `npm ci --prefix example/web`\n".into()),
            };
        }
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
                        let body = serde_json::json!({ "command": command, "args": args, "tty": self.tty });
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
<link rel="stylesheet" href="/assets/xterm.css">
<style>
  html, body { height: 100%; margin: 0; background: #111; color: #ddd; font-family: system-ui, sans-serif; }
  body { display: flex; flex-direction: column; }
  #terminal { flex: 1; padding: 4px; min-height: 0; }
  #status { padding: 4px 8px; font-size: 13px; }
</style>
<div id="terminal"></div>
<div id="status">connecting…</div>
<script src="/assets/xterm.js"></script>
<script src="/assets/addon-fit.js"></script>
<script>
  const STDIN = 0, STDOUT = 1, STDERR = 2, STATUS = 3, RESIZE = 4;
  const status = document.getElementById("status");
  const term = new Terminal({ convertEol: false, cursorBlink: true });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  const encoder = new TextEncoder();
  const socket = new WebSocket(WS_URL + "?token=" + encodeURIComponent(TOKEN), ["v5.channel.k8s.io"]);
  socket.binaryType = "arraybuffer";
  const send = (channel, bytes) => {
    if (socket.readyState !== WebSocket.OPEN) return;
    const message = new Uint8Array(bytes.length + 1);
    message[0] = channel;
    message.set(bytes, 1);
    socket.send(message);
  };
  const resize = () => send(RESIZE, encoder.encode(JSON.stringify({ Width: term.cols, Height: term.rows })));
  socket.onopen = () => { status.textContent = "running"; resize(); };
  socket.onmessage = (event) => {
    const data = new Uint8Array(event.data);
    if (data[0] === STDOUT || data[0] === STDERR) term.write(data.subarray(1));
    if (data[0] === STATUS) {
      const result = JSON.parse(new TextDecoder().decode(data.subarray(1)));
      const code = result.status === "Success" ? 0 : result.details.causes[0].message;
      status.textContent = "exited: " + code;
    }
  };
  socket.onclose = (event) => { status.dataset.closed = event.code; if (!status.textContent.startsWith("exited")) status.textContent = "closed: " + event.code + " " + event.reason; };
  term.onData((text) => send(STDIN, encoder.encode(text)));
  term.onResize(resize);
  window.addEventListener("resize", () => fit.fit());
  window.demo = { term, socket };
</script>
"#;

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let (mut listen, mut ws_url) = ("127.0.0.1:5000".to_string(), "ws://127.0.0.1:8866/ws".to_string());
    let (mut tty, mut assets) = (false, None);
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
            Some("--tty") => {
                args.next();
                tty = true;
            }
            Some("--assets") => {
                args.next();
                assets = Some(PathBuf::from(args.next().expect("--assets DIR")));
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
        eprintln!(
            "usage: controller [--listen ADDR] [--ws-url URL] [--tty] [--assets DIR] [--] /absolute/command [args...]"
        );
        std::process::exit(2);
    }
    let listener = TcpListener::bind(&listen).await.expect("bind");
    eprintln!("demo page on http://{listen}/ (sessions at {ws_url}) running {command:?}");
    let mut demo = Demo::new(ws_url, command).tty(tty);
    if let Some(assets) = assets {
        demo = demo.assets(assets);
    }
    serve(listener, demo).await;
}
