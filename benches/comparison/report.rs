//! What a run prints, and the `BENCHMARKS.md` and chart it writes.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::chart::{self, Bar, Panel};
use crate::servers::{Complaints, Kind, WS_SUBPROCESS_FLAGS};
use crate::*;

/// Where the run happened.
pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory: String,
    pub open_files: u64,
    pub commit: String,
    pub rustc: String,
    pub websocketd: String,
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).stdin(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

impl Machine {
    pub fn read(websocketd: Option<&Path>, open_files: u64) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown".into(), |(_, m)| m.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or("unknown".into(), |kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0));
        let root = env!("CARGO_MANIFEST_DIR");
        let commit = output_of("git", &["-C", root, "describe", "--always", "--dirty"]).unwrap_or("unknown".into());
        Self {
            date: output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            memory,
            open_files,
            commit,
            rustc: output_of("rustc", &["--version"]).unwrap_or("unknown".into()),
            websocketd: websocketd
                .map(|path| {
                    let version =
                        output_of(&path.to_string_lossy(), &["--version"]).unwrap_or("version unknown".into());
                    format!("{version} ({})", path.display())
                })
                .unwrap_or_else(|| "not installed: its rows are skipped (Debian: apt-get install websocketd)".into()),
        }
    }
}

pub fn print_header(bench: &Bench, m: &Machine) {
    let mode = if bench.params.smoke { "smoke: tiny sizes, one run, numbers mean nothing" } else { "full" };
    println!("ws-subprocess comparison ({mode})");
    println!("machine:       {} cores, {}, {} memory, kernel {}", m.nproc, m.cpu, m.memory, m.kernel);
    println!("open files:    {}", m.open_files);
    println!("ws-subprocess: {} ({}, {})", env!("CARGO_PKG_VERSION"), m.commit, m.rustc);
    println!("websocketd:    {}", m.websocketd);
    println!();
    println!("{:<58} {:>20} {:>20} {:>20}", "metric", "ws-subprocess", "websocketd", "raw relay");
    println!("{}", "-".repeat(121));
}

pub fn print_row(row: &Row) {
    let cell = |kind| row.cells.get(&kind).map_or("–".into(), |c: &Cell| short(&c.show()));
    println!(
        "{:<58} {:>20} {:>20} {:>20}",
        row.label,
        cell(Kind::WsSubprocess),
        cell(Kind::Websocketd),
        cell(Kind::Relay)
    );
    let _ = std::io::stdout().flush();
}

/// A cell cut to its column (failures in full below the table).
fn short(text: &str) -> String {
    if text.chars().count() > 20 { format!("{}…", text.chars().take(19).collect::<String>()) } else { text.into() }
}

pub fn print_footer(bench: &Bench, elapsed: Duration) {
    println!();
    for row in &bench.results.rows {
        for (kind, cell) in &row.cells {
            if let Cell::Failed(error) = cell {
                println!("{} / {}: {error}", row.label, kind.name());
            }
        }
    }
    for note in &bench.notes {
        println!("{note}");
    }
    for (kind, lines) in &bench.complaints {
        let mut seen = std::collections::BTreeSet::new();
        let lines: Vec<&String> = lines.iter().filter(|line| seen.insert(line.as_str())).collect();
        if !lines.is_empty() {
            println!("{kind} logged warnings or errors:");
            for line in lines.iter().take(2 * Complaints::KEEP) {
                println!("  {line}");
            }
        }
    }
    println!();
    for target in targets(&bench.results) {
        println!("target {:<60} {:<28} {}", target.what, target.measured, target.verdict());
    }
    println!("total time: {:.0} s", elapsed.as_secs_f64());
}

/// One target of issue 11 and how the run compares.
pub struct TargetCheck {
    pub what: &'static str,
    pub measured: String,
    pub met: Option<bool>,
}

impl TargetCheck {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    }
}

