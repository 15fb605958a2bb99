//! [`Detector`]: file transfers (ZMODEM, trzsz) recognized in a session's
//! output, so that only the writer who started one receives its bytes:
//! observers and replays get a one-line note, recordings a marker.
//!
//! Both protocols announce themselves in the output of the program on the
//! session's side: lrzsz's `sz` with a ZRQINIT hex header (`**␘B00…`), `rz`
//! with a ZRINIT one (`**␘B01…`), trzsz's `tsz`/`trz` with a line
//! `::TRZSZ:TRANSFER:S|R|D:…`. Their ends are read from the same output:
//! ZMODEM's ZFIN header (and the sender's `OO`), or a cancel (five CANs);
//! trzsz's closing `ESC 8 ESC [0J` at the start of a line (binary `#DATA`
//! payloads are skipped by their length, so file bytes never end a
//! transfer early). A transfer that goes quiet for [`GAP`] and then prints
//! something no transfer would, ends before it: a program that announced
//! a transfer nobody answered (a terminal without ZMODEM) falls back to
//! text without hiding the session's output for good.

use std::ops::Range;
use std::time::{Duration, Instant};

use memchr::memmem;

/// Which protocol a transfer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Protocol {
    Zmodem,
    Trzsz,
}

/// Which way the file goes, seen from the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// From the browser into the session (`rz`, `trz`).
    Upload,
    /// From the session to the browser (`sz`, `tsz`).
    Download,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Zmodem => "zmodem",
            Protocol::Trzsz => "trzsz",
        }
    }
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// A transfer's place in the session's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    /// Offset of its first byte.
    pub(crate) start: u64,
    /// Offset just past its last byte, once it is over.
    pub(crate) end: Option<u64>,
    pub(crate) protocol: Protocol,
    pub(crate) direction: Direction,
    /// The writer whose input came last when it started: the one it is
    /// for (`None` when unknown, as after a restart).
    pub(crate) owner: Option<u64>,
    /// The session's input count when it started (an upload's size is the
    /// input written while it runs).
    input_at_start: u64,
    /// Its receiver cancelled it.
    pub(crate) cancelled: bool,
}

impl Span {
    /// The one line observers and replays get instead of its bytes.
    pub(crate) fn note(&self) -> String {
        format!("\r\n[ws-subprocess: {} {} not shown here]\r\n", self.protocol.name(), self.direction.name())
    }

    /// The label of the recording's marker: which protocol, which way and
    /// how many bytes it moved (output for a download, input for an
    /// upload, as they crossed the terminal).
    pub(crate) fn marker(&self, input_total: u64) -> String {
        let bytes = match self.direction {
            Direction::Download => self.end.unwrap_or(self.start) - self.start,
            Direction::Upload => input_total.saturating_sub(self.input_at_start),
        };
        let how = if self.cancelled { " (cancelled)" } else { "" };
        format!("transfer: {} {} {bytes} bytes{how}", self.protocol.name(), self.direction.name())
    }
}

/// A part of a scanned chunk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Bytes outside any transfer (a range of the chunk); the rest of the
    /// chunk is transfer bytes.
    Shown(Range<usize>),
    /// A transfer starts here.
    Started(Span),
    /// A transfer ended here.
    Ended(Span),
}

/// How long a transfer may be quiet before text that no transfer would
/// print ends it.
pub(crate) const GAP: Duration = Duration::from_secs(10);

/// The longest start pattern, less one: what is kept of the output before a
/// chunk to find a start cut between two chunks.
const TAIL: usize = 24;

const ZMODEM_START: &[u8] = b"**\x18B0";
const TRZSZ_START: &[u8] = b"::TRZSZ:TRANSFER:";
/// trzsz saves the cursor just before its announcement.
const SAVE_CURSOR: &[u8] = b"\x1b7";
/// trzsz's last words: restore the cursor, clear below.
const TRZSZ_END: &[u8] = b"\x1b8\x1b[0J";
const TRZSZ_DATA: &[u8] = b"#DATA:";
/// The longest binary `#DATA` payload taken as one (trzsz's largest
/// buffer, every byte escaped).
const MAX_PAYLOAD: u64 = 20 << 20;
/// A ZFIN hex header: `**`, ZDLE, `B`, type 08, eight hex digits of
/// flags, four of CRC, CR, LF (lrzsz sets LF's high bit).
const ZFIN: &[u8] = b"**\x18B08";
const ZFIN_LEN: usize = ZFIN.len() + 12 + 2;
const CAN: u8 = 0x18;

