//! `ws-subprocess connect URL`: a terminal client for this server, the
//! `kubectl exec -it` / `ssh` of it (feature `client`).
//!
//! It speaks the channel protocol (`v5.channel.k8s.io`) over
//! tokio-tungstenite's client side, with rustls for `wss://`.
//!
//! - On a terminal: raw mode (put back on every way out), the terminal's
//!   size sent at start and on every `SIGWINCH`, and the remote exit status
//!   made the local one (`exit N` → N, a signal N → 128 + N).
//! - Off a terminal: standard input is streamed and ended at EOF, remote
//!   stdout goes to stdout and stderr to stderr, byte for byte.
//! - The token comes from `--token-file` (read again before each
//!   connection) or `WS_SUBPROCESS_TOKEN` and goes in an `Authorization:
//!   Bearer` header; one in the URL is sent as it is. There is no flag for
//!   it: `ps` shows every process's arguments.
//! - A named session (`--session ID`, or `session=` in the URL) survives a
//!   dropped connection and a Close 1012: the client connects again with
//!   `since=N` (backing off, for at most `--reconnect-timeout`) and loses
//!   and repeats nothing. The detach keys (`Ctrl-]` then `d`) leave it
//!   running.
//! - A connection that fails, or cannot be made again, ends the client with
//!   status 255 and one line saying why.

mod keys;
mod session;
mod terminal;
mod tls;

use std::path::PathBuf;
use std::time::Duration;

pub use keys::{BadKey, DetachKeys};

/// The status of a client whose connection failed.
pub const CONNECTION_FAILED: u8 = 255;

/// The arguments of `ws-subprocess connect`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// The server's endpoint: ws://host:port/path or wss://… (http:// and https:// mean the same)
    #[arg(value_name = "URL")]
    pub url: url::Url,
    /// Read the token from this file (again before each reconnection, so a helper may renew it);
    /// else $WS_SUBPROCESS_TOKEN; sent as `Authorization: Bearer`
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// An extra request header, `Name: value` (repeatable)
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Trust only the CA certificates in this PEM file (else the system's)
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Present this client certificate (PEM)
    #[arg(long, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM) [default: in the --cert file]
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Do not verify the server's certificate
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Attach to (or start) the named session ID: sent as `session=ID`, and the connection is
    /// made again by itself when it drops
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// Only watch: send no input and no resizes (leave with the detach keys or Ctrl-C)
    #[arg(long)]
    pub observer: bool,
    /// Keys that leave the session running, as `ctrl-],d` ("" for none)
    #[arg(long, value_name = "KEYS", default_value_t = DetachKeys::default())]
    pub detach_keys: DetachKeys,
    /// Give up reconnecting to a named session after this long
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub reconnect_timeout: Duration,
    /// Bound on making one connection (TCP, TLS and the WebSocket handshake)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Keep the local terminal as it is (no raw mode, no resizes), even when stdin is one
    #[arg(short = 'T', long)]
    pub no_tty: bool,
}

/// Runs the client to its end and returns the process's exit status: the
/// remote one, or [`CONNECTION_FAILED`] after a line on stderr saying why.
pub fn run(args: ConnectArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start: {err}")),
    };
    let status = runtime.block_on(session::run(args));
    // Standard input may still be read by its thread (a terminal's): not
    // waited for.
    runtime.shutdown_background();
    match status {
        Ok(code) => code,
        Err(why) => fail(&why),
    }
}

fn fail(why: &str) -> u8 {
    terminal::restore();
    eprintln!("ws-subprocess: {why}");
    CONNECTION_FAILED
}
