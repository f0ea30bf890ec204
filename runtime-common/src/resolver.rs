//! Name resolution: getaddrinfo, which blocks. `portico-threaded` calls
//! [`resolve`] on the connection's own thread (it serves only that
//! connection, so it may wait); `portico`'s event loops must not wait, so
//! they hand names to a pool of threads ([`Resolvers`]) that answers each
//! to the loop that asked.

use std::net::ToSocketAddrs;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use portico_core::{ConnId, Event};

use crate::worker::Wake;

/// Resolves `host`, blocking: the event to tell the core.
pub fn resolve(conn: ConnId, host: &str, port: u16) -> Event {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => Event::Resolved {
            conn,
            addrs: addrs.collect(),
        },
        Err(_) => Event::ResolveFailed { conn },
    }
}

/// One asker's answers, and how to rouse it when one comes.
pub struct Inbox {
    answers: Mutex<Vec<Event>>,
    wake: Wake,
}

impl Inbox {
    pub fn new(wake: Wake) -> Arc<Inbox> {
        Arc::new(Inbox {
            answers: Mutex::default(),
            wake,
        })
    }

    /// The answers come so far, each the event to tell the core.
    pub fn take(&self) -> Vec<Event> {
        match self.answers.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => Vec::new(),
        }
    }

    pub(crate) fn answer(&self, event: Event) {
        if let Ok(mut q) = self.answers.lock() {
            q.push(event);
        }
        (self.wake)();
    }
}

struct Job {
    conn: ConnId,
    host: String,
    port: u16,
    to: Arc<Inbox>,
}

/// A fixed pool of resolver threads, shared by everyone who asks, so their
/// number does not grow with the askers'.
pub struct Resolvers {
    jobs: Sender<Job>,
}

/// The threads of a [`Resolvers`] pool, not started yet (see
/// [`crate::pool`]).
pub struct Unstarted(crate::pool::Unstarted<Job>);

impl Unstarted {
    /// Starts `threads` threads.
    pub fn start(self, threads: usize) -> std::io::Result<()> {
        self.0.start(
            threads,
            "resolver",
            || {},
            |job: Job| job.to.answer(resolve(job.conn, &job.host, job.port)),
        )
    }
}

impl Resolvers {
    /// A pool whose threads start with [`Unstarted::start`].
    pub fn new() -> (Resolvers, Unstarted) {
        let (jobs, threads) = crate::pool::new();
        (Resolvers { jobs }, Unstarted(threads))
    }

    /// Starts `threads` threads.
    pub fn start(threads: usize) -> std::io::Result<Resolvers> {
        let (resolvers, threads_of) = Resolvers::new();
        threads_of.start(threads)?;
        Ok(resolvers)
    }

    /// Asks for `host`; the answer goes to `to`. False when the pool is
    /// gone.
    pub fn ask(&self, conn: ConnId, host: String, port: u16, to: Arc<Inbox>) -> bool {
        self.jobs
            .send(Job {
                conn,
                host,
                port,
                to,
            })
            .is_ok()
    }
}

impl Clone for Resolvers {
    fn clone(&self) -> Self {
        Resolvers {
            jobs: self.jobs.clone(),
        }
    }
}
