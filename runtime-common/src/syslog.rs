//! The local syslog socket (`"syslog"` as `[log] access` or `[log]
//! diagnostics`): one Unix datagram per line, RFC 3164 style,
//! `<PRI>Mmm dd hh:mm:ss portico[PID]: message`, facility daemon.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Facility `daemon` (3), as the priority's high bits.
const DAEMON: u8 = 3 << 3;

/// Severities (RFC 5424 numbers, which sd-daemon's `<N>` prefixes share).
pub const ERROR: u8 = 3;
pub const WARNING: u8 = 4;
pub const INFO: u8 = 6;
pub const DEBUG: u8 = 7;

/// A connected datagram socket to the syslog daemon.
pub struct Syslog {
    path: PathBuf,
    sock: UnixDatagram,
}

impl Syslog {
    /// Connects to the socket at `path` (opened at start, before the
    /// process gives up root, so that a socket only root may write to
    /// still serves).
    pub fn open(path: &Path) -> io::Result<Syslog> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        Ok(Syslog {
            path: path.to_path_buf(),
            sock,
        })
    }

    /// Sends `message` with `severity`. A daemon restarted since (its
    /// socket made anew) is connected to again, once.
    pub fn send(&mut self, severity: u8, message: &str) -> io::Result<()> {
        let line = format_line(severity, message, SystemTime::now());
        match self.sock.send(line.as_bytes()) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::ENOENT)
                ) =>
            {
                let sock = UnixDatagram::unbound()?;
                sock.connect(&self.path)?;
                self.sock = sock;
                self.sock.send(line.as_bytes()).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }
}

/// One datagram's text: `<PRI>Mmm dd hh:mm:ss portico[PID]: message`, the
/// time local as RFC 3164 has it.
pub fn format_line(severity: u8, message: &str, at: SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as libc::time_t);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: localtime_r writes only into the tm we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { libc::localtime_r(&secs, &mut tm) }.is_null();
    let stamp = if ok {
        let month = MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("Jan");
        format!(
            "{month} {:>2} {:02}:{:02}:{:02}",
            tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec
        )
    } else {
        "Jan  1 00:00:00".to_string()
    };
    format!(
        "<{}>{stamp} portico[{}]: {message}",
        DAEMON | severity,
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        let l = format_line(WARNING, "hello", SystemTime::now());
        assert!(l.starts_with("<28>"), "{l}");
        let rest = &l[4..];
        // `Mmm dd hh:mm:ss ` is 16 bytes.
        assert_eq!(&rest[3..4], " ", "{l}");
        assert_eq!(&rest[15..16], " ", "{l}");
        assert!(
            rest[16..].starts_with(&format!("portico[{}]: hello", std::process::id())),
            "{l}"
        );
    }
}
