//! Name resolution: getaddrinfo, which blocks. `portico-threaded` calls
//! [`resolve`] on the connection's own thread (it serves only that
//! connection, so it may wait); `portico`'s event loops must not wait, so
//! they hand names to a pool of threads ([`Resolvers`]) that answers each
//! to the loop that asked.

use std::net::ToSocketAddrs;
use std::sync::mpsc::{channel, Receiver, Sender};
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

/// The threads of a [`Resolvers`] pool, not started yet: the askers can be
/// set up before the process has given up its privileges, and the threads
/// started after (capabilities are per thread; see [`crate::privileges`]).
/// Names asked for meanwhile wait for them.
pub struct Unstarted {
    rx: Receiver<Job>,
}

impl Unstarted {
    /// Starts `threads` threads.
    pub fn start(self, threads: usize) -> std::io::Result<()> {
        let rx = Arc::new(Mutex::new(self.rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("resolver-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    job.to.answer(resolve(job.conn, &job.host, job.port));
                })?;
        }
        Ok(())
    }
}

impl Resolvers {
    /// A pool whose threads start with [`Unstarted::start`].
    pub fn new() -> (Resolvers, Unstarted) {
        let (tx, rx) = channel::<Job>();
        (Resolvers { jobs: tx }, Unstarted { rx })
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
