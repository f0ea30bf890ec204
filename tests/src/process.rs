//! Running a binary under test: a long-lived proxy ([`Portico`]) or a
//! one-shot command ([`run_cli`]).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bin::Bin;
use crate::logline::{parse_text_line, AccessLine};
use crate::tools::{run_bounded, RunFailure};

/// How long a proxy may take to print its `listening:` lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A directory under the system's temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "portico-tests-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The lines of one output stream of a child process, collected by a
/// thread as they come, for waiting on with a deadline (the proxy's
/// stdout and stderr, a test server's log).
#[derive(Default)]
pub struct LineLog {
    state: Mutex<(Vec<String>, bool)>,
    cv: Condvar,
}

impl LineLog {
    /// Starts collecting the lines of `pipe` (none: an empty log, ended).
    pub fn start(pipe: Option<impl Read + Send + 'static>) -> Arc<LineLog> {
        let log = Arc::new(LineLog::default());
        match pipe {
            Some(p) => {
                log.collect(p);
            }
            None => log.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true,
        }
        log
    }

    fn collect(self: &Arc<Self>, pipe: impl Read + Send + 'static) -> thread::JoinHandle<()> {
        let me = self.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        while buf.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
                        st.0.push(line);
                        me.cv.notify_all();
                    }
                }
            }
            let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
            st.1 = true;
            me.cv.notify_all();
        })
    }

    /// The lines so far.
    pub fn snapshot(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The lines so far, joined, for assertion messages.
    pub fn text(&self) -> String {
        self.snapshot().join("\n")
    }

    /// Waits until the lines seen so far satisfy `done`, the stream ends, or
    /// the time is up; returns whether `done` held.
    pub fn wait(&self, limit: Duration, mut done: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if done(&st.0) {
                return true;
            }
            let now = Instant::now();
            if st.1 || now >= deadline {
                return false;
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The first line satisfying `pred`, waiting at most `limit` (and no
    /// longer than the stream lasts).
    pub fn wait_for(&self, mut pred: impl FnMut(&str) -> bool, limit: Duration) -> Option<String> {
        let mut found = None;
        self.wait(limit, |lines| {
            found = lines.iter().find(|l| pred(l)).cloned();
            found.is_some()
        });
        found
    }
}

/// How many `listening:` lines a configuration should produce: each quoted
/// entry of a `listen = [...]`, and for `port = N` one per internal address.
pub fn expected_listeners(config: &str) -> usize {
    let mut internal = 1;
    let mut n = 0;
    let mut section = String::new();
    for raw in config.lines() {
        let line = raw.trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let quoted = value.matches('"').count() / 2;
        match (section.as_str(), key) {
            ("network", "internal") => internal = quoted.max(1),
            ("service", "listen") => n += quoted,
            ("service", "port") => n += internal,
            _ => {}
        }
    }
    n
}

/// How to start a [`Portico`] beyond its configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartOptions<'a> {
    /// Extra command-line arguments after `--config FILE`.
    pub args: &'a [&'a str],
    /// `listening:` lines to wait for (default: [`expected_listeners`]).
    pub listeners: Option<usize>,
    /// RLIMIT_NOFILE for the process (soft and hard).
    pub nofile: Option<u64>,
    /// Environment variables set for the process (e.g. `NOTIFY_SOCKET`).
    pub env: &'a [(&'a str, &'a str)],
    /// More files written beside the configuration before the start, as
    /// (path relative to its directory, contents), e.g. included files.
    pub files: &'a [(&'a str, &'a str)],
    /// An `/etc/hosts` the process alone sees (see [`private_hosts`]), so
    /// that a test can make a name resolve to several addresses without
    /// touching the machine's.
    pub hosts: Option<&'a str>,
    /// An `/etc/resolv.conf` the process alone sees, with an
    /// `/etc/nsswitch.conf` that asks `/etc/hosts`, then DNS (so that a
    /// test's own name server answers, or holds, its lookups).
    pub resolv: Option<&'a str>,
}

/// Makes `cmd` run with `hosts` (a file) mounted over `/etc/hosts` in a
/// mount namespace of its own: the system resolver it uses then reads
/// `hosts`, and nothing outside it changes (as `ip netns exec` does for
/// `/etc/netns/NAME/hosts`). Needs root (CAP_SYS_ADMIN), as the tests run.
pub fn private_hosts(cmd: &mut Command, hosts: &Path) {
    private_files(cmd, &[(hosts, "/etc/hosts")]);
}

/// Makes `cmd` run with each (file, target) of `mounts` mounted over its
/// target in a mount namespace of its own (see [`private_hosts`]).
pub fn private_files(cmd: &mut Command, mounts: &[(&Path, &str)]) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let mounts: Vec<(CString, CString)> = mounts
        .iter()
        .map(|(src, target)| {
            (
                CString::new(src.as_os_str().as_bytes()).expect("a path without NUL"),
                CString::new(*target).expect("a path without NUL"),
            )
        })
        .collect();
    // SAFETY: unshare and mount are plain system calls (async-signal-safe);
    // the closure allocates nothing and uses only what it owns.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            // Mounts made here stay here.
            let root = c"/".as_ptr();
            let none = std::ptr::null();
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(c"none".as_ptr(), root, none, private, none.cast()) != 0 {
                return fail();
            }
            for (src, target) in &mounts {
                let (src, target) = (src.as_ptr(), target.as_ptr());
                if libc::mount(src, target, none, libc::MS_BIND, none.cast()) != 0 {
                    return fail();
                }
            }
            Ok(())
        });
    }
}

