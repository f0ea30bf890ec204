//! The body framing decoder: a streaming state machine that tells the caller
//! which bytes belong to the body and where the message ends.
//!
//! It never copies or buffers: it looks at each framing byte once and keeps
//! only a few counters, so it works with input split anywhere (one byte at a
//! time included) and its memory is constant. Until the message ends it
//! consumes all the input it is given; the proxy forwards consumed bytes
//! verbatim (a chunked body stays chunked, extensions and trailers included).
//!
//! # States and exits
//!
//! ```text
//! NoBody ───────────────────────────────────────────────────────► Done
//! Length(n) ── Length{remaining} ── remaining hits 0 ───────────► Done
//! UntilClose / Tunnel ── UntilClose ── finish() at EOF ─────────► Done
//!
//! Chunked:
//!   Size ──hex──► Size  (1..=16 digits; more → ChunkSizeTooLarge;
//!     │                  no digit or non-hex → BadChunkSize)
//!     ├─ ';' / BWS ──► Ext (RFC 9112 §7.1.1 grammar, else BadChunkExtension)
//!     └─ CR ──► SizeLf ──LF──► Data{size}    (size > 0)
//!                         └──► TrailerStart  (size = 0, the last chunk)
//!   (the size line, extensions included, over max_chunk_line → ChunkLineTooLong)
//!   Data{remaining} ── remaining hits 0 ──► DataCr ─CR─► DataLf ─LF─► Size
//!                                         (anything else → MissingChunkCrlf)
//!   TrailerStart ─CR─► EndLf ─LF─► Done
//!        └─ tchar ─► TrailerName ─':'─► TrailerValue ─CR─► TrailerLf ─LF─► TrailerStart
//!   (obs-fold, whitespace before ':', empty name, control bytes → BadTrailer;
//!    the trailer section over max_trailers → TrailerTooLarge)
//!
//! Any error → Failed (sticky). finish() before Done (except UntilClose) → Truncated.
//! ```

use std::ops::Range;

use super::error::{Direction, ErrorKind, HttpError};
use super::fields::is_tchar;
use super::{Framing, Limits};

/// Streams a body of a given [`Framing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyDecoder {
    state: State,
    direction: Direction,
    max_chunk_line: usize,
    max_trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    UntilClose,
    Size { value: u64, digits: u8, line: usize },
    Ext { size: u64, at: Ext, line: usize },
    SizeLf { size: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerStart { total: usize },
    TrailerName { total: usize },
    TrailerValue { total: usize },
    TrailerLf { total: usize },
    EndLf,
    Done,
    Failed(ErrorKind),
}

/// Position inside a chunk-size line's extensions:
/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeBws,
    /// After `;`.
    BeforeName,
    Name,
    /// Whitespace after a name: `=`, `;` or more whitespace.
    NameBws,
    /// After `=`.
    BeforeValue,
    Token,
    Quoted,
    QuotedPair,
    AfterQuoted,
    /// Whitespace after a value: `;` or more whitespace.
    ValueBws,
}

/// What one [`BodyDecoder::step`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input that belong to the message (framing and data).
    pub consumed: usize,
    /// The payload bytes among them (always a tail of `..consumed`; empty
    /// when the step consumed framing only). Chunk framing is excluded, so a
    /// caller that needs the decoded payload can take just these.
    pub data: Range<usize>,
    /// The message ended with the last consumed byte; input after `consumed`
    /// is the next message.
    pub done: bool,
}

/// What one [`BodyDecoder::advance`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the message, to forward verbatim.
    pub consumed: usize,
    /// The message ended with the last consumed byte.
    pub done: bool,
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Visible ASCII or obs-text.
fn is_vchar_or_obs(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) || b >= 0x80
}

fn hex(b: u8) -> Option<u64> {
    char::from(b).to_digit(16).map(u64::from)
}

