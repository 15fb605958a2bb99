//! The reference comparison (issue 11): ws-subprocess against Debian's
//! `websocketd` and a raw relay of our own, in one run, with the same
//! clients, every scenario repeated and the servers interleaved.
//!
//! `cargo bench --bench comparison` runs the full set (a few minutes) and
//! writes `BENCHMARKS.md` and `docs/benchmarks.svg`; `-- --smoke` shrinks
//! every scenario to a few seconds and writes to `target/bench-smoke/`
//! instead (what CI runs). A missing `websocketd` is skipped with a note.
//! See `benches/README.md` for what each row measures.

mod chart;
mod clients;
mod report;
mod scale;
mod servers;
mod terminal_clients;
mod transfers;
mod upgrade;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::timeout;

use clients::{Conn, End};
use servers::{Kind, Server, Workload};

pub type Res<T> = Result<T, String>;

const MIB: f64 = 1024.0 * 1024.0;
const SESSION_LIMIT: Duration = Duration::from_secs(10);
const THROUGHPUT_LIMIT: Duration = Duration::from_secs(120);
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(5);
/// Clients running sessions at once in the concurrent session-rate row.
const CONCURRENT_CLIENTS: usize = 16;
/// Size of each round-trip echo, its trailing newline included.
const ECHO_SIZE: usize = 64;

/// How big each scenario is.
#[derive(Clone)]
pub struct Params {
    pub smoke: bool,
    pub pipe_bytes: u64,
    pub tty_bytes: u64,
    pub echo_bytes: u64,
    pub first_bytes: usize,
    pub sessions: usize,
    pub round_trips: usize,
    pub repetitions: usize,
    pub scale: scale::ScaleParams,
    pub detached_sessions: usize,
    /// Live sessions across the upgrades, and how many upgrades in a row.
    pub upgrade_sessions: usize,
    pub upgrade_rounds: usize,
    /// `--only`: the groups of rows to run (for working on one).
    pub only: Option<Vec<String>>,
}

impl Params {
    fn from_args() -> Self {
        // `cargo bench` passes `--bench` (and maybe a filter); `--smoke` and
        // `--only GROUP,...` mean something here.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut params = if args.iter().any(|arg| arg == "--smoke") { Self::smoke() } else { Self::full() };
        if let Some(i) = args.iter().position(|arg| arg == "--only") {
            params.only = args.get(i + 1).map(|groups| groups.split(',').map(str::to_string).collect());
        }
        params
    }

    /// Whether the group of rows `name` runs (all do without `--only`).
    fn runs(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == name))
    }

    fn full() -> Self {
        Self {
            smoke: false,
            pipe_bytes: 256 << 20,
            tty_bytes: 64 << 20,
            echo_bytes: 32 << 20,
            first_bytes: 200,
            sessions: 500,
            round_trips: 10_000,
            repetitions: 5,
            scale: scale::ScaleParams {
                idle: 1000,
                total: 4000,
                idle_rate: 100.0,
                rate: 1000.0,
                active: Duration::from_secs(20),
                probes: 100,
            },
            detached_sessions: 1000,
            upgrade_sessions: 1000,
            upgrade_rounds: 3,
            only: None,
        }
    }

    fn smoke() -> Self {
        Self {
            smoke: true,
            pipe_bytes: 8 << 20,
            tty_bytes: 4 << 20,
            echo_bytes: 4 << 20,
            first_bytes: 10,
            sessions: 20,
            round_trips: 100,
            repetitions: 1,
            scale: scale::ScaleParams {
                idle: 20,
                total: 40,
                idle_rate: 100.0,
                rate: 1000.0,
                active: Duration::from_secs(2),
                probes: 5,
            },
            detached_sessions: 20,
            upgrade_sessions: 20,
            upgrade_rounds: 1,
            only: None,
        }
    }

    /// An untimed first pass, so first-connection costs stay out of the rows.
    fn warmup(&self) -> Self {
        Self {
            pipe_bytes: 1 << 20,
            tty_bytes: 1 << 20,
            echo_bytes: 1 << 20,
            first_bytes: 5,
            sessions: CONCURRENT_CLIENTS,
            round_trips: 20,
            ..self.clone()
        }
    }
}

