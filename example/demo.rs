//! The one-command demo: a terminal in the browser, from a fresh clone.
//!
//! ```text
//! cargo run --release --example demo                                   # your shell
//! cargo run --release --example demo -- /usr/bin/nano /etc/resolv.conf # any command
//! cargo run --release --example demo -- --jwt                          # stateless JWT mode
//! ```
//!
//! One process, on loopback only: the demo controller of
//! `example/controller.rs` (the xterm.js page and its tokens) and a
//! ws-subprocess server built through the library ([`App`]). It installs
//! the page's npm packages when they are missing, prints the URL to open,
//! and stops everything on Ctrl-C.
//!
//! By default the server asks the demo controller about each token, as a
//! controller deployment does. With `--jwt` the page gets signed,
//! single-use JWTs instead and the server checks them itself with a
//! secret made for this run: no callback, as in a stateless deployment.
//!
//! Options (before the command): `--jwt`, `--listen ADDR` (the page;
//! default `127.0.0.1:5000`, another free port when that one is taken),
//! `--record DIR` (record every session as asciicast into `DIR`: the
//! server's `record_dir` with `record_all`).

#[path = "controller.rs"]
#[allow(dead_code)]
mod controller;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::net::TcpListener;
use ws_subprocess::config::{AuthBackend, JwtAlgorithm};
use ws_subprocess::server::ListenAddr;
use ws_subprocess::{App, Config};

const USAGE: &str = "usage: demo [--jwt] [--listen ADDR] [--record DIR] [--] [/absolute/command [args...]]";

/// What the command line asked for.
struct Options {
    jwt: bool,
    listen: Option<String>,
    /// Where every session is recorded, if anywhere.
    record: Option<PathBuf>,
    command: Vec<String>,
}

fn options(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options { jwt: false, listen: None, record: None, command: Vec::new() };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jwt" => options.jwt = true,
            "--listen" => options.listen = Some(args.next().ok_or("--listen needs ADDR")?),
            "--record" => options.record = Some(args.next().ok_or("--record needs DIR")?.into()),
            "--" => {}
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            _ => {
                options.command.push(arg);
                options.command.extend(args.by_ref());
            }
        }
    }
    match options.command.first() {
        Some(program) if !program.starts_with('/') => Err(format!("{program}: the command must be an absolute path")),
        _ => Ok(options),
    }
}

/// The user's login shell: `$SHELL`, else the password database's, else
/// `/bin/sh`.
fn login_shell() -> String {
    let usable = |shell: &str| shell.starts_with('/') && Path::new(shell).exists();
    if let Some(shell) = std::env::var("SHELL").ok().filter(|s| usable(s)) {
        return shell;
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|user| user.shell.to_string_lossy().into_owned())
        .filter(|shell| usable(shell))
        .unwrap_or_else(|| "/bin/sh".into())
}

/// `example/web/node_modules`, installed with npm when xterm.js is not
/// there yet.
fn assets() -> Result<PathBuf, String> {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    let modules = web.join("node_modules");
    if modules.join("@xterm/xterm/lib/xterm.js").is_file() {
        return Ok(modules);
    }
    eprintln!("installing the page's npm packages (xterm.js) into {} ...", modules.display());
    let status = std::process::Command::new("npm")
        .args(["ci", "--omit=dev", "--no-audit", "--no-fund", "--prefix"])
        .arg(&web)
        .status()
        .map_err(|err| format!("cannot run npm ({err}): install Node.js, or run `npm ci --prefix example/web`"))?;
    if !status.success() {
        return Err(format!("`npm ci --prefix {}` failed ({status})", web.display()));
    }
    Ok(modules)
}

/// A listener on `addr`, or on another port of the same host when that
/// one is taken.
async fn bind_page(addr: &str) -> std::io::Result<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
            TcpListener::bind((host.trim_matches(['[', ']']), 0)).await
        }
        Err(err) => Err(err),
    }
}

/// A fresh 32-byte HMAC secret in a file only this user may read, for
/// the server's `jwt_secret_file`.
fn secret_file(dir: &Path) -> std::io::Result<(PathBuf, Vec<u8>)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret = ws_subprocess::auth::jwt::mint::random_id() + &ws_subprocess::auth::jwt::mint::random_id();
    let path = dir.join("jwt-secret");
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?.write_all(secret.as_bytes())?;
    Ok((path, secret.into_bytes()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match options(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("demo: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            eprintln!("demo: {problem}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,ws_subprocess=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let assets = assets()?;
    let command = if options.command.is_empty() { vec![login_shell()] } else { options.command };
    let page = bind_page(options.listen.as_deref().unwrap_or("127.0.0.1:5000"))
        .await
        .map_err(|err| format!("cannot listen for the page: {err}"))?;
    let page_addr = page.local_addr().map_err(|err| err.to_string())?;
    let scratch = tempfile::tempdir().map_err(|err| format!("no temporary directory: {err}"))?;

    let mut config = Config {
        listen: ListenAddr::Tcp(format!("{}:0", bracketed(page_addr.ip()))),
        // Only the demo page may open sessions.
        allowed_origins: vec![format!("http://{page_addr}")],
        ..Config::default()
    };
    if let Some(dir) = options.record {
        std::fs::create_dir_all(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        config.record_dir = Some(dir);
        config.record_all = true;
    }
    let mut secret = None;
    if options.jwt {
        let (path, bytes) = secret_file(scratch.path()).map_err(|err| format!("cannot write the secret: {err}"))?;
        config.auth = AuthBackend::Jwt;
        config.jwt_algorithms = vec![JwtAlgorithm::HS256];
        config.jwt_secret_file = Some(path);
        config.jwt_require_jti = true;
        config.jwt_max_lifetime = Some(std::time::Duration::from_secs(60));
        secret = Some(bytes);
    } else {
        config.controller_url = format!("http://{page_addr}/ws-controller").parse().map_err(|e| format!("{e}"))?;
    }
    let app = App::bind(config).await.map_err(|err| format!("the server did not start: {err}"))?;
    let ListenAddr::Tcp(server_addr) = app.local_addr().clone() else { unreachable!("bound to TCP") };

    let mut demo = controller::Demo::new(format!("ws://{server_addr}/ws"), command.clone()).tty(true).assets(assets);
    if let Some(secret) = secret {
        demo = demo.jwt(secret);
    }
    let page_task = tokio::spawn(controller::serve(page, demo));
    let mode = if options.jwt { "JWT (stateless)" } else { "controller" };
    println!("ws-subprocess demo ({mode} mode) running {command:?} on a terminal");
    println!("open http://{page_addr}/   (Ctrl-C stops)");
    app.run(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("stopping");
    })
    .await;
    page_task.abort();
    Ok(())
}

/// An IP address as the host part of `host:port`.
fn bracketed(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}
