//! Strict readers for the access log: the text line of the access log reference and the
//! one-object-per-line JSON form (parsed by [`crate::json`]).

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
    /// The cause after ` err=`, when the line has one.
    pub err: Option<String>,
    /// The number after ` rule=` (the rule that decided), when the line
    /// has one.
    pub rule: Option<u32>,
    /// The parent proxy after ` via=`, when the line has one.
    pub via: Option<String>,
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
/// STATUS up=N down=M D.DDDs`, then ` rule=N`, ` via=NAME` and ` err=CAUSE`
/// each when there is one, in that order; single spaces, nothing before
/// or after.
pub fn parse_text_line(line: &str) -> Result<AccessLine, String> {
    let mut f: Vec<&str> = line.split(' ').collect();
    // From the end: ` rule=N via=NAME err=CAUSE`, each only when it
    // applies, always in that order.
    let mut err = None;
    if let Some(cause) = f.last().and_then(|x| x.strip_prefix("err=")) {
        if cause.is_empty() {
            return Err(format!("field \"err=\" names no cause in {line:?}"));
        }
        err = Some(cause.to_string());
        f.pop();
    }
    let mut via = None;
    if let Some(v) = f.last().and_then(|x| x.strip_prefix("via=")) {
        if v.is_empty() {
            return Err(format!("field \"via=\" names no parent in {line:?}"));
        }
        via = Some(v.to_string());
        f.pop();
    }
    let mut rule = None;
    if let Some(n) = f.last().and_then(|x| x.strip_prefix("rule=")) {
        // A rule number counts from 1, written without leading zeros.
        match n.parse::<u32>() {
            Ok(v) if digits(n) && v >= 1 && !n.starts_with('0') => rule = Some(v),
            _ => return Err(format!("field \"rule={n}\" is not rule=N in {line:?}")),
        }
        f.pop();
    }
    if f.len() != 11 {
        return Err(format!(
            "{} space-separated fields, want 11 and then rule=, via=, err= as they apply: {line:?}",
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
        err,
        rule,
        via,
    })
}

pub use crate::json::Json;

/// Parses one flat JSON object (string, number, boolean and null values)
/// filling the whole line; keys in order of appearance.
pub fn parse_json_object(line: &str) -> Result<Vec<(String, Json)>, String> {
    match crate::json::parse_json(line) {
        Ok(Json::Obj(kv)) => {
            if let Some((k, _)) = kv
                .iter()
                .find(|(_, v)| matches!(v, Json::Arr(_) | Json::Obj(_)))
            {
                return Err(format!("the value of {k:?} is not a scalar in {line:?}"));
            }
            Ok(kv)
        }
        Ok(_) => Err(format!("not a JSON object: {line:?}")),
        Err(e) => Err(format!("{e} in {line:?}")),
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
        .expect("the reference example");
        assert_eq!(l.up, 1234);
        assert_eq!(l.down, 56789);
        assert_eq!(l.duration, "1.234");
        assert_eq!(l.user, "alice");
        assert_eq!((l.err, l.rule), (None, None));
    }

    #[test]
    fn rule_then_err() {
        let base = "2026-11-23T19:30:00.123Z web 1.2.3.4:5 - CONNECT a:443 - 403 up=1 down=2 \
                    0.001s";
        let l = parse_text_line(&format!("{base} rule=12 err=denied")).expect("rule and err");
        assert_eq!((l.err.as_deref(), l.rule), (Some("denied"), Some(12)));
        let l = parse_text_line(&format!("{base} rule=1")).expect("rule alone");
        assert_eq!((l.err, l.rule), (None, Some(1)));
        let l = parse_text_line(&format!("{base} rule=2 via=corp err=parent-failed"))
            .expect("rule, via and err");
        assert_eq!(
            (l.rule, l.via.as_deref(), l.err.as_deref()),
            (Some(2), Some("corp"), Some("parent-failed"))
        );
        for bad in [
            "rule=",
            "rule=0",
            "rule=01",
            "rule=x",
            "err=denied rule=1",
            "err=",
            "err=denied via=up",
            "via=up rule=1",
        ] {
            assert!(parse_text_line(&format!("{base} {bad}")).is_err(), "{bad}");
        }
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