/// The targets, checked against `r`.
pub fn targets(r: &Results) -> Vec<TargetCheck> {
    use Kind::*;
    let ours = |m: Metric| r.get(m.0, WsSubprocess);
    let peer = |m: Metric| r.get(m.0, Websocketd);
    let relay = |m: Metric| r.get(m.0, Relay);
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let mut checks = Vec::new();
    let mut check = |what, measured: Option<String>, met: Option<bool>| {
        checks.push(TargetCheck { what, measured: measured.unwrap_or_else(|| "–".into()), met });
    };
    let idle = ours(IDLE_KIB);
    check("memory per idle session ≤ 16 KiB", idle.map(|v| format!("{} KiB", fmt(v))), idle.map(|v| v <= 16.0));
    let active = ours(ACTIVE_KIB);
    check("memory per active session ≤ 32 KiB", active.map(|v| format!("{} KiB", fmt(v))), active.map(|v| v <= 32.0));
    let fds = ours(IDLE_FDS);
    check("descriptors per pipe session ≤ 4", fds.map(|v| format!("{v:.2}")), fds.map(|v| v <= 4.05));
    let (failed, echo_failed, p99) = (ours(OPEN_FAILED), ours(ECHO_FAILED), ours(ACTIVE_P99));
    check(
        "all sessions at 1,000/s: 0 failures, echo p99 < 50 ms",
        match (failed, echo_failed, p99) {
            (Some(f), Some(e), Some(p)) => Some(format!("{} failed, p99 {} ms", f + e, fmt(p))),
            _ => None,
        },
        match (failed, echo_failed, p99) {
            (Some(f), Some(e), Some(p)) => Some(f == 0.0 && e == 0.0 && p < 50.0),
            _ => None,
        },
    );
    let (p50, p99) = (ratio(ours(FIRST_P50), peer(FIRST_P50)), ratio(ours(FIRST_P99), peer(FIRST_P99)));
    check(
        "connect → first byte p50 and p99 ≤ 0.6× websocketd",
        p50.zip(p99).map(|(a, b)| format!("{a:.2}× / {b:.2}×")),
        p50.zip(p99).map(|(a, b)| a <= 0.6 && b <= 0.6),
    );
    let live = ratio(ours(START_LIVE), ours(START_NONE));
    check(
        "session start with all sessions live ≤ 1.5× with none",
        live.map(|v| format!("{v:.2}×")),
        live.map(|v| v <= 1.5),
    );
    let (to_relay, to_peer) = (ratio(ours(PIPES), relay(PIPES)), ratio(ours(PIPES), peer(PIPES)));
    check(
        "stdout (pipes) ≥ 0.9× raw relay and ≥ 1.6× websocketd",
        to_relay.zip(to_peer).map(|(a, b)| format!("{a:.2}× / {b:.2}×")),
        to_relay.zip(to_peer).map(|(a, b)| a >= 0.9 && b >= 1.6),
    );
    let detached = ratio(ours(DETACHED), ours(PIPES));
    check(
        "detachable session throughput ≥ 0.8× plain",
        detached.map(|v| format!("{v:.2}×")),
        detached.map(|v| v >= 0.8),
    );
    let (serving, lost) = (ours(UPGRADE_MS), ours(LOST));
    check(
        "in-place upgrade with 1,000 live sessions: serving again < 1 s, none lost",
        serving.zip(lost).map(|(s, l)| format!("{} ms, {l:.0} lost", fmt(s))),
        serving.zip(lost).map(|(s, l)| s < 1000.0 && l == 0.0),
    );
    let rss = ours(RSS_BEFORE).zip(ours(RSS_AFTER));
    let fds = ours(FDS_BEFORE).zip(ours(FDS_AFTER));
    check(
        "after the upgrade: memory ≤ 1.1× and descriptors ≤ before",
        rss.zip(fds).map(|((rb, ra), (fb, fa))| format!("{} → {} MiB, {fb:.0} → {fa:.0}", fmt(rb), fmt(ra))),
        rss.zip(fds).map(|((rb, ra), (fb, fa))| ra <= 1.1 * rb && fa <= fb),
    );
    let (plain, kept) = (ours(PLAIN_KIB), ours(DETACHED_KIB));
    check(
        "detachable session memory ≤ plain + its 64 KiB history (+ 8 KiB)",
        plain.zip(kept).map(|(p, d)| format!("{} vs {} KiB", fmt(d), fmt(p))),
        plain.zip(kept).map(|(p, d)| d <= p + 72.0),
    );
    checks
}

