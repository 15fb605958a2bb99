//! Files and pictures in the browser terminal (SPEC §12), in a real
//! headless Chromium against the demo, with the real programs typed into
//! bash: lrzsz's `sz`/`rz` (ZMODEM) and trzsz's `tsz`/`trz`, 10 MB of random
//! bytes each way at 5 MB/s or more, the same SHA-256 at both ends; a file
//! dropped on the terminal; a Sixel picture drawn by `img2sixel` and a PNG
//! sent with the iTerm2 protocol; the title; a link; search; OSC 52
//! clipboard writes only where the page opts in; Unicode 11 widths (against
//! a page without them). And what the writer's live output alone may carry:
//! an observer tab gets a note, not the transfer's bytes, and starts no
//! transfer of its own; a reattach in the middle of a download gets a note
//! too (the page aborts the transfer); the recording gets a marker.
//!
//! Needs `chromium`, lrzsz, libsixel-bin, PyPI's trzsz and
//! `npm ci --prefix example/web` (scripts/test installs them all).
//! `example/web/transfer-test.mjs` drives the page and prints what it saw
//! as JSON; its screenshots (under target/tmp) are docs/transfer.png,
//! docs/images.png, docs/search.png, docs/links.png and docs/terminal.png
//! (`UPDATE_SCREENSHOTS=1` copies them there again; docs/terminal.png
//! wants fonts-noto-color-emoji and fonts-wqy-microhei, without which its
//! wide characters are boxes, still two columns wide).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Chromium and the transfers want the machine to themselves: one test at
/// a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 10 MB (MiB) of each file that must move at 5 MB/s.
const BIG: usize = 10 * 1024 * 1024;
/// The Sixel picture's one colour, as img2sixel's palette renders it
/// (255,128,0 becomes 97%,50%,0%).
const COLOUR: [u8; 3] = [247, 127, 0];
/// The iTerm2 picture's one colour (a PNG shows it as it is).
const ITERM_COLOUR: [u8; 3] = [0, 160, 255];

fn random_file(path: &Path, len: usize) {
    let mut bytes = vec![0u8; len];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut bytes).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A PPM picture of one colour (255,128,0) for img2sixel.
fn picture(path: &Path) {
    let (width, height) = (240, 120);
    let mut ppm = format!("P6\n{width} {height}\n255\n").into_bytes();
    for _ in 0..width * height {
        ppm.extend_from_slice(&[255, 128, 0]);
    }
    std::fs::write(path, ppm).unwrap();
}

/// A PNG picture of one colour for the iTerm2 protocol, 240 × 120 RGB: its
/// zlib stream is made of "stored" (uncompressed) deflate blocks.
fn png(path: &Path, colour: [u8; 3]) {
    let (width, height) = (240u32, 120u32);
    // Each row: filter 0 (none), then its pixels.
    let row: Vec<u8> = std::iter::once(0).chain(colour.iter().copied().cycle().take(3 * width as usize)).collect();
    let raw = row.repeat(height as usize);
    let mut zlib = vec![0x78, 0x01];
    let blocks = raw.chunks(0xffff).count();
    for (i, block) in raw.chunks(0xffff).enumerate() {
        let len = u16::try_from(block.len()).unwrap();
        zlib.push(u8::from(i + 1 == blocks)); // BFINAL, BTYPE 00
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (a, b) = raw.iter().fold((1u32, 0u32), |(a, b), &byte| {
        let a = (a + u32::from(byte)) % 65521;
        (a, (b + a) % 65521)
    });
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let crc32 = |bytes: &[u8]| {
        !bytes.iter().fold(!0u32, |crc, &byte| {
            (0..8).fold(crc ^ u32::from(byte), |c, _| if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 })
        })
    };
    let mut header = width.to_be_bytes().to_vec();
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], &header[..]), (b"IDAT", &zlib), (b"IEND", &[])] {
        png.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let start = png.len();
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        let crc = crc32(&png[start..]);
        png.extend_from_slice(&crc.to_be_bytes());
    }
    std::fs::write(path, png).unwrap();
}

