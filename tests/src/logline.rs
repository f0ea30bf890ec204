//! Strict readers for the access log: the text line of SPEC.md and the
//! one-object-per-line JSON form.

use std::net::SocketAddr;

/// One text access-log line, split into its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLine {
    pub time: String,
    pub service: String,
    pub client: SocketAddr,
    pub user: String,
    pub method: String,
    pub target: String,
    pub destination: String,
    pub status: String,
    pub up: u64,
    pub down: u64,
    /// Seconds with exactly three decimals, without the `s`.
    pub duration: String,
}

/// `2026-11-23T19:30:00.123Z`: exactly that shape.
pub fn is_timestamp(s: &str) -> bool {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == SHAPE.len()
        && s.bytes().zip(SHAPE).all(|(c, &p)| match p {
            b'd' => c.is_ascii_digit(),
            other => c == other,
        })
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `1.234s`: digits, a dot, exactly three digits, `s`.
pub fn is_duration(s: &str) -> bool {
    let Some(num) = s.strip_suffix('s') else {
        return false;
    };
    let Some((int, frac)) = num.split_once('.') else {
        return false;
    };
    digits(int) && frac.len() == 3 && digits(frac)
}

/// Parses a text line: `TIME SERVICE CLIENT USER METHOD TARGET DESTINATION
/// STATUS up=N down=M D.DDDs`, single spaces, nothing before or after.
pub fn parse_text_line(line: &str) -> Result<AccessLine, String> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 11 {
        return Err(format!(
            "{} space-separated fields, want 11: {line:?}",
            f.len()
        ));
    }
    if !is_timestamp(f[0]) {
        return Err(format!("bad timestamp {:?} in {line:?}", f[0]));
    }
    let client: SocketAddr = f[2]
        .parse()
        .map_err(|_| format!("client {:?} is not address:port in {line:?}", f[2]))?;
    let num = |field: &str, key: &str| -> Result<u64, String> {
        field
            .strip_prefix(key)
            .filter(|v| digits(v))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("field {field:?} is not {key}N in {line:?}"))
    };
    let up = num(f[8], "up=")?;
    let down = num(f[9], "down=")?;
    if !is_duration(f[10]) {
        return Err(format!("duration {:?} is not D.DDDs in {line:?}", f[10]));
    }
    for (i, v) in f.iter().enumerate() {
        if v.is_empty() {
            return Err(format!("field {i} is empty in {line:?}"));
        }
    }
    Ok(AccessLine {
        time: f[0].into(),
        service: f[1].into(),
        client,
        user: f[3].into(),
        method: f[4].into(),
        target: f[5].into(),
        destination: f[6].into(),
        status: f[7].into(),
        up,
        down,
        duration: f[10].trim_end_matches('s').into(),
    })
}

/// A JSON scalar (the access log has no nested values).
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Str(String),
    /// The number as written.
    Num(String),
    Bool(bool),
    Null,
}

impl Json {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(n) => n.parse().ok(),
            _ => None,
        }
    }
}

/// Parses one flat JSON object (string, number, boolean and null values)
/// filling the whole line; keys in order of appearance.
pub fn parse_json_object(line: &str) -> Result<Vec<(String, Json)>, String> {
    let mut p = JsonParser {
        s: line.as_bytes(),
        i: 0,
    };
    let obj = p
        .object()
        .map_err(|e| format!("{e} at byte {} of {line:?}", p.i))?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing bytes at {} in {line:?}", p.i));
    }
    Ok(obj)
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?}", c as char))
        }
    }

    fn object(&mut self) -> Result<Vec<(String, Json)>, String> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.expect(b':')?;
            self.ws();
            let v = self.value()?;
            out.push((k, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err("expected ',' or '}'".into()),
            }
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        match self.peek() {
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b'n') => self.word("null", Json::Null),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.peek().is_some_and(|c| {
                    c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-')
                }) {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                Ok(Json::Num(n.to_string()))
            }
            _ => Err("expected a scalar value".into()),
        }
    }

    fn word(&mut self, w: &str, v: Json) -> Result<Json, String> {
        if self.s[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err(format!("expected {w}"))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        if self.peek() != Some(b'"') {
            return Err("expected a string".into());
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += 1;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let hex = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
                            let hex = std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                            let cp = u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                            self.i += 4;
                            let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                            let mut b = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                        }
                        _ => return Err("bad escape".into()),
                    }
                }
                c if c < 0x20 => return Err("control byte in a string".into()),
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        let l = parse_text_line(
            "2026-11-23T19:30:00.123Z web 192.168.1.5:53211 alice CONNECT example.com:443 \
             93.184.216.34:443 200 up=1234 down=56789 1.234s",
        )
        .expect("the SPEC example");
        assert_eq!(l.up, 1234);
        assert_eq!(l.down, 56789);
        assert_eq!(l.duration, "1.234");
        assert_eq!(l.user, "alice");
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for bad in [
            "2026-11-23T19:30:00.12Z web 1.2.3.4:5 - TCP a b ok up=1 down=2 1.234s",
            "2026-11-23T19:30:00.123Z web 1.2.3.4:5 - TCP a b ok up=1 down=2 1.23s",
            "2026-11-23T19:30:00.123Z web 1.2.3.4:5 - TCP a b ok up=1 down=2 1.234s ",
            "2026-11-23T19:30:00.123Z web 1.2.3.4:5 - TCP a b ok up=x down=2 1.234s",
            "2026-11-23T19:30:00.123Z web 1.2.3.4:5  TCP a b ok up=1 down=2 1.234s",
        ] {
            assert!(parse_text_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_object_parses() {
        let o = parse_json_object(r#"{"a":"x\"y","b":12,"c":null,"d":true}"#).expect("valid");
        assert_eq!(o[0], ("a".into(), Json::Str("x\"y".into())));
        assert_eq!(o[1].1.as_u64(), Some(12));
        assert_eq!(o[2].1, Json::Null);
        assert!(parse_json_object(r#"{"a":1} x"#).is_err());
        assert!(parse_json_object(r#"{"a":[1]}"#).is_err());
    }
}
