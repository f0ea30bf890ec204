//! The `config` target: the bytes, when they are UTF-8, as a configuration
//! file; every configuration accepted is checked against the invariants
//! [`crate::config`] documents, and a table over it must ask for exactly
//! its listeners.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{self, Config, ListenSide, ServiceKind};
use crate::sim::runtime::Runtime;
use crate::table::listening_lines;
use crate::Action;

/// Parses `data` as a configuration file when it is UTF-8 and checks the
/// invariants [`crate::config`] documents for every configuration
/// [`crate::config::parse`] accepts.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for checked in [true, false] {
        let result = if checked {
            config::parse(text, "fuzz.toml")
        } else {
            config::parse_unchecked_kinds(text, "fuzz.toml")
        };
        match result {
            Ok(c) => check_config(&c, checked),
            Err(e) => {
                let lines = text.matches('\n').count() + 1;
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "error line {} of {lines}",
                    e.line
                );
                assert!(e.column >= 1, "error column {}", e.column);
                assert!(!e.message.is_empty(), "empty error message");
                assert_eq!(e.file, "fuzz.toml");
                let shown = e.to_string();
                assert!(shown.starts_with("fuzz.toml:"), "error shown as {shown:?}");
            }
        }
    }
}

fn check_config(c: &Config, checked: bool) {
    let l = &c.limits;
    let year = Duration::from_secs(365 * 24 * 3600);
    for (name, d) in [
        ("connect_timeout", l.connect_timeout),
        ("handshake_timeout", l.handshake_timeout),
        ("idle_timeout", l.idle_timeout),
        ("udp_idle_timeout", l.udp_idle_timeout),
    ] {
        assert!(d > Duration::ZERO && d <= year, "limits.{name} = {d:?}");
    }
    assert!(l.shutdown_grace <= year, "limits.shutdown_grace");
    assert!(
        (config::MIN_BUFFER..=config::MAX_BUFFER).contains(&l.buffer),
        "limits.buffer = {}",
        l.buffer
    );
    assert!(
        l.max_connections >= 1 && l.max_per_client >= 1,
        "limits counts"
    );
    if let Some(w) = c.runtime.workers {
        assert!(
            (1..=config::MAX_WORKERS).contains(&w),
            "runtime.workers = {w}"
        );
    }

    let n = &c.network;
    assert!(!n.internal.is_empty(), "network.internal is empty");
    for (i, a) in n.internal.iter().enumerate() {
        assert!(!n.internal[..i].contains(a), "network.internal repeats {a}");
        assert!(!n.external.contains(a), "{a} is both internal and external");
    }

    assert!(!c.services.is_empty(), "no service");
    let mut listens: Vec<(SocketAddr, config::Transport)> = Vec::new();
    for (i, s) in c.services.iter().enumerate() {
        assert!(
            c.services[..i].iter().all(|o| o.name != s.name),
            "service name {:?} twice",
            s.name
        );
        assert!(
            !s.listen.is_empty(),
            "service {:?} has no listen address",
            s.name
        );
        let side_addrs = match s.side {
            ListenSide::Internal => &n.internal,
            ListenSide::External => &n.external,
        };
        for a in &s.listen {
            assert_ne!(a.port(), 0, "service {:?} listens on port 0", s.name);
            assert!(
                side_addrs.contains(&a.ip()),
                "service {:?} listens on {a}, not an address of its side",
                s.name
            );
            for (o, p) in &listens {
                let same_ip = o.ip() == a.ip()
                    || (o.ip().is_unspecified() && o.is_ipv4() == a.is_ipv4())
                    || (a.ip().is_unspecified() && o.is_ipv4() == a.is_ipv4());
                assert!(
                    !(*p == s.protocol && o.port() == a.port() && same_ip),
                    "listen addresses {o} and {a} overlap"
                );
            }
            listens.push((*a, s.protocol));
        }
        let needs = matches!(
            s.kind,
            ServiceKind::Mapped | ServiceKind::Smtp | ServiceKind::Nntp
        );
        let takes_none = matches!(
            s.kind,
            ServiceKind::Http | ServiceKind::Socks | ServiceKind::Auto | ServiceKind::Status
        );
        if needs {
            assert!(s.destination.is_some(), "{:?} needs a destination", s.name);
        }
        if takes_none {
            assert!(s.destination.is_none(), "{:?} takes no destination", s.name);
        }
        if let Some(d) = &s.destination {
            assert_ne!(d.port, 0, "destination port 0");
        }
        if s.side == ListenSide::External {
            assert!(
                s.kind == ServiceKind::Mapped || (s.open_proxy && s.kind != ServiceKind::Status),
                "service {:?} is external but neither mapped nor an open proxy",
                s.name
            );
        }
        if s.auth {
            assert!(!c.users.is_empty(), "auth without users");
        }
        if checked {
            assert!(
                config::implemented_kind(s.kind, s.protocol),
                "unimplemented kind {} accepted",
                s.kind
            );
        }
    }
    for (i, u) in c.users.iter().enumerate() {
        assert!(!u.name.is_empty(), "empty user name");
        assert!(
            !u.name.contains(':') && !u.name.chars().any(char::is_control),
            "user name {:?}",
            u.name
        );
        assert!(
            c.users[..i].iter().all(|o| o.name != u.name),
            "user {:?} twice",
            u.name
        );
    }
    for r in &c.rules {
        for s in &r.services {
            assert!(c.service(s).is_some(), "rule names unknown service {s:?}");
        }
        for u in &r.users {
            assert!(c.user(u).is_some(), "rule names unknown user {u:?}");
        }
        if r.rate.is_some() {
            assert_eq!(r.action, config::RuleAction::Allow, "rate on a deny rule");
        }
    }

    let lines = listening_lines(c);
    assert_eq!(
        lines.len(),
        listens.len(),
        "one listening line per listen address"
    );
    assert!(lines.iter().all(|l| l.starts_with("listening: ")));
    let _ = config::warnings(c);

    // A table over it asks for exactly those listeners.
    let mut rt = Runtime::new(c.clone(), 0, Instant::now());
    let mut listen_actions = 0;
    while let Some(a) = rt.poll() {
        // A UDP mapped port's socket is asked for with ListenUdp.
        if let Action::Listen { addr, .. } | Action::ListenUdp { addr, .. } = a {
            assert!(listens.iter().any(|(l, _)| *l == addr), "Listen on {addr}");
            listen_actions += 1;
        }
    }
    assert_eq!(
        listen_actions,
        listens.len(),
        "one Listen per listen address"
    );
}
