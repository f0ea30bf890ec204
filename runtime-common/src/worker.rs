//! [`Worker`]: one table among those of the process, and what they tell
//! each other.
//!
//! `portico` runs a table per worker thread (`[runtime] workers`);
//! `portico-threaded` runs one, a worker alone. Worker 0 handles the
//! signals: it stops the others with it, and reloads them before itself,
//! logging the reload for all with what theirs closed. A status request on
//! any worker gathers every table. SIGUSR1 has every table open its
//! access log again. Each worker reads its mail when its
//! `Wake` rouses it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portico_core::config::Config;
use portico_core::process::{reload_warning, Notice};
use portico_core::{ConnId, Level};

use crate::notify;
use crate::process::log;
use crate::table::{Snapshot, Table};

/// Rouses a worker to read its mail; false when it is gone.
pub type Wake = Arc<dyn Fn() -> bool + Send + Sync>;

/// How long a worker that reloads waits for each other worker's answer: it
/// answers within its turn; one that does not is stuck or gone.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

struct Mailbox {
    tx: Sender<Mail>,
    wake: Wake,
}

impl Mailbox {
    /// False when that worker is gone.
    fn send(&self, mail: Mail) -> bool {
        self.tx.send(mail).is_ok() && (self.wake)()
    }
}

/// What workers tell each other.
enum Mail {
    Stop,
    /// Open the access log file again (SIGUSR1).
    Reopen,
    /// Apply this configuration, then say how many connections it closed.
    Reload {
        config: Box<Config>,
        text: Arc<str>,
        recheck: bool,
        done: Sender<usize>,
    },
    /// Worker `from` wants this table for its status request on `conn`.
    Snapshot {
        from: usize,
        conn: ConnId,
    },
    /// The table asked for.
    Part {
        conn: ConnId,
        part: Box<Snapshot>,
    },
}

/// One worker among the others.
pub struct Worker {
    index: usize,
    mail: Receiver<Mail>,
    /// Every worker's mailbox, this one's included.
    boxes: Arc<Vec<Mailbox>>,
    /// Status requests waiting for the other workers' tables: the parts
    /// so far and how many are still to come.
    gathers: HashMap<ConnId, (Vec<Snapshot>, usize)>,
    /// The file SIGHUP reads again, and `--reload-recheck`.
    path: Option<PathBuf>,
    recheck: bool,
}

impl Worker {
    /// One worker per wake, in worker order.
    pub fn new(wakes: Vec<Wake>, path: Option<PathBuf>, recheck: bool) -> Vec<Worker> {
        let (boxes, inboxes): (Vec<_>, Vec<_>) = wakes
            .into_iter()
            .map(|wake| {
                let (tx, rx) = channel();
                (Mailbox { tx, wake }, rx)
            })
            .unzip();
        let boxes = Arc::new(boxes);
        let worker = inboxes.into_iter().enumerate().map(|(index, mail)| Worker {
            index,
            mail,
            boxes: boxes.clone(),
            gathers: HashMap::new(),
            path: path.clone(),
            recheck,
        });
        worker.collect()
    }

    /// A process of one table.
    pub fn alone(path: Option<PathBuf>, recheck: bool) -> Worker {
        let mut worker = Worker::new(vec![Arc::new(|| true)], path, recheck);
        worker.remove(0)
    }

    /// Sends `mail` to every other worker; how many took it.
    fn tell_others(&self, mut mail: impl FnMut() -> Mail) -> usize {
        let me = self.index;
        let boxes = self.boxes.iter().enumerate();
        boxes.filter(|(k, b)| *k != me && b.send(mail())).count()
    }

    /// SIGTERM or SIGINT: every table stops.
    pub fn stop(&self, table: &mut Table) {
        notify::tell(&Notice::Stopping);
        table.shutdown(Instant::now());
        self.tell_others(|| Mail::Stop);
    }

    /// SIGUSR1: every table opens its access log file again, and the
    /// diagnostics file is opened again; the configuration is not read.
    pub fn reopen(&self, table: &mut Table) {
        if let Err(e) = crate::diagnostics::reopen() {
            log(Level::Error, &e);
        }
        table.reopen_access();
        self.tell_others(|| Mail::Reopen);
    }

    /// SIGHUP: reads the file again; a bad one leaves everything as it is.
    /// The other workers apply it first, then this one. A service manager
    /// is told of the reload, and that the process is ready again after
    /// it (whether or not the file could be taken: it serves on).
    pub fn reload(&self, table: &mut Table) {
        notify::tell(&Notice::Reloading);
        self.reload_file(table);
        notify::tell(&Notice::Ready);
    }

    fn reload_file(&self, table: &mut Table) {
        let (config, text) = match crate::process::load(self.path.as_deref()) {
            Ok(loaded) => loaded,
            Err(why) => {
                // The status page and metrics say so.
                table.reload_failed(&why);
                return;
            }
        };
        if let Some(w) = reload_warning(table.config(), &config) {
            log(Level::Warn, &w);
        }
        // The diagnostics' destination follows the file too, when it
        // changed (one that cannot be opened keeps the old one).
        let (old, new) = (&table.config().log, &config.log);
        if old.diagnostics != new.diagnostics || old.syslog_socket != new.syslog_socket {
            if let Err(e) = crate::diagnostics::configure(new) {
                log(Level::Error, &format!("{e}; keeping the old destination"));
            }
        }
        let recheck = self.recheck;
        let shared: Arc<str> = Arc::from(text.as_str());
        let (done, replies) = channel();
        let asked = self.tell_others(|| Mail::Reload {
            config: Box::new(config.clone()),
            text: shared.clone(),
            recheck,
            done: done.clone(),
        });
        drop(done);
        let mut closed = 0;
        for _ in 0..asked {
            match replies.recv_timeout(RELOAD_WAIT) {
                Ok(n) => closed += n,
                Err(_) => break,
            }
        }
        table.apply(config, &text, recheck, closed);
    }

    /// A status request on `conn` wants every table: asks the other
    /// workers for theirs (their answers come as mail, read only after
    /// this returns); with none to ask (or none left), the core answers at
    /// once.
    pub fn gather(&mut self, table: &mut Table, conn: ConnId) {
        let from = self.index;
        match self.tell_others(|| Mail::Snapshot { from, conn }) {
            0 => table.handle_gathered(conn, Vec::new(), Instant::now()),
            asked => {
                self.gathers.insert(conn, (Vec::new(), asked));
            }
        }
    }

    /// Handles the next piece of mail (the caller then carries out what
    /// the table asks); false when there is none.
    pub fn read_mail(&mut self, table: &mut Table) -> bool {
        let Ok(mail) = self.mail.try_recv() else {
            return false;
        };
        match mail {
            Mail::Stop => table.shutdown(Instant::now()),
            Mail::Reopen => table.reopen_access(),
            Mail::Reload {
                config,
                text,
                recheck,
                done,
            } => {
                let closed = table.apply(*config, &text, recheck, 0);
                let _ = done.send(closed);
            }
            Mail::Snapshot { from, conn } => {
                let part = Box::new(table.snapshot(Instant::now()));
                if let Some(b) = self.boxes.get(from) {
                    b.send(Mail::Part { conn, part });
                }
            }
            Mail::Part { conn, part } => {
                // One more answer; the last one lets the core reply.
                if let Some((parts, left)) = self.gathers.get_mut(&conn) {
                    parts.push(*part);
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        let parts = self.gathers.remove(&conn).map(|g| g.0).unwrap_or_default();
                        table.handle_gathered(conn, parts, Instant::now());
                    }
                }
            }
        }
        true
    }
}
