//! [`History`]: a detachable session's output, kept up to a bound for
//! replay, addressed by byte offsets from the session's start.

use std::collections::VecDeque;

use std::time::Instant;

use bytes::Bytes;

use super::transfer::{Detector, Piece, Span};
use crate::websocket::OutputStream;

/// The latest output of a session, at most `cap` bytes of it. Offsets count
/// every output byte since the session started (stdout and stderr alike),
/// so a client can say which it already has.
#[derive(Debug)]
pub(crate) struct History {
    chunks: VecDeque<(u64, OutputStream, Bytes)>,
    start: u64,
    end: u64,
    cap: usize,
    kept: usize,
    /// File transfers in the output, when the session has observers,
    /// replays or a recording to keep them from (boxed: a plain session
    /// has none).
    transfers: Option<Box<Transfers>>,
}

/// What the history knows of file transfers.
#[derive(Debug, Default)]
struct Transfers {
    detector: Detector,
    /// The transfers whose bytes are (partly) kept, oldest first.
    spans: VecDeque<Span>,
}

/// Who reads the history: what it may receive of transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Viewer {
    /// The writer reading (`None`: an observer).
    pub(crate) writer: Option<u64>,
    /// Where its live output starts: what is before is a replay.
    pub(crate) live_from: u64,
}

impl Viewer {
    /// Whether it gets the bytes of `span`: only the writer it is for, live.
    fn receives(&self, span: &Span) -> bool {
        self.writer.is_some() && span.start >= self.live_from && span.owner.is_none_or(|o| Some(o) == self.writer)
    }
}

/// A transfer a viewer does not receive, where it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hidden {
    /// The transfer, as far as it is known.
    pub(crate) span: Span,
    /// Where the viewer goes on reading: the transfer's end, or the end of
    /// its output so far.
    pub(crate) skip_to: u64,
}

/// What reading at an offset finds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Output from the offset on (one chunk, perhaps its tail).
    Chunk(OutputStream, Bytes),
    /// Nothing yet: the offset is the end.
    AtEnd,
    /// The offset was dropped: the oldest kept byte is at `start`.
    Dropped { start: u64 },
    /// A transfer the reader does not receive is there.
    Hidden(Hidden),
}

/// What [`History::push`] did with a chunk.
#[derive(Debug, Default)]
pub(crate) struct Pushed {
    /// How many of the oldest bytes were dropped to stay within the bound.
    pub(crate) dropped: u64,
    /// Its transfer bytes and ends, when transfers are watched.
    pub(crate) pieces: Option<Vec<Piece>>,
}

impl History {
    pub(crate) fn new(cap: usize) -> Self {
        Self { chunks: VecDeque::new(), start: 0, end: 0, cap: cap.max(1), kept: 0, transfers: None }
    }

    /// A history as the program before this one left it: `chunks` from
    /// offset `start` on, within `cap`.
    pub(crate) fn restored(cap: usize, start: u64, chunks: impl IntoIterator<Item = (OutputStream, Bytes)>) -> Self {
        let mut history = Self { start, end: start, ..Self::new(cap) };
        for (stream, data) in chunks {
            history.push(stream, data);
        }
        history
    }

    /// Watches for file transfers from here on, and in what it keeps (a
    /// restored history: a transfer whose start was dropped goes unseen).
    pub(crate) fn watch_transfers(&mut self) {
        let mut transfers = Box::<Transfers>::default();
        let now = Instant::now();
        for (offset, _, data) in &self.chunks {
            let pieces = transfers.detector.scan(*offset, data, now, None, 0);
            Self::note_spans(&mut transfers.spans, pieces);
        }
        self.transfers = Some(transfers);
    }

    /// The running ZMODEM transfer was cancelled by the session's input: it
    /// drains (see [`Detector::cancelled`]).
    pub(crate) fn transfer_cancelled(&mut self) {
        if let Some(transfers) = self.transfers.as_mut()
            && transfers.detector.cancelled()
            && let Some(span) = transfers.spans.back_mut()
        {
            span.cancelled = true;
        }
    }

    /// Where the transfer that started at `start` ended, once it did (and
    /// while its bytes are kept).
    pub(crate) fn transfer_end(&self, start: u64) -> Option<u64> {
        self.spans().rev().find(|span| span.start == start)?.end
    }

    /// The transfer running, if one is (and transfers are watched).
    pub(crate) fn transfer(&self) -> Option<&Span> {
        self.transfers.as_ref()?.detector.open()
    }

