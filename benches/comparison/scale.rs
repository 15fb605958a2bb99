//! Thousands of sessions at once: opened at a fixed rate, left idle, then
//! all echoing once a second; with the server's memory and descriptors, and
//! how long a new session takes to start while they run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use crate::Res;
use crate::clients::Conn;
use crate::servers::{Server, Target, fd_count, rss_kib};

/// The command of every session here.
pub const COMMAND: &str = "/bin/cat";
const OPEN_LIMIT: Duration = Duration::from_secs(10);
const ECHO_LIMIT: Duration = Duration::from_secs(5);
/// Each echo: 31 bytes and a newline.
const ECHO_SIZE: usize = 32;

#[derive(Clone, Copy)]
pub struct ScaleParams {
    /// Sessions for the idle measurement.
    pub idle: usize,
    /// Sessions in all, for the active phase.
    pub total: usize,
    /// Sessions opened per second for the idle measurement: slowly, so it
    /// measures what sessions hold, not what the allocator kept of a burst
    /// of handshakes (the active row shows that).
    pub idle_rate: f64,
    /// Sessions opened per second after that.
    pub rate: f64,
    /// How long every session echoes once a second.
    pub active: Duration,
    /// Sessions started one after another to time a start.
    pub probes: usize,
}

/// What one server did.
pub struct Scale {
    pub start_none: Vec<f64>,
    pub idle_kib: f64,
    pub idle_fds: f64,
    pub opened: usize,
    pub failures: usize,
    pub first_failure: Option<String>,
    pub start_live: Vec<f64>,
    pub echoes: Vec<f64>,
    pub echo_failures: usize,
    pub active_kib: f64,
}

/// Opens a session and waits for the echo of a first line: a session has
/// started when its process answers.
async fn open_ready(target: &Target) -> Res<Conn> {
    let mut conn = Conn::open_target(target, true).await?;
    conn.send(Bytes::from_static(b"ready\n")).await?;
    match timeout(OPEN_LIMIT, conn.read_until(b"ready")).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no echo within 10 s".into()),
    }
}

/// Starts `count` sessions one after another: milliseconds from connecting
/// to the echo of a first line.
pub async fn probe(server: &Server, count: usize) -> Res<Vec<f64>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let conn = open_ready(&server.target).await?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        conn.close().await;
    }
    Ok(samples)
}

/// Opens `count` sessions at `rate` per second (each in a task of its own,
/// so a slow one does not hold up the next).
async fn open_many(target: &Target, count: usize, rate: f64) -> (Vec<Conn>, Vec<String>) {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let target = target.clone();
        tasks.push(tokio::spawn(async move { open_ready(&target).await }));
    }
    let (mut conns, mut errors) = (Vec::new(), Vec::new());
    for task in tasks {
        match task.await {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (conns, errors)
}

/// The scenario: probes with no session, `idle` sessions opened and
/// measured, the rest opened, probes again, then everything echoing.
pub async fn run(server: &Server, p: ScaleParams) -> Res<Scale> {
    let pid = server.pid().ok_or("no server process to measure")?;
    let start_none = probe(server, p.probes).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, fds0) = (rss_kib(pid).unwrap_or(0), fd_count(pid).unwrap_or(0));
    let (mut conns, mut errors) = open_many(&server.target, p.idle, p.idle_rate).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss1, fds1) = (rss_kib(pid).unwrap_or(0), fd_count(pid).unwrap_or(0));
    let idle = conns.len().max(1) as f64;
    let idle_kib = rss1.saturating_sub(rss0) as f64 / idle;
    let idle_fds = fds1.saturating_sub(fds0) as f64 / idle;
    let (more, more_errors) = open_many(&server.target, p.total - p.idle, p.rate).await;
    conns.extend(more);
    errors.extend(more_errors);
    // A start with every session live, when the server is at its largest.
    let start_live = probe(server, p.probes).await.unwrap_or_default();
    let opened = conns.len();
    let (echoes, echo_failures, peak) = echo_all(conns, p.active, pid).await;
    let active_kib = peak.saturating_sub(rss0) as f64 / opened.max(1) as f64;
    let failures = errors.len();
    let first_failure = errors.into_iter().next();
    Ok(Scale {
        start_none,
        idle_kib,
        idle_fds,
        opened,
        failures,
        first_failure,
        start_live,
        echoes,
        echo_failures,
        active_kib,
    })
}

/// Every session sends an echo once a second for `active` (spread over the
/// second); milliseconds per echo, sessions that failed, and the server's
/// largest resident size meanwhile.
async fn echo_all(conns: Vec<Conn>, active: Duration, pid: i32) -> (Vec<f64>, usize, u64) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let count = conns.len().max(1);
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let rounds = active.as_secs().max(1);
    let mut message = vec![b'x'; ECHO_SIZE - 1];
    message.push(b'\n');
    let message = Bytes::from(message);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            let (samples, message) = (samples.clone(), message.clone());
            let offset = Duration::from_secs_f64(i as f64 / count as f64);
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(rounds as usize);
                let mut result = Ok(());
                for round in 0..rounds {
                    tokio::time::sleep_until(start + offset + Duration::from_secs(round)).await;
                    let sent = Instant::now();
                    if let Err(e) = conn.send(message.clone()).await {
                        result = Err(e);
                        break;
                    }
                    let mut got = 0;
                    while got < ECHO_SIZE {
                        match timeout(ECHO_LIMIT, conn.recv()).await {
                            Ok(Ok(Ok(data))) => got += data.len(),
                            Ok(Ok(Err(end))) => {
                                result = Err(format!("ended: {end}"));
                                break;
                            }
                            Ok(Err(e)) => {
                                result = Err(e);
                                break;
                            }
                            Err(_) => {
                                result = Err("no echo within 5 s".into());
                                break;
                            }
                        }
                    }
                    if result.is_err() {
                        break;
                    }
                    mine.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                samples.lock().unwrap().extend(mine);
                // Kept open until every session is done: a session that
                // ends is work for the server while others still echo.
                (conn, result)
            })
        })
        .collect();
    let mut peak = 0;
    let watch_until = start + Duration::from_secs(rounds);
    while tokio::time::Instant::now() < watch_until {
        peak = peak.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut failures = 0;
    let mut conns = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok((conn, Ok(()))) => conns.push(conn),
            Ok((conn, Err(_))) => {
                conns.push(conn);
                failures += 1;
            }
            Err(_) => failures += 1,
        }
    }
    drop(conns);
    let samples = std::mem::take(&mut *samples.lock().unwrap());
    (samples, failures, peak)
}
