//! The byte-level pre-scan of a head, run before httparse.
//!
//! It finds the end of the head and refuses, by itself, everything whose
//! strictness must not depend on httparse's defaults: bare CR, bare LF,
//! control bytes, obs-fold, whitespace before a colon, an empty field name, a
//! field line without a colon, and the size limits (which it detects while the
//! head is still partial). It is resumable: the [`Scanner`] remembers where it
//! stopped, so a head arriving one byte at a time costs O(n) in total, not
//! O(n²). Runs of bytes that need no decision (most of a start line, a name,
//! a value) are stepped over eight at a time; the byte loop decides the rest.

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

const LSB: u64 = 0x0101_0101_0101_0101;
const MSB: u64 = 0x8080_8080_8080_8080;

/// The top bit of each byte of `x` that is below `n` (n <= 0x80). Exact up
/// to the first such byte; above it a borrow may mark others too.
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(LSB * u64::from(n)) & !x & MSB
}

/// The top bit of each byte of `x` equal to `b`, exact as [`below`] is.
fn equal(x: u64, b: u8) -> u64 {
    below(x ^ (LSB * u64::from(b)), 1)
}

/// Controls, DEL included.
fn ctl_mask(x: u64) -> u64 {
    below(x, 0x20) | equal(x, 0x7f)
}

/// What ends a run in a field name: controls, SP, DEL and the colon.
fn name_mask(x: u64) -> u64 {
    below(x, 0x21) | equal(x, 0x7f) | equal(x, b':')
}

/// What may not be in a request target: anything but visible ASCII, and
/// `#` (a fragment).
pub(crate) fn non_target_mask(x: u64) -> u64 {
    below(x, 0x21) | (x & MSB) | equal(x, 0x7f) | equal(x, b'#')
}

/// Length of the run at the start of `bytes` with no byte `mask` marks,
/// eight bytes at a time. A zero byte must be marked: it pads the tail.
pub(crate) fn run(bytes: &[u8], mask: fn(u64) -> u64) -> usize {
    let mut chunks = bytes.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let m = mask(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        if m != 0 {
            // The lowest mark is exact: it is the first byte that ends the run.
            return n + m.trailing_zeros() as usize / 8;
        }
        n += 8;
    }
    let tail = chunks.remainder();
    let mut word = [0u8; 8];
    word[..tail.len()].copy_from_slice(tail);
    n + mask(u64::from_le_bytes(word)).trailing_zeros() as usize / 8
}

impl Scanner {
    /// How many bytes from `pos` on need no decision in the current state,
    /// so the byte loop can step over them: non-control bytes in the start
    /// line (within its limit) and in a field value; in a field name, bytes
    /// other than controls, SP and the colon. HT always takes the byte loop.
    fn plain_run(&self, buf: &[u8], limits: &Limits) -> usize {
        let mut end = buf.len().min(limits.max_head);
        if !self.in_fields {
            end = end.min(self.line_start.saturating_add(limits.max_start_line));
        }
        let bytes = buf.get(self.pos..end).unwrap_or_default();
        if self.in_fields && !self.colon {
            run(bytes, name_mask)
        } else {
            run(bytes, ctl_mask)
        }
    }

