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
//! `/?watch=ID` watches it as an observer. Through the module's
//! `connectTerminal` the page moves files (`trz`/`tsz`, `rz`/`sz`; pick or
//! drop files, downloads are saved by the browser), shows pictures (Sixel,
//! iTerm2), the title (in the status line too), links, and searches
//! (Ctrl+Shift+F); `/?clipboard=1` lets programs write the clipboard (OSC
//! 52), and the status line says when one did.
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
/// Under `/assets/modules/` the paths mirror `node_modules` itself, the
/// layout `connectTerminal`'s `assets` option expects: the page's optional
/// peers (transfers, pictures, links, search, Unicode widths, clipboard).
const ASSETS: [(&str, &str, &str); 10] = [
    ("/assets/xterm.js", "@xterm/xterm/lib/xterm.js", "text/javascript"),
    ("/assets/xterm.css", "@xterm/xterm/css/xterm.css", "text/css"),
    ("/assets/addon-fit.js", "@xterm/addon-fit/lib/addon-fit.js", "text/javascript"),
    (
        "/assets/modules/@xterm/addon-image/lib/addon-image.mjs",
        "@xterm/addon-image/lib/addon-image.mjs",
        "text/javascript",
    ),
    (
        "/assets/modules/@xterm/addon-search/lib/addon-search.mjs",
        "@xterm/addon-search/lib/addon-search.mjs",
        "text/javascript",
    ),
    (
        "/assets/modules/@xterm/addon-web-links/lib/addon-web-links.mjs",
        "@xterm/addon-web-links/lib/addon-web-links.mjs",
        "text/javascript",
    ),
    (
        "/assets/modules/@xterm/addon-unicode11/lib/addon-unicode11.mjs",
        "@xterm/addon-unicode11/lib/addon-unicode11.mjs",
        "text/javascript",
    ),
    (
        "/assets/modules/@xterm/addon-clipboard/lib/addon-clipboard.mjs",
        "@xterm/addon-clipboard/lib/addon-clipboard.mjs",
        "text/javascript",
    ),
    ("/assets/modules/trzsz/lib/trzsz.mjs", "trzsz/lib/trzsz.mjs", "text/javascript"),
    // zmodem.js's entry point; the CommonJS sources it requires come
    // through MODULE_DIRS.
    ("/assets/modules/zmodem.js/src/zmodem.js", "zmodem.js/src/zmodem.js", "text/javascript"),
];

/// Directories under `node_modules` whose scripts are served file by file
/// at `/assets/modules/<dir><name>`: zmodem.js is CommonJS sources that
/// require each other and `crc-32`, which the page loads without a build
/// step.
const MODULE_DIRS: [&str; 2] = ["zmodem.js/src/", "crc-32/"];

