//! `[auth] helper`: the external programs that check the users `[[user]]`
//! does not hold, speaking the Squid basic-auth helper protocol (the core's
//! [`portico_core::auth::helper`] writes and reads the lines; this module
//! only runs the processes). Each process has a thread that hands it
//! requests and one that reads its answers; a process that dies is started
//! again, and one that does not answer within `helper_timeout` is a
//! failure and is replaced. Both runtimes share this.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use portico_core::auth::{helper, Answer, Secret};
use portico_core::config::HelperConfig;
use portico_core::{ConnId, Event};

use crate::resolver::Inbox;

/// How often a process's thread looks at its deadlines and at whether the
/// process died, while no request comes.
const TICK: Duration = Duration::from_millis(20);

enum Reply {
    /// Told to an event loop as [`Event::HelperAnswered`].
    Inbox(ConnId, Arc<Inbox>),
    /// Handed to a thread that waits for it.
    Wait(SyncSender<Answer>),
}

struct Job {
    user: String,
    password: Secret,
    reply: Reply,
    /// Already handed to a process that died before answering: a second
    /// death is a failure.
    retried: bool,
}

impl Job {
    fn answer(self, a: Answer) {
        match self.reply {
            Reply::Inbox(conn, to) => to.answer(Event::HelperAnswered { conn, answer: a }),
            // The asker may have gone; nobody is left to tell.
            Reply::Wait(tx) => {
                let _ = tx.send(a);
            }
        }
    }
}

/// The helper processes of the configuration in force: started on the
/// first login that needs them, and replaced when a reload changes
/// `[auth]`.
#[derive(Default)]
pub struct Helpers {
    pool: Mutex<Option<(Arc<HelperConfig>, Sender<Job>)>>,
}

impl Helpers {
    pub fn new() -> Arc<Helpers> {
        Arc::new(Helpers::default())
    }

    /// Asks `helper` about `user` and `password` for connection `conn`;
    /// the answer goes to `to`.
    pub fn ask(
        &self,
        helper: Arc<HelperConfig>,
        conn: ConnId,
        user: String,
        password: Secret,
        to: Arc<Inbox>,
    ) {
        self.submit(helper, user, password, Reply::Inbox(conn, to));
    }

    /// Asks `helper` about `user` and `password` and waits for the answer
    /// (at most about `helper_timeout`).
    pub fn check(&self, helper: Arc<HelperConfig>, user: String, password: Secret) -> Answer {
        let (tx, rx) = sync_channel(1);
        self.submit(helper, user, password, Reply::Wait(tx));
        rx.recv().unwrap_or(Answer::Failed)
    }

    fn submit(&self, helper: Arc<HelperConfig>, user: String, password: Secret, reply: Reply) {
        let job = Job {
            user,
            password,
            reply,
            retried: false,
        };
        let Ok(mut pool) = self.pool.lock() else {
            return job.answer(Answer::Failed);
        };
        if pool.as_ref().is_none_or(|(c, _)| **c != *helper) {
            // The previous pool's threads see their queue closed, answer
            // what they hold and end their processes.
            *pool = start(helper.clone()).map(|tx| (helper, tx));
        }
        match pool.as_ref() {
            Some((_, tx)) => {
                if let Err(e) = tx.send(job) {
                    e.0.answer(Answer::Failed);
                }
            }
            None => job.answer(Answer::Failed),
        }
    }
}

