//! Header fields: their storage, and the parsing of the fields that decide
//! framing and connection handling (Content-Length, Transfer-Encoding,
//! Connection).

use std::fmt;
use std::ops::Range;

use super::error::ErrorKind;

/// The header fields of one head, in the order received.
///
/// Holds one copy of the head's bytes and, per field, where its name and value
/// lie in it and which `Name` it has; so its size is bounded by the head
/// limit. Values are trimmed of
/// surrounding whitespace; names keep the case they were sent with.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    raw: Box<[u8]>,
    fields: Vec<Span>,
    /// A bit per [`Name`] some field has: a lookup of one that is absent
    /// (most lookups) looks at no field.
    present: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    name: Range<usize>,
    value: Range<usize>,
    kind: Name,
}

/// The field names the proxy itself looks up, told apart once per head so
/// that lookups and the forwarding loop compare a byte, not a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Name {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    ProxyAuthorization,
    Te,
    Trailer,
    Upgrade,
    Via,
    Expect,
    MaxForwards,
}

impl Name {
    /// Every name but `Other`.
    #[cfg(test)]
    pub(crate) const KNOWN: [Name; 13] = [
        Name::Host,
        Name::ContentLength,
        Name::TransferEncoding,
        Name::Connection,
        Name::KeepAlive,
        Name::ProxyConnection,
        Name::ProxyAuthorization,
        Name::Te,
        Name::Trailer,
        Name::Upgrade,
        Name::Via,
        Name::Expect,
        Name::MaxForwards,
    ];

    /// The name `name` is (case-insensitive): its length and first letter
    /// leave at most one to compare.
    pub(crate) fn of(name: &[u8]) -> Name {
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        let kind = match (name.len(), first) {
            (2, b't') => Name::Te,
            (3, b'v') => Name::Via,
            (4, b'h') => Name::Host,
            (6, b'e') => Name::Expect,
            (7, b't') => Name::Trailer,
            (7, b'u') => Name::Upgrade,
            (10, b'c') => Name::Connection,
            (10, b'k') => Name::KeepAlive,
            (12, b'm') => Name::MaxForwards,
            (14, b'c') => Name::ContentLength,
            (16, b'p') => Name::ProxyConnection,
            (17, b't') => Name::TransferEncoding,
            (19, b'p') => Name::ProxyAuthorization,
            _ => return Name::Other,
        };
        let lower = kind.lowercase();
        // Only `name` needs lowercasing: the other side already is.
        if name.len() == lower.len()
            && name
                .iter()
                .zip(lower)
                .fold(0, |d, (&a, &b)| d | (a.to_ascii_lowercase() ^ b))
                == 0
        {
            kind
        } else {
            Name::Other
        }
    }

