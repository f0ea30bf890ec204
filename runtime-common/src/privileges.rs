//! Giving up root once every listener is open: the syscalls for the core's
//! [`Privileges::Drop`].
//!
//! Capabilities are per thread in Linux, and a thread starts with its
//! creator's; glibc's `setuid`/`setgid`/`setgroups` change every thread,
//! but `capset` changes only the caller. So the runtimes call
//! [`Credentials::assume`] while the process has one thread, before they
//! start any other (workers, resolvers, connections' threads): every later
//! thread then starts from the reduced set.

use std::ffi::{CStr, CString};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use portico_core::process::Privileges;

/// CAP_NET_BIND_SERVICE: opening ports below 1024.
const CAP_NET_BIND_SERVICE: u32 = 10;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Why the process cannot become the configured user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "[process] user \"{0}\" does not exist on this system; create it (e.g. `useradd \
         --system --no-create-home portico`) or name an existing one"
    )]
    NoUser(String),
    #[error(
        "[process] group \"{0}\" does not exist on this system; create it (e.g. `groupadd \
         --system portico`) or name an existing one"
    )]
    NoGroup(String),
    #[error("cannot look up {what} \"{name}\": {error}")]
    Lookup {
        what: &'static str,
        name: String,
        error: io::Error,
    },
    #[error("cannot switch to user \"{user}\" and group \"{group}\" ({step}): {error}")]
    Switch {
        user: String,
        group: String,
        step: &'static str,
        error: io::Error,
    },
}

/// The user and group to switch to, looked up before anything listens so
/// that a name that does not exist stops the start at once.
#[derive(Debug, Clone)]
pub struct Credentials {
    user: String,
    group: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

impl Credentials {
    /// The credentials the core's decision names (`None`: keep those the
    /// process has).
    pub fn for_plan(privileges: &Privileges) -> Result<Option<Credentials>, PrivilegeError> {
        match privileges {
            Privileges::Keep => Ok(None),
            Privileges::Drop { user, group } => {
                Credentials::lookup(user, group.as_deref()).map(Some)
            }
        }
    }

    /// Looks up `user` and `group` (none: the user's primary group).
    pub fn lookup(user: &str, group: Option<&str>) -> Result<Credentials, PrivilegeError> {
        let (uid, primary) = passwd(user)?;
        let (group, gid) = match group {
            Some(g) => (g.to_string(), group_id(g)?),
            None => (
                group_name(primary).unwrap_or_else(|| primary.to_string()),
                primary,
            ),
        };
        Ok(Credentials {
            user: user.to_string(),
            group,
            uid,
            gid,
        })
    }

    /// Becomes the user and group, with no supplementary groups, keeping
    /// CAP_NET_BIND_SERVICE alone (permitted and effective). Call it while
    /// the process has a single thread (see the module docs).
    pub fn assume(&self) -> Result<(), PrivilegeError> {
        let fail = |step: &'static str| {
            let error = io::Error::last_os_error();
            PrivilegeError::Switch {
                user: self.user.clone(),
                group: self.group.clone(),
                step,
                error,
            }
        };
        // SAFETY: plain syscalls on integers and on a header and data
        // array of the layout capset(2) documents for version 3.
        unsafe {
            // Keep the permitted set across the change of user id, so that
            // one capability can be kept; cleared again below.
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                return Err(fail("prctl PR_SET_KEEPCAPS"));
            }
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(fail("setgroups"));
            }
            if libc::setgid(self.gid) != 0 {
                return Err(fail("setgid"));
            }
            if libc::setuid(self.uid) != 0 {
                return Err(fail("setuid"));
            }
            let mut header = CapHeader {
                version: CAPABILITY_VERSION_3,
                pid: 0,
            };
            let bit = 1u32 << CAP_NET_BIND_SERVICE;
            let data = [
                CapData {
                    effective: bit,
                    permitted: bit,
                    inheritable: 0,
                },
                CapData::default(),
            ];
            let header: *mut CapHeader = &mut header;
            if libc::syscall(libc::SYS_capset, header, data.as_ptr()) != 0 {
                return Err(fail("capset"));
            }
            if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 {
                return Err(fail("prctl PR_SET_KEEPCAPS"));
            }
        }
        ASSUMED.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn group(&self) -> &str {
        &self.group
    }
}

/// A buffer size for the reentrant lookups, as sysconf suggests.
fn lookup_buffer(key: libc::c_int) -> Vec<libc::c_char> {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(key) };
    vec![0; if n > 0 { n as usize } else { 16 * 1024 }]
}

fn c_name(what: &'static str, name: &str) -> Result<CString, PrivilegeError> {
    CString::new(name).map_err(|e| PrivilegeError::Lookup {
        what,
        name: name.to_string(),
        error: io::Error::new(io::ErrorKind::InvalidInput, e),
    })
}

/// `user`'s uid and primary gid.
fn passwd(user: &str) -> Result<(libc::uid_t, libc::gid_t), PrivilegeError> {
    let name = c_name("user", user)?;
    let mut buf = lookup_buffer(libc::_SC_GETPW_R_SIZE_MAX);
    loop {
        // SAFETY: getpwnam_r writes only into `pwd` and `buf` (of the
        // length given) and sets `found` to null or to `pwd`.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(PrivilegeError::NoUser(user.to_string())),
            0 => return Ok((pwd.pw_uid, pwd.pw_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            // "Not found" is sometimes said with one of these.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => {
                return Err(PrivilegeError::NoUser(user.to_string()))
            }
            e => {
                return Err(PrivilegeError::Lookup {
                    what: "user",
                    name: user.to_string(),
                    error: io::Error::from_raw_os_error(e),
                })
            }
        }
    }
}

/// `group`'s gid.
fn group_id(group: &str) -> Result<libc::gid_t, PrivilegeError> {
    let name = c_name("group", group)?;
    let mut buf = lookup_buffer(libc::_SC_GETGR_R_SIZE_MAX);
    loop {
        // SAFETY: as in `passwd`, for getgrnam_r.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Err(PrivilegeError::NoGroup(group.to_string())),
            0 => return Ok(grp.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => {
                return Err(PrivilegeError::NoGroup(group.to_string()))
            }
            e => {
                return Err(PrivilegeError::Lookup {
                    what: "group",
                    name: group.to_string(),
                    error: io::Error::from_raw_os_error(e),
                })
            }
        }
    }
}

/// The name of group `gid`, for messages.
fn group_name(gid: libc::gid_t) -> Option<String> {
    let mut buf = lookup_buffer(libc::_SC_GETGR_R_SIZE_MAX);
    // SAFETY: as in `group_id`, for getgrgid_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found = std::ptr::null_mut();
    let rc = unsafe { libc::getgrgid_r(gid, &mut grp, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || grp.gr_name.is_null() {
        return None;
    }
    // SAFETY: getgrgid_r succeeded: gr_name points at a NUL-terminated
    // string inside `buf`, which is still alive.
    let name = unsafe { CStr::from_ptr(grp.gr_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Set once [`Credentials::assume`] succeeded.
static ASSUMED: AtomicBool = AtomicBool::new(false);

/// Whether the process has root's powers: root, and nothing given up.
pub fn is_root() -> bool {
    euid() == 0 && !ASSUMED.load(Ordering::Relaxed)
}
