//! [`Recorder`]: a session written as an asciicast v2 file while it runs, so
//! `asciinema play` can follow it.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::spec::TerminalSize;

/// An asciicast v2 recording: a header line, then one JSON array per event
/// (`[seconds, "o", "output"]`, `"i"` input, `"r"` resize, `"m"` marker).
/// A recording that fails (disk full) is logged and stops; the session
/// does not.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    started: Instant,
    input: bool,
    state: Mutex<State>,
}

/// A recording between two programs; see [`Recorder::hand_over`].
#[derive(Debug)]
pub(crate) struct RecorderParts {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) started: Instant,
    pub(crate) input: bool,
    pub(crate) output_carry: Vec<u8>,
    pub(crate) input_carry: Vec<u8>,
}

#[derive(Debug)]
struct State {
    file: Option<BufWriter<File>>,
    /// The start of a UTF-8 sequence that the next output completes.
    output_carry: Vec<u8>,
    input_carry: Vec<u8>,
}

impl Recorder {
    /// Starts `<dir>/<name>-<UTC start>.cast` (mode 0600) with its header;
    /// input is recorded only when `input` is set.
    pub fn create(
        dir: &Path,
        name: &str,
        size: TerminalSize,
        command: &str,
        term: &str,
        input: bool,
    ) -> io::Result<Self> {
        let now = SystemTime::now();
        let stamp = humantime::format_rfc3339_seconds(now).to_string().replace([':', '-'], "");
        let path = dir.join(format!("{name}-{stamp}.cast"));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        let mut file = BufWriter::new(file);
        let timestamp = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let header = serde_json::json!({
            "version": 2,
            "width": size.cols,
            "height": size.rows,
            "timestamp": timestamp,
            "command": command,
            "env": {"TERM": term},
        });
        writeln!(file, "{header}")?;
        file.flush()?;
        Ok(Self {
            path,
            started: Instant::now(),
            input,
            state: Mutex::new(State { file: Some(file), output_carry: Vec::new(), input_carry: Vec::new() }),
        })
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops writing here and gives what another program needs to go on
    /// writing the same recording (an in-place upgrade): the file, its
    /// path, when it started and the partial UTF-8 sequences held back.
    /// `None` once the recording failed.
    pub(crate) fn hand_over(&self) -> Option<RecorderParts> {
        let mut state = self.lock();
        let file = state.file.take()?.into_inner().ok()?;
        Some(RecorderParts {
            file,
            path: self.path.clone(),
            started: self.started,
            input: self.input,
            output_carry: std::mem::take(&mut state.output_carry),
            input_carry: std::mem::take(&mut state.input_carry),
        })
    }

    /// The recording another program handed over, written on from where
    /// it stopped (its times still count from its start).
    pub(crate) fn resumed(parts: RecorderParts) -> Self {
        let RecorderParts { file, path, started, input, output_carry, input_carry } = parts;
        Self {
            path,
            started,
            input,
            state: Mutex::new(State { file: Some(BufWriter::new(file)), output_carry, input_carry }),
        }
    }

    /// Output of the session.
    pub fn output(&self, data: &[u8]) {
        let mut state = self.lock();
        let text = decode(&mut state.output_carry, data);
        self.write(&mut state, "o", &text);
    }

    /// Input of the session, if input is recorded.
    pub fn input(&self, data: &[u8]) {
        if !self.input {
            return;
        }
        let mut state = self.lock();
        let text = decode(&mut state.input_carry, data);
        self.write(&mut state, "i", &text);
    }

    /// The terminal changed size.
    pub fn resize(&self, size: TerminalSize) {
        let mut state = self.lock();
        self.write(&mut state, "r", &format!("{}x{}", size.cols, size.rows));
    }

    /// The marker of a process that exited with `status` (`oom`: killed by
    /// the out-of-memory killer): the reason of the Close frame that reports
    /// it, such as `exit 3`.
    pub fn exited(&self, status: std::process::ExitStatus, oom: bool) {
        self.marker(&crate::websocket::protocol::exit_close_frame(status, oom).reason);
    }

    /// A marker, such as how the session ended.
    pub fn marker(&self, text: &str) {
        let mut state = self.lock();
        self.write(&mut state, "m", text);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, state: &mut State, code: &str, data: &str) {
        if data.is_empty() && code != "m" {
            return;
        }
        let Some(file) = state.file.as_mut() else { return };
        let seconds = (self.started.elapsed().as_micros() as f64) / 1e6;
        let line = serde_json::json!([seconds, code, data]);
        // Each event is flushed, so a player can follow the file as it grows.
        if let Err(err) = writeln!(file, "{line}").and_then(|()| file.flush()) {
            tracing::warn!(file = %self.path.display(), cause = %err, "the recording failed and stops here");
            state.file = None;
        }
    }
}

/// `data` after what `carry` held, as text: a UTF-8 sequence cut at the end
/// waits in `carry` for the rest; bytes that are not UTF-8 become U+FFFD.
fn decode(carry: &mut Vec<u8>, data: &[u8]) -> String {
    carry.extend_from_slice(data);
    let mut text = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                rest = &[];
                break;
            }
            Err(err) => {
                let (valid, after) = rest.split_at(err.valid_up_to());
                text.push_str(std::str::from_utf8(valid).expect("checked"));
                match err.error_len() {
                    Some(bad) => {
                        text.push('\u{FFFD}');
                        rest = &after[bad..];
                    }
                    // Cut short: the rest comes with the next data.
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let kept = rest.to_vec();
    *carry = kept;
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_cut_between_reads_is_joined() {
        let mut carry = Vec::new();
        let e_acute = "é".as_bytes();
        assert_eq!(decode(&mut carry, &[b'a', e_acute[0]]), "a");
        assert_eq!(decode(&mut carry, &[e_acute[1], b'b']), "éb");
        assert_eq!(decode(&mut carry, &[0xff, b'c']), "\u{FFFD}c");
        assert!(carry.is_empty());
    }

    #[test]
    fn a_recording_is_asciicast_v2_written_as_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let size = TerminalSize { cols: 100, rows: 30 };
        let recorder = Recorder::create(dir.path(), "s1", size, "/bin/sh -c x", "xterm-256color", false).unwrap();
        recorder.output(b"hi\r\n");
        recorder.input(b"secret");
        recorder.resize(TerminalSize { cols: 80, rows: 24 });
        recorder.marker("exit 0");
        let text = std::fs::read_to_string(recorder.path()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["version"], 2);
        assert_eq!((lines[0]["width"].as_u64(), lines[0]["height"].as_u64()), (Some(100), Some(30)));
        assert_eq!(lines[1][1], "o");
        assert_eq!(lines[1][2], "hi\r\n");
        assert_eq!(lines[2][1], "r");
        assert_eq!(lines[2][2], "80x24");
        assert_eq!(lines[3][2], "exit 0");
        assert_eq!(lines.len(), 4, "no input events without record_input");
        let with_input = Recorder::create(dir.path(), "s2", size, "/bin/sh", "xterm-256color", true).unwrap();
        with_input.input(b"typed");
        let text = std::fs::read_to_string(with_input.path()).unwrap();
        let event: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        assert_eq!((event[1].as_str(), event[2].as_str()), (Some("i"), Some("typed")));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(recorder.path()).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