/// Where a transfer's output stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Idle,
    Zmodem { matched: usize, cans: usize, after: ZmodemAfter },
    Trzsz(Line),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZmodemAfter {
    /// Frames flow.
    Frames,
    /// A ZFIN went out: the sender's `OO` (this many of it seen), or the
    /// ZFIN again, may follow; anything else is past the end.
    Over(usize),
    /// Cancelled: the CANs and backspaces that follow are still its own,
    /// and then what drains.
    Cancelled,
    /// The receiver cancelled: the sender's data still in flight is its
    /// own, up to its own CANs or to text after the last ZDLE escape.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// At a line's start, with its first bytes (at most a few).
    Start(Vec<u8>),
    /// Inside a line, up to its newline.
    Rest,
    /// The length of a binary `#DATA:` payload, being read.
    Length(u64),
    /// A binary payload, this many bytes of it left.
    Binary(u64),
}

/// Finds transfers in output, chunk after chunk.
#[derive(Debug)]
pub(crate) struct Detector {
    mode: Mode,
    open: Option<Span>,
    /// The last bytes before the chunk, while no transfer runs.
    tail: Vec<u8>,
    /// When the open transfer last printed.
    last: Option<Instant>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

impl Detector {
    pub(crate) fn new() -> Self {
        Self { mode: Mode::Idle, open: None, tail: Vec::new(), last: None }
    }

    /// The transfer running, if one is.
    pub(crate) fn open(&self) -> Option<&Span> {
        self.open.as_ref()
    }

    /// Scans `data`, the output at offset `at`, read at `now`: which of its
    /// bytes belong to transfers, and where transfers end. `owner` is the
    /// writer a transfer starting here is for; `input_total` the session's
    /// input count so far.
    pub(crate) fn scan(
        &mut self,
        at: u64,
        data: &[u8],
        now: Instant,
        owner: Option<u64>,
        input_total: u64,
    ) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut pos = 0;
        // A transfer quiet for long that now prints text ends before it.
        if self.open.is_some()
            && self.last.is_some_and(|last| now.duration_since(last) >= GAP)
            && self.ends_after_quiet(data)
        {
            pieces.push(Piece::Ended(self.finish(at)));
        }
        while pos < data.len() {
            if self.open.is_none() {
                match self.find_start(&data[pos..]) {
                    Some((found, protocol, direction)) => {
                        let start = pos + found;
                        if start > pos {
                            pieces.push(Piece::Shown(pos..start));
                        }
                        let span = Span {
                            start: at + start as u64,
                            end: None,
                            protocol,
                            direction,
                            owner,
                            input_at_start: input_total,
                            cancelled: false,
                        };
                        self.mode = match protocol {
                            Protocol::Zmodem => Mode::Zmodem { matched: 0, cans: 0, after: ZmodemAfter::Frames },
                            Protocol::Trzsz => Mode::Trzsz(Line::Rest),
                        };
                        pieces.push(Piece::Started(span.clone()));
                        self.open = Some(span);
                        self.tail.clear();
                        pos = start;
                    }
                    None => {
                        pieces.push(Piece::Shown(pos..data.len()));
                        self.keep_tail(&data[pos..]);
                        pos = data.len();
                    }
                }
                continue;
            }
            // The announcement itself is part of it: skip past the pattern.
            let (used, over) = self.step(&data[pos..]);
            pos += used;
            if over {
                pieces.push(Piece::Ended(self.finish(at + pos as u64)));
            }
        }
        if self.open.is_some() && !data.is_empty() {
            self.last = Some(now);
        }
        pieces
    }

    /// The session's input cancelled the running ZMODEM transfer (its
    /// receiver gave up). The sender answers with CANs of its own, or stops
    /// in the middle of its data and exits without a word; what it had
    /// written still comes. So the transfer drains: its bytes go on to its
    /// own CANs, or to where text follows the last ZDLE escape of a chunk
    /// (escaped data holds one every few dozen bytes). Whether one was
    /// running.
    pub(crate) fn cancelled(&mut self) -> bool {
        match &mut self.mode {
            Mode::Zmodem { after, matched, cans } => {
                *after = ZmodemAfter::Draining;
                (*matched, *cans) = (0, 0);
                if let Some(span) = self.open.as_mut() {
                    span.cancelled = true;
                }
                true
            }
            _ => false,
        }
    }

