//! The detach key sequence: keys typed on the local terminal that leave a
//! session running instead of reaching it (`Ctrl-]` then `d` by default,
//! written `ctrl-],d` as docker writes its own).

use std::fmt;
use std::str::FromStr;

/// A sequence of keys, each one byte as the terminal sends it in raw mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys(Vec<u8>);

impl Default for DetachKeys {
    fn default() -> Self {
        Self(vec![0x1d, b'd'])
    }
}

impl DetachKeys {
    /// No sequence: every key reaches the session.
    pub fn none() -> Self {
        Self(Vec::new())
    }

    /// Whether there is no sequence to watch for.
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes of the sequence.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Why a `--detach-keys` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a key: write one character, or ctrl- and one of a-z @ [ \\ ] ^ _ (keys separated by commas)")]
pub struct BadKey(String);

impl FromStr for DetachKeys {
    type Err = BadKey;

    /// `ctrl-],d`, `ctrl-p,ctrl-q`, or `` (none). A key is one ASCII
    /// character, or `ctrl-` and a letter or one of `@[\]^_`.
    fn from_str(text: &str) -> Result<Self, BadKey> {
        if text.is_empty() || text == "none" {
            return Ok(Self::none());
        }
        text.split(',')
            .map(|key| {
                let bad = || BadKey(key.to_string());
                let byte = match key.strip_prefix("ctrl-") {
                    Some(rest) if rest.len() == 1 => {
                        let c = rest.as_bytes()[0].to_ascii_uppercase();
                        if !(b'@'..=b'_').contains(&c) {
                            return Err(bad());
                        }
                        c - b'@'
                    }
                    Some(_) => return Err(bad()),
                    None if key.len() == 1 && key.as_bytes()[0].is_ascii() => key.as_bytes()[0],
                    None => return Err(bad()),
                };
                Ok(byte)
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl fmt::Display for DetachKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .0
            .iter()
            .map(|&b| {
                if b < 0x20 {
                    format!("ctrl-{}", ((b + b'@') as char).to_ascii_lowercase())
                } else {
                    (b as char).to_string()
                }
            })
            .collect();
        f.write_str(&keys.join(","))
    }
}

/// Watches typed input for the sequence. Keys that start the sequence are
/// held back until it is complete (then they never reach the session) or
/// broken (then they go on, in order, with the key that broke it).
#[derive(Debug)]
pub struct Watch {
    keys: DetachKeys,
    held: usize,
}

/// What a piece of typed input comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Typed {
    /// Bytes for the session.
    Input(Vec<u8>),
    /// The sequence was typed (after `before`, which goes first).
    Detach {
        /// Input typed before the sequence, for the session.
        before: Vec<u8>,
    },
}

impl Watch {
    /// Watches for `keys`.
    pub fn new(keys: DetachKeys) -> Self {
        Self { keys, held: 0 }
    }

    /// What `input` comes to, given what was held from before.
    pub fn feed(&mut self, input: &[u8]) -> Typed {
        let sequence = self.keys.bytes();
        if sequence.is_empty() {
            return Typed::Input(input.to_vec());
        }
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if byte == sequence[self.held] {
                self.held += 1;
                if self.held == sequence.len() {
                    self.held = 0;
                    return Typed::Detach { before: out };
                }
                continue;
            }
            // Broken: what was held goes on, and this key may start anew.
            out.extend_from_slice(&sequence[..self.held]);
            self.held = 0;
            if byte == sequence[0] {
                self.held = 1;
                if sequence.len() == 1 {
                    self.held = 0;
                    return Typed::Detach { before: out };
                }
            } else {
                out.push(byte);
            }
        }
        Typed::Input(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_like_dockers() {
        assert_eq!("ctrl-],d".parse::<DetachKeys>().unwrap(), DetachKeys::default());
        assert_eq!("ctrl-p,ctrl-q".parse::<DetachKeys>().unwrap().bytes(), [0x10, 0x11]);
        assert_eq!("ctrl-@,ctrl-_,x".parse::<DetachKeys>().unwrap().bytes(), [0, 0x1f, b'x']);
        assert!("".parse::<DetachKeys>().unwrap().is_none());
        for bad in ["ctrl-", "ctrl-ab", "ab", "ctrl-1", "é"] {
            assert!(bad.parse::<DetachKeys>().is_err(), "{bad}");
        }
        assert_eq!(DetachKeys::default().to_string(), "ctrl-],d");
    }

    #[test]
    fn the_sequence_is_held_until_it_completes_or_breaks() {
        let mut watch = Watch::new(DetachKeys::default());
        assert_eq!(watch.feed(b"ls\r"), Typed::Input(b"ls\r".to_vec()));
        // Split across reads.
        assert_eq!(watch.feed(b"x\x1d"), Typed::Input(b"x".to_vec()));
        assert_eq!(watch.feed(b"d"), Typed::Detach { before: vec![] });
        // Broken: both keys go on.
        assert_eq!(watch.feed(b"\x1dq"), Typed::Input(b"\x1dq".to_vec()));
        // Broken by the first key again, which then completes.
        assert_eq!(watch.feed(b"a\x1d\x1dd"), Typed::Detach { before: b"a\x1d".to_vec() });
        let mut none = Watch::new(DetachKeys::none());
        assert_eq!(none.feed(b"\x1dd"), Typed::Input(b"\x1dd".to_vec()));
    }
}
