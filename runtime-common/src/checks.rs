//! Password checks: argon2, which takes tens of milliseconds of CPU and
//! about 19 MiB of memory each. Neither an event loop nor a thread holding
//! the core's lock may run one, so both runtimes hand them to a small pool
//! of threads ([`Checkers`]); the pool's size also bounds the memory that
//! many logins at once take. `portico` gets each verdict back through its
//! loop's [`Inbox`] (as resolved names); `portico-threaded`'s connection
//! threads wait for theirs ([`Checkers::check`]), without the lock.

use std::sync::mpsc::{sync_channel, Sender, SyncSender};
use std::sync::Arc;

use portico_core::auth::{verify_password, Secret};
use portico_core::{ConnId, Event};

use crate::resolver::Inbox;

/// How many threads check passwords: one per core, at most four (more
/// would only take memory from the rest of the machine).
pub fn threads(cores: usize) -> usize {
    cores.clamp(1, 4)
}

enum Reply {
    /// Told to an event loop as [`Event::PasswordChecked`].
    Inbox(ConnId, Arc<Inbox>),
    /// Handed to a thread that waits for it.
    Wait(SyncSender<bool>),
}

struct Job {
    phc: String,
    password: Secret,
    reply: Reply,
}

/// A fixed pool of password-checking threads, shared by every asker.
pub struct Checkers {
    jobs: Sender<Job>,
}

/// The threads of a [`Checkers`] pool, not started yet (see
/// [`crate::pool`]: started once privileges are given up).
pub struct Unstarted(crate::pool::Unstarted<Job>);

impl Unstarted {
    /// Starts `threads` threads.
    pub fn start(self, threads: usize) -> std::io::Result<()> {
        self.0
            .start(threads, "password", yield_to_relaying, |job: Job| {
                let ok = verify_password(&job.phc, &job.password.0);
                match job.reply {
                    Reply::Inbox(conn, to) => to.answer(Event::PasswordChecked { conn, ok }),
                    // The asker may have gone; nobody is left to tell.
                    Reply::Wait(tx) => {
                        let _ = tx.send(ok);
                    }
                }
            })
    }
}

/// A check gives way to the threads that relay: a flood of logins must
/// not slow everyone's traffic or the status page. Nice 10 for the calling
/// thread only (Linux applies setpriority to the one thread it names); a
/// failure leaves it as it was, which is still correct, only less kind.
fn yield_to_relaying() {
    // SAFETY: gettid and setpriority touch no memory of ours.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

impl Checkers {
    /// A pool whose threads start with [`Unstarted::start`].
    pub fn new() -> (Checkers, Unstarted) {
        let (jobs, threads) = crate::pool::new();
        (Checkers { jobs }, Unstarted(threads))
    }

    /// Asks for a check of `password` against `phc` for connection `conn`;
    /// the verdict goes to `to`. False when the pool is gone.
    pub fn ask(&self, conn: ConnId, phc: String, password: Secret, to: Arc<Inbox>) -> bool {
        self.jobs
            .send(Job {
                phc,
                password,
                reply: Reply::Inbox(conn, to),
            })
            .is_ok()
    }

    /// Checks `password` against `phc` on the pool and waits for the
    /// verdict; `None` when the pool is gone.
    pub fn check(&self, phc: String, password: Secret) -> Option<bool> {
        let (tx, rx) = sync_channel(1);
        self.jobs
            .send(Job {
                phc,
                password,
                reply: Reply::Wait(tx),
            })
            .ok()?;
        rx.recv().ok()
    }
}

impl Clone for Checkers {
    fn clone(&self) -> Self {
        Checkers {
            jobs: self.jobs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn verdicts_come_back_to_whoever_asked() {
        let phc = portico_core::auth::hash_password("pw", &[3; 16]).expect("hash");
        let (pool, threads) = Checkers::new();
        threads.start(2).expect("threads");
        assert_eq!(pool.check(phc.clone(), Secret(b"pw".to_vec())), Some(true));
        assert_eq!(pool.check(phc.clone(), Secret(b"no".to_vec())), Some(false));
        let (tx, rx) = channel();
        let inbox = Inbox::new(Arc::new(move || tx.send(()).is_ok()));
        let conn = ConnId::from_parts(3, 1);
        assert!(pool.ask(conn, phc, Secret(b"pw".to_vec()), inbox.clone()));
        rx.recv().expect("woken");
        assert_eq!(
            inbox.take(),
            vec![Event::PasswordChecked { conn, ok: true }]
        );
    }
}
