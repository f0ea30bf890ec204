//! Telling a service manager how the process is doing (systemd's
//! `sd_notify` protocol, through the `sd-notify` crate): the core's
//! [`Notice`]s, sent only when `NOTIFY_SOCKET` names a socket.

use std::time::Duration;

use portico_core::process::{Notice, StatusReport, STATUS_EVERY};
use portico_core::{Ledger, Level};
use sd_notify::NotifyState;

use crate::process::log;

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn wanted() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `notice` (nothing without `NOTIFY_SOCKET`). A manager that does
/// not hear is no reason to stop serving: a failure is a debug line.
pub fn tell(notice: &Notice) {
    if !wanted() {
        return;
    }
    let sent = match notice {
        Notice::Ready => sd_notify::notify(false, &[NotifyState::Ready]),
        // systemd 253 and later want the time of the request with it
        // (`Type=notify-reload`), and the others ignore it.
        Notice::Reloading => match NotifyState::monotonic_usec_now() {
            Ok(now) => sd_notify::notify(false, &[NotifyState::Reloading, now]),
            Err(_) => sd_notify::notify(false, &[NotifyState::Reloading]),
        },
        Notice::Stopping => sd_notify::notify(false, &[NotifyState::Stopping]),
        Notice::Status(text) => sd_notify::notify(false, &[NotifyState::Status(text)]),
    };
    if let Err(e) = sent {
        log(
            Level::Debug,
            &format!("cannot notify the service manager: {e}"),
        );
    }
}

/// Starts the thread that keeps the `STATUS=` line up to date with the
/// connections open in `ledger`'s tables: it looks every
/// [`STATUS_EVERY`] and sends the line when the count changed (at once
/// the first time). Nothing without `NOTIFY_SOCKET`.
pub fn start_status(ledger: Ledger) -> Result<(), String> {
    if !wanted() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || status_loop(&ledger, STATUS_EVERY))
        .map(|_| ())
        .map_err(|e| format!("cannot start the status thread: {e}"))
}

fn status_loop(ledger: &Ledger, every: Duration) {
    let mut report = StatusReport::new();
    loop {
        if let Some(line) = report.line(ledger.open()) {
            tell(&Notice::Status(line));
        }
        std::thread::sleep(every);
    }
}
