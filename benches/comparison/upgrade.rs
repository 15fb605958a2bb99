//! The server's own lifecycle with sessions live (SPEC §10): ws-subprocess
//! replaces its program in place (SIGUSR2) while every session echoes; the
//! peer can only restart (websocketd: SIGTERM, then a new one on the same
//! port), which is what every other server does. Measured: the time from
//! the signal to the new program serving, the longest echo each live
//! session sees across it (against the second before it), sessions lost,
//! and the server's memory and descriptors before and after.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use crate::clients::{Conn, Rx, Tx};
use crate::servers::{Kind, Server, fd_count, rss_kib};
use crate::{
    Bench, CALM_P99, FDS_AFTER, FDS_BEFORE, LOST, PAUSE_P50, PAUSE_P99, RSS_AFTER, RSS_BEFORE, Res, UPGRADE_MS,
    percentile, report,
};

/// Each session echoes one line this often, so the longest echo across the
/// upgrade is the pause its client sees, give or take this.
const INTERVAL: Duration = Duration::from_millis(100);
/// The longest a server may take to serve again.
const SERVE_LIMIT: Duration = Duration::from_secs(30);
const OPEN_LIMIT: Duration = Duration::from_secs(10);
/// Opened this many at a time.
const OPEN_BATCH: usize = 50;

/// One session's echoes: when each line was sent and how long its echo
/// took (`None`: never came back).
type Echoes = Arc<Mutex<Vec<(Instant, Option<Duration>)>>>;

/// A session that echoes a line every [`INTERVAL`] until told to stop.
struct Echoer {
    echoes: Echoes,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Res<()>>,
}

impl Echoer {
    async fn start(server: &Server, n: usize) -> Res<Self> {
        let mut conn = Conn::open_target(&server.target, true).await?;
        conn.send(Bytes::from_static(b"ready\n")).await?;
        timeout(OPEN_LIMIT, conn.read_until(b"ready")).await.map_err(|_| "no first echo")??;
        let (tx, rx) = conn.split();
        let echoes: Echoes = Arc::default();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Spread over the interval, so the server sees a steady stream.
        let offset = INTERVAL.mul_f64((n % 97) as f64 / 97.0);
        let task = tokio::spawn(echo_loop(tx, rx, echoes.clone(), stopped, offset));
        Ok(Self { echoes, stop, task })
    }
}

async fn echo_loop(
    mut tx: Tx,
    mut rx: Rx,
    echoes: Echoes,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    offset: Duration,
) -> Res<()> {
    let line = Bytes::from_static(b"0123456789abcdefghijklmnopqrstu\n");
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return Ok(()),
        }
        let sent = Instant::now();
        echoes.lock().unwrap().push((sent, None));
        tx.send(line.clone()).await?;
        let mut got = 0;
        while got < line.len() {
            match timeout(SERVE_LIMIT, rx.recv()).await.map_err(|_| "no echo")?? {
                Ok(data) => got += data.len(),
                Err(end) => return Err(format!("ended: {end}")),
            }
        }
        if let Some(last) = echoes.lock().unwrap().last_mut() {
            last.1 = Some(sent.elapsed());
        }
    }
}

/// The longest echo of lines sent in `[from, to)`, in ms (a line never
/// answered counts as lost: `None`).
fn longest(echoes: &Echoes, from: Instant, to: Instant) -> Option<f64> {
    let echoes = echoes.lock().unwrap();
    let mut longest = 0.0f64;
    for (sent, took) in echoes.iter().filter(|(sent, _)| *sent >= from && *sent < to) {
        let took = (*took)?;
        longest = longest.max(took.as_secs_f64() * 1e3);
        let _ = sent;
    }
    Some(longest)
}

/// Whether the metrics of the new program (after `n` upgrades) answer.
async fn serving_after(metrics: std::net::SocketAddr, n: usize) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut stream)) = timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(metrics)).await else {
        return false;
    };
    let request = "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = timeout(Duration::from_millis(500), stream.read_to_string(&mut body)).await;
    body.contains(&format!("ws_subprocess_upgrades_total{{result=\"ok\"}} {n}"))
}

/// What one server did across one signal.
struct Round {
    serving_ms: f64,
    pauses: Vec<f64>,
    calm: Vec<f64>,
    before: (f64, f64),
    after: (f64, f64),
}

