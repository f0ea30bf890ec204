//! The byte-level pre-scan of a head, run before httparse.
//!
//! It finds the end of the head and refuses, by itself, everything whose
//! strictness must not depend on httparse's defaults: bare CR, bare LF,
//! control bytes, obs-fold, whitespace before a colon, an empty field name, a
//! field line without a colon, and the size limits (which it detects while the
//! head is still partial). It is resumable: the [`Scanner`] remembers where it
//! stopped, so a head arriving one byte at a time costs O(n) in total, not
//! O(n²).

use super::error::ErrorKind;
use super::Limits;

/// Where a scan of one head stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scanner {
    /// Next byte to examine.
    pos: usize,
    /// Still skipping empty lines before the start line.
    started: bool,
    /// Offset of the start line (after any leading empty lines).
    start: usize,
    /// Offset of the CR ending the start line, once seen.
    start_line_end: usize,
    /// Offset of the current line's first byte.
    line_start: usize,
    /// Field lines completed so far.
    fields: usize,
    /// The current line is a field line (the start line is done).
    in_fields: bool,
    /// The current field line has had its colon.
    colon: bool,
}

/// A complete head found by the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Offset of the start line (leading empty lines are skipped).
    pub start: usize,
    /// Offset of the CR that ends the start line.
    pub start_line_end: usize,
    /// Bytes of the head from offset 0, final CRLFCRLF included.
    pub len: usize,
    /// Number of field lines.
    pub fields: usize,
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

impl Scanner {
    /// Scans `buf` (the same buffer as last time, possibly longer) from where
    /// the last call stopped. `Ok(None)`: the head is not complete yet.
    /// `tab_in_start_line`: HT may appear in the start line (a reason phrase
    /// may hold one; a request line may not).
    pub fn scan(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        tab_in_start_line: bool,
    ) -> Result<Option<Scanned>, ErrorKind> {
        loop {
            let Some(&b) = buf.get(self.pos) else {
                return Ok(None);
            };
            if self.pos >= limits.max_head {
                return Err(ErrorKind::HeadTooLarge);
            }
            if !self.started {
                match b {
                    b'\r' => match buf.get(self.pos + 1) {
                        None => return Ok(None),
                        Some(b'\n') => {
                            self.pos += 2;
                            continue;
                        }
                        Some(_) => return Err(ErrorKind::BareCr),
                    },
                    b'\n' => return Err(ErrorKind::BareLf),
                    _ => {
                        self.started = true;
                        self.start = self.pos;
                        self.line_start = self.pos;
                    }
                }
            }
            match b {
                b'\r' => {
                    match buf.get(self.pos + 1) {
                        None => return Ok(None),
                        Some(b'\n') => {}
                        Some(_) => return Err(ErrorKind::BareCr),
                    }
                    let line_len = self.pos - self.line_start;
                    if !self.in_fields {
                        // The start line is never empty: leading CRLFs were
                        // skipped above.
                        self.start_line_end = self.pos;
                        self.in_fields = true;
                    } else if line_len == 0 {
                        let len = self.pos + 2;
                        if len > limits.max_head {
                            return Err(ErrorKind::HeadTooLarge);
                        }
                        return Ok(Some(Scanned {
                            start: self.start,
                            start_line_end: self.start_line_end,
                            len,
                            fields: self.fields,
                        }));
                    } else {
                        if !self.colon {
                            return Err(ErrorKind::MalformedHeader);
                        }
                        self.fields += 1;
                        if self.fields > limits.max_headers {
                            return Err(ErrorKind::TooManyHeaders);
                        }
                    }
                    self.pos += 2;
                    self.line_start = self.pos;
                    self.colon = false;
                    continue;
                }
                b'\n' => return Err(ErrorKind::BareLf),
                _ if !self.in_fields => {
                    if is_ctl(b) && !(b == b'\t' && tab_in_start_line) {
                        return Err(ErrorKind::ControlByte);
                    }
                    if self.pos + 1 - self.line_start > limits.max_start_line {
                        return Err(ErrorKind::StartLineTooLong);
                    }
                }
                b' ' | b'\t' => {
                    if self.pos == self.line_start {
                        return Err(ErrorKind::ObsFold);
                    }
                    if !self.colon {
                        return Err(ErrorKind::SpaceBeforeColon);
                    }
                }
                b':' if !self.colon => {
                    if self.pos == self.line_start {
                        return Err(ErrorKind::EmptyHeaderName);
                    }
                    self.colon = true;
                }
                _ if is_ctl(b) => return Err(ErrorKind::ControlByte),
                _ => {}
            }
            self.pos += 1;
        }
    }
}