    /// The transfers kept, oldest first.
    fn spans(&self) -> impl DoubleEndedIterator<Item = &Span> {
        self.transfers.iter().flat_map(|transfers| transfers.spans.iter())
    }

    /// Forgets the transfers wholly before the oldest byte kept.
    fn forget_spans(&mut self) {
        if let Some(transfers) = self.transfers.as_mut() {
            while transfers.spans.front().is_some_and(|span| span.end.is_some_and(|end| end <= self.start)) {
                transfers.spans.pop_front();
            }
        }
    }

    fn note_spans(spans: &mut VecDeque<Span>, pieces: impl IntoIterator<Item = Piece>) {
        for piece in pieces {
            match piece {
                Piece::Started(span) => spans.push_back(span),
                Piece::Ended(span) => {
                    if let Some(last) = spans.iter_mut().rev().find(|s| s.start == span.start) {
                        *last = span;
                    }
                }
                Piece::Shown(_) => {}
            }
        }
    }

    /// The chunks it keeps, oldest first.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (OutputStream, Bytes)> + '_ {
        self.chunks.iter().map(|(_, stream, data)| (*stream, data.clone()))
    }

    /// Drops the chunks wholly before `offset` (taken by every client of a
    /// session nobody replays).
    pub(crate) fn forget_before(&mut self, offset: u64) {
        while let Some((start, _, front)) = self.chunks.front() {
            let end = start + front.len() as u64;
            if end > offset {
                break;
            }
            self.kept -= front.len();
            self.start = end;
            self.chunks.pop_front();
        }
        self.forget_spans();
    }

    /// How many bytes it keeps at most.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Offset of the oldest byte kept.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Offset of the next byte to come.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Adds output; returns how many of the oldest bytes were dropped to
    /// stay within the bound.
    pub(crate) fn push(&mut self, stream: OutputStream, data: Bytes) -> u64 {
        self.push_from(stream, data, None, 0).dropped
    }

    /// Adds output, read at a time when `owner` was the writer whose input
    /// came last and `input_total` bytes of input had been written: what
    /// [`Pushed`] says.
    pub(crate) fn push_from(
        &mut self,
        stream: OutputStream,
        data: Bytes,
        owner: Option<u64>,
        input_total: u64,
    ) -> Pushed {
        if data.is_empty() {
            return Pushed::default();
        }
        let pieces = self.transfers.as_mut().map(|transfers| {
            let pieces = transfers.detector.scan(self.end, &data, Instant::now(), owner, input_total);
            Self::note_spans(&mut transfers.spans, pieces.iter().cloned());
            pieces
        });
        self.chunks.push_back((self.end, stream, data.clone()));
        self.end += data.len() as u64;
        self.kept += data.len();
        let mut dropped = 0;
        while self.kept > self.cap {
            let excess = self.kept - self.cap;
            let (offset, stream, front) = self.chunks.pop_front().expect("kept bytes are in chunks");
            if front.len() <= excess {
                self.kept -= front.len();
                dropped += front.len() as u64;
                self.start = offset + front.len() as u64;
            } else {
                self.chunks.push_front((offset + excess as u64, stream, front.slice(excess..)));
                self.kept -= excess;
                dropped += excess as u64;
                self.start = offset + excess as u64;
            }
        }
        self.forget_spans();
        Pushed { dropped, pieces }
    }

    /// The output at `offset`.
    pub(crate) fn read(&self, offset: u64) -> Read {
        if offset < self.start {
            return Read::Dropped { start: self.start };
        }
        if offset >= self.end {
            return Read::AtEnd;
        }
        // The last chunk that starts at or before the offset holds it.
        let index = self.chunks.partition_point(|(start, _, _)| *start <= offset) - 1;
        let (start, stream, data) = &self.chunks[index];
        Read::Chunk(*stream, data.slice((offset - start) as usize..))
    }

    /// The output at `offset` as `viewer` may receive it: a transfer it
    /// does not receive is [`Read::Hidden`], and a chunk stops where one
    /// begins.
    pub(crate) fn read_as(&self, offset: u64, viewer: Viewer) -> Read {
        let read = self.read(offset);
        let Read::Chunk(stream, data) = read else { return read };
        let end = offset + data.len() as u64;
        let hidden = self
            .spans()
            .filter(|span| span.end.is_none_or(|e| e > offset) && span.start < end)
            .find(|span| !viewer.receives(span));
        match hidden {
            None => Read::Chunk(stream, data),
            Some(span) if span.start > offset => Read::Chunk(stream, data.slice(..(span.start - offset) as usize)),
            Some(span) => Read::Hidden(Hidden { span: span.clone(), skip_to: span.end.unwrap_or(self.end) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: OutputStream = OutputStream::Stdout;

    fn chunk(history: &History, offset: u64) -> Vec<u8> {
        match history.read(offset) {
            Read::Chunk(_, data) => data.to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_from_any_offset_within_the_bound() {
        let mut history = History::new(10);
        assert_eq!(history.push(OUT, Bytes::from_static(b"hello")), 0);
        assert_eq!(history.push(OutputStream::Stderr, Bytes::from_static(b"world")), 0);
        assert_eq!(chunk(&history, 0), b"hello");
        assert_eq!(chunk(&history, 3), b"lo");
        assert_eq!(chunk(&history, 5), b"world");
        assert_eq!(history.read(10), Read::AtEnd);
    }

    #[test]
    fn the_oldest_bytes_go_first_down_to_the_byte() {
        let mut history = History::new(10);
        history.push(OUT, Bytes::from_static(b"abcdefgh"));
        assert_eq!(history.push(OUT, Bytes::from_static(b"ijklm")), 3);
        assert_eq!((history.start(), history.end()), (3, 13));
        assert_eq!(history.read(2), Read::Dropped { start: 3 });
        assert_eq!(chunk(&history, 3), b"defgh");
        // A chunk larger than the bound keeps its tail.
        assert_eq!(history.push(OUT, Bytes::from_static(b"0123456789ABCDEF")), 16);
        assert_eq!((history.start(), history.end()), (19, 29));
        assert_eq!(chunk(&history, 19), b"6789ABCDEF");
    }

    #[test]
    fn what_was_taken_can_be_forgotten_whole_chunks_only() {
        let mut history = History::new(100);
        history.push(OUT, Bytes::from_static(b"abc"));
        history.push(OUT, Bytes::from_static(b"defg"));
        history.forget_before(5);
        assert_eq!((history.start(), history.end(), history.kept), (3, 7, 4));
        assert_eq!(chunk(&history, 5), b"fg");
        history.forget_before(7);
        assert_eq!((history.start(), history.end(), history.kept), (7, 7, 0));
        assert_eq!(history.read(7), Read::AtEnd);
    }

    #[test]
    fn a_transfer_reaches_only_the_live_writer_it_is_for() {
        let mut history = History::new(1000);
        history.watch_transfers();
        history.push_from(OUT, Bytes::from_static(b"$ sz f\r\nrz\r"), Some(1), 0);
        history.push_from(OUT, Bytes::from_static(b"**\x18B00000000000000\r\x8a\x11data"), Some(1), 0);
        let live = Viewer { writer: Some(1), live_from: 0 };
        let observer = Viewer { writer: None, live_from: 0 };
        let other = Viewer { writer: Some(2), live_from: 0 };
        let replay = Viewer { writer: Some(1), live_from: 100 };
        assert_eq!(chunk(&history, 0).len(), 11);
        match history.read_as(0, live) {
            Read::Chunk(_, data) => assert_eq!(data.len(), 11),
            other => panic!("{other:?}"),
        }
        assert!(matches!(history.read_as(11, live), Read::Chunk(..)));
        for viewer in [observer, other, replay] {
            // The text before it, then the transfer, open so far.
            match history.read_as(0, viewer) {
                Read::Chunk(_, data) => assert_eq!(&data[..], b"$ sz f\r\nrz\r"),
                other => panic!("{other:?}"),
            }
            match history.read_as(11, viewer) {
                Read::Hidden(Hidden { span, skip_to }) => {
                    assert_eq!((span.start, span.end, skip_to), (11, None, history.end()));
                }
                other => panic!("{other:?}"),
            }
        }
        history.push_from(OUT, Bytes::from_static(b"**\x18B0800000000022d\r\x8aOO$ "), Some(1), 0);
        match history.read_as(13, observer) {
            Read::Hidden(Hidden { span, skip_to }) => assert_eq!(Some(skip_to), span.end),
            other => panic!("{other:?}"),
        }
        match history.read_as(history.end() - 2, observer) {
            Read::Chunk(_, data) => assert_eq!(&data[..], b"$ "),
            other => panic!("{other:?}"),
        }
        // Forgotten with the bytes it covered.
        history.forget_before(history.end());
        assert_eq!(history.spans().count(), 0);
    }
}