/// Starts one thread per process of `cfg`; `None` when no thread could be
/// started (the logins then fail, counted `helper`).
fn start(cfg: Arc<HelperConfig>) -> Option<Sender<Job>> {
    let (tx, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let mut started = 0;
    for i in 0..cfg.processes {
        let (cfg, rx) = (cfg.clone(), rx.clone());
        match std::thread::Builder::new()
            .name(format!("auth-helper-{i}"))
            .spawn(move || manage(&cfg, &rx))
        {
            Ok(_) => started += 1,
            Err(e) => log::warn!("cannot start a thread for the auth helper: {e}"),
        }
    }
    (started > 0).then_some(tx)
}

/// The helper's program, for messages.
fn program(cfg: &HelperConfig) -> &str {
    cfg.argv.first().map_or("(none)", String::as_str)
}

/// A running helper process and the requests it holds, by channel id.
struct Running {
    child: Child,
    stdin: ChildStdin,
    held: Arc<Mutex<HashMap<u32, (Instant, Job)>>>,
    /// Set by the reader when the process's output ends.
    dead: Arc<AtomicBool>,
}

impl Running {
    fn spawn(cfg: &HelperConfig) -> std::io::Result<Running> {
        let (program, args) = cfg
            .argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("no program"))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no pipes to the helper"));
        };
        let held: Arc<Mutex<HashMap<u32, (Instant, Job)>>> = Default::default();
        let dead = Arc::new(AtomicBool::new(false));
        let (h, d, concurrent) = (held.clone(), dead.clone(), cfg.concurrency > 0);
        let reader = std::thread::Builder::new()
            .name("auth-helper-read".into())
            .spawn(move || {
                let mut out = BufReader::new(stdout);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match out.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let Some((channel, answer)) = helper::answer(text, concurrent) else {
                        log::warn!(
                            "the auth helper answered a line without a channel id: {:?}",
                            String::from_utf8_lossy(text)
                        );
                        continue;
                    };
                    let job = h
                        .lock()
                        .ok()
                        .and_then(|mut h| h.remove(&channel.unwrap_or(0)));
                    if let Some((_, job)) = job {
                        job.answer(answer);
                    }
                }
                d.store(true, Ordering::Release);
            });
        if let Err(e) = reader {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Running {
            child,
            stdin,
            held,
            dead,
        })
    }

    /// Ends the process; what it held is handed back.
    fn end(mut self) -> Vec<Job> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        match self.held.lock() {
            Ok(mut h) => h.drain().map(|(_, (_, j))| j).collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// One process's thread: takes requests while the process has a free
/// channel, fails those past their deadline, restarts the process when it
/// died or stalled.
fn manage(cfg: &HelperConfig, rx: &Mutex<Receiver<Job>>) {
    let cap = cfg.concurrency.max(1);
    let mut running: Option<Running> = None;
    // Requests a dead process held, to go to its successor.
    let mut again: Vec<Job> = Vec::new();
    loop {
        let now = Instant::now();
        if let Some(r) = running.take() {
            let expired: Vec<Job> = match r.held.lock() {
                Ok(mut h) => {
                    let late: Vec<u32> = h
                        .iter()
                        .filter(|(_, (until, _))| *until <= now)
                        .map(|(&id, _)| id)
                        .collect();
                    late.iter()
                        .filter_map(|id| h.remove(id))
                        .map(|(_, j)| j)
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            let stalled = !expired.is_empty();
            for j in expired {
                j.answer(Answer::Failed);
            }
            if stalled || r.dead.load(Ordering::Acquire) {
                if stalled {
                    log::warn!(
                        "the auth helper {} did not answer within {:?}; starting it again",
                        program(cfg),
                        cfg.timeout
                    );
                } else {
                    log::warn!("the auth helper {} exited; starting it again", program(cfg));
                }
                for j in r.end() {
                    if j.retried {
                        j.answer(Answer::Failed);
                    } else {
                        again.push(Job { retried: true, ..j });
                    }
                }
            } else {
                running = Some(r);
            }
        }
        let held = running
            .as_ref()
            .and_then(|r| r.held.lock().ok().map(|h| h.len()))
            .unwrap_or(0);
        if held >= cap as usize {
            std::thread::sleep(TICK);
            continue;
        }
        let job = match again.pop() {
            Some(j) => j,
            None => {
                let got = match rx.try_lock() {
                    Ok(rx) => rx.recv_timeout(TICK),
                    Err(TryLockError::WouldBlock) => {
                        std::thread::sleep(TICK);
                        continue;
                    }
                    Err(TryLockError::Poisoned(_)) => Err(RecvTimeoutError::Disconnected),
                };
                match got {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        // Replaced by a reload, or the runtime is ending.
                        if let Some(r) = running.take() {
                            for j in r.end() {
                                j.answer(Answer::Failed);
                            }
                        }
                        return;
                    }
                }
            }
        };
        if running.is_none() {
            match Running::spawn(cfg) {
                Ok(r) => running = Some(r),
                Err(e) => {
                    log::warn!(
                        "cannot start the auth helper {}: {e}; check [auth] helper",
                        program(cfg)
                    );
                    job.answer(Answer::Failed);
                    // Not again at once: a missing program is not found
                    // any sooner by trying in a loop.
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let Some(r) = running.as_mut() else { continue };
        let Ok(mut held) = r.held.lock() else {
            job.answer(Answer::Failed);
            continue;
        };
        let Some(id) = (0..cap).find(|i| !held.contains_key(i)) else {
            again.push(job);
            continue;
        };
        let channel = (cfg.concurrency > 0).then_some(id);
        let line = helper::request(channel, &job.user, &job.password.0);
        // Held before it is written: the answer may come at once.
        held.insert(id, (Instant::now() + cfg.timeout, job));
        drop(held);
        if r.stdin
            .write_all(&line)
            .and_then(|()| r.stdin.flush())
            .is_err()
        {
            // The process is gone: the next round restarts it and hands
            // this request to its successor.
            r.dead.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(body: &str) -> (tempdir::Dir, Arc<HelperConfig>) {
        let d = tempdir::Dir::new();
        let p = d.0.join("helper.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        let mut perm = std::fs::metadata(&p).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&p, perm).expect("chmod");
        let cfg = HelperConfig {
            argv: vec![p.display().to_string()],
            processes: 1,
            concurrency: 0,
            timeout: Duration::from_secs(10),
        };
        (d, Arc::new(cfg))
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "portico-helpers-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).expect("mkdir");
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn answers_restarts_and_timeouts() {
        let h = Helpers::new();
        // Answers by the password, one login per process.
        let (_d, cfg) =
            script("read u p; if [ \"$p\" = right%20pw ]; then echo OK; else echo 'ERR no'; fi");
        let ask = |p: &[u8]| h.check(cfg.clone(), "al ice".into(), Secret(p.to_vec()));
        assert_eq!(ask(b"right pw"), Answer::Ok);
        assert_eq!(ask(b"wrong"), Answer::Wrong);
        assert_eq!(ask(b"right pw"), Answer::Ok);
        // Never answers: a failure after the timeout.
        let (_d2, mut quiet) = script("while read l; do :; done");
        Arc::make_mut(&mut quiet).timeout = Duration::from_millis(100);
        assert_eq!(
            h.check(quiet, "a".into(), Secret(b"b".to_vec())),
            Answer::Failed
        );
        // A program that does not exist: a failure, not a hang.
        let missing = Arc::new(HelperConfig {
            argv: vec!["/nonexistent/helper".into()],
            processes: 1,
            concurrency: 0,
            timeout: Duration::from_secs(1),
        });
        assert_eq!(
            h.check(missing, "a".into(), Secret(b"b".to_vec())),
            Answer::Failed
        );
    }
}