/// A row's result on one server.
#[derive(Clone, Debug)]
pub enum Cell {
    Values(Vec<f64>),
    Failed(String),
}

impl Cell {
    /// The median of the values.
    pub fn value(&self) -> Option<f64> {
        match self {
            Cell::Values(values) if !values.is_empty() => {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                let n = sorted.len();
                Some(if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 })
            }
            _ => None,
        }
    }

    pub fn show(&self) -> String {
        match (self, self.value()) {
            (Cell::Failed(error), _) => format!("failed: {error}"),
            (Cell::Values(values), Some(median)) if values.len() > 1 => {
                let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                format!("{} ({}–{})", fmt(median), fmt(min), fmt(max))
            }
            (_, Some(median)) => fmt(median),
            (_, None) => "–".into(),
        }
    }
}

/// One metric across the servers.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub cells: BTreeMap<Kind, Cell>,
}

/// Every row of the run, in order.
#[derive(Default)]
pub struct Results {
    pub rows: Vec<Row>,
}

impl Results {
    fn row(&mut self, id: &'static str, label: &str, unit: &'static str) -> &mut Row {
        if let Some(i) = self.rows.iter().position(|r| r.id == id) {
            return &mut self.rows[i];
        }
        self.rows.push(Row { id, label: label.to_string(), unit, cells: BTreeMap::new() });
        self.rows.last_mut().unwrap()
    }

    /// Adds a value (or a failure) of `kind` to row `id`.
    pub fn add(&mut self, (id, label, unit): Metric, kind: Kind, value: Res<f64>) {
        let cell = self.row(id, label, unit).cells.entry(kind).or_insert(Cell::Values(Vec::new()));
        match (cell, value) {
            (Cell::Values(values), Ok(value)) => values.push(value),
            (cell @ Cell::Values(_), Err(error)) => *cell = Cell::Failed(error),
            (Cell::Failed(_), _) => {}
        }
    }

    pub fn get(&self, id: &str, kind: Kind) -> Option<f64> {
        self.rows.iter().find(|r| r.id == id)?.cells.get(&kind)?.value()
    }

    pub fn cell(&self, id: &str, kind: Kind) -> Option<&Cell> {
        self.rows.iter().find(|r| r.id == id)?.cells.get(&kind)
    }
}

