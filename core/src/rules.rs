//! Access rules (placeholder while the full engine lands: allows everything
//! only when there are no rules, denies otherwise).
use std::net::IpAddr;

use crate::config::Rule;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wall {
    pub unix_secs: i64,
    pub utc_offset_secs: i32,
}

pub struct Query<'a> {
    pub service: &'a str,
    pub client: IpAddr,
    pub user: Option<&'a str>,
    pub host: Option<&'a str>,
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        rule: Option<usize>,
        rate: Option<u64>,
    },
    Deny {
        rule: Option<usize>,
    },
}

pub fn check(rules: &[Rule], _q: &Query, _wall: Wall) -> Verdict {
    if rules.is_empty() {
        Verdict::Allow {
            rule: None,
            rate: None,
        }
    } else {
        Verdict::Deny { rule: None }
    }
}

pub fn check_early(rules: &[Rule], _service: &str, _client: IpAddr, _wall: Wall) -> Verdict {
    if rules.is_empty() {
        Verdict::Allow {
            rule: None,
            rate: None,
        }
    } else {
        Verdict::Deny { rule: None }
    }
}

pub fn needs_address(_rules: &[Rule]) -> bool {
    false
}
