//! What the process around the tables decides, for a runtime to carry out:
//! whom it runs as once its listeners are open ([`privileges`]), and what it
//! tells a service manager such as systemd ([`Notice`], [`StatusReport`]).
//!
//! The runtime brings the facts only it can read (the effective user id)
//! and does the syscalls; the choices are here, where they are tested.

use std::time::Duration;

use crate::config::{Config, ListenSide};

/// Whom the process runs as once every listener is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privileges {
    /// Stay as started.
    Keep,
    /// Switch to `user` and `group` (none: the user's primary group),
    /// clearing the supplementary groups and keeping only the capability
    /// to open ports below 1024, so that a reload can still open them.
    Drop { user: String, group: Option<String> },
}

/// What a process started with effective user id `euid` does about its
/// privileges under `config`, or why it must not start (the message for
/// the runtime-failure exit).
///
/// Only root switches: a process started as another user (for instance
/// by systemd's `User=` with `AmbientCapabilities=`) has nothing to give
/// up that `[process] user` could name. Root refuses to serve the
/// external side without `user`: a flaw in a service on the Internet side
/// must not come with root's powers.
pub fn privileges(config: &Config, euid: u32) -> Result<Privileges, String> {
    if euid != 0 {
        return Ok(Privileges::Keep);
    }
    if let Some(user) = &config.process.user {
        return Ok(Privileges::Drop {
            user: user.clone(),
            group: config.process.group.clone(),
        });
    }
    match external_service(config) {
        Some(s) => Err(format!(
            "refusing to run as root with service '{}' on the external side; set \
             [process] user = \"portico\" (an unprivileged user; group too if you like) so \
             that Portico gives up root once its ports are open",
            s.name
        )),
        None => Ok(Privileges::Keep),
    }
}

/// Why a configuration read again (SIGHUP) cannot be taken: the process
/// still has root's powers (`root`: it started as root and gave nothing
/// up) and the file has a service on the external side. A `[process]
/// user` the file names now takes effect only at the next start, so it
/// does not help here. `None`: it can be taken.
pub fn reload_refusal(config: &Config, root: bool) -> Option<String> {
    if !root {
        return None;
    }
    let s = external_service(config)?;
    Some(match config.process.user {
        None => format!(
            "refusing to serve service '{}' on the external side as root; set [process] \
             user = \"portico\" and restart Portico, so that it gives up root once its ports \
             are open",
            s.name
        ),
        Some(_) => format!(
            "refusing to serve service '{}' on the external side as root; [process] user \
             takes effect at the next start: restart Portico",
            s.name
        ),
    })
}

fn external_service(config: &Config) -> Option<&crate::config::Service> {
    config
        .services
        .iter()
        .find(|s| s.side == ListenSide::External)
}

/// A warning for a reload that changes `[process]`: whom the process runs
/// as is settled at start.
pub fn reload_warning(old: &Config, new: &Config) -> Option<String> {
    (old.process != new.process).then(|| {
        "[process] changed; the user and group switched to are chosen at start, so the \
         change takes effect at the next start"
            .to_string()
    })
}

/// What the process tells a service manager (systemd's `sd_notify`
/// protocol, when `NOTIFY_SOCKET` names one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Every listener is open (and privileges are given up): serving.
    Ready,
    /// A configuration read again is being taken over (SIGHUP); `Ready`
    /// follows.
    Reloading,
    /// Shutting down (SIGTERM, SIGINT).
    Stopping,
    /// A line for `systemctl status`.
    Status(String),
}

/// How often the runtime asks [`StatusReport::line`] whether the status
/// line should change: often enough for a person looking, rarely enough to
/// cost nothing.
pub const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The `STATUS=` line naming the connections open, sent when the count
/// has changed since it was last sent.
#[derive(Debug, Default)]
pub struct StatusReport {
    sent: Option<usize>,
}

impl StatusReport {
    pub fn new() -> Self {
        StatusReport::default()
    }