/// A row: id, label, unit.
pub type Metric = (&'static str, &'static str, &'static str);

pub const PIPES: Metric = ("pipes", "stdout, pipes (MiB/s)", "MiB/s");
pub const TTY: Metric = ("tty", "stdout, terminal (MiB/s)", "MiB/s");
pub const DETACHED: Metric = ("detached", "stdout, detachable session (MiB/s)", "MiB/s");
pub const ECHO_BULK: Metric = ("echo_bulk", "echo through `cat` (MiB/s)", "MiB/s");
pub const FIRST_P50: Metric = ("first_p50", "connect → first byte p50 (ms)", "ms");
pub const FIRST_P99: Metric = ("first_p99", "connect → first byte p99 (ms)", "ms");
pub const RATE: Metric = ("rate", "sessions/s, one client", "sessions/s");
pub const RATE16: Metric = ("rate16", "sessions/s, 16 clients", "sessions/s");
pub const RTT_P50: Metric = ("rtt_p50", "echo round trip p50 (µs)", "µs");
pub const RTT_P99: Metric = ("rtt_p99", "echo round trip p99 (µs)", "µs");
pub const START_NONE: Metric = ("start_none", "session start p50, none live (ms)", "ms");
pub const IDLE_KIB: Metric = ("idle_kib", "memory per idle session, 1,000 opened at 100/s (KiB)", "KiB");
pub const IDLE_FDS: Metric = ("idle_fds", "descriptors per pipe session", "fds");
pub const OPEN_FAILED: Metric = ("open_failed", "sessions failed to open (3,000 more at 1,000/s)", "sessions");
pub const START_LIVE: Metric = ("start_live", "session start p50, all live (ms)", "ms");
pub const ACTIVE_P50: Metric = ("active_p50", "echo p50, all sessions echoing (ms)", "ms");
pub const ACTIVE_P99: Metric = ("active_p99", "echo p99, all sessions echoing (ms)", "ms");
pub const ECHO_FAILED: Metric = ("echo_failed", "sessions whose echo failed", "sessions");
pub const ACTIVE_KIB: Metric = ("active_kib", "memory per active session, all echoing (KiB)", "KiB");
pub const PLAIN_KIB: Metric = ("plain_kib", "memory per session after 60 KiB of output (KiB)", "KiB");
pub const DETACHED_KIB: Metric =
    ("detached_kib", "memory per detachable session (history 64 KiB) after 60 KiB (KiB)", "KiB");
// The server's own lifecycle with sessions live (see `upgrade.rs`).
pub const UPGRADE_MS: Metric = ("upgrade_ms", "live sessions: signal → new program serving (ms)", "ms");
pub const PAUSE_P50: Metric = ("pause_p50", "longest echo across it, per session, p50 (ms)", "ms");
pub const PAUSE_P99: Metric = ("pause_p99", "longest echo across it, per session, p99 (ms)", "ms");
pub const CALM_P99: Metric = ("calm_p99", "longest echo the second before, per session, p99 (ms)", "ms");
pub const LOST: Metric = ("upgrade_lost", "sessions lost across them", "sessions");
pub const RSS_BEFORE: Metric = ("upgrade_rss_before", "server memory before the first (MiB)", "MiB");
pub const RSS_AFTER: Metric = ("upgrade_rss_after", "server memory after the last (MiB)", "MiB");
pub const FDS_BEFORE: Metric = ("upgrade_fds_before", "server descriptors before the first", "fds");
pub const FDS_AFTER: Metric = ("upgrade_fds_after", "server descriptors after the last", "fds");

/// Everything one run needs.
pub struct Bench {
    pub params: Params,
    pub websocketd: Option<PathBuf>,
    pub results: Results,
    pub complaints: BTreeMap<&'static str, Vec<String>>,
    pub notes: Vec<String>,
}

impl Bench {
    pub fn available(&self, kinds: &[Kind]) -> Vec<Kind> {
        kinds.iter().copied().filter(|k| *k != Kind::Websocketd || self.websocketd.is_some()).collect()
    }

    /// Starts a server of each kind for `workload`, runs `run` once at
    /// warm-up size (untimed), then `repetitions` times (the servers
    /// interleaved, so drift hits all alike); `run` returns one value per
    /// metric.
    async fn compare<F>(&mut self, metrics: &[Metric], kinds: &[Kind], workload: Workload, repetitions: usize, run: F)
    where
        F: AsyncFn(&Server, &Params) -> Res<Vec<f64>>,
    {
        if !self.params.runs(metrics[0].0) {
            return;
        }
        let mut servers = Vec::new();
        for kind in self.available(kinds) {
            match Server::start(kind, self.websocketd.as_deref(), &workload).await {
                Ok(server) => servers.push(server),
                Err(error) => metrics.iter().for_each(|m| self.results.add(*m, kind, Err(error.clone()))),
            }
        }
        let warmup = self.params.warmup();
        for server in &servers {
            let _ = run(server, &warmup).await;
        }
        for _ in 0..repetitions {
            for server in &servers {
                match run(server, &self.params).await {
                    Ok(values) => {
                        metrics.iter().zip(values).for_each(|(m, v)| self.results.add(*m, server.kind, Ok(v)))
                    }
                    Err(error) => metrics.iter().for_each(|m| self.results.add(*m, server.kind, Err(error.clone()))),
                }
            }
        }
        for server in servers {
            let kind = server.kind.name();
            let complaints = server.stop().await;
            self.complaints.entry(kind).or_default().extend(complaints);
        }
        for metric in metrics {
            if let Some(row) = self.results.rows.iter().find(|r| r.id == metric.0) {
                report::print_row(row);
            }
        }
    }
}

/// One session read to its end; MiB/s from connecting to the end. The byte
/// count is checked: a lost byte fails the row.
async fn throughput(server: &Server, bytes: u64) -> Res<f64> {
    let start = Instant::now();
    let mut conn = Conn::open(server).await?;
    let (got, _) = timeout(THROUGHPUT_LIMIT, conn.drain()).await.map_err(|_| "session timed out")??;
    let elapsed = start.elapsed().as_secs_f64();
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    Ok(bytes as f64 / MIB / elapsed)
}

/// `bytes` sent through `cat` in 64 KiB messages while its output is read;
/// MiB/s. A server that stops echoing for 10 s has stalled.
async fn echo_bulk(server: &Server, bytes: u64) -> Res<f64> {
    let (mut tx, mut rx) = Conn::open(server).await?.split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min((bytes - sent) as usize);
            tx.send(chunk.slice(..n)).await?;
            sent += n as u64;
        }
        Ok::<_, String>(tx)
    });
    let mut got = 0u64;
    while got < bytes {
        match timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Ok(Ok(data))) => got += data.len() as u64,
            Ok(Ok(Err(end))) => return Err(format!("ended ({end}) after {got} of {bytes} bytes")),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                writer.abort();
                return Err(format!("stalled after {:.1} of {} MiB", got as f64 / MIB, bytes >> 20));
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(writer.await.map_err(|e| e.to_string())??);
    Ok(bytes as f64 / MIB / elapsed)
}

