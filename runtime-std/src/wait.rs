//! How a connection's thread waits: poll(2) on the connection's own
//! sockets, with no descriptor of its own (an epoll instance, its eventfd
//! and timerfd would cost three more per connection, and thousands of idle
//! connections run out of descriptors long before memory), and woken by a
//! signal sent to that thread alone when another thread has something for
//! it.
//!
//! The wake signal is blocked on every connection thread except inside
//! ppoll(2), which lets it through atomically: a wake that comes just
//! before the wait stays pending and ends the wait at once, so none is
//! lost. Its handler does nothing; what matters is that it interrupts
//! the wait.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The wake signal: the first real-time signal the C library leaves to
/// programs. Real-time signals have no meaning of their own, so one sent
/// from outside only wakes a thread for nothing.
fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_wake(_: libc::c_int) {}

/// Installs the wake signal's (empty) handler: once, before any thread
/// that may be woken starts.
pub fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid empty one; the handler does
    // nothing, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Blocks the wake signal on the calling thread (and on the threads it
/// starts from now on); the mask to wait with, which lets it through.
pub fn block() -> libc::sigset_t {
    // SAFETY: plain signal-set calls on sets owned here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal());
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        libc::sigdelset(&mut old, signal());
        old
    }
}

/// Waits until one of `fds` is ready or the wake signal comes (then
/// `Err` of kind `Interrupted`): how many are ready.
pub fn poll(fds: &mut [libc::pollfd], mask: &libc::sigset_t) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of its length; `mask` a valid set.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            std::ptr::null(),
            mask,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Wakes one connection thread: a signal to it, only when it was not
/// woken already since it last looked for commands.
pub struct Waker {
    /// The thread, set once it is started (before it is handed anything).
    thread: OnceLock<libc::pthread_t>,
    woken: AtomicBool,
}

impl Waker {
    pub fn new() -> Waker {
        Waker {
            thread: OnceLock::new(),
            woken: AtomicBool::new(false),
        }
    }

    /// The thread this wakes; it must never end while it may be woken
    /// (a connection thread goes back to the pool, it never exits).
    pub fn set_thread(&self, thread: libc::pthread_t) {
        let _ = self.thread.set(thread);
    }

    /// After queuing a command for the thread.
    pub fn wake(&self) {
        if !self.woken.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                // SAFETY: the thread never exits (see `set_thread`).
                unsafe { libc::pthread_kill(*t, signal()) };
            }
        }
    }

    /// On the thread, before it looks for commands: wakes from here on
    /// signal again. (A read-modify-write, so that what a waker queued
    /// before its own swap is seen by the look that follows.)
    pub fn clear(&self) {
        self.woken.swap(false, Ordering::AcqRel);
    }
}