impl BodyDecoder {
    /// A decoder for a body of `framing` in a message going `direction` (which
    /// decides the error status), bounded by `limits`. `Tunnel` is treated as
    /// `UntilClose`.
    pub fn new(framing: Framing, direction: Direction, limits: &Limits) -> Self {
        let state = match framing {
            Framing::NoBody | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::Size {
                value: 0,
                digits: 0,
                line: 0,
            },
            Framing::UntilClose | Framing::Tunnel => State::UntilClose,
        };
        BodyDecoder {
            state,
            direction,
            max_chunk_line: limits.max_chunk_line,
            max_trailers: limits.max_trailers,
        }
    }

    /// Whether the message has ended.
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Looks at `input` (the bytes after those already consumed). Consumes
    /// framing bytes and then at most one run of payload, and stops there,
    /// at the end of the message, or at the end of `input`. Call again with
    /// the rest. After the end, consumes nothing and reports `done`.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, HttpError> {
        let mut pos = 0usize;
        loop {
            match self.state {
                State::Done => {
                    return Ok(Step {
                        consumed: pos,
                        data: pos..pos,
                        done: true,
                    })
                }
                State::Failed(kind) => return Err(HttpError::new(kind, self.direction)),
                State::UntilClose => {
                    let end = input.len();
                    return Ok(Step {
                        consumed: end,
                        data: pos..end,
                        done: false,
                    });
                }
                State::Length { remaining } | State::Data { remaining } => {
                    let avail = input.len().saturating_sub(pos);
                    let n = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                    let left = remaining - n as u64;
                    let start = pos;
                    pos += n;
                    self.state = match (self.state, left) {
                        (State::Length { .. }, 0) => State::Done,
                        (State::Length { .. }, _) => State::Length { remaining: left },
                        (_, 0) => State::DataCr,
                        _ => State::Data { remaining: left },
                    };
                    return Ok(Step {
                        consumed: pos,
                        data: start..pos,
                        done: self.state == State::Done,
                    });
                }
                _ => {
                    let Some(&b) = input.get(pos) else {
                        return Ok(Step {
                            consumed: pos,
                            data: pos..pos,
                            done: false,
                        });
                    };
                    pos += 1;
                    match self.framing_byte(b) {
                        Ok(next) => self.state = next,
                        Err(kind) => {
                            self.state = State::Failed(kind);
                            return Err(HttpError::new(kind, self.direction));
                        }
                    }
                }
            }
        }
    }

    /// Steps over `input` until it is used up or the message ends: what a
    /// proxy forwarding the body verbatim wants.
    pub fn advance(&mut self, input: &[u8]) -> Result<Progress, HttpError> {
        let mut consumed = 0usize;
        loop {
            let rest = input.get(consumed..).unwrap_or(&[]);
            let step = self.step(rest)?;
            consumed += step.consumed;
            if step.done || step.consumed == 0 || consumed >= input.len() {
                return Ok(Progress {
                    consumed,
                    done: step.done,
                });
            }
        }
    }

    /// The peer closed its side: ends a close-delimited body; any other body
    /// not yet complete is `Truncated`.
    pub fn finish(&mut self) -> Result<(), HttpError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                self.state = State::Done;
                Ok(())
            }
            State::Failed(kind) => Err(HttpError::new(kind, self.direction)),
            _ => {
                self.state = State::Failed(ErrorKind::Truncated);
                Err(HttpError::new(ErrorKind::Truncated, self.direction))
            }
        }
    }

    /// The state after one framing byte `b`.
    fn framing_byte(&self, b: u8) -> Result<State, ErrorKind> {
        use ErrorKind::{BadChunkExtension as BadExt, BadTrailer};
        let next = match self.state {
            State::Size {
                value,
                digits,
                line,
            } => {
                if b == b'\r' {
                    if digits == 0 {
                        return Err(ErrorKind::BadChunkSize);
                    }
                    return Ok(State::SizeLf { size: value });
                }
                let line = self.line(line)?;
                if let Some(d) = hex(b) {
                    if digits >= 16 {
                        return Err(ErrorKind::ChunkSizeTooLarge);
                    }
                    return Ok(State::Size {
                        value: (value << 4) | d,
                        digits: digits + 1,
                        line,
                    });
                }
                let at = match b {
                    _ if digits == 0 => return Err(ErrorKind::BadChunkSize),
                    b';' => Ext::BeforeName,
                    _ if is_ws(b) => Ext::SizeBws,
                    _ => return Err(ErrorKind::BadChunkSize),
                };
                State::Ext {
                    size: value,
                    at,
                    line,
                }
            }
            State::Ext { size, at, line } => {
                if b == b'\r' {
                    return match at {
                        Ext::Name | Ext::Token | Ext::AfterQuoted => Ok(State::SizeLf { size }),
                        _ => Err(BadExt),
                    };
                }
                let line = self.line(line)?;
                let at = match (at, b) {
                    (Ext::SizeBws | Ext::NameBws | Ext::ValueBws, _) if is_ws(b) => at,
                    (Ext::BeforeName | Ext::BeforeValue, _) if is_ws(b) => at,
                    (
                        Ext::SizeBws
                        | Ext::Name
                        | Ext::NameBws
                        | Ext::Token
                        | Ext::AfterQuoted
                        | Ext::ValueBws,
                        b';',
                    ) => Ext::BeforeName,
                    (Ext::BeforeName | Ext::Name, _) if is_tchar(b) => Ext::Name,
                    (Ext::Name, _) if is_ws(b) => Ext::NameBws,
                    (Ext::Name | Ext::NameBws, b'=') => Ext::BeforeValue,
                    (Ext::BeforeValue | Ext::Token, _) if is_tchar(b) => Ext::Token,
                    (Ext::BeforeValue, b'"') => Ext::Quoted,
                    (Ext::Token | Ext::AfterQuoted, _) if is_ws(b) => Ext::ValueBws,
                    (Ext::Quoted, b'"') => Ext::AfterQuoted,
                    (Ext::Quoted, b'\\') => Ext::QuotedPair,
                    (Ext::Quoted | Ext::QuotedPair, _) if is_ws(b) || is_vchar_or_obs(b) => {
                        Ext::Quoted
                    }
                    _ => return Err(BadExt),
                };
                State::Ext { size, at, line }
            }
            State::SizeLf { size } => match (b, size) {
                (b'\n', 0) => State::TrailerStart { total: 0 },
                (b'\n', _) => State::Data { remaining: size },
                _ => return Err(ErrorKind::BadChunkSize),
            },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size {
                value: 0,
                digits: 0,
                line: 0,
            },
            State::DataCr | State::DataLf => return Err(ErrorKind::MissingChunkCrlf),
            State::TrailerStart { total } => {
                let total = self.trailer(total)?;
                match b {
                    b'\r' => State::EndLf,
                    _ if is_tchar(b) => State::TrailerName { total },
                    _ => return Err(BadTrailer),
                }
            }
            State::TrailerName { total } => {
                let total = self.trailer(total)?;
                match b {
                    b':' => State::TrailerValue { total },
                    _ if is_tchar(b) => State::TrailerName { total },
                    _ => return Err(BadTrailer),
                }
            }
            State::TrailerValue { total } => {
                let total = self.trailer(total)?;
                match b {
                    b'\r' => State::TrailerLf { total },
                    _ if is_ws(b) || is_vchar_or_obs(b) => State::TrailerValue { total },
                    _ => return Err(BadTrailer),
                }
            }
            State::TrailerLf { total } => {
                let total = self.trailer(total)?;
                match b {
                    b'\n' => State::TrailerStart { total },
                    _ => return Err(BadTrailer),
                }
            }
            State::EndLf if b == b'\n' => State::Done,
            State::EndLf => return Err(BadTrailer),
            // Not framing states: `step` never calls us in them.
            State::Length { .. }
            | State::UntilClose
            | State::Data { .. }
            | State::Done
            | State::Failed(_) => self.state,
        };
        Ok(next)
    }

    /// Counts one more byte of a chunk-size line.
    fn line(&self, line: usize) -> Result<usize, ErrorKind> {
        let line = line + 1;
        if line > self.max_chunk_line {
            return Err(ErrorKind::ChunkLineTooLong);
        }
        Ok(line)
    }

    /// Counts one more byte of the trailer section.
    fn trailer(&self, total: usize) -> Result<usize, ErrorKind> {
        let total = total + 1;
        if total > self.max_trailers {
            return Err(ErrorKind::TrailerTooLarge);
        }
        Ok(total)
    }
}