    /// Whether `data`, coming after a quiet [`GAP`], is text no transfer
    /// would print: its first bytes are all printable (or whitespace, or
    /// ESC), which a ZMODEM data stream or binary trzsz payload almost
    /// never is (16 random bytes: about one in three million), and not a
    /// transfer's own text (a ZMODEM header, trzsz's base64 lines).
    fn ends_after_quiet(&self, data: &[u8]) -> bool {
        let head = &data[..data.len().min(16)];
        let text = !head.is_empty() && printable(head);
        let own = match &self.mode {
            Mode::Zmodem { .. } => head.starts_with(b"*") || head.starts_with(b"O"),
            // trzsz's lines are base64 after `#TYPE:`; its end is `ESC 8`.
            Mode::Trzsz(_) => {
                head.iter().all(|&b| b.is_ascii_alphanumeric() || b"+/=#:\n".contains(&b)) || head.starts_with(b"\x1b8")
            }
            Mode::Idle => true,
        };
        text && !own
    }

    fn finish(&mut self, end: u64) -> Span {
        let mut span = self.open.take().expect("an open transfer");
        span.end = Some(end.max(span.start));
        self.mode = Mode::Idle;
        self.last = None;
        span
    }

    fn keep_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - TAIL..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(TAIL);
            self.tail.drain(..excess);
        }
    }

    /// The first announcement in `data` (or cut between the tail and it):
    /// where its transfer starts in `data` (0 when it began before).
    fn find_start(&self, data: &[u8]) -> Option<(usize, Protocol, Direction)> {
        // Cut between chunks: the tail and the first bytes, joined.
        if !self.tail.is_empty() {
            let head = &data[..data.len().min(TAIL + 2)];
            let mut buffer = [0u8; 2 * TAIL + 2];
            buffer[..self.tail.len()].copy_from_slice(&self.tail);
            buffer[self.tail.len()..self.tail.len() + head.len()].copy_from_slice(head);
            let joined = &buffer[..self.tail.len() + head.len()];
            if let Some((found, protocol, direction)) = first_start(joined)
                && found < self.tail.len()
            {
                return Some((0, protocol, direction));
            }
        }
        first_start(data)
    }

    /// Runs the open transfer over `data`: how many of its bytes are the
    /// transfer's, and whether it ended after them.
    fn step(&mut self, data: &[u8]) -> (usize, bool) {
        let download = self.open.as_ref().is_some_and(|span| span.direction == Direction::Download);
        if let Mode::Zmodem { after: after @ ZmodemAfter::Draining, .. } = &mut self.mode {
            // The sender's own cancel ends it as any cancel does.
            let Some(run) = memmem::find(data, &[CAN; 5]) else {
                return drained(data).map_or((data.len(), false), |end| (end, true));
            };
            *after = ZmodemAfter::Cancelled;
            let (used, over) = self.step(&data[run..]);
            return (run + used, over);
        }
        match &mut self.mode {
            Mode::Idle => (0, true),
            Mode::Zmodem { matched, cans, after } => {
                let mut i = 0;
                while i < data.len() {
                    // Between frames' ends only `*` (a header) and CAN (a
                    // cancel) matter: jump to the next one.
                    if *matched == 0 && *after == ZmodemAfter::Frames {
                        let skip = memchr::memchr2(b'*', CAN, &data[i..]).unwrap_or(data.len() - i);
                        if skip > 0 {
                            *cans = 0;
                            i += skip;
                            continue;
                        }
                    }
                    let byte = data[i];
                    i += 1;
                    match *after {
                        ZmodemAfter::Cancelled => {
                            if byte == CAN || byte == 0x08 {
                                continue;
                            }
                            // lrzsz writes its CANs at once, and what its
                            // output buffer still held may follow: it drains.
                            *after = ZmodemAfter::Draining;
                            let from = i - 1;
                            return drained(&data[from..]).map_or((data.len(), false), |end| (from + end, true));
                        }
                        ZmodemAfter::Over(seen) => {
                            // Only a sender says it: after an upload's ZFIN
                            // (rz's), an `O` is output.
                            if byte == b'O' && seen < 2 && download {
                                *after = ZmodemAfter::Over(seen + 1);
                                if seen + 1 == 2 {
                                    return (i, true);
                                }
                                continue;
                            }
                            // The ZFIN again (the other end was slow to
                            // answer), or whatever comes next: the end.
                            let rest = &data[i - 1..];
                            let seen_of_zfin = rest.len().min(ZFIN.len());
                            if seen > 0 || rest[..seen_of_zfin] != ZFIN[..seen_of_zfin] {
                                return (i - 1, true);
                            }
                            *after = ZmodemAfter::Frames;
                        }
                        ZmodemAfter::Frames | ZmodemAfter::Draining => {}
                    }
                    *cans = if byte == CAN { *cans + 1 } else { 0 };
                    if *cans >= 5 {
                        *after = ZmodemAfter::Cancelled;
                        continue;
                    }
                    *matched = zfin_step(*matched, byte);
                    if *matched == ZFIN_LEN {
                        // The sender says `OO` after the last ZFIN; either
                        // end may repeat its ZFIN.
                        *matched = 0;
                        *after = ZmodemAfter::Over(0);
                    }
                }
                (data.len(), false)
            }
            Mode::Trzsz(line) => {
                let mut i = 0;
                while i < data.len() {
                    let byte = data[i];
                    match line {
                        Line::Rest => {
                            match memchr::memchr(b'\n', &data[i..]) {
                                Some(newline) => {
                                    i += newline + 1;
                                    *line = Line::Start(Vec::new());
                                }
                                None => i = data.len(),
                            }
                            continue;
                        }
                        Line::Binary(left) => {
                            let take = (*left).min((data.len() - i) as u64);
                            i += take as usize;
                            *left -= take;
                            if *left == 0 {
                                *line = Line::Start(Vec::new());
                            }
                            continue;
                        }
                        Line::Length(length) => {
                            match byte {
                                b'0'..=b'9' => *length = length.saturating_mul(10).saturating_add((byte - b'0') as u64),
                                // A payload is at most trzsz's 10 MiB buffer,
                                // escaped: a larger length is no payload's.
                                b'\n' if *length <= MAX_PAYLOAD => {
                                    *line = if *length == 0 { Line::Start(Vec::new()) } else { Line::Binary(*length) }
                                }
                                b'\n' => *line = Line::Start(Vec::new()),
                                _ => *line = Line::Rest,
                            }
                            i += 1;
                            continue;
                        }
                        Line::Start(head) => {
                            head.push(byte);
                            i += 1;
                            if head.starts_with(b"\x1b8") {
                                // The end: with as much of the clear as follows.
                                if TRZSZ_END.starts_with(head) {
                                    if head.len() == TRZSZ_END.len() {
                                        return (i, true);
                                    }
                                    continue;
                                }
                                return (i - 1, true);
                            }
                            if TRZSZ_END.starts_with(head) || TRZSZ_DATA.starts_with(head) {
                                continue;
                            }
                            if head.starts_with(TRZSZ_DATA) && head.len() == TRZSZ_DATA.len() + 1 {
                                // `#DATA:` and a digit: a binary payload's length.
                                *line = match byte {
                                    b'0'..=b'9' => Line::Length((byte - b'0') as u64),
                                    b'\n' => Line::Start(Vec::new()),
                                    _ => Line::Rest,
                                };
                                continue;
                            }
                            *line = if byte == b'\n' { Line::Start(Vec::new()) } else { Line::Rest };
                        }
                    }
                }
                (data.len(), false)
            }
        }
    }
}