/// Why a proxy did not come up.
#[derive(Debug)]
pub struct StartError {
    /// A description with the configuration, stdout and stderr.
    pub message: String,
    /// Its stderr lines.
    pub stderr: Vec<String>,
}

impl StartError {
    /// The proxy could not bind a listen address (e.g. a port another
    /// process took since it was found free).
    pub fn is_listen_failure(&self) -> bool {
        self.stderr.iter().any(|l| l.contains("cannot listen on"))
    }
}

/// A running proxy. Dropping it kills the process.
pub struct Portico {
    bin: Bin,
    child: Child,
    status: Option<ExitStatus>,
    stdout: Arc<LineLog>,
    stderr: Arc<LineLog>,
    _dir: TempDir,
    config_path: PathBuf,
}

impl Portico {
    /// Starts `bin --config FILE` and waits until it has printed one
    /// `listening:` line per listener of the configuration.
    pub fn start(bin: Bin, config_toml: &str) -> Portico {
        Portico::start_with(bin, config_toml, StartOptions::default())
    }

    /// Like [`Portico::start`] with extra arguments and an explicit count of
    /// `listening:` lines to wait for.
    pub fn start_expecting(
        bin: Bin,
        config_toml: &str,
        listeners: usize,
        args: &[&str],
    ) -> Portico {
        Portico::start_with(
            bin,
            config_toml,
            StartOptions {
                listeners: Some(listeners),
                args,
                ..StartOptions::default()
            },
        )
    }

    /// Like [`Portico::start`], with [`StartOptions`].
    pub fn start_with(bin: Bin, config_toml: &str, opts: StartOptions<'_>) -> Portico {
        Portico::try_start_with(bin, config_toml, opts).unwrap_or_else(|e| panic!("{}", e.message))
    }

