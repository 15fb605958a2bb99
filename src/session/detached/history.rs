//! [`History`]: a detachable session's output, kept up to a bound for
//! replay, addressed by byte offsets from the session's start.

use std::collections::VecDeque;

use bytes::Bytes;

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
}

impl History {
    pub(crate) fn new(cap: usize) -> Self {
        Self { chunks: VecDeque::new(), start: 0, end: 0, cap: cap.max(1), kept: 0 }
    }

    /// A history as the program before this one left it: `chunks` from
    /// offset `start` on, within `cap`.
    pub(crate) fn restored(cap: usize, start: u64, chunks: impl IntoIterator<Item = (OutputStream, Bytes)>) -> Self {
        let mut history = Self { chunks: VecDeque::new(), start, end: start, cap: cap.max(1), kept: 0 };
        for (stream, data) in chunks {
            history.push(stream, data);
        }
        history
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
        if data.is_empty() {
            return 0;
        }
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
        dropped
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
}