/// Whether input `data`, after `run` CANs that ended the input before it,
/// cancels a ZMODEM transfer (five CANs in a row); and the CANs that end
/// it, for the next input.
pub(crate) fn cancels(run: usize, data: &[u8]) -> (bool, usize) {
    // From CAN to CAN (an upload's escaped data holds one every few dozen
    // bytes), not byte by byte.
    let (mut run, mut next, mut cancels) = (run, 0, false);
    for at in memchr::memchr_iter(CAN, data) {
        run = if at == next { run + 1 } else { 1 };
        next = at + 1;
        cancels |= run >= 5;
    }
    (cancels, if next == data.len() { run } else { 0 })
}

/// Where a cancelled sender's data in `data` ends: where text (see
/// [`is_text`]) begins after its last ZDLE escape (escaped data holds one
/// every few dozen bytes), or at the start of a chunk with no escape that
/// is text; `None` while it still looks like data.
fn drained(data: &[u8]) -> Option<usize> {
    let Some(last) = memchr::memrchr(CAN, data) else {
        return is_text(data).then_some(0);
    };
    ((last + 2).min(data.len())..data.len()).find(|&at| is_text(&data[at..]))
}

/// Whether `data` starts as text a terminal prints: its first 16 bytes
/// printable (random data is, one time in three million), or all of it, at
/// least four bytes holding a line end or an escape (data ending so: a few
/// times in a thousand).
fn is_text(data: &[u8]) -> bool {
    match data.get(..16) {
        Some(head) => printable(head),
        None => data.len() >= 4 && printable(data) && data.iter().any(|b| matches!(b, b'\r' | b'\n' | 0x1b)),
    }
}

