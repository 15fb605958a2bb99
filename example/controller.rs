//! A demo controller: serves a browser terminal (xterm.js) that opens a
//! named session, and answers ws-subprocess's token checks.
//!
//! The page asks `/token?session=ID&role=writer|observer` for a single-use
//! token before each connection: the first one for an id starts the command
//! given on the command line as the named session `ID` (kept 10 minutes
//! after its last writer leaves), later ones attach to it. The page uses
//! `example/web/ws-subprocess.js` (the channel protocol: output on channels
//! 1 and 2, keystrokes on 0, resizes on 4, the exit status on 3), so a
//! reloaded tab or a dropped connection gets the same session back, and
//! `/?watch=ID` watches it as an observer.
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
    /// Single-use tokens and the spec each allows.
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// Session ids started through this demo.
    started: Arc<Mutex<std::collections::HashSet<String>>>,
    /// With an HMAC secret, tokens are JWTs the server checks itself.
    jwt: Option<Arc<Vec<u8>>>,
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
            started: Arc::default(),
            jwt: None,
        }
    }

    /// Mints JWTs signed with this HMAC (HS256) secret instead of
    /// answering the server's controller requests: a stateless deployment.
    pub fn jwt(mut self, secret: Vec<u8>) -> Self {
        self.jwt = Some(Arc::new(secret));
        self
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

    /// A token for the session `id`: the first writer's starts it, the
    /// others attach.
    pub fn mint(&self, id: &str, observer: bool) -> String {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let first = !observer && self.started.lock().unwrap().insert(id.to_string());
        let spec = if first {
            let (command, args) = self.command.split_first().expect("a command");
            serde_json::json!({
                "command": command, "args": args, "tty": self.tty,
                "session": {"id": id, "keep": "10m"},
            })
        } else {
            serde_json::json!({"attach": id, "role": if observer { "observer" } else { "writer" }})
        };
        if let Some(secret) = &self.jwt {
            // Single-use (a jti) and short-lived; the server keeps no state
            // but the used jtis.
            let spec: ws_subprocess::CommandSpec = serde_json::from_value(spec).expect("a valid spec");
            let claims = ws_subprocess::auth::jwt::mint::Claims::expiring_in(std::time::Duration::from_secs(60));
            return ws_subprocess::auth::jwt::mint::hmac(secret, jsonwebtoken::Algorithm::HS256, &spec, claims)
                .expect("HS256 signs with any secret");
        }
        self.tokens.lock().unwrap().insert(token.clone(), spec.to_string());
        token
    }

    /// The spec a token allows, once.
    fn redeem(&self, token: &str) -> Option<String> {
        self.tokens.lock().unwrap().remove(token)
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() == "/assets/ws-subprocess.js" {
            let module = self.assets.parent().map(|web| web.join("ws-subprocess.js")).unwrap_or_default();
            return match std::fs::read_to_string(module) {
                Ok(body) => respond(StatusCode::OK, "text/javascript", body),
                Err(_) => respond(StatusCode::NOT_FOUND, "text/plain", "no example/web/ws-subprocess.js\n".into()),
            };
        }
        if let Some((_, file, content_type)) = ASSETS.iter().find(|(path, _, _)| *path == request.uri().path()) {
            return match std::fs::read_to_string(self.assets.join(file)) {
                Ok(body) => respond(StatusCode::OK, content_type, body),
                Err(_) => respond(StatusCode::NOT_FOUND, "text/plain", "run `npm ci --prefix example/web`\n".into()),
            };
        }
        let param = |name: &str| {
            request.uri().query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
            })
        };
        match request.uri().path() {
            "/" => {
                let page = PAGE.replace("WS_URL", &serde_json::to_string(&self.ws_url).unwrap());
                respond(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            "/token" => match param("session").filter(|id| !id.is_empty() && id.len() <= 128) {
                Some(id) => {
                    let token = self.mint(&id, param("role").as_deref() == Some("observer"));
                    respond(StatusCode::OK, "text/plain", token)
                }
                None => respond(StatusCode::BAD_REQUEST, "text/plain", "session=ID is required\n".into()),
            },
            "/ws-controller" => match param("token").and_then(|token| self.redeem(&token)) {
                Some(spec) => respond(StatusCode::OK, "application/json", spec),
                None => respond(StatusCode::FORBIDDEN, "text/plain", "unknown or used token\n".into()),
            },
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
<script type="module">
  import { Session } from "/assets/ws-subprocess.js";
  const status = document.getElementById("status");
  const watching = new URLSearchParams(location.search).get("watch");
  const newId = () => "demo-" + Math.random().toString(36).slice(2, 10);
  // This tab's session: kept across reloads; a watcher names the one it watches.
  let id = watching || sessionStorage.getItem("demo-session") || newId();
  if (!watching) sessionStorage.setItem("demo-session", id);
  const term = new Terminal({ convertEol: false, cursorBlink: true });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  const role = watching ? "observer" : "writer";
  const session = new Session({
    url: WS_URL,
    token: () => fetch(`/token?session=${encodeURIComponent(session.session)}&role=${role}`).then((r) => r.text()),
    session: id,
    onOutput: (bytes) => term.write(bytes),
    onExit: ({ code }) => {
      status.textContent = "exited: " + code;
      if (!watching) sessionStorage.removeItem("demo-session");
    },
    onState: (state, detail) => {
      if (state === "attached") {
        status.innerHTML = "";
        status.append((watching ? "watching " : "running ") + id + " ");
        if (!watching) {
          const link = document.createElement("a");
          link.href = "/?watch=" + encodeURIComponent(id);
          link.target = "_blank";
          link.textContent = "watch in another tab";
          status.append(link);
        }
        status.dataset.state = "running";
      } else if (state === "reattaching" && !detail.opened && session.position === null && !watching) {
        // The session this tab had has ended: start a new one.
        id = newId();
        session.session = id;
        sessionStorage.setItem("demo-session", id);
      } else if (state !== "open") {
        status.textContent = state + (detail && detail.code ? " (" + detail.code + ")" : "");
        status.dataset.state = state;
      }
    },
  });
  term.onData((text) => { if (!watching) session.write(text); });
  term.onResize(({ cols, rows }) => { if (!watching) session.resize(cols, rows); });
  if (!watching) session.size = { cols: term.cols, rows: term.rows };
  window.addEventListener("resize", () => fit.fit());
  window.demo = { term, session, get id() { return id; } };
  session.start();
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