const GENERATED_END: &str =
    "<!-- end of the generated part: what follows is kept when the bench rewrites this file -->";

const KEPT_DEFAULT: &str = "\n## What each optimisation bought\n\n(Not written yet.)\n";

/// Writes the markdown report (keeping what follows the generated part of
/// an existing one) and the chart.
pub fn write(bench: &Bench, m: &Machine, elapsed: Duration, markdown: &Path, svg: &Path) -> Result<(), String> {
    let r = &bench.results;
    let kept = std::fs::read_to_string(markdown)
        .ok()
        .and_then(|text| text.split_once(GENERATED_END).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| KEPT_DEFAULT.into());
    let mut md = String::new();
    let p = &bench.params;
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `cargo bench --bench comparison` on {} in {:.0} s{}; the part above the \
         closing marker is rewritten by every full run, so its numbers are a run's, not typed in. \
         How each row is measured: [`benches/README.md`](benches/README.md).\n\n",
        m.date,
        elapsed.as_secs_f64(),
        if p.smoke { " (smoke run: tiny sizes, meaningless numbers)" } else { "" }
    ));
    md.push_str("![ws-subprocess, websocketd and a raw relay side by side](docs/benchmarks.svg)\n\n");
    md.push_str("| machine | |\n|---|---|\n");
    md.push_str(&format!("| CPU | {} cores, {} |\n", m.nproc, m.cpu));
    md.push_str(&format!("| memory, kernel | {}, Linux {} |\n", m.memory, m.kernel));
    md.push_str(&format!("| open-file limit | {} |\n", m.open_files));
    md.push_str(&format!(
        "| ws-subprocess | {} at `{}`, release build, {}; flags `{}` |\n",
        env!("CARGO_PKG_VERSION"),
        m.commit,
        m.rustc,
        WS_SUBPROCESS_FLAGS.join(" ")
    ));
    md.push_str(&format!("| websocketd | {} |\n", m.websocketd));
    md.push_str(
        "| raw relay | in the bench process: the command's stdout copied to plain TCP with a 64 KiB \
         buffer, no WebSocket |\n\n",
    );
    md.push_str(&format!(
        "Sizes: {} MiB through pipes, {} MiB through a terminal, {} MiB echoed, {} first-byte \
         sessions, {} sessions for the rates, {} round trips; {} repetitions (3 for terminal, \
         detachable and echo throughput), median shown with the range. Scale: {} idle sessions, \
         {} in all opened at {}/s, each echoing 32 bytes once a second for {} s; {} starts timed \
         before and with all of them live. Upgrade: {} sessions, {} in-place upgrades in a row \
         (websocketd: one restart).\n\n",
        p.pipe_bytes >> 20,
        p.tty_bytes >> 20,
        p.echo_bytes >> 20,
        p.first_bytes,
        p.sessions,
        p.round_trips,
        p.repetitions,
        p.scale.idle,
        p.scale.total,
        p.scale.rate,
        p.scale.active.as_secs(),
        p.scale.probes,
        p.upgrade_sessions,
        p.upgrade_rounds
    ));
    md.push_str("## Targets\n\n| target | measured | |\n|---|---|---|\n");
    for t in targets(r) {
        md.push_str(&format!("| {} | {} | {} |\n", t.what, t.measured, t.verdict()));
    }
    md.push_str("\n## Results\n\n| metric | ws-subprocess | websocketd | raw relay |\n|---|---|---|---|\n");
    for row in &r.rows {
        let cell = |kind| row.cells.get(&kind).map_or("–".into(), |c: &Cell| c.show().replace('|', "\\|"));
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            row.label,
            cell(Kind::WsSubprocess),
            cell(Kind::Websocketd),
            cell(Kind::Relay)
        ));
    }
    if !bench.notes.is_empty() {
        md.push('\n');
        for note in &bench.notes {
            md.push_str(&format!("- {note}\n"));
        }
    }
    md.push('\n');
    md.push_str(GENERATED_END);
    md.push_str(&kept);
    std::fs::write(markdown, md).map_err(|e| format!("{}: {e}", markdown.display()))?;
    chart::draw(
        svg,
        &format!("ws-subprocess {} — {} cores, {}", env!("CARGO_PKG_VERSION"), m.nproc, m.date),
        &panels(r),
    )
}