/// Whether all of `bytes` are printable ASCII, whitespace, BEL, BS or ESC
/// (what a prompt or a title is made of).
fn printable(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| (0x20..0x7f).contains(&b) || matches!(b, b'\r' | b'\n' | b'\t' | 0x07 | 0x08 | 0x1b))
}

/// One more byte into the ZFIN matcher that had matched `matched` bytes.
fn zfin_step(matched: usize, byte: u8) -> usize {
    let fits = match matched {
        n if n < ZFIN.len() => byte == ZFIN[n],
        n if n < ZFIN.len() + 12 => byte.is_ascii_hexdigit(),
        n if n == ZFIN.len() + 12 => byte == b'\r',
        _ => byte == b'\n' || byte == 0x8a,
    };
    match (fits, byte) {
        (true, _) => matched + 1,
        // `***`: still two stars.
        (false, b'*') if matched <= 2 => matched.min(1) + 1,
        (false, b'*') => 1,
        (false, _) => 0,
    }
}

/// The first announcement in `data`: where its transfer starts, which
/// protocol and which way.
fn first_start(data: &[u8]) -> Option<(usize, Protocol, Direction)> {
    let zmodem = memmem::find_iter(data, ZMODEM_START).find_map(|at| {
        let direction = match data.get(at + ZMODEM_START.len())? {
            b'0' => Direction::Download,
            b'1' => Direction::Upload,
            _ => return None,
        };
        Some((at, Protocol::Zmodem, direction))
    });
    let trzsz = memmem::find_iter(data, TRZSZ_START).find_map(|at| {
        let direction = match (data.get(at + TRZSZ_START.len())?, data.get(at + TRZSZ_START.len() + 1)?) {
            (b'S', b':') => Direction::Download,
            (b'R' | b'D', b':') => Direction::Upload,
            _ => return None,
        };
        // trzsz-go puts a BEL between them.
        let before = &data[..at];
        let start = if before.ends_with(SAVE_CURSOR) {
            at - SAVE_CURSOR.len()
        } else if before.ends_with(b"\x1b7\x07") {
            at - SAVE_CURSOR.len() - 1
        } else {
            at
        };
        Some((start, Protocol::Trzsz, direction))
    });
    match (zmodem, trzsz) {
        (Some(z), Some(t)) => Some(if z.0 <= t.0 { z } else { t }),
        (z, t) => z.or(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(data: &[u8], pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            if let Piece::Shown(range) = piece {
                out.extend_from_slice(&data[range.clone()]);
            }
        }
        out
    }

    fn started_in(pieces: &[Piece]) -> Option<Span> {
        pieces.iter().find_map(|p| if let Piece::Started(span) = p { Some(span.clone()) } else { None })
    }

    fn ended(pieces: &[Piece]) -> Vec<Span> {
        pieces.iter().filter_map(|p| if let Piece::Ended(span) = p { Some(span.clone()) } else { None }).collect()
    }

    const SZ: &[u8] = b"rz\r**\x18B00000000000000\r\x8a\x11*\x18C\x04\x00\x00\x00\x00\xddQ\xa23f.bin\x00200\x00\x18k\x00\x18X**\x18B08\x01\x02**\x18B0800000000022d\r\x8aOO";
    const RZ: &[u8] = b"rz waiting to receive.**\x18B0100000023be50\r\x8a\x11**\x18B0900000000a87c\r\x8a\x11**\x18B0800000000022d\r\x8a";

    #[test]
    fn a_zmodem_download_is_hidden_from_its_header_to_the_senders_oo() {
        let mut detector = Detector::new();
        let mut data = b"$ sz f.bin\r\n".to_vec();
        data.extend_from_slice(SZ);
        data.extend_from_slice(b"$ ");
        let pieces = detector.scan(100, &data, Instant::now(), Some(7), 0);
        let started = started_in(&pieces);
        assert_eq!(shown(&data, &pieces), b"$ sz f.bin\r\nrz\r$ ");
        let start = 100 + b"$ sz f.bin\r\nrz\r".len() as u64;
        let started = started.unwrap();
        assert_eq!(
            (started.start, started.protocol, started.direction, started.owner),
            (start, Protocol::Zmodem, Direction::Download, Some(7))
        );
        let ended = ended(&pieces);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].end, Some(100 + data.len() as u64 - 2));
        assert_eq!(ended[0].marker(0), format!("transfer: zmodem download {} bytes", SZ.len() - 3));
        assert!(detector.open().is_none());
    }

    #[test]
    fn byte_by_byte_finds_the_same_transfer() {
        let mut data = b"before ".to_vec();
        data.extend_from_slice(SZ);
        data.extend_from_slice(b" after");
        let mut detector = Detector::new();
        let (mut out, mut spans) = (Vec::new(), Vec::new());
        for (i, byte) in data.iter().enumerate() {
            let pieces = detector.scan(i as u64, std::slice::from_ref(byte), Instant::now(), None, 0);
            out.extend(shown(std::slice::from_ref(byte), &pieces));
            spans.extend(ended(&pieces));
        }
        // The announcement was cut: what came before its last bytes was
        // already out.
        assert!(out.ends_with(b" after"), "{:?}", String::from_utf8_lossy(&out));
        assert!(memmem::find(&out, b"B08").is_none());
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].end, Some(data.len() as u64 - 6));
    }

    #[test]
    fn a_zmodem_upload_ends_at_the_receivers_zfin() {
        let mut detector = Detector::new();
        let mut data = RZ.to_vec();
        data.extend_from_slice(b"\r\n$ ");
        let pieces = detector.scan(0, &data, Instant::now(), None, 1000);
        let started = started_in(&pieces);
        assert_eq!(started.unwrap().direction, Direction::Upload);
        assert_eq!(shown(&data, &pieces), b"rz waiting to receive.\r\n$ ");
        let span = &ended(&pieces)[0];
        assert_eq!(span.marker(1000 + 4096), "transfer: zmodem upload 4096 bytes");
    }

    #[test]
    fn a_repeated_zfin_is_the_transfers_and_a_star_after_it_is_not() {
        let mut detector = Detector::new();
        let mut data = RZ.to_vec();
        data.extend_from_slice(b"**\x18B0800000000022d\r\x8a* prompt");
        let pieces = detector.scan(0, &data, Instant::now(), None, 0);
        assert_eq!(shown(&data, &pieces), b"rz waiting to receive.* prompt");
        // Cut after the ZFIN: the end waits for what comes next.
        let mut detector = Detector::new();
        let pieces = detector.scan(0, RZ, Instant::now(), None, 0);
        assert!(ended(&pieces).is_empty());
        let pieces = detector.scan(RZ.len() as u64, b"$ ", Instant::now(), None, 0);
        assert_eq!(ended(&pieces)[0].end, Some(RZ.len() as u64));
    }

    #[test]
    fn after_an_uploads_zfin_an_o_is_output() {
        let mut detector = Detector::new();
        let mut data = RZ.to_vec();
        data.extend_from_slice(b"OK\r\n");
        let pieces = detector.scan(0, &data, Instant::now(), None, 0);
        assert_eq!(shown(&data, &pieces), b"rz waiting to receive.OK\r\n");
    }

    #[test]
    fn a_cancelled_zmodem_transfer_ends_after_its_cans() {
        let mut detector = Detector::new();
        let data = b"**\x18B00000000000000\r\x8a\x11\x18\x18\x18\x18\x18\x18\x18\x18\x08\x08\x08\x08\x08\r\n$ ";
        let pieces = detector.scan(0, data, Instant::now(), None, 0);
        assert_eq!(shown(data, &pieces), b"\r\n$ ");
        assert_eq!(ended(&pieces).len(), 1);
        // What lrzsz's output buffer still held may come after its CANs.
        let mut detector = Detector::new();
        let data = b"**\x18B00000000000000\r\x8a\x11\x18\x18\x18\x18\x18\x08\x08h\xa7\x06k\x18\xd0after-42\r\n";
        let pieces = detector.scan(0, data, Instant::now(), None, 0);
        assert_eq!(shown(data, &pieces), b"after-42\r\n");
    }

    #[test]
    fn five_cans_of_input_in_a_row_cancel_even_across_messages() {
        assert_eq!(cancels(0, b"ab\x18\x18\x18"), (false, 3));
        assert_eq!(cancels(3, b"\x18\x18\x08\x08"), (true, 0));
        assert_eq!(cancels(0, b"\x18X\x18\x18\x18\x18"), (false, 4));
    }

    #[test]
    fn a_cancelled_download_drains_to_the_text_after_its_last_escape() {
        let header = b"**\x18B00000000000000\r\x8a\x11*\x18Cdata";
        // sz stops in the middle of its data; the shell's prompt follows.
        let mut detector = Detector::new();
        detector.scan(0, header, Instant::now(), None, 0);
        assert!(detector.cancelled());
        let tail = b"\xbd\x18Q\x93\x01\x18i\xa7\x1b[?2004h$ ";
        let pieces = detector.scan(header.len() as u64, tail, Instant::now(), None, 0);
        assert_eq!(shown(tail, &pieces), b"\x1b[?2004h$ ");
        let span = &ended(&pieces)[0];
        assert_eq!(span.end, Some(header.len() as u64 + 8));
        assert!(span.marker(0).ends_with(" bytes (cancelled)"), "{}", span.marker(0));
        // Data with no text after it drains on, chunk after chunk.
        let mut detector = Detector::new();
        detector.scan(0, header, Instant::now(), None, 0);
        detector.cancelled();
        let pieces = detector.scan(50, b"\xbd\x18Q\x93\x01\xfe\x02", Instant::now(), None, 0);
        assert!(ended(&pieces).is_empty() && shown(b"1234567", &pieces).is_empty());
        // Or sz answers with its own CANs.
        let data = b"\x01\x18\x18\x18\x18\x18\x18\x08\x08\x1b[?2004h$ ";
        let pieces = detector.scan(57, data, Instant::now(), None, 0);
        assert_eq!(shown(data, &pieces), b"\x1b[?2004h$ ");
        assert!(detector.open().is_none() && !detector.cancelled());
    }

    #[test]
    fn a_transfer_quiet_for_long_ends_only_at_text() {
        let t0 = Instant::now();
        // A ZMODEM download whose writer stalled: the next chunk comes late,
        // in the middle of its data. Still the transfer's.
        let mut detector = Detector::new();
        detector.scan(0, b"**\x18B00000000000000\r\x8a\x11*\x18Cdata", t0, None, 0);
        let data = b"\x8f\x01\xfa garbage \x18X\x93";
        let pieces = detector.scan(40, data, t0 + GAP * 6, None, 0);
        assert!(shown(data, &pieces).is_empty() && ended(&pieces).is_empty());
        // trzsz killed in the middle of a binary payload; the prompt sets
        // the title first.
        let mut detector = Detector::new();
        detector.scan(0, b"::TRZSZ:TRANSFER:S:1.1.7:1234:0\r\n#DATA:99999\n\x01\x02", t0, None, 0);
        let prompt = b"\x1b]0;user@host: ~\x07$ ";
        let pieces = detector.scan(50, prompt, t0 + GAP, None, 0);
        assert_eq!(shown(prompt, &pieces), prompt);
        // Its base64 lines after a stall are still its own.
        let mut detector = Detector::new();
        detector.scan(0, b"::TRZSZ:TRANSFER:S:1.1.7:1234:0\r\n#DATA:eJx", t0, None, 0);
        let pieces = detector.scan(40, b"jYGBkAgAAFQAF\n#MD5:eJ", t0 + GAP, None, 0);
        assert!(ended(&pieces).is_empty());
        // A length no payload has is not one.
        let mut detector = Detector::new();
        let forged = b"\x1b7::TRZSZ:TRANSFER:S:1:1:0\r\n#DATA:99999999999999\n\x1b8\x1b[0J$ ";
        let pieces = detector.scan(0, forged, t0, None, 0);
        assert_eq!(shown(forged, &pieces), b"$ ");
    }

    #[test]
    fn trzsz_gos_announcement_keeps_its_bell_inside() {
        let mut detector = Detector::new();
        let data = b"$ tsz f\r\n\x1b7\x07::TRZSZ:TRANSFER:S:1.1.6:0000000001234\r\n";
        let pieces = detector.scan(0, data, Instant::now(), None, 0);
        assert_eq!(shown(data, &pieces), b"$ tsz f\r\n");
    }

    #[test]
    fn a_transfer_nobody_answers_ends_at_text_after_a_quiet_gap() {
        let mut detector = Detector::new();
        let t0 = Instant::now();
        detector.scan(0, b"rz waiting to receive.**\x18B0100000023be50\r\x8a\x11", t0, None, 0);
        // rz repeats its header: still the transfer.
        let pieces = detector.scan(40, b"**\x18B0100000023be50\r\x8a\x11", t0 + GAP, None, 0);
        assert!(ended(&pieces).is_empty());
        // Then falls back to XMODEM's `C` after a while: text ends it.
        let pieces = detector.scan(61, b"C", t0 + GAP * 3, None, 0);
        assert_eq!(ended(&pieces)[0].end, Some(61));
        assert_eq!(shown(b"C", &pieces), b"C");
    }

    #[test]
    fn trzsz_is_hidden_from_its_announcement_to_its_last_words() {
        let mut detector = Detector::new();
        let mut data = b"$ tsz f\r\n\x1b7::TRZSZ:TRANSFER:S:1.1.7:0000000001234:0\r\n".to_vec();
        data.extend_from_slice(b"#CFG:eJyrVg==\n#NUM:1\n#NAME:eJxLy0\n#SIZE:4\n#DATA:eJxjYGBkAgAAFQAF\n");
        // A binary payload holding what would end it as text.
        data.extend_from_slice(b"#DATA:8\n\x1b8\x1b[0J\n#\n#MD5:eJ\n");
        let mid = data.len();
        data.extend_from_slice(b"\x1b8\x1b[0JSaved 1 file to /tmp\r\n\x1b[?25h$ ");
        // In two chunks, cut inside the binary payload.
        let (first, second) = data.split_at(mid - 12);
        let pieces = detector.scan(0, first, Instant::now(), None, 0);
        let started = started_in(&pieces);
        let started = started.unwrap();
        assert_eq!((started.start, started.protocol, started.direction), (9, Protocol::Trzsz, Direction::Download));
        assert_eq!(shown(first, &pieces), b"$ tsz f\r\n");
        let pieces = detector.scan(first.len() as u64, second, Instant::now(), None, 0);
        assert_eq!(shown(second, &pieces), b"Saved 1 file to /tmp\r\n\x1b[?25h$ ");
        assert_eq!(ended(&pieces)[0].end, Some(mid as u64 + TRZSZ_END.len() as u64));
    }

    #[test]
    fn an_announcement_cut_between_chunks_is_found() {
        let mut detector = Detector::new();
        let pieces = detector.scan(0, b"$ trz\r\n\x1b7::TRZSZ:TRAN", Instant::now(), None, 0);
        let started = started_in(&pieces);
        assert!(started.is_none());
        assert_eq!(pieces, vec![Piece::Shown(0..21)]);
        let pieces = detector.scan(21, b"SFER:R:1.1.7:0000000001234:0\r\n#SUCC:1\n", Instant::now(), None, 0);
        let started = started_in(&pieces);
        assert_eq!(started.unwrap().direction, Direction::Upload);
        assert!(shown(b"SFER:R:1.1.7:0000000001234:0\r\n#SUCC:1\n", &pieces).is_empty());
        assert_eq!(detector.open().map(|s| s.start), Some(21));
    }

    #[test]
    fn text_that_only_looks_alike_is_output() {
        let mut detector = Detector::new();
        let data = b"**bold** and ::TRZSZ:TRANSFER:X and **\x18B9 and \x1b7 saved";
        let pieces = detector.scan(0, data, Instant::now(), None, 0);
        let started = started_in(&pieces);
        assert!(started.is_none());
        assert_eq!(shown(data, &pieces), data);
    }
}
