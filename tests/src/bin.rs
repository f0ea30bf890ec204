//! The two binaries under test, built once per test process.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::tools::{run_bounded, RunFailure};

/// How long the nested `cargo build` may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// One of the two runtimes; every end-to-end case runs against both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bin {
    /// `portico` (runtime-mio).
    Mio,
    /// `portico-threaded` (runtime-std).
    Threaded,
}

/// Both binaries.
pub fn binaries() -> [Bin; 2] {
    Bin::ALL
}

impl Bin {
    pub const ALL: [Bin; 2] = [Bin::Mio, Bin::Threaded];

    /// The executable's file name.
    pub fn name(self) -> &'static str {
        match self {
            Bin::Mio => "portico",
            Bin::Threaded => "portico-threaded",
        }
    }

    /// Path of the executable, building both on first use.
    pub fn path(self) -> PathBuf {
        match bin_dir() {
            Ok(dir) => dir.join(self.name()),
            Err(msg) => panic!("{self}: cannot get the binaries under test: {msg}"),
        }
    }
}

impl fmt::Display for Bin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The directory holding both binaries: `PORTICO_BIN_DIR` if set, else the
/// target directory of the running test's profile after a `cargo build`.
fn bin_dir() -> Result<&'static Path, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(locate_and_build)
        .as_ref()
        .map(|p| p.as_path())
        .map_err(|e| e.clone())
}

fn locate_and_build() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PORTICO_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return check_present(dir);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test> → target/<profile>
    let parent = exe
        .parent()
        .ok_or("the test executable has no parent directory")?;
    let profile_dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent
            .parent()
            .ok_or("target/<profile>/deps has no parent")?
    } else {
        parent
    };
    let target_dir = profile_dir
        .parent()
        .ok_or("target/<profile> has no parent directory")?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the profile directory has no UTF-8 name")?
        .to_string();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // What `cargo test` set for this test process alone: a build script
    // that watches one (ring's watches CARGO_MANIFEST_DIR) would otherwise
    // see it change between this build and the next `cargo test`, and
    // both would rebuild it and everything above it.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p))
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "CARGO_RUSTC_CURRENT_DIR"
        {
            cmd.env_remove(&*k);
        }
    }
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["-p", "portico-mio", "-p", "portico-std"]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let described = format!("{cmd:?}");
    let built = match run_bounded(&mut cmd, None, BUILD_TIMEOUT) {
        Ok(f) => f,
        Err(RunFailure::Spawn(e)) => return Err(format!("cannot run {described}: {e}")),
        Err(RunFailure::Wait(e)) => return Err(format!("waiting for {described}: {e}")),
        Err(RunFailure::TimedOut { .. }) => {
            return Err(format!(
                "{described} did not finish within {BUILD_TIMEOUT:?} \
                 (waiting for a cargo lock? set PORTICO_BIN_DIR to skip the build)"
            ))
        }
    };
    let status = built.status;
    let stdout = String::from_utf8_lossy(&built.stdout);
    let stderr = String::from_utf8_lossy(&built.stderr);
    if !status.success() {
        // The end of cargo's output holds the errors; keep the message short,
        // since every test of the process repeats it.
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "{described} failed ({status}):\n{stdout}\n{}",
            tail.join("\n")
        ));
    }
    check_present(profile_dir.to_path_buf())
}

fn check_present(dir: PathBuf) -> Result<PathBuf, String> {
    for b in Bin::ALL {
        let p = dir.join(b.name());
        if !p.is_file() {
            return Err(format!("{} does not exist", p.display()));
        }
    }
    Ok(dir)
}