    /// The name in lowercase (empty for `Other`).
    pub(crate) fn lowercase(self) -> &'static [u8] {
        match self {
            Name::Other => b"",
            Name::Host => b"host",
            Name::ContentLength => b"content-length",
            Name::TransferEncoding => b"transfer-encoding",
            Name::Connection => b"connection",
            Name::KeepAlive => b"keep-alive",
            Name::ProxyConnection => b"proxy-connection",
            Name::ProxyAuthorization => b"proxy-authorization",
            Name::Te => b"te",
            Name::Trailer => b"trailer",
            Name::Upgrade => b"upgrade",
            Name::Via => b"via",
            Name::Expect => b"expect",
            Name::MaxForwards => b"max-forwards",
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// `s` as `&str` when it is ASCII (names are validated tokens, so always).
pub(crate) fn ascii_str(s: &[u8]) -> &str {
    std::str::from_utf8(s).unwrap_or("")
}

/// Whether `b` is a `tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'!' | b'#' | b'$' | b'%' | b'&' | b'\''
        | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Whether `s` is a non-empty token.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// `s` without leading and trailing SP / HT.
pub(crate) fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t');
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t');
    // An all-whitespace value becomes an empty slice at its own start, so it
    // still points into the head it came from.
    let (a, z) = match (start, end) {
        (Some(a), Some(z)) => (a, z + 1),
        _ => (0, 0),
    };
    s.get(a..z).unwrap_or_default()
}

/// The elements of a comma-separated list value, trimmed, empty ones kept.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

fn offset_in(outer: &[u8], inner: &[u8]) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

impl Headers {
    /// Builds the table from httparse's fields, which borrow from `head`.
    pub(crate) fn from_httparse(
        head: &[u8],
        parsed: &[httparse::Header<'_>],
    ) -> Result<Headers, ErrorKind> {
        let mut fields = Vec::with_capacity(parsed.len());
        let mut present = 0;
        for h in parsed {
            let name = offset_in(head, h.name.as_bytes()).ok_or(ErrorKind::MalformedHeader)?;
            let value = offset_in(head, trim_ows(h.value)).ok_or(ErrorKind::MalformedHeader)?;
            let kind = Name::of(h.name.as_bytes());
            present |= kind.bit();
            fields.push(Span { name, value, kind });
        }
        Ok(Headers {
            raw: head.into(),
            fields,
            present,
        })
    }

    /// The bytes of the head these fields came from (start line included).
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Number of fields.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// The fields as `(name, value)`, in the order received.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(move |s| {
            (
                ascii_str(self.raw.get(s.name.clone()).unwrap_or(&[])),
                self.raw.get(s.value.clone()).unwrap_or(&[]),
            )
        })
    }

    /// Each field's [`Name`], and where its name and value lie in
    /// [`Headers::raw`].
    pub(crate) fn spans(&self) -> impl Iterator<Item = (Name, Range<usize>, Range<usize>)> + '_ {
        self.fields
            .iter()
            .map(|s| (s.kind, s.name.clone(), s.value.clone()))
    }

    /// The values of every field called `name` (case-insensitive), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (kind, fields) = self.candidates(name.as_bytes());
        fields
            .iter()
            .filter(move |s| self.is(s, kind, name.as_bytes()))
            .map(|s| self.raw.get(s.value.clone()).unwrap_or(&[]))
    }

    /// The value of the first field called `name` (case-insensitive).
    #[cfg(test)]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let (kind, fields) = self.candidates(name.as_bytes());
        fields
            .iter()
            .find(|s| self.is(s, kind, name.as_bytes()))
            .map(|s| self.raw.get(s.value.clone()).unwrap_or(&[]))
    }

    /// The values of every field of a known kind, in order.
    pub(crate) fn values(&self, kind: Name) -> impl Iterator<Item = &[u8]> + '_ {
        let fields = if self.has(kind) {
            &self.fields[..]
        } else {
            &[]
        };
        fields
            .iter()
            .filter(move |s| s.kind == kind)
            .map(|s| self.raw.get(s.value.clone()).unwrap_or(&[]))
    }

    /// Whether some field is of a known kind.
    pub(crate) fn has(&self, kind: Name) -> bool {
        self.present & kind.bit() != 0
    }

    /// `name`'s kind, and the fields that may have it: none when it is a
    /// known name that no field has.
    fn candidates(&self, name: &[u8]) -> (Name, &[Span]) {
        let kind = Name::of(name);
        if kind != Name::Other && !self.has(kind) {
            (kind, &[])
        } else {
            (kind, &self.fields)
        }
    }

    /// Whether field `s` is called `name`, whose kind is `kind`.
    fn is(&self, s: &Span, kind: Name, name: &[u8]) -> bool {
        s.kind == kind
            && (kind != Name::Other
                || self
                    .raw
                    .get(s.name.clone())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name)))
    }

    /// How many fields are called `name` (case-insensitive).
    #[cfg(test)]
    pub fn count(&self, name: &str) -> usize {
        self.get_all(name).count()
    }

    /// Whether any field is called `name` (case-insensitive).
    #[cfg(test)]
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The values of every `kind` field joined with ", " (None if absent).
    pub(crate) fn joined(&self, kind: Name) -> Option<String> {
        let mut out: Option<String> = None;
        for v in self.values(kind) {
            let s = out.get_or_insert_with(String::new);
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&String::from_utf8_lossy(v));
        }
        out
    }
}

const SECRET_FIELDS: [&str; 3] = ["proxy-authorization", "authorization", "cookie"];

impl fmt::Debug for Headers {
    /// Values of credential-bearing fields are redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for (n, v) in self.iter() {
            if SECRET_FIELDS.iter().any(|s| n.eq_ignore_ascii_case(s)) {
                list.entry(&(n, "<redacted>"));
            } else {
                list.entry(&(n, String::from_utf8_lossy(v)));
            }
        }
        list.finish()
    }
}