    /// The status line for `open` connections, when it differs from the
    /// last one given.
    pub fn line(&mut self, open: usize) -> Option<String> {
        if self.sent == Some(open) {
            return None;
        }
        self.sent = Some(open);
        Some(status_text(open))
    }
}

/// `serving; N connection(s) open`.
pub fn status_text(open: usize) -> String {
    let s = if open == 1 { "" } else { "s" };
    format!("serving; {open} connection{s} open")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const INTERNAL: &str = r#"
[network]
internal = ["127.0.0.1"]
external = ["127.0.0.2"]
[[service]]
name = "web"
kind = "http"
port = 8080
"#;

    fn external() -> String {
        format!(
            "{INTERNAL}\n[[service]]\nname = \"in\"\nkind = \"mapped\"\nside = \"external\"\n\
             port = 2525\ndestination = \"10.0.0.1:25\"\n"
        )
    }

    #[test]
    fn root_with_a_user_drops() {
        let text = format!("[process]\nuser = \"portico\"\n{}", external());
        let c = parse(&text, "f").unwrap();
        assert_eq!(
            privileges(&c, 0),
            Ok(Privileges::Drop {
                user: "portico".into(),
                group: None
            })
        );
        let text = format!("[process]\nuser = \"a\"\ngroup = \"b\"\n{INTERNAL}");
        let c = parse(&text, "f").unwrap();
        assert_eq!(
            privileges(&c, 0),
            Ok(Privileges::Drop {
                user: "a".into(),
                group: Some("b".into())
            })
        );
    }

    #[test]
    fn root_without_a_user_refuses_only_the_external_side() {
        let c = parse(INTERNAL, "f").unwrap();
        assert_eq!(privileges(&c, 0), Ok(Privileges::Keep));
        let c = parse(&external(), "f").unwrap();
        let msg = privileges(&c, 0).unwrap_err();
        assert!(msg.contains("'in'"), "{msg}");
        assert!(msg.contains("[process] user"), "{msg}");
    }

    #[test]
    fn a_reload_as_root_refuses_the_external_side() {
        let c = parse(&external(), "f").unwrap();
        let msg = reload_refusal(&c, true).unwrap();
        assert!(
            msg.contains("'in'") && msg.contains("[process] user"),
            "{msg}"
        );
        assert_eq!(reload_refusal(&c, false), None);
        // A user named now does not help: it is switched to at start.
        let text = format!("[process]\nuser = \"portico\"\n{}", external());
        let c = parse(&text, "f").unwrap();
        let msg = reload_refusal(&c, true).unwrap();
        assert!(msg.contains("next start"), "{msg}");
        let c = parse(INTERNAL, "f").unwrap();
        assert_eq!(reload_refusal(&c, true), None);
    }

    #[test]
    fn not_root_keeps_what_it_has() {
        let c = parse(&external(), "f").unwrap();
        assert_eq!(privileges(&c, 1000), Ok(Privileges::Keep));
        let text = format!("[process]\nuser = \"portico\"\n{INTERNAL}");
        let c = parse(&text, "f").unwrap();
        assert_eq!(privileges(&c, 1000), Ok(Privileges::Keep));
    }

    #[test]
    fn a_changed_process_section_is_a_warning() {
        let old = parse(INTERNAL, "f").unwrap();
        let new = parse(&format!("[process]\nuser = \"x\"\n{INTERNAL}"), "f").unwrap();
        assert!(reload_warning(&old, &new).is_some());
        assert_eq!(reload_warning(&old, &old), None);
    }

    #[test]
    fn status_line_only_when_the_count_changes() {
        let mut r = StatusReport::new();
        assert_eq!(r.line(0).as_deref(), Some("serving; 0 connections open"));
        assert_eq!(r.line(0), None);
        assert_eq!(r.line(1).as_deref(), Some("serving; 1 connection open"));
        assert_eq!(r.line(1), None);
        assert_eq!(r.line(7).as_deref(), Some("serving; 7 connections open"));
    }
}