    /// From the start of a field line, takes whole lines of the usual
    /// shape, `name:value` CRLF with nothing to decide inside, as the byte
    /// loop would; it stops at anything else and leaves it to the loop.
    fn field_lines(&mut self, buf: &[u8], limits: &Limits) -> Result<(), ErrorKind> {
        let end = buf.len().min(limits.max_head);
        loop {
            let name = run(buf.get(self.pos..end).unwrap_or_default(), name_mask);
            let colon = self.pos + name;
            if name == 0 || buf.get(colon) != Some(&b':') {
                return Ok(());
            }
            let value = colon + 1;
            let cr = value + run(buf.get(value..end).unwrap_or_default(), ctl_mask);
            if cr >= end || buf.get(cr) != Some(&b'\r') || buf.get(cr + 1) != Some(&b'\n') {
                // Mid-value: the loop goes on from here.
                self.colon = true;
                self.pos = cr;
                return Ok(());
            }
            self.fields += 1;
            if self.fields > limits.max_headers {
                return Err(ErrorKind::TooManyHeaders);
            }
            self.pos = cr + 2;
            self.line_start = self.pos;
        }
    }

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
            if self.in_fields && !self.colon && self.pos == self.line_start {
                self.field_lines(buf, limits)?;
            }
            if self.started {
                self.pos += self.plain_run(buf, limits);
            }
            if let Some(done) = self.byte(buf, limits, tab_in_start_line) {
                return done;
            }
        }
    }

    /// One byte's decision (two for a CRLF) at `pos`, and the step past it;
    /// `None`: go on scanning. The fast paths above only ever skip what
    /// this would have passed over.
    fn byte(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        tab_in_start_line: bool,
    ) -> Option<Result<Option<Scanned>, ErrorKind>> {
        let Some(&b) = buf.get(self.pos) else {
            return Some(Ok(None));
        };
        if self.pos >= limits.max_head {
            return Some(Err(ErrorKind::HeadTooLarge));
        }
        if !self.started {
            match b {
                b'\r' => match buf.get(self.pos + 1) {
                    None => return Some(Ok(None)),
                    Some(b'\n') => {
                        self.pos += 2;
                        return None;
                    }
                    Some(_) => return Some(Err(ErrorKind::BareCr)),
                },
                b'\n' => return Some(Err(ErrorKind::BareLf)),
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
                    None => return Some(Ok(None)),
                    Some(b'\n') => {}
                    Some(_) => return Some(Err(ErrorKind::BareCr)),
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
                        return Some(Err(ErrorKind::HeadTooLarge));
                    }
                    return Some(Ok(Some(Scanned {
                        start: self.start,
                        start_line_end: self.start_line_end,
                        len,
                        fields: self.fields,
                    })));
                } else {
                    if !self.colon {
                        return Some(Err(ErrorKind::MalformedHeader));
                    }
                    self.fields += 1;
                    if self.fields > limits.max_headers {
                        return Some(Err(ErrorKind::TooManyHeaders));
                    }
                }
                self.pos += 2;
                self.line_start = self.pos;
                self.colon = false;
                return None;
            }
            b'\n' => return Some(Err(ErrorKind::BareLf)),
            _ if !self.in_fields => {
                if is_ctl(b) && !(b == b'\t' && tab_in_start_line) {
                    return Some(Err(ErrorKind::ControlByte));
                }
                if self.pos + 1 - self.line_start > limits.max_start_line {
                    return Some(Err(ErrorKind::StartLineTooLong));
                }
            }
            b' ' | b'\t' => {
                if self.pos == self.line_start {
                    return Some(Err(ErrorKind::ObsFold));
                }
                if !self.colon {
                    return Some(Err(ErrorKind::SpaceBeforeColon));
                }
            }
            b':' if !self.colon => {
                if self.pos == self.line_start {
                    return Some(Err(ErrorKind::EmptyHeaderName));
                }
                self.colon = true;
            }
            _ if is_ctl(b) => return Some(Err(ErrorKind::ControlByte)),
            _ => {}
        }
        self.pos += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    impl Scanner {
        /// The scan one byte at a time, the byte steps alone, as it was
        /// before its fast paths: the reference the fast one must agree
        /// with, call by call.
        fn scan_bytewise(
            &mut self,
            buf: &[u8],
            limits: &Limits,
            tab_in_start_line: bool,
        ) -> Result<Option<Scanned>, ErrorKind> {
            loop {
                if let Some(done) = self.byte(buf, limits, tab_in_start_line) {
                    return done;
                }
            }
        }
    }

    /// A head made of pieces the scan decides on, plain runs long enough for
    /// the eight-byte steps, and the odd stray byte.
    fn head_bytes(seed: &[u8]) -> Vec<u8> {
        const PIECES: [&[u8]; 17] = [
            b"\r\n",
            b"\r\n",
            b"Field-Name: a value\r\n",
            b"\r\n",
            b"Name",
            b": ",
            b":",
            b" ",
            b"\t",
            b"value with spaces",
            b"GET http://a/ HTTP/1.1",
            b"\r",
            b"\n",
            b"\x00",
            b"\x7f",
            b"\x80\xff",
            b"\x1f",
        ];
        let mut out = Vec::new();
        for &b in seed {
            // Rare strays: most heads get some way before an error.
            let piece = PIECES[usize::from(b) % if b < 224 { 11 } else { 17 }];
            out.extend_from_slice(piece);
        }
        out
    }

    fn agree(seed: Vec<u8>, cuts: Vec<u8>, small: u8, tab: bool) -> TestResult {
        let data = head_bytes(&seed);
        let limits = Limits {
            max_start_line: usize::from(small % 40) + 1,
            max_head: usize::from(small) + 8,
            max_headers: usize::from(small % 7),
            ..Limits::default()
        };
        for limits in [limits, Limits::default()] {
            let (mut fast, mut slow) = (Scanner::default(), Scanner::default());
            let mut end = 0;
            for cut in cuts.iter().chain(std::iter::once(&255)) {
                end = (end + usize::from(*cut)).min(data.len());
                let buf = &data[..end];
                let (a, b) = (
                    fast.scan(buf, &limits, tab),
                    slow.scan_bytewise(buf, &limits, tab),
                );
                if a != b {
                    return TestResult::error(format!("{buf:?}: {a:?} vs {b:?}"));
                }
                if !matches!(a, Ok(None)) {
                    break;
                }
                if fast != slow {
                    return TestResult::error(format!("{buf:?}: {fast:?} vs {slow:?}"));
                }
            }
        }
        TestResult::passed()
    }

    #[test]
    fn fast_scan_agrees_with_the_bytewise_one() {
        QuickCheck::new()
            .tests(20_000)
            .quickcheck(agree as fn(Vec<u8>, Vec<u8>, u8, bool) -> TestResult);
    }

    #[test]
    fn runs_stop_at_the_first_marked_byte() {
        type Mask = fn(u64) -> u64;
        type Stops = fn(u8) -> bool;
        let masks: [(Mask, Stops); 3] = [
            (ctl_mask, is_ctl),
            (name_mask, |b| b <= b' ' || b == b':' || b == 0x7f),
            (non_target_mask, |b| {
                !(0x21..=0x7e).contains(&b) || b == b'#'
            }),
        ];
        for (mask, stops) in masks {
            for len in 0..20 {
                for at in 0..len {
                    for b in 0..=255u8 {
                        for after in [b'a', 0x00, b'\r', 0xff] {
                            let mut bytes = vec![b'a'; len];
                            bytes[at] = b;
                            bytes[at + 1..].fill(after);
                            let want = if stops(b) {
                                at
                            } else if stops(after) && at + 1 < len {
                                at + 1
                            } else {
                                len
                            };
                            assert_eq!(run(&bytes, mask), want, "{bytes:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fast_scan_agrees_on_real_heads() {
        let heads: [&[u8]; 3] = [
            b"GET http://127.0.0.1:18081/index.html HTTP/1.1\r\nHost: 127.0.0.1:18081\r\n\r\n",
            b"\r\nHTTP/1.1 200 OK\tfine\r\nServer: nginx/1.22.1\r\nETag: \"674c8a10-64\"\r\nX: a\tb \x80\r\n\r\nbody",
            b"GET / HTTP/1.1\r\nA: 0123456789abcdef0123456789abcdef\x7f\r\n\r\n",
        ];
        for head in heads {
            for tab in [false, true] {
                for split in 0..=head.len() {
                    let limits = Limits::default();
                    let (mut fast, mut slow) = (Scanner::default(), Scanner::default());
                    let a = (
                        fast.scan(&head[..split], &limits, tab),
                        fast.scan(head, &limits, tab),
                    );
                    let b = (
                        slow.scan_bytewise(&head[..split], &limits, tab),
                        slow.scan_bytewise(head, &limits, tab),
                    );
                    assert_eq!(a, b, "{head:?} split at {split}");
                }
            }
        }
    }
}