/// `count` sessions of `/bin/echo` one after another: milliseconds from
/// connecting to the first output byte, as p50 and p99.
async fn first_byte(server: &Server, count: usize) -> Res<Vec<f64>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let mut conn = Conn::open(server).await?;
        loop {
            match timeout(SESSION_LIMIT, conn.recv()).await.map_err(|_| "no output")?? {
                Ok(data) if data.is_empty() => continue,
                Ok(_) => break,
                Err(end) => return Err(format!("ended ({end}) before any output")),
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        timeout(SESSION_LIMIT, conn.drain()).await.map_err(|_| "session did not end")??;
    }
    samples.sort_by(f64::total_cmp);
    Ok(vec![percentile(&samples, 0.50), percentile(&samples, 0.99)])
}

/// One session of `/bin/true`: connect and read to the end.
async fn one_session(server: &Server) -> Res<End> {
    let mut conn = Conn::open(server).await?;
    Ok(timeout(SESSION_LIMIT, conn.drain()).await.map_err(|_| "session timed out")??.1)
}

/// `count` sessions one after another, then [`CONCURRENT_CLIENTS`] clients
/// each running `count / 16` sessions; sessions/s of both.
async fn session_rates(server: &Server, count: usize) -> Res<Vec<f64>> {
    let start = Instant::now();
    for _ in 0..count {
        one_session(server).await?;
    }
    let sequential = count as f64 / start.elapsed().as_secs_f64();
    let per_client = count.div_ceil(CONCURRENT_CLIENTS);
    let start = Instant::now();
    let clients = (0..CONCURRENT_CLIENTS).map(|_| async {
        for _ in 0..per_client {
            one_session(server).await?;
        }
        Ok::<_, String>(())
    });
    for result in futures_util::future::join_all(clients).await {
        result?;
    }
    let concurrent = (CONCURRENT_CLIENTS * per_client) as f64 / start.elapsed().as_secs_f64();
    Ok(vec![sequential, concurrent])
}

