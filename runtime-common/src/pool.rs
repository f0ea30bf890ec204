//! A fixed pool of threads taking jobs from one queue: what the resolvers
//! and the password checkers share. The queue exists before the threads,
//! so askers can be set up while the process still has root and the
//! threads started after it gave root up (capabilities are per thread;
//! see [`crate::privileges`]); jobs asked meanwhile wait for them.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// The threads of a pool, not started yet.
pub struct Unstarted<J> {
    rx: Receiver<J>,
}

/// A queue of jobs and the threads to come that will do them.
pub fn new<J>() -> (Sender<J>, Unstarted<J>) {
    let (tx, rx) = channel();
    (tx, Unstarted { rx })
}

impl<J: Send + 'static> Unstarted<J> {
    /// Starts `threads` threads named `name-N`; each runs `first` once,
    /// then `work` on every job until every asker is gone.
    pub fn start(
        self,
        threads: usize,
        name: &str,
        first: fn(),
        work: impl Fn(J) + Clone + Send + 'static,
    ) -> std::io::Result<()> {
        let rx = Arc::new(Mutex::new(self.rx));
        for i in 0..threads {
            let (rx, work) = (rx.clone(), work.clone());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    first();
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        work(job);
                    }
                })?;
        }
        Ok(())
    }
}
