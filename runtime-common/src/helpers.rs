//! `[auth] helper`: the external programs that check the users `[[user]]`
//! does not hold, speaking the Squid basic-auth helper protocol (the core's
//! [`portico_core::auth::helper`] writes and reads the lines; this module
//! only runs the processes). Each process has a thread that hands it
//! requests and one that reads its answers; a process that dies is started
//! again (after a pause that grows while each start dies at once), and
//! one that does not answer within `helper_timeout` is a failure and is
//! replaced. When to start again and which failures to log is the core's
//! ([`portico_core::helper_policy`]); this module keeps the time and
//! follows it. When a reload changes `[auth] helper`, the old processes end
//! once they have answered what they hold. Both runtimes share this.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use portico_core::auth::{helper, Answer, Secret};
use portico_core::config::HelperConfig;
use portico_core::helper_policy::{Kind, Notes, Restarts};
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
    /// When the login asked: it waits for a paused restart only while
    /// `helper_timeout` from then allows.
    asked: Instant,
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
/// first login that needs them, and ended when a reload changes `[auth]`
/// ([`Helpers::follow`]).
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

    /// The configuration now in force names `helper` (after a reload):
    /// processes of another one end as soon as they have answered what
    /// they hold, rather than at the next login.
    pub fn follow(&self, helper: Option<&Arc<HelperConfig>>) {
        let Ok(mut pool) = self.pool.lock() else {
            return;
        };
        let current = pool.as_ref().map(|(c, _)| &**c);
        if current.is_some() && current != helper.map(|h| &**h) {
            // The threads see their queue closed and wind down.
            *pool = None;
        }
    }

    fn submit(&self, helper: Arc<HelperConfig>, user: String, password: Secret, reply: Reply) {
        let job = Job {
            user,
            password,
            reply,
            asked: Instant::now(),
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
    // One set of log lines for all the processes of a configuration.
    let notes = Arc::new(Mutex::new(Notes::default()));
    let mut started = 0;
    for i in 0..cfg.processes {
        let (cfg, rx, notes) = (cfg.clone(), rx.clone(), notes.clone());
        match std::thread::Builder::new()
            .name(format!("auth-helper-{i}"))
            .spawn(move || manage(&cfg, &rx, &notes))
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

/// Logs `kind` of `cfg`'s helper, if `notes` says it is its turn.
fn note(notes: &Mutex<Notes>, cfg: &HelperConfig, kind: Kind, detail: &str) {
    let Some(unlogged) = notes
        .lock()
        .ok()
        .and_then(|mut n| n.happened(kind, Instant::now()))
    else {
        return;
    };
    let what = kind.message(program(cfg), detail, cfg.timeout);
    if unlogged > 0 {
        log::warn!("{what} ({unlogged} more times since this was last logged)");
    } else {
        log::warn!("{what}");
    }
}

/// A running helper process and the requests it holds, by channel id.
struct Running {
    child: Child,
    stdin: ChildStdin,
    held: Arc<Mutex<HashMap<u32, (Instant, Job)>>>,
    /// Set by the reader when the process's output ends.
    dead: Arc<AtomicBool>,
    /// Answers read so far, and how many of them the thread has seen.
    answers: Arc<AtomicU64>,
    seen: u64,
    started: Instant,
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
        let answers = Arc::new(AtomicU64::new(0));
        let (h, d, a, concurrent) = (
            held.clone(),
            dead.clone(),
            answers.clone(),
            cfg.concurrency > 0,
        );
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
                    a.fetch_add(1, Ordering::Release);
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
            answers,
            seen: 0,
            started: Instant::now(),
        })
    }

    /// Requests held.
    fn holds(&self) -> usize {
        self.held.lock().map_or(0, |h| h.len())
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

/// One process slot's state between rounds.
struct Slot<'a> {
    cfg: &'a HelperConfig,
    notes: &'a Mutex<Notes>,
    running: Option<Running>,
    /// Requests a dead process held, to go to its successor.
    again: Vec<Job>,
    restarts: Restarts,
}

impl Slot<'_> {
    /// Fails the requests past their deadline, and ends the process when
    /// it died or stalled.
    fn tend(&mut self, now: Instant) {
        let Some(mut r) = self.running.take() else {
            return;
        };
        // Read before the answers: the reader counts every answer before
        // it marks the process dead.
        let dead = r.dead.load(Ordering::Acquire);
        let answers = r.answers.load(Ordering::Acquire);
        if answers > r.seen {
            r.seen = answers;
            self.restarts.steady();
            let unlogged = self.notes.lock().map_or(0, |mut n| n.answered());
            if unlogged > 0 {
                log::warn!(
                    "the auth helper {} answers again ({unlogged} failures were not logged)",
                    program(self.cfg)
                );
            }
        }
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
        if !stalled && !dead {
            self.running = Some(r);
            return;
        }
        let lived = now.saturating_duration_since(r.started);
        let kind = Kind::of_end(stalled, r.seen > 0, lived);
        self.restarts.ended(kind, now);
        note(self.notes, self.cfg, kind, "");
        for j in r.end() {
            if j.retried {
                j.answer(Answer::Failed);
            } else {
                self.again.push(Job { retried: true, ..j });
            }
        }
    }

    /// Hands `job` to the process, starting one if there is none (after
    /// the pause a crash loop earns, if the login may wait that long).
    fn hand(&mut self, job: Job) {
        if self.running.is_none() {
            let now = Instant::now();
            let wait = self.restarts.wait(now);
            if !wait.is_zero() {
                if job.asked + self.cfg.timeout < now + wait {
                    return job.answer(Answer::Failed);
                }
                std::thread::sleep(wait);
            }
            match Running::spawn(self.cfg) {
                Ok(r) => self.running = Some(r),
                Err(e) => {
                    self.restarts.failed(Instant::now());
                    note(self.notes, self.cfg, Kind::Start, &e.to_string());
                    return job.answer(Answer::Failed);
                }
            }
        }
        let cfg = self.cfg;
        let Some(r) = self.running.as_mut() else {
            return job.answer(Answer::Failed);
        };
        let cap = cfg.concurrency.max(1);
        let Ok(mut held) = r.held.lock() else {
            return job.answer(Answer::Failed);
        };
        let Some(id) = (0..cap).find(|i| !held.contains_key(i)) else {
            drop(held);
            return self.again.push(job);
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

/// One process's thread: takes requests while the process has a free
/// channel, fails those past their deadline, restarts the process when it
/// died or stalled. Once the queue is closed (a reload replaced the
/// configuration, or the runtime is ending) it answers what it holds and
/// ends its process.
fn manage(cfg: &HelperConfig, rx: &Mutex<Receiver<Job>>, notes: &Mutex<Notes>) {
    let cap = cfg.concurrency.max(1) as usize;
    let mut slot = Slot {
        cfg,
        notes,
        running: None,
        again: Vec::new(),
        restarts: Restarts::default(),
    };
    let mut closed = false;
    loop {
        slot.tend(Instant::now());
        let held = slot.running.as_ref().map_or(0, Running::holds);
        if held >= cap {
            std::thread::sleep(TICK);
            continue;
        }
        let job = match slot.again.pop() {
            Some(j) => j,
            None if closed => {
                if held == 0 {
                    if let Some(r) = slot.running.take() {
                        for j in r.end() {
                            j.answer(Answer::Failed);
                        }
                    }
                    return;
                }
                std::thread::sleep(TICK);
                continue;
            }
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
                        closed = true;
                        continue;
                    }
                }
            }
        };
        slot.hand(job);
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
    /// The pids a helper started by `cfg` wrote to `pids`, still running.
    fn alive(pids: &std::path::Path) -> Vec<i32> {
        std::fs::read_to_string(pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            // Ended and reaped: gone from /proc.
            .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect()
    }

    /// Polls `f` every 20 ms until it holds, for at most 10 s.
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if f() {
                return true;
            }
            std::thread::sleep(TICK);
        }
        f()
    }

    #[test]
    fn follow_ends_the_processes_of_another_helper() {
        let h = Helpers::new();
        let d = tempdir::Dir::new();
        let pids = d.0.join("pids");
        let (_d, cfg) = script(&format!(
            "echo $$ >> {:?}\nwhile read u p; do echo OK; done",
            pids.display().to_string()
        ));
        assert_eq!(
            h.check(cfg.clone(), "a".into(), Secret(b"b".to_vec())),
            Answer::Ok
        );
        assert_eq!(alive(&pids).len(), 1, "one process runs");
        // The same helper: it stays.
        h.follow(Some(&Arc::new((*cfg).clone())));
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(alive(&pids).len(), 1, "the same configuration keeps it");
        h.follow(None);
        assert!(
            eventually(|| alive(&pids).is_empty()),
            "the process of a helper no longer configured ends"
        );
        // And the next login of a helper starts one again.
        assert_eq!(h.check(cfg, "a".into(), Secret(b"b".to_vec())), Answer::Ok);
        assert_eq!(alive(&pids).len(), 1);
    }

    #[test]
    fn a_helper_that_dies_at_once_fails_the_login_and_waits_to_restart() {
        let h = Helpers::new();
        let d = tempdir::Dir::new();
        let starts = d.0.join("starts");
        let (_d, cfg) = script(&format!(
            "echo started >> {:?}; exit 1",
            starts.display().to_string()
        ));
        assert_eq!(
            h.check(cfg.clone(), "a".into(), Secret(b"b".to_vec())),
            Answer::Failed
        );
        let count = || {
            std::fs::read_to_string(&starts)
                .unwrap_or_default()
                .lines()
                .count()
        };
        // Tried and retried once (after 100 ms), not in a loop.
        assert_eq!(count(), 2, "two starts for one login");
    }
}
