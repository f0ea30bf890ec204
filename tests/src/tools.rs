//! External programs: finding them (failing with the Debian package to
//! install), and running them with a bounded wait.
//!
//! [`run_bounded`] is the one runner: the binaries' one-shot runs
//! ([`crate::run_cli`]), the nested `cargo build` and the tools of the test
//! files ([`run_tool`]) all go through it. A child that outlives its limit
//! is killed, and even the collection of its output after it ended is
//! bounded (a grandchild may hold its pipes open).

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long, once a child has ended, its output pipes may take to close.
const PIPE_GRACE: Duration = Duration::from_secs(10);

/// The environment variables that would send a client through some other
/// proxy than the one on its command line.
const PROXY_VARS: [&str; 10] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "ftp_proxy",
    "FTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// The path of `tool` (looked for on `PATH` and in the usual bin and sbin
/// directories); fails the test, naming the Debian package, if it is not
/// installed.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"] {
        dirs.push(PathBuf::from(d));
    }
    for d in dirs {
        let p = d.join(tool);
        if let Ok(m) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "`{tool}` is not installed: this test needs the Debian package `{package}` \
         (apt-get install -y {package}; .ci/run must install it)"
    );
}

/// `python3` (Debian package python3) with `module` importable; fails the
/// test saying it needs `needs` (what to install) if it is not. Checked
/// once per test process and module.
pub fn require_python_module(module: &str, needs: &str) -> PathBuf {
    static CHECKED: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let checked = CHECKED.get_or_init(Mutex::default);
    let known = checked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(module)
        .cloned();
    let result = known.unwrap_or_else(|| {
        let py = require("python3", "python3");
        let mut cmd = Command::new(&py);
        cmd.args(["-W", "ignore", "-c", &format!("import {module}")]);
        let out = run_tool("python3", cmd, None, Duration::from_secs(60));
        let r = if out.status.success() {
            Ok(py)
        } else {
            Err(format!(
                "python3 cannot import {module}: this test needs {needs} (.ci/run must install \
                 it)\n{}",
                out.stderr.trim()
            ))
        };
        checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(module.to_string(), r.clone());
        r
    });
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Removes the proxy variables of the environment from `cmd`, so that only
/// its command line decides where a client goes.
pub fn without_proxy_env(cmd: &mut Command) -> &mut Command {
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// `curl -q -sS --max-time MAX_TIME` (Debian package curl), without the
/// proxy variables of the environment; the caller adds the rest.
pub fn curl_command(max_time: u32) -> Command {
    let mut cmd = Command::new(require("curl", "curl"));
    without_proxy_env(&mut cmd);
    cmd.args(["-q", "-sS", "--max-time"])
        .arg(max_time.to_string());
    cmd
}

/// What a tool printed and how it ended.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl ToolOutput {
    /// Standard output as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The status and both outputs, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout_text(),
            self.stderr
        )
    }
}

/// Runs `cmd` with `stdin` (none: /dev/null), waiting at most `limit`; if it
/// runs longer it is killed and the test fails. `who` starts the failure
/// messages (the binary under test, or what the tool is for).
pub fn run_tool(
    who: impl fmt::Display,
    mut cmd: Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> ToolOutput {
    let described = format!("{cmd:?}");
    match run_bounded(&mut cmd, stdin, limit) {
        Ok(f) => ToolOutput {
            status: f.status,
            stdout: f.stdout,
            stderr: String::from_utf8_lossy(&f.stderr).into_owned(),
        },
        Err(RunFailure::Spawn(e)) => panic!("{who}: cannot run {described}: {e}"),
        Err(RunFailure::Wait(e)) => panic!("{who}: waiting for {described}: {e}"),
        Err(RunFailure::TimedOut { stdout, stderr }) => panic!(
            "{who}: {described} still running after {limit:?}; killed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// A child that ended within its limit.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why [`run_bounded`] has no [`Finished`].
pub(crate) enum RunFailure {
    Spawn(std::io::Error),
    Wait(std::io::Error),
    /// Still running at the limit: killed; what it had printed.
    TimedOut {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
}

/// Runs `cmd` with stdout and stderr piped and `stdin` fed from a thread
/// (none: /dev/null), for at most `limit`.
pub(crate) fn run_bounded(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<Finished, RunFailure> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(RunFailure::Spawn)?;
    if let (Some(pipe), Some(data)) = (child.stdin.take(), stdin) {
        feed(pipe, data.to_vec());
    }
    let out = Collected::start(child.stdout.take());
    let err = Collected::start(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunFailure::TimedOut {
                    stdout: out.finish(PIPE_GRACE),
                    stderr: err.finish(PIPE_GRACE),
                });
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunFailure::Wait(e));
            }
        }
    };
    Ok(Finished {
        status,
        stdout: out.finish(PIPE_GRACE),
        stderr: err.finish(PIPE_GRACE),
    })
}

/// Writes `data` to a child's stdin from a thread, then closes it.
fn feed(mut pipe: ChildStdin, data: Vec<u8>) {
    thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
}

/// The bytes read from a pipe so far, and whether it has ended.
type PipeState = Mutex<(Vec<u8>, bool)>;

/// The bytes of one pipe, read by a thread.
struct Collected(Arc<(PipeState, Condvar)>);

impl Collected {
    fn start(pipe: Option<impl Read + Send + 'static>) -> Collected {
        let shared = Arc::new((Mutex::new((Vec::new(), pipe.is_none())), Condvar::new()));
        if let Some(mut pipe) = pipe {
            let sh = shared.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => 0,
                        Ok(n) => n,
                    };
                    let mut st = sh.0.lock().unwrap_or_else(|e| e.into_inner());
                    if n == 0 {
                        st.1 = true;
                        sh.1.notify_all();
                        return;
                    }
                    st.0.extend_from_slice(&buf[..n]);
                }
            });
        }
        Collected(shared)
    }

    /// What was read, once the pipe ended or at most `grace` from now.
    fn finish(self, grace: Duration) -> Vec<u8> {
        let (lock, cv) = &*self.0;
        let st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = cv
            .wait_timeout_while(st, grace, |st| !st.1)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        std::mem::take(&mut st.0)
    }
}