/// The Content-Length of a message: `Ok(None)` if there is none.
///
/// Every field and every list element must be 1 to 19 ASCII digits (no sign,
/// no empty element, no whitespace inside); all must have the same numeric
/// value, which is the length (`5, 5` and `05` are both 5).
pub(crate) fn content_length(headers: &Headers) -> Result<Option<u64>, ErrorKind> {
    let mut length = None;
    for value in headers.values(Name::ContentLength) {
        for element in list_elements(value) {
            if element.is_empty()
                || element.len() > 19
                || !element.iter().all(|b| b.is_ascii_digit())
            {
                return Err(ErrorKind::BadContentLength);
            }
            let n = element
                .iter()
                .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            match length {
                Some(m) if m != n => return Err(ErrorKind::DifferingContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// What a Transfer-Encoding says, once it is known to end in `chunked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Codings {
    /// Some coding other than `chunked` is applied before it (`gzip, chunked`).
    pub others: bool,
}

/// Checks every Transfer-Encoding field: `Ok(None)` if there is none.
///
/// The codings of all fields, in order, must be tokens (parameters allowed on
/// codings other than `chunked`), `chunked` must appear exactly once, and last.
/// Coding names are case-insensitive. Empty list elements are skipped
/// (RFC 9110 §5.6.1) but a field with no coding at all is refused.
pub(crate) fn transfer_codings(headers: &Headers) -> Result<Option<Codings>, ErrorKind> {
    if !headers.has(Name::TransferEncoding) {
        return Ok(None);
    }
    let mut chunked = 0usize;
    let mut last_chunked = false;
    let mut others = false;
    for value in headers.values(Name::TransferEncoding) {
        for element in list_elements(value).filter(|e| !e.is_empty()) {
            let mut parts = element.splitn(2, |&b| b == b';');
            let name = trim_ows(parts.next().unwrap_or(&[]));
            let params = parts.next();
            if !is_token(name) {
                return Err(ErrorKind::BadTransferEncoding);
            }
            if name.eq_ignore_ascii_case(b"chunked") {
                if params.is_some() {
                    return Err(ErrorKind::BadTransferEncoding);
                }
                chunked += 1;
                last_chunked = true;
            } else {
                others = true;
                last_chunked = false;
            }
        }
    }
    if chunked > 1 {
        return Err(ErrorKind::ChunkedTwice);
    }
    if !last_chunked {
        return Err(ErrorKind::TransferEncodingNotChunked);
    }
    Ok(Some(Codings { others }))
}

/// The options of the Connection header fields (RFC 9110 §7.6.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `close` was named.
    pub close: bool,
    /// `keep-alive` was named.
    pub keep_alive: bool,
    /// `upgrade` was named.
    pub upgrade: bool,
    /// Every option named, lowercased, sorted and deduplicated: each also
    /// names a hop-by-hop field to remove when forwarding.
    pub tokens: Vec<String>,
}

impl ConnectionOptions {
    /// Collects the options of every Connection field. Elements that are not
    /// tokens name no field and are ignored. Naming Content-Length,
    /// Transfer-Encoding or Host (which would make a hop-by-hop-stripping
    /// recipient change the framing or the routing) is refused.
    pub(crate) fn parse(headers: &Headers) -> Result<ConnectionOptions, ErrorKind> {
        let mut opts = ConnectionOptions::default();
        for value in headers.values(Name::Connection) {
            for element in list_elements(value).filter(|e| is_token(e)) {
                // The usual options are told without lowercasing a copy.
                let known = [
                    ("close", &mut opts.close),
                    ("keep-alive", &mut opts.keep_alive),
                    ("upgrade", &mut opts.upgrade),
                ]
                .into_iter()
                .find(|(t, _)| element.eq_ignore_ascii_case(t.as_bytes()));
                let token = match known {
                    Some((t, flag)) => {
                        *flag = true;
                        t.to_owned()
                    }
                    None => ascii_str(element).to_ascii_lowercase(),
                };
                if matches!(
                    token.as_str(),
                    "content-length" | "transfer-encoding" | "host"
                ) {
                    return Err(ErrorKind::ConnectionNamesFramingHeader);
                }
                opts.tokens.push(token);
            }
        }
        opts.tokens.sort_unstable();
        opts.tokens.dedup();
        Ok(opts)
    }

    /// Whether the field `name` is named by a Connection option.
    #[cfg(test)]
    pub fn names(&self, name: &str) -> bool {
        self.names_raw(name.as_bytes())
    }

    pub(crate) fn names_raw(&self, name: &[u8]) -> bool {
        self.tokens
            .binary_search_by(|t| cmp_ignore_case(t, name))
            .is_ok()
    }
}

fn cmp_ignore_case(lower: &str, name: &[u8]) -> std::cmp::Ordering {
    lower
        .bytes()
        .cmp(name.iter().map(|b| b.to_ascii_lowercase()))
}