    /// Like [`Portico::start_with`], returning the failure instead of
    /// panicking (e.g. to retry on another port).
    pub fn try_start_with(
        bin: Bin,
        config_toml: &str,
        opts: StartOptions<'_>,
    ) -> Result<Portico, StartError> {
        let listeners = opts
            .listeners
            .unwrap_or_else(|| expected_listeners(config_toml));
        let dir = TempDir::new();
        let config_path = dir.write("portico.toml", config_toml);
        for (name, contents) in opts.files {
            if let Some(parent) = Path::new(name).parent() {
                std::fs::create_dir_all(dir.path().join(parent))
                    .unwrap_or_else(|e| panic!("cannot create a directory for {name}: {e}"));
            }
            dir.write(name, contents);
        }
        let mut cmd = Command::new(bin.path());
        cmd.arg("--config")
            .arg(&config_path)
            .args(opts.args)
            .envs(opts.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut mounts = Vec::new();
        if let Some(text) = opts.hosts {
            mounts.push((dir.write("hosts", text), "/etc/hosts"));
        }
        if let Some(text) = opts.resolv {
            mounts.push((dir.write("resolv.conf", text), "/etc/resolv.conf"));
            let nss = "hosts: files dns\n";
            mounts.push((dir.write("nsswitch.conf", nss), "/etc/nsswitch.conf"));
        }
        if !mounts.is_empty() {
            let mounts: Vec<(&Path, &str)> =
                mounts.iter().map(|(p, t)| (p.as_path(), *t)).collect();
            private_files(&mut cmd, &mounts);
        }
        if let Some(n) = opts.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe; the closure allocates
            // nothing and touches only its copied argument.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: cannot start {}: {e}", bin.path().display()));
        let stdout = LineLog::start(child.stdout.take());
        let stderr = LineLog::start(child.stderr.take());
        let mut me = Portico {
            bin,
            child,
            status: None,
            stdout,
            stderr,
            _dir: dir,
            config_path,
        };
        let ready = me.stdout.wait(START_TIMEOUT, |lines| {
            lines
                .iter()
                .filter(|l| l.starts_with("listening: "))
                .count()
                >= listeners
        });
        if !ready {
            let exited = me.try_wait_exit(Duration::from_secs(2));
            let _ = me.stderr.wait(Duration::from_secs(2), |_| false);
            return Err(StartError {
                message: format!(
                    "{bin}: {}\nconfig:\n{config_toml}\nstdout:\n{}\nstderr:\n{}",
                    match exited {
                        Some(st) => format!(
                            "exited ({st}) before printing {listeners} `listening:` line(s)"
                        ),
                        None => format!(
                            "did not print {listeners} `listening:` line(s) within {START_TIMEOUT:?}"
                        ),
                    },
                    me.stdout.snapshot().join("\n"),
                    me.stderr.snapshot().join("\n"),
                ),
                stderr: me.stderr.snapshot(),
            });
        }
        Ok(me)
    }

    pub fn bin(&self) -> Bin {
        self.bin
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The `listening:` lines and anything else printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    /// Every stderr line so far (diagnostics and, with
    /// `[log] access = "stderr"`, access log lines).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// The first stderr line satisfying `pred`, waiting up to `limit`.
    pub fn wait_for_stderr(
        &self,
        pred: impl FnMut(&str) -> bool,
        limit: Duration,
    ) -> Option<String> {
        self.stderr.wait_for(pred, limit)
    }

    /// The first stderr line containing `needle` (a piece of an access-log
    /// line), waiting up to `limit`; fails the test, with stderr, if none.
    pub fn expect_log_line(&self, needle: &str, limit: Duration) -> String {
        self.wait_for_stderr(|l| l.contains(needle), limit)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no access-log line containing {needle:?} within {limit:?}; stderr:\n{}",
                    self.bin,
                    self.stderr_text()
                )
            })
    }

    /// The first text access-log line of `service` that `pred` accepts,
    /// waiting up to `limit`; fails the test (saying `what` was looked for,
    /// with stderr) if none.
    pub fn expect_access(
        &self,
        service: &str,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&AccessLine) -> bool,
    ) -> AccessLine {
        let mut found = None;
        self.stderr.wait(limit, |lines| {
            found = lines
                .iter()
                .filter_map(|l| parse_text_line(l).ok())
                .find(|a| a.service == service && pred(a));
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "{}: {what}: no matching access-log line of service {service} within {limit:?}; \
                 stderr:\n{}",
                self.bin,
                self.stderr_text()
            )
        })
    }

    /// The access-log line of `service` for the connection from `client`,
    /// waiting up to `limit`. A line that names them but does not parse
    /// fails the test with the reason.
    pub fn access_of(&self, service: &str, client: SocketAddr, limit: Duration) -> AccessLine {
        let needle = format!(" {service} {client} ");
        let line = self.expect_log_line(&needle, limit);
        parse_text_line(&line).unwrap_or_else(|e| panic!("{}: {e}", self.bin))
    }

    /// The text access-log lines of `service` that `pred` accepts, once
    /// there are `n` of them, waiting up to `limit`; fails the test if there
    /// are fewer.
    pub fn expect_access_lines(
        &self,
        service: &str,
        n: usize,
        limit: Duration,
        pred: impl Fn(&AccessLine) -> bool,
    ) -> Vec<AccessLine> {
        let matching = |lines: &[String]| -> Vec<AccessLine> {
            lines
                .iter()
                .filter_map(|l| parse_text_line(l).ok())
                .filter(|a| a.service == service && pred(a))
                .collect()
        };
        let mut found = Vec::new();
        self.stderr.wait(limit, |lines| {
            found = matching(lines);
            found.len() >= n
        });
        assert!(
            found.len() >= n,
            "{}: want {n} matching access-log lines of service {service}, found {}: \
             {found:?}\nstderr:\n{}",
            self.bin,
            found.len(),
            self.stderr_text()
        );
        found
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with the pid of our own child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "{}: kill({sig}): {}",
            self.bin,
            std::io::Error::last_os_error()
        );
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait_exit(Duration::ZERO).is_none()
    }

    /// The exit status, waiting at most `limit`; `None` if still running.
    pub fn try_wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.status {
            return Some(st);
        }
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.status = Some(st);
                    return Some(st);
                }
                Ok(None) => {}
                Err(e) => panic!("{}: waiting for the process: {e}", self.bin),
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status; panics (with stderr) if it does not exit within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match self.try_wait_exit(limit) {
            Some(st) => {
                // Let the reader threads see the end of the pipes.
                let _ = self.stderr.wait(Duration::from_secs(2), |_| false);
                st
            }
            None => panic!(
                "{}: still running {limit:?} later\nstderr:\n{}",
                self.bin,
                self.stderr_lines().join("\n")
            ),
        }
    }

    /// CPU time used so far (user + system), from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        crate::net::cpu_time(self.pid())
            .unwrap_or_else(|| panic!("{}: cannot read /proc/{}/stat", self.bin, self.pid()))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        crate::net::rss_kib(self.pid())
            .unwrap_or_else(|| panic!("{}: cannot read VmRSS of pid {}", self.bin, self.pid()))
    }

    /// stderr so far, for assertion messages.
    pub fn stderr_text(&self) -> String {
        self.stderr_lines().join("\n")
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- {} stdout ----\n{}\n---- {} stderr ----\n{}",
                self.bin,
                self.stdout_lines().join("\n"),
                self.bin,
                self.stderr_lines().join("\n")
            );
        }
    }
}