/// The `node_modules` file a `/assets/modules/<dir><name>` path names when
/// `dir` is one of [`MODULE_DIRS`] and `name` a plain script name (only
/// `[A-Za-z0-9_.-]`, not starting with a dot, ending `.js` or `.mjs`): no
/// path leads anywhere else.
fn module_file(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/assets/modules/")?;
    let dir = MODULE_DIRS.iter().find(|dir| rest.starts_with(*dir))?;
    let name = &rest[dir.len()..];
    let plain = !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && (name.ends_with(".js") || name.ends_with(".mjs"));
    plain.then_some(rest)
}

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
                Err(_) => respond(StatusCode::NOT_FOUND, "text/plain", "no example/web/ws-subprocess.js\n"),
            };
        }
        let path = request.uri().path();
        let asset = ASSETS.iter().find(|(url, _, _)| *url == path).map(|(_, file, kind)| (*file, *kind));
        if let Some((file, content_type)) = asset.or_else(|| Some((module_file(path)?, "text/javascript"))) {
            return match std::fs::read(self.assets.join(file)) {
                Ok(body) => respond(StatusCode::OK, content_type, body),
                Err(_) => respond(StatusCode::NOT_FOUND, "text/plain", "run `npm ci --prefix example/web`\n"),
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
                None => respond(StatusCode::BAD_REQUEST, "text/plain", "session=ID is required\n"),
            },
            "/ws-controller" => match param("token").and_then(|token| self.redeem(&token)) {
                Some(spec) => respond(StatusCode::OK, "application/json", spec),
                None => respond(StatusCode::FORBIDDEN, "text/plain", "unknown or used token\n"),
            },
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
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
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/xterm.css">
<style>
  html, body { height: 100%; margin: 0; background: #111; color: #ddd; font-family: system-ui, sans-serif; }
  body { display: flex; flex-direction: column; }
  #terminal { flex: 1; padding: 4px; min-height: 0; }
  #bar { padding: 4px 8px; font-size: 13px; display: flex; gap: 1em; white-space: nowrap; }
  #bar a { color: #8cf; }
  #note { color: #fc6; }
  #copied { color: #8f8; }
  #title:empty, #copied:empty { display: none; }
  #hint { margin-left: auto; color: #888; min-width: 0; overflow: hidden; text-overflow: ellipsis; }
</style>
<div id="terminal"></div>
<div id="bar"><span id="status">connecting…</span><span id="title"></span><span id="note"></span><span id="copied"></span><span id="hint"></span></div>
<script src="/assets/xterm.js"></script>
<script src="/assets/addon-fit.js"></script>
<script type="module">
  import { Session, connectTerminal } from "/assets/ws-subprocess.js";
  const status = document.getElementById("status");
  const note = document.getElementById("note");
  const copied = document.getElementById("copied");
  const params = new URLSearchParams(location.search);
  const watching = params.get("watch");
  const newId = () => "demo-" + Math.random().toString(36).slice(2, 10);
  // This tab's session: kept across reloads; a watcher names the one it watches.
  let id = watching || sessionStorage.getItem("demo-session") || newId();
  if (!watching) sessionStorage.setItem("demo-session", id);
  // allowProposedApi: Unicode 11 widths and search highlights need it.
  const term = new Terminal({ convertEol: false, cursorBlink: true, allowProposedApi: true });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  // The title (OSC 0/2) in the status line too: connectTerminal puts it in
  // document.title, which a browser shows only in its tab.
  term.onTitleChange((title) => {
    document.getElementById("title").textContent = title ? "· title: " + title : "";
  });
  const role = watching ? "observer" : "writer";
  const transfers = [];
  const session = new Session({
    url: WS_URL,
    token: () => fetch(`/token?session=${encodeURIComponent(session.session)}&role=${role}`).then((r) => r.text()),
    session: id,
    onExit: ({ code }) => {
      status.textContent = "exited: " + code;
      if (!watching) sessionStorage.removeItem("demo-session");
    },
    onState: (change, detail) => {
      if (change === "attached") {
        // The first session info, or a later one: after a reattach, or in
        // the middle of the output around a transfer (the server shows
        // observers and replays a note instead of its bytes). Each one
        // only updates the status line.
        status.innerHTML = "";
        status.append((watching ? "watching " : "running ") + id + " ");
        if (!watching) {
          const link = document.createElement("a");
          link.href = "/?watch=" + encodeURIComponent(id);
          link.target = "_blank";
          link.textContent = "watch in another tab";
          status.append(link);
        }
        if (watching) {
          // A transfer's start (and, "over", its end): observers get a
          // note in the terminal instead of its bytes.
          const transfer = detail && detail.transfer;
          const running = transfer && !transfer.over;
          note.textContent = running ? `a ${transfer.protocol} ${transfer.direction} is running (not shown here)` : "";
        }
        status.dataset.state = "running";
      } else if (change === "reattaching" && !detail.opened && session.position === null && !watching) {
        // The session this tab had has ended: start a new one.
        id = newId();
        session.session = id;
        sessionStorage.setItem("demo-session", id);
      } else if (change !== "open") {
        status.textContent = change + (detail && detail.code ? " (" + detail.code + ")" : "");
        status.dataset.state = change;
      }
    },
  });
  // Files (trzsz, ZMODEM), pictures, links, search, the title; clipboard
  // writes by OSC 52 only with ?clipboard=1.
  const terminal = await connectTerminal(term, session, {
    assets: "/assets/modules/",
    observer: !!watching,
    clipboard: params.get("clipboard") === "1",
    // A program wrote the clipboard: say so for a few seconds.
    onClipboard: () => {
      copied.textContent = "copied to the clipboard";
      clearTimeout(copied.timer);
      copied.timer = setTimeout(() => { copied.textContent = ""; }, 5000);
    },
    onTransfer: (event) => {
      transfers.push(event);
      if (event.state === "start") note.textContent = `${event.protocol} ${event.direction}…`;
      else if (event.state === "done" || event.state === "failed" || event.state === "aborted") {
        note.textContent = `${event.protocol} ${event.direction}: ${event.state}`;
      }
    },
  });
  const hints = [];
  if (terminal.features.search) hints.push("Ctrl+Shift+F searches");
  if (terminal.features.trzsz) hints.push("drop files here to upload (trz)");
  document.getElementById("hint").textContent = hints.join(" · ");
  window.addEventListener("resize", () => fit.fit());
  window.demo = { term, session, terminal, transfers, get id() { return id; } };
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