/// One `cat` session: `round_trips` timed round trips of a 64-byte message
/// (after ten untimed ones); p50 and p99 in microseconds.
async fn round_trips(server: &Server, round_trips: usize) -> Res<Vec<f64>> {
    let mut message = vec![b'x'; ECHO_SIZE - 1];
    message.push(b'\n');
    let message = Bytes::from(message);
    let mut conn = Conn::open(server).await?;
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..10 + round_trips {
        let start = Instant::now();
        conn.send(message.clone()).await?;
        let mut got = 0;
        while got < ECHO_SIZE {
            match timeout(ROUND_TRIP_LIMIT, conn.recv()).await.map_err(|_| "no echo within 5 s")?? {
                Ok(data) => got += data.len(),
                Err(end) => return Err(format!("ended mid-echo: {end}")),
            }
        }
        if i >= 10 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    conn.close().await;
    samples.sort_by(f64::total_cmp);
    Ok(vec![percentile(&samples, 0.50), percentile(&samples, 0.99)])
}

/// Memory per session of `count` sessions that each wrote 60 KiB and then
/// wait (read by the client to their marker).
async fn memory_after_output(server: &Server, count: usize) -> Res<f64> {
    let pid = server.pid().ok_or("no server process")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = servers::rss_kib(pid).unwrap_or(0);
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut conn = Conn::open_target(&server.target, true).await?;
        timeout(SESSION_LIMIT, conn.read_until(b"ready")).await.map_err(|_| "no marker")??;
        conns.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = servers::rss_kib(pid).unwrap_or(0);
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

/// The `q` quantile of sorted `samples` (nearest rank).
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let rank = (q * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn fmt(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Raises this process's open-file limit to its hard limit: the scale
/// scenario holds thousands of connections (and the servers it starts
/// inherit the limit).
fn raise_open_files() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

async fn run_scale(bench: &mut Bench) {
    if !bench.params.runs("scale") {
        return;
    }
    let p = bench.params.scale;
    let workload = Workload::new(scale::COMMAND, &[]);
    for kind in bench.available(&[Kind::WsSubprocess, Kind::Websocketd]) {
        let server = match Server::start(kind, bench.websocketd.as_deref(), &workload).await {
            Ok(server) => server,
            Err(error) => {
                bench.results.add(START_NONE, kind, Err(error));
                continue;
            }
        };
        let _ = scale::probe(&server, 5).await;
        match scale::run(&server, p).await {
            Ok(s) => {
                let r = &mut bench.results;
                let median = |samples: &[f64]| {
                    let mut sorted = samples.to_vec();
                    sorted.sort_by(f64::total_cmp);
                    if sorted.is_empty() { Err("no sample".to_string()) } else { Ok(percentile(&sorted, 0.5)) }
                };
                r.add(START_NONE, kind, median(&s.start_none));
                r.add(IDLE_KIB, kind, Ok(s.idle_kib));
                r.add(IDLE_FDS, kind, Ok(s.idle_fds));
                r.add(OPEN_FAILED, kind, Ok(s.failures as f64));
                r.add(START_LIVE, kind, median(&s.start_live));
                let mut echoes = s.echoes.clone();
                echoes.sort_by(f64::total_cmp);
                r.add(ACTIVE_P50, kind, Ok(percentile(&echoes, 0.5)));
                r.add(ACTIVE_P99, kind, Ok(percentile(&echoes, 0.99)));
                r.add(ECHO_FAILED, kind, Ok(s.echo_failures as f64));
                r.add(ACTIVE_KIB, kind, Ok(s.active_kib));
                if let Some(failure) = s.first_failure {
                    bench.notes.push(format!(
                        "{}: {} of {} sessions failed to open; the first: {failure}",
                        kind.name(),
                        s.failures,
                        p.total
                    ));
                }
                bench.notes.push(format!(
                    "{}: {} sessions open at once, {} echoes timed",
                    kind.name(),
                    s.opened,
                    s.echoes.len()
                ));
            }
            Err(error) => bench.results.add(START_NONE, kind, Err(error)),
        }
        let complaints = server.stop().await;
        bench.complaints.entry(kind.name()).or_default().extend(complaints);
        // Let the kernel finish with thousands of processes and sockets
        // before the next server starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for metric in
        [START_NONE, IDLE_KIB, IDLE_FDS, OPEN_FAILED, START_LIVE, ACTIVE_P50, ACTIVE_P99, ECHO_FAILED, ACTIVE_KIB]
    {
        if let Some(row) = bench.results.rows.iter().find(|r| r.id == metric.0) {
            report::print_row(row);
        }
    }
}

fn main() {
    // Re-run as the bench's own minimal client (see terminal_clients).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|arg| arg == terminal_clients::PIPE_CLIENT) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        if let Err(error) = runtime.block_on(terminal_clients::pipe_client(&args[i + 1])) {
            eprintln!("pipe client: {error}");
            std::process::exit(1);
        }
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(bench_main());
}

async fn bench_main() {
    let params = Params::from_args();
    let open_files = raise_open_files();
    let websocketd = servers::find_in_path("websocketd");
    let mut bench =
        Bench { params, websocketd, results: Results::default(), complaints: BTreeMap::new(), notes: Vec::new() };
    let machine = report::Machine::read(bench.websocketd.as_deref(), open_files);
    report::print_header(&bench, &machine);
    let started = Instant::now();
    let reps = bench.params.repetitions;
    let all = Kind::ALL;

    let pipe_bytes = bench.params.pipe_bytes;
    bench
        .compare(&[PIPES], &all, Workload::new("/usr/bin/head", &["-c", &pipe_bytes.to_string(), "/dev/zero"]), reps, {
            async |server: &Server, p: &Params| Ok(vec![throughput(server, p.pipe_bytes).await?])
        })
        .await;

    let tty_bytes = bench.params.tty_bytes;
    let tty = Workload { tty: true, ..Workload::new("/usr/bin/head", &["-c", &tty_bytes.to_string(), "/dev/zero"]) };
    bench
        .compare(&[TTY], &[Kind::WsSubprocess], tty, reps.min(3), async |server: &Server, p: &Params| {
            Ok(vec![throughput(server, p.tty_bytes).await?])
        })
        .await;

    let detached = Workload {
        history: Some("1MiB"),
        ..Workload::new("/usr/bin/head", &["-c", &pipe_bytes.to_string(), "/dev/zero"])
    };
    bench
        .compare(&[DETACHED], &[Kind::WsSubprocess], detached, reps.min(3), async |server: &Server, p: &Params| {
            Ok(vec![throughput(server, p.pipe_bytes).await?])
        })
        .await;

    bench
        .compare(
            &[ECHO_BULK],
            &all,
            Workload::new("/bin/cat", &[]),
            reps.min(3),
            async |server: &Server, p: &Params| Ok(vec![echo_bulk(server, p.echo_bytes).await?]),
        )
        .await;

    bench
        .compare(&[FIRST_P50, FIRST_P99], &all, Workload::new("/bin/echo", &["hi"]), reps, {
            async |server: &Server, p: &Params| first_byte(server, p.first_bytes).await
        })
        .await;

    bench
        .compare(&[RATE, RATE16], &all, Workload::new("/bin/true", &[]), reps, async |server: &Server, p: &Params| {
            session_rates(server, p.sessions).await
        })
        .await;

    bench
        .compare(
            &[RTT_P50, RTT_P99],
            &all,
            Workload::new("/bin/cat", &[]),
            reps,
            async |server: &Server, p: &Params| round_trips(server, p.round_trips).await,
        )
        .await;

    run_scale(&mut bench).await;

    // 60 KiB of output: a detachable session keeps all of it (its history
    // is 64 KiB); the plain session has sent it on.
    let script = "head -c 61440 /dev/zero; echo ready; exec cat";
    let count = bench.params.detached_sessions;
    for (metric, history) in [(PLAIN_KIB, None), (DETACHED_KIB, Some("64KiB"))] {
        let workload = Workload { history, ..Workload::shell(script) };
        bench
            .compare(&[metric], &[Kind::WsSubprocess], workload, 1, async move |server: &Server, _: &Params| {
                Ok(vec![memory_after_output(server, count).await?])
            })
            .await;
    }

    upgrade::run(&mut bench).await;
    terminal_clients::run(&mut bench).await;
    transfers::run(&mut bench).await;

    let elapsed = started.elapsed();
    report::print_footer(&bench, elapsed);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (markdown, svg) = if bench.params.only.is_some() {
        let dir = root.join("target/bench-only");
        let _ = std::fs::create_dir_all(&dir);
        (dir.join("BENCHMARKS.md"), dir.join("benchmarks.svg"))
    } else if bench.params.smoke {
        let dir = root.join("target/bench-smoke");
        let _ = std::fs::create_dir_all(&dir);
        (dir.join("BENCHMARKS.md"), dir.join("benchmarks.svg"))
    } else {
        let _ = std::fs::create_dir_all(root.join("docs"));
        (root.join("BENCHMARKS.md"), root.join("docs/benchmarks.svg"))
    };
    let written = report::write(&bench, &machine, elapsed, &markdown, &svg);
    match written {
        Ok(()) => println!("wrote {} and {}", markdown.display(), svg.display()),
        Err(error) => {
            eprintln!("cannot write the report: {error}");
            std::process::exit(1);
        }
    }
    let failed: Vec<&str> = bench
        .results
        .rows
        .iter()
        .filter(|row| matches!(row.cells.get(&Kind::WsSubprocess), Some(Cell::Failed(_))))
        .map(|row| row.id)
        .collect();
    if !failed.is_empty() {
        eprintln!("ws-subprocess rows failed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
