//! The signals Portico answers: SIGTERM and SIGINT stop it (after the
//! grace the core gives), SIGHUP reloads the configuration, SIGUSR1 opens
//! the log files again (logrotate). A handler only
//! sets a flag and writes a byte to a pipe; the runtime waits on the pipe's
//! other end as on any socket (`portico`: in its event loop;
//! `portico-threaded`: on a thread of its own) and then asks the flags
//! which signal came — the byte says nothing about that.

use std::io::{self, Read};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which signals came since the runtime last asked.
#[derive(Default)]
pub struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    reopen: Arc<AtomicBool>,
}

impl Signals {
    /// Installs the handlers; the pipe end that becomes readable when a
    /// signal comes (blocking: a runtime that polls it makes it
    /// non-blocking). Before anything listens, so that a signal that comes
    /// early is kept, not fatal. One pipe for the four signals: two
    /// descriptors in all, which a process short of them can spare.
    pub fn install() -> Result<(Signals, UnixStream), String> {
        let err = |e: io::Error| format!("cannot set up signals: {e}");
        let (rx, tx) = UnixStream::pair().map_err(err)?;
        // The handler must never block; its end stays open for the
        // process's life.
        tx.set_nonblocking(true).map_err(err)?;
        let tx = tx.into_raw_fd();
        let flags = Signals::default();
        for (sig, flag) in [
            (signal_hook::consts::SIGTERM, &flags.stop),
            (signal_hook::consts::SIGINT, &flags.stop),
            (signal_hook::consts::SIGHUP, &flags.reload),
            (signal_hook::consts::SIGUSR1, &flags.reopen),
        ] {
            let flag = flag.clone();
            let action = move || {
                // The flag first: whoever the byte wakes must see it.
                flag.store(true, Ordering::SeqCst);
                // SAFETY: send(2) is async-signal-safe, on a descriptor
                // that stays open; a full pipe already wakes the reader.
                unsafe { libc::send(tx, b"X".as_ptr().cast(), 1, libc::MSG_DONTWAIT) };
            };
            // SAFETY: the action only stores to an atomic and calls send(2).
            unsafe { signal_hook::low_level::register(sig, action) }.map_err(err)?;
        }
        Ok((flags, rx))
    }

    /// Reads the wake-up bytes a non-blocking `wake` holds.
    pub fn drain(wake: &mut impl Read) {
        let mut buf = [0u8; 64];
        loop {
            match wake.read(&mut buf) {
                Ok(n) if n > 0 => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
    }

    /// A SIGHUP came (once per asking).
    pub fn reload(&self) -> bool {
        self.reload.swap(false, Ordering::SeqCst)
    }

    /// A SIGUSR1 came (once per asking).
    pub fn reopen(&self) -> bool {
        self.reopen.swap(false, Ordering::SeqCst)
    }

    /// A SIGTERM or SIGINT came (once per asking).
    pub fn stop(&self) -> bool {
        self.stop.swap(false, Ordering::SeqCst)
    }
}