/// A command's directory on PATH, or where pip put trzsz's scripts.
fn program_dir(program: &str) -> Option<PathBuf> {
    let found = std::process::Command::new("sh").args(["-c", &format!("command -v {program}")]).output().ok()?;
    if found.status.success() {
        let path = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
        // pyenv's shims re-exec through pyenv: find the real script.
        if !path.to_string_lossy().contains("/shims/") {
            return path.parent().map(Path::to_path_buf);
        }
    }
    let script = "import os, sysconfig\n\
                  for scheme in (None, os.name + '_user'):\n\
                  \x20   d = sysconfig.get_path('scripts', scheme) if scheme else sysconfig.get_path('scripts')\n\
                  \x20   if os.path.exists(os.path.join(d, 'tsz')): print(d); break";
    let pip = std::process::Command::new("python3").args(["-c", script]).output().ok()?;
    let dir = String::from_utf8_lossy(&pip.stdout).trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// What the tests need on this machine; a clear failure when it is not.
fn needs() -> PathBuf {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
    assert!(
        web.join("node_modules/playwright-core").is_dir() && web.join("node_modules/zmodem.js").is_dir(),
        "run `npm ci --prefix example/web` first (scripts/test does)"
    );
    for (program, package) in [("sz", "lrzsz"), ("rz", "lrzsz"), ("img2sixel", "libsixel-bin")] {
        assert!(program_dir(program).is_some(), "{program} is missing: apt-get install {package} (scripts/test does)");
    }
    program_dir("tsz").expect("trzsz's tsz is missing: python3 -m pip install trzsz (scripts/test does)")
}

/// The session's world: a HOME (bash's cwd, the files the session sends and
/// receives) and a directory of files to upload.
struct World {
    home: tempfile::TempDir,
    local: tempfile::TempDir,
    out: tempfile::TempDir,
    trzsz: PathBuf,
}

impl World {
    fn new(trzsz: PathBuf) -> Self {
        let (home, local, out) = (scratch(), scratch(), scratch());
        // An interactive bash reads .bashrc: start in HOME, a plain prompt
        // with an OSC 7777 in it (terminals ignore it; the driver counts
        // prompts by it).
        std::fs::write(home.path().join(".bashrc"), "cd \"$HOME\"\nPS1='\\[\\e]7777;\\a\\]$ '\n").unwrap();
        Self { home, local, out, trzsz }
    }

    async fn demo(&self, args: &[&str]) -> DemoProcess {
        let path = format!("{}:{}", self.trzsz.display(), std::env::var("PATH").unwrap_or_default());
        let home = self.home.path().to_str().unwrap();
        DemoProcess::start(args, &[("SHELL", "/bin/bash"), ("HOME", home), ("PATH", &path)]).await
    }

    /// Runs transfer-test.mjs against `demo` with `config` (and the
    /// directories) and returns its summary.
    async fn drive(&self, demo: &DemoProcess, mut config: Value) -> Value {
        let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("example/web");
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("transfer-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        config["url"] = json!(format!("http://{}/", demo.page));
        config["home"] = json!(self.home.path());
        config["local"] = json!(self.local.path());
        config["out"] = json!(self.out.path());
        config["shots"] = json!(shots);
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new("node")
                .arg(web.join("transfer-test.mjs"))
                .arg(config.to_string())
                .env("TERM", "dumb")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the browser test finishes within 5 minutes")
        .expect("node runs");
        assert!(
            output.status.success(),
            "browser test failed:\n{}\n{}\ndemo:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            demo.output()
        );
        let results: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(results["errors"], json!([]), "{results:#}");
        results
    }
}

/// Asserts that a transfer's summary shows the same bytes at `mbps_min` MB/s
/// or more; returns its MB/s.
fn moved(results: &Value, name: &str, bytes: usize, mbps_min: f64) -> f64 {
    let transfer = &results[name];
    assert_eq!(transfer["bytes"], json!(bytes), "{name}: {transfer}");
    assert_eq!(transfer["sha256"], transfer["expected"], "{name}: not the same bytes");
    let mbps = transfer["mbps"].as_f64().unwrap();
    assert!(mbps >= mbps_min, "{name}: {mbps:.1} MB/s, under {mbps_min} MB/s: {transfer}");
    mbps
}

#[tokio::test]
async fn files_pictures_title_links_and_search_in_chromium() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let world = World::new(needs());
    random_file(&world.home.path().join("big.bin"), BIG);
    random_file(&world.local.path().join("zmodem-up.bin"), BIG);
    random_file(&world.local.path().join("trzsz-up.bin"), BIG);
    picture(&world.home.path().join("picture.ppm"));
    png(&world.home.path().join("picture.png"), ITERM_COLOUR);
    // Wide characters over ASCII, for docs/terminal.png: with Unicode 11
    // widths the #s are one above the other.
    std::fs::write(world.home.path().join("widths.txt"), "w11: 👍👍 漢字 #\nw11: ab12 cd34 #\n").unwrap();
    let mut demo = world.demo(&[]).await;
    let config = json!({"mode": "writer", "colour": COLOUR, "itermColour": ITERM_COLOUR});
    let results = world.drive(&demo, config).await;

    // Every feature loaded (the clipboard only when the page opts in).
    let features = &results["features"];
    for feature in ["image", "links", "search", "unicode11", "title", "trzsz", "zmodem"] {
        assert_eq!(features[feature], true, "{feature} is off: {features} {}", results["console"]);
    }
    assert_eq!(features["clipboard"], false);

    // 10 MB each way, both protocols, the same bytes, at 5 MB/s or more.
    let rates: Vec<String> = ["sz", "tsz", "rz", "trz"]
        .iter()
        .map(|name| format!("{name} {:.1} MB/s", moved(&results, name, BIG, 5.0)))
        .collect();
    eprintln!("transfer rates: {}", rates.join(", "));
    let transfers = results["transfers"].as_array().unwrap();
    for (protocol, direction) in
        [("zmodem", "download"), ("trzsz", "download"), ("zmodem", "upload"), ("trzsz", "upload")]
    {
        assert!(
            transfers.iter().any(|t| t["protocol"] == protocol && t["direction"] == direction && t["state"] == "done"),
            "no finished {protocol} {direction}: {transfers:?}"
        );
    }

    // Dropped on the terminal: uploaded with trz.
    let dropped = &results["dropped"];
    assert_eq!(dropped["handled"], true, "{dropped}");
    assert_eq!(dropped["sha256"], dropped["expected"], "{dropped}");

    // The pictures are on the screen, each in its colour: Sixel and iTerm2.
    let pixels = results["sixel"]["pixels"].as_u64().unwrap();
    assert!(pixels > 10_000, "{pixels} pixels of the picture's colour on the screen");
    let pixels = results["iterm"]["pixels"].as_u64().unwrap();
    assert!(pixels > 10_000, "{pixels} pixels of the iTerm2 picture's colour on the screen");

    assert_eq!(results["title"], "ws-subprocess title 42");
    assert_eq!(results["link"]["pointer"], true, "{}", results["link"]);
    assert!(results["link"]["opened"].as_str().unwrap().ends_with("/linked-from-the-terminal"), "{}", results["link"]);
    assert_eq!(results["search"]["selection"], "needle-42");
    assert_eq!(results["search"]["api"], true);

    // OSC 52: the page without ?clipboard=1 left the clipboard as it was;
    // with it, the same printf put its text there.
    let clipboard = &results["clipboard"];
    assert_eq!(clipboard["before"], "before-52", "OSC 52 reached the clipboard without the opt-in: {clipboard}");
    assert_eq!(clipboard["features"]["clipboard"], true, "{clipboard}");
    assert_eq!(clipboard["after"], "copied-42", "{clipboard}");

    // docs/terminal.png, taken in that tab: its status line shows the
    // title and that the clipboard was written (before the screenshot and
    // after it), and the two #s are one above the other (👍👍 漢字 take
    // two columns each, as ab12 cd34 take one).
    let terminal = &results["terminal"];
    assert_eq!(terminal["title"], "vim notes-42.txt", "{terminal}");
    for bar in terminal["bar"].as_array().unwrap() {
        let bar = bar.as_str().unwrap();
        assert!(bar.contains("title: vim notes-42.txt"), "no title in the status line: {bar:?}");
        assert!(bar.contains("copied to the clipboard"), "no clipboard notice in the status line: {bar:?}");
    }
    assert_eq!(terminal["markers"], json!([15, 15]), "{terminal}");

    // Unicode 11: 👍 takes two columns, the # after it is in column 6; on
    // the bare page (Unicode 6) in column 5.
    let widths = &results["widths"];
    assert_eq!(widths["page"], json!({"version": "11", "emoji": 2, "marker": 6}), "{widths}");
    assert_eq!(widths["bare"], json!({"version": "6", "emoji": 1, "marker": 5}), "{widths}");

    // Without the optional packages the page works, each feature off with
    // one console line (an observer tab: no transfers to load either).
    let bare = &results["bare"];
    for feature in ["image", "links", "search", "unicode11", "trzsz", "zmodem", "clipboard"] {
        assert_eq!(bare["features"][feature], false, "{bare}");
    }
    assert_eq!(bare["off"].as_array().unwrap().len(), 4, "image, links, search, unicode11: {bare}");

    // The demo serves the peers' files, and nothing beside them.
    for (path, status) in [
        ("/assets/modules/zmodem.js/src/zsession.js", 200),
        ("/assets/modules/crc-32/crc32.js", 200),
        ("/assets/modules/trzsz/lib/trzsz.mjs", 200),
        ("/assets/modules/zmodem.js/src/../../trzsz/package.json", 404),
        ("/assets/modules/zmodem.js/src/%2e%2e/package.json", 404),
        ("/assets/modules/crc-32/package.json", 404),
        ("/assets/modules/crc-32/.hidden.js", 404),
        ("/assets/modules/trzsz/lib/trz.js", 404),
    ] {
        let (got, _, _) = http_request(demo.page, &format!("GET {path} HTTP/1.1")).await;
        assert_eq!(got, status, "{path}");
    }

    // The README's pictures: copied to docs/ when missing there, or with
    // UPDATE_SCREENSHOTS=1 (not on every run: each differs a little).
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("transfer-screenshots");
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let update = std::env::var_os("UPDATE_SCREENSHOTS").is_some_and(|v| v == "1");
    for shot in ["transfer.png", "images.png", "search.png", "links.png", "terminal.png"] {
        if update || !docs.join(shot).exists() {
            std::fs::copy(shots.join(shot), docs.join(shot)).unwrap();
        }
    }
    assert_eq!(demo.interrupt(Duration::from_secs(10)).await, Some(0), "{}", demo.output());
}

/// Needs the server to keep transfers to the writer's live output (SPEC
/// §12): until it does, this fails.
#[tokio::test]
async fn observers_replays_and_recordings_get_a_note_not_the_transfer() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let world = World::new(needs());
    let small = 2 * 1024 * 1024;
    random_file(&world.home.path().join("small.bin"), small);
    random_file(&world.home.path().join("big.bin"), BIG);
    random_file(&world.local.path().join("zmodem-small.bin"), small);
    random_file(&world.local.path().join("trzsz-small.bin"), small);
    random_file(&world.home.path().join("tiny.bin"), 64 * 1024);
    let records = scratch();
    let mut demo = world.demo(&["--record", records.path().to_str().unwrap()]).await;
    let results = world.drive(&demo, json!({"mode": "observer"})).await;

    // The writer moved its files.
    for name in ["sz", "tsz", "rz", "trz"] {
        let transfer = &results["moved"][name];
        assert_eq!(transfer["sha256"], transfer["expected"], "{name}: {transfer}");
    }
    // The watching tab has no transfer machinery and started none.
    let watcher = &results["watcher"];
    assert_eq!(results["watcherFeatures"]["trzsz"], false);
    assert_eq!(results["watcherFeatures"]["zmodem"], false);
    assert_eq!(watcher["started"], json!({"downloads": 0, "choosers": 0}), "{watcher}");
    assert_eq!(watcher["transfers"], json!([]), "{watcher}");

    // It received a note instead of each transfer's bytes (with a session
    // info naming the transfer), and none of the bytes.
    let notes: Vec<&str> = watcher["notes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for (protocol, direction) in
        [("zmodem", "download"), ("trzsz", "download"), ("zmodem", "upload"), ("trzsz", "upload")]
    {
        let note = format!("[ws-subprocess: {protocol} {direction} not shown here]");
        assert!(notes.contains(&note.as_str()), "the observer never saw {note:?}: {notes:?}");
        let info = watcher["infos"]
            .as_array()
            .unwrap()
            .iter()
            .any(|info| info["transfer"]["protocol"] == protocol && info["transfer"]["direction"] == direction);
        assert!(info, "no session info for the {protocol} {direction}: {}", watcher["infos"]);
    }
    assert_eq!(watcher["zmodemHeader"], false, "the observer received ZMODEM's bytes");
    assert_eq!(watcher["trzszMagic"], false, "the observer received trzsz's bytes");

    // A reattach with since=0 replays the finished transfers as notes and
    // starts none, though the page is a writer ready for transfers.
    let replay = &results["replay"];
    assert!(replay["url"].as_str().unwrap().contains("since=0"), "{replay}");
    assert_eq!(replay["started"], json!({"downloads": 0, "choosers": 0}), "{replay}");
    assert_eq!(replay["transfers"], json!([]), "{replay}");
    let screen = replay["screen"].as_str().unwrap();
    assert!(screen.contains("[ws-subprocess: zmodem download not shown here]"), "{screen}");
    assert!(screen.contains("[ws-subprocess: trzsz upload not shown here]"), "{screen}");
    assert!(screen.contains("replayed-42"), "{screen}");

    // A reattach cut a download: the replay has a note where its bytes
    // were, the page aborted it and said so, and sz ended.
    let reattach = &results["reattach"];
    assert!(!reattach["aborted"].as_array().unwrap().is_empty(), "{reattach}");
    let screen = reattach["screen"].as_str().unwrap();
    assert!(screen.contains("[file transfer aborted"), "{screen}");
    assert!(screen.contains("[ws-subprocess: zmodem download not shown here]"), "{screen}");

    // The recording holds markers, not the bytes.
    assert_eq!(demo.interrupt(Duration::from_secs(10)).await, Some(0), "{}", demo.output());
    let casts: Vec<PathBuf> = std::fs::read_dir(records.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cast"))
        .collect();
    assert_eq!(casts.len(), 1, "{casts:?}");
    let cast = std::fs::read_to_string(&casts[0]).unwrap();
    let events: Vec<Value> = cast.lines().skip(1).map(|line| serde_json::from_str(line).unwrap()).collect();
    let output: String = events.iter().filter(|e| e[1] == "o").filter_map(|e| e[2].as_str()).collect();
    assert!(!output.contains("**\u{18}B0"), "the recording holds ZMODEM's bytes");
    assert!(!output.contains("::TRZSZ:TRANSFER:"), "the recording holds trzsz's bytes");
    // It plays: asciinema's own reader gives the same output, which holds
    // what the shell printed and none of the megabytes moved.
    let played = asciinema_output(&casts[0]);
    assert_eq!(played, output.as_bytes());
    assert!(output.contains("finished-42"), "{output}");
    assert!(played.len() < 200_000, "{} bytes of output recorded", played.len());
    let markers: Vec<&str> = events.iter().filter(|e| e[1] == "m").filter_map(|e| e[2].as_str()).collect();
    for (protocol, direction) in
        [("zmodem", "download"), ("trzsz", "download"), ("zmodem", "upload"), ("trzsz", "upload")]
    {
        // "transfer: zmodem download 2097152 bytes", say.
        let label = format!("transfer: {protocol} {direction} ");
        let marked = markers.iter().any(|m| m.starts_with(&label) && m.ends_with(" bytes"));
        assert!(marked, "no marker {label:?}…: {markers:?}");
    }
    // Last, as it is the subtlest: the shell is back (its prompt shows)
    // once the cancelled sz has gone.
    assert_eq!(reattach["promptBack"], true, "no prompt after the aborted sz:\n{screen}");
}