/// What a one-shot run printed and how it ended.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `bin --config FILE ARGS…` with `toml` in a temporary FILE, waiting
/// at most `limit` (then it is killed and the test fails); returns FILE's
/// path (for the `FILE:LINE:COLUMN` of error messages) and the output.
pub fn run_on_config(bin: Bin, toml: &str, args: &[&str], limit: Duration) -> (String, CliOutput) {
    let dir = TempDir::new();
    let path = dir.write("portico.toml", toml);
    let path = path.to_str().expect("utf-8 temp path").to_string();
    let mut all = vec!["--config", &path];
    all.extend_from_slice(args);
    let out = run_cli(bin, &all, None, limit);
    (path, out)
}

/// Runs `bin ARGS…` with `stdin`, waiting at most `limit` (then it is
/// killed and the test fails).
pub fn run_cli(bin: Bin, args: &[&str], stdin: Option<&[u8]>, limit: Duration) -> CliOutput {
    let mut cmd = Command::new(bin.path());
    cmd.args(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match run_bounded(&mut cmd, stdin, limit) {
        Ok(f) => CliOutput {
            status: f.status,
            stdout: text(&f.stdout),
            stderr: text(&f.stderr),
        },
        Err(RunFailure::Spawn(e)) => {
            panic!("{bin}: cannot start {}: {e}", bin.path().display())
        }
        Err(RunFailure::Wait(e)) => panic!("{bin}: waiting for the process: {e}"),
        Err(RunFailure::TimedOut { stdout, stderr }) => panic!(
            "{bin} {args:?}: still running after {limit:?}; killed\nstdout:\n{}\nstderr:\n{}",
            text(&stdout),
            text(&stderr)
        ),
    }
}