/// Opens `sessions` echoing sessions on `server`, then upgrades it
/// `rounds` times (or restarts it once, for the peer) and watches what
/// each session sees; also how many were lost in all.
async fn across(bench: &Bench, server: &mut Server, sessions: usize, rounds: usize) -> Res<(Vec<Round>, usize)> {
    let mut echoers = Vec::with_capacity(sessions);
    for batch in (0..sessions).collect::<Vec<_>>().chunks(OPEN_BATCH) {
        let opened = futures_util::future::join_all(batch.iter().map(|&n| Echoer::start(server, n))).await;
        for echoer in opened {
            echoers.push(echoer?);
        }
    }
    let usage = |pid| (rss_kib(pid).unwrap_or(0) as f64 / 1024.0, fd_count(pid).unwrap_or(0) as f64);
    let mut windows = Vec::new();
    for round in 1..=rounds {
        // Steady echoing for a while: the second before the signal is the
        // reference.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = usage(server.pid().ok_or("no server process")?);
        let signal = Instant::now();
        let serving_ms = match server.kind {
            Kind::WsSubprocess => {
                let metrics = server.metrics.ok_or("no metrics address")?;
                server.signal(rustix::process::Signal::USR2)?;
                let deadline = signal + SERVE_LIMIT;
                while !serving_after(metrics, round).await {
                    if Instant::now() > deadline {
                        return Err(format!("not serving {} s after SIGUSR2", SERVE_LIMIT.as_secs()));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                signal.elapsed().as_secs_f64() * 1e3
            }
            _ => server.restart(bench.websocketd.as_deref()).await?.as_secs_f64() * 1e3,
        };
        let served = Instant::now();
        // Everything sent up to a little after serving again must come back.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let after = usage(server.pid().ok_or("no server process")?);
        windows.push((signal, served, serving_ms, before, after));
    }
    let mut rounds: Vec<Round> = windows
        .iter()
        .map(|&(_, _, serving_ms, before, after)| Round {
            serving_ms,
            pauses: Vec::new(),
            calm: Vec::new(),
            before,
            after,
        })
        .collect();
    let mut lost = 0;
    for echoer in echoers {
        let _ = echoer.stop.send(true);
        let ended = timeout(Duration::from_secs(5), echoer.task).await;
        let failed = !matches!(ended, Ok(Ok(Ok(()))));
        let mut kept = !failed;
        for (round, &(signal, served, ..)) in rounds.iter_mut().zip(&windows) {
            round.calm.extend(longest(&echoer.echoes, signal - Duration::from_secs(1), signal));
            match longest(&echoer.echoes, signal, served + Duration::from_millis(300)) {
                Some(pause) if kept => round.pauses.push(pause),
                _ => kept = false,
            }
        }
        if !kept {
            lost += 1;
        }
    }
    for round in &mut rounds {
        round.pauses.sort_by(f64::total_cmp);
        round.calm.sort_by(f64::total_cmp);
    }
    Ok((rounds, lost))
}

pub async fn run(bench: &mut Bench) {
    if !bench.params.runs("upgrade") {
        return;
    }
    let sessions = bench.params.upgrade_sessions;
    for kind in bench.available(&[Kind::WsSubprocess, Kind::Websocketd]) {
        let workload = crate::servers::Workload::new("/bin/cat", &[]);
        let mut server = match Server::start(kind, bench.websocketd.as_deref(), &workload).await {
            Ok(server) => server,
            Err(error) => {
                bench.results.add(UPGRADE_MS, kind, Err(error));
                continue;
            }
        };
        // Several upgrades in a row, on the same sessions; the peer loses
        // them at its first restart.
        let rounds = if kind == Kind::WsSubprocess { bench.params.upgrade_rounds } else { 1 };
        match across(bench, &mut server, sessions, rounds).await {
            Ok((rounds, lost)) => {
                let r = &mut bench.results;
                r.add(LOST, kind, Ok(lost as f64));
                let p = |samples: &[f64], q| {
                    if samples.is_empty() {
                        Err("every session was lost".to_string())
                    } else {
                        Ok(percentile(samples, q))
                    }
                };
                for round in &rounds {
                    r.add(UPGRADE_MS, kind, Ok(round.serving_ms));
                    r.add(PAUSE_P50, kind, p(&round.pauses, 0.5));
                    r.add(PAUSE_P99, kind, p(&round.pauses, 0.99));
                    r.add(CALM_P99, kind, p(&round.calm, 0.99));
                }
                if let (Some(first), Some(last)) = (rounds.first(), rounds.last()) {
                    r.add(RSS_BEFORE, kind, Ok(first.before.0));
                    r.add(RSS_AFTER, kind, Ok(last.after.0));
                    r.add(FDS_BEFORE, kind, Ok(first.before.1));
                    r.add(FDS_AFTER, kind, Ok(last.after.1));
                }
                bench.notes.push(format!(
                    "{}: {sessions} `cat` sessions each echoing a line every {} ms across {}",
                    kind.name(),
                    INTERVAL.as_millis(),
                    if kind == Kind::WsSubprocess {
                        format!("{} in-place upgrades in a row (SIGUSR2)", rounds.len())
                    } else {
                        "a restart (SIGTERM, start)".to_string()
                    }
                ));
            }
            Err(error) => bench.results.add(UPGRADE_MS, kind, Err(error)),
        }
        let complaints = server.stop().await;
        bench.complaints.entry(kind.name()).or_default().extend(complaints);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for metric in [UPGRADE_MS, PAUSE_P50, PAUSE_P99, CALM_P99, LOST, RSS_BEFORE, RSS_AFTER, FDS_BEFORE, FDS_AFTER] {
        if let Some(row) = bench.results.rows.iter().find(|r| r.id == metric.0) {
            report::print_row(row);
        }
    }
}