fn panels(r: &Results) -> Vec<Panel> {
    let bars = |metrics: &[(Metric, Kind, &str)], unit: &str| {
        metrics
            .iter()
            .map(|(metric, kind, label)| {
                let value = r.get(metric.0, *kind);
                let text = match (value, r.cell(metric.0, *kind)) {
                    (Some(v), _) => format!("{} {unit}", fmt(v)),
                    (None, Some(Cell::Failed(_))) => "failed".into(),
                    _ => "not measured".into(),
                };
                Bar { label: label.to_string(), value, text, ours: *kind == Kind::WsSubprocess }
            })
            .collect()
    };
    use Kind::*;
    vec![
        Panel {
            title: "stdout through pipes (MiB/s, higher is better)".into(),
            bars: bars(
                &[
                    (PIPES, WsSubprocess, "ws-subprocess"),
                    (PIPES, Websocketd, "websocketd"),
                    (PIPES, Relay, "raw relay"),
                ],
                "MiB/s",
            ),
        },
        Panel {
            title: "server memory per idle session (KiB, lower is better)".into(),
            bars: bars(&[(IDLE_KIB, WsSubprocess, "ws-subprocess"), (IDLE_KIB, Websocketd, "websocketd")], "KiB"),
        },
        Panel {
            title: "connect → first byte, p99 (ms, lower is better)".into(),
            bars: bars(
                &[
                    (FIRST_P99, WsSubprocess, "ws-subprocess"),
                    (FIRST_P99, Websocketd, "websocketd"),
                    (FIRST_P99, Relay, "raw relay"),
                ],
                "ms",
            ),
        },
        Panel {
            title: "echo p99 with every session echoing (ms, lower is better)".into(),
            bars: bars(&[(ACTIVE_P99, WsSubprocess, "ws-subprocess"), (ACTIVE_P99, Websocketd, "websocketd")], "ms"),
        },
        Panel {
            title: "session start p50: none live / all live (ms)".into(),
            bars: bars(
                &[
                    (START_NONE, WsSubprocess, "ws-sub, none"),
                    (START_LIVE, WsSubprocess, "ws-sub, all live"),
                    (START_NONE, Websocketd, "websocketd, none"),
                    (START_LIVE, Websocketd, "websocketd, all"),
                ],
                "ms",
            ),
        },
        Panel {
            title: "1,000 live sessions: signal → serving again (ms); every websocketd session is lost".into(),
            bars: bars(
                &[(UPGRADE_MS, WsSubprocess, "ws-sub upgrade"), (UPGRADE_MS, Websocketd, "websocketd restart")],
                "ms",
            ),
        },
        Panel {
            title: "echo through cat (MiB/s, higher is better)".into(),
            bars: bars(
                &[
                    (ECHO_BULK, WsSubprocess, "ws-subprocess"),
                    (ECHO_BULK, Websocketd, "websocketd"),
                    (ECHO_BULK, Relay, "raw relay"),
                ],
                "MiB/s",
            ),
        },
    ]
}
